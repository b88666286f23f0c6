// The device agent: reads frames from a source and, for every frame, picks a plan (where to cut,
// how to encode what crosses), runs the head, sends the crossing tensors to the server and prints
// one JSON line with the result. The plan comes from the scheduler (a profile of the model, live
// estimates of bandwidth, round trip, server and device load, and the user's objective and
// constraints), or is fixed by the user. Frames whose reply is late or refused, or that cannot be
// sent, are finished locally (the device holds the model), exactly once; a reply that arrives after
// its frame was finished is discarded and counted.
#pragma once

#include <cstdint>
#include <string>

#include "packing/codec.h"
#include "partitioner/model_graph.h"
#include "partitioner/scheduler.h"

namespace edgesplit::device {

// The local lane: whole frames run on the device on a thread of their own, so the agent's loop
// stays free to take replies when they arrive (their round trips then measure the network, not a
// computation) and, while a lost server is away, to notice its return at once (the next frame is
// offloaded without waiting for a local one to finish); beside a full in-flight window it keeps
// the device busy while the server works (throughput).
enum class LocalLane {
  kAuto,  // frames planned on the device and outages; beside the window with --objective
          // throughput when the plan leaves the device idle half of each pipelined period or more
  kOn,    // the same, and beside any full window
  kOff,   // none of it: local frames run on the agent's loop
};

struct AgentOptions {
  std::string server;      // tcp://HOST:PORT; empty runs every frame on the device
  std::string model_path;  // TorchScript file
  std::string meta_path;   // model metadata JSON; empty: looked up beside the model
  std::string input;       // image file, folder, video file or camera:N
  int64_t max_frames = 0;  // 0: the whole source
  int loop = 1;            // passes over a file/folder source (0: forever)

  // A fixed plan: a cut id, "input" (= 0) or "device" (the last cut), with `encode` (or a JPEG of
  // the input when jpeg_quality > 0 at cut 0). Empty: the scheduler chooses every frame.
  std::string cut;
  packing::EncodeOptions encode;
  int jpeg_quality = 0;

  // The scheduler's inputs. An empty profile path means MODEL.profile.json beside the model.
  std::string profile_path;
  std::string device_power_path;  // device description JSON (compute/radio/idle watts)
  partitioner::SchedulerOptions scheduler;

  int top_k = 5;
  int in_flight = 0;  // frames sent and not yet answered (0: 1, or 4 for throughput)
  LocalLane local_lane = LocalLane::kAuto;  // see LocalLane
  int timeout_ms = 1000;                    // a frame not answered by then is finished locally
  int handshake_timeout_ms = 2000;
  int retry_ms = 2000;  // how often to look for a lost server again
  int threads = 0;      // LibTorch intra-op threads (0: default)
  // How heads (and local frames) run; the cut ids do not depend on it.
  partitioner::Engine engine = partitioner::Engine::kOptimized;
  std::string output;  // JSON lines file; empty: stdout
  std::string device_name;
  // CURVE (transport/curve.h): the server's public key (Z85; empty: plain TCP) and this device's
  // secret key (Z85; empty with a server key: an ephemeral key pair is made at start).
  std::string server_public_key;
  std::string device_secret_key;
  bool quiet = false;  // no log lines or summary on stderr
};

// Runs the agent to the end of the source. Returns the process exit code: 0 when every frame got a
// result, 2 for a user error (bad model, profile, input or plan; one sentence on stderr).
int run_agent(const AgentOptions& options);

}  // namespace edgesplit::device
