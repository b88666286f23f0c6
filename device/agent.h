// The device agent: reads frames from a source, runs the head of the model up to the chosen cut,
// packs the crossing tensors, sends them to the server and prints one JSON line per frame. Frames
// whose reply is late or refused, or that cannot be sent, are finished locally (the device holds
// the whole model), exactly once; a late reply that arrives afterwards is discarded.
#pragma once

#include <cstdint>
#include <string>

#include "packing/codec.h"

namespace edgesplit::device {

struct AgentOptions {
  std::string server;      // tcp://HOST:PORT; empty runs every frame on the device
  std::string model_path;  // TorchScript file
  std::string meta_path;   // model metadata JSON; empty: looked up beside the model
  std::string input;       // image file, folder, video file or camera:N
  int64_t max_frames = 0;  // 0: the whole source
  int loop = 1;            // passes over a file/folder source (0: forever)

  std::string cut = "device";     // a cut id, "input" (= 0) or "device" (the last cut)
  packing::EncodeOptions encode;  // precision of the crossing tensors

  int top_k = 5;
  int in_flight = 1;      // frames sent and not yet answered
  int timeout_ms = 1000;  // a frame not answered by then is finished locally
  int handshake_timeout_ms = 2000;
  int retry_ms = 2000;  // how often to look for a lost server again
  int threads = 0;      // LibTorch intra-op threads (0: default)
  std::string output;   // JSON lines file; empty: stdout
  std::string device_name;
  bool quiet = false;  // no summary on stderr
};

// Runs the agent to the end of the source. Returns the process exit code: 0 when every frame got a
// result, 2 for a user error (bad model, input or cut; printed as one sentence on stderr).
int run_agent(const AgentOptions& options);

}  // namespace edgesplit::device
