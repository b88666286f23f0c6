// One model stream of the device runtime: a model (or the part of it the memory budget lets the
// device hold), its input, its scheduler and plan, its in-flight window and its local lane. The
// runtime's loop drives it: it starts frames when they have arrived and the stream may take them,
// hands it the replies the link routes to it, and asks it for its deadlines. Frames whose reply is
// late or refused, or that cannot be sent, are finished locally (when the stream holds the whole
// model), exactly once; a reply that arrives after its frame was finished is discarded and
// counted. The interface is free of LibTorch; stream.cc is not.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "device/compute_token.h"
#include "device/config.h"
#include "device/link.h"
#include "device/power_control.h"
#include "device/reporter.h"
#include "device/resources.h"
#include "packing/status.h"
#include "partitioner/clock.h"

namespace edgesplit::device {

// What the runtime needs of a stream before it loads the model: its profile's memory options.
struct StreamPlanInfo {
  std::string name;
  int priority = 0;
  std::vector<MemoryOption> options;  // retain cut 0 (server-only) ... the device cut
  int device_cut = 0;
};

class Stream {
 public:
  // Reads the stream's metadata and profile, checks the fixed plan and builds the scheduler; no
  // model is loaded yet. kInvalidArgument/kNotFound with one sentence naming the stream.
  static Result<std::unique_ptr<Stream>> create(const StreamConfig& config,
                                                const DeviceConfig& device, int index, Link& link,
                                                Reporter& reporter, ComputeToken& token);
  ~Stream();

  const std::string& name() const;
  int index() const;
  int priority() const;

  // The memory options of this stream, with whether its bounds can be met under each at the
  // link's current conditions (from the profile; server-only options need the server).
  StreamPlanInfo plan_info() const;
  // Loads the model holding heads up to `retain_cut` (0: no model, the stream sends its input;
  // the device cut: the whole model), opens the input, and says why when the budget is below what
  // the stream wanted. Fails with one sentence naming the stream.
  Status load(int retain_cut, int threads);
  // Runs the loaded model once more, untimed, on the calling thread (the one that will run its
  // heads), builds and warms the head of the split plan the scheduler would start with, and starts
  // the local lane: call after the last release of freed memory to the system (malloc_trim) and
  // before the first frame, so that no frame faults the working set back in or builds that head.
  void prime();
  // The resource manager's later decisions (a stream stopped, the server went or came back).
  // Whether the manager may change what this stream holds (a scheduler-driven stream that runs).
  bool adaptable() const;
  // The deepest cut whose head the stream holds (0: nothing; the device cut: the whole model).
  int retain_cut() const;
  // Drops the model (the stream runs server-only from now on); false while frames are in flight
  // or on the local lane (ask again later).
  bool release_model();
  // Loads the model holding the heads up to `retain_cut` on a thread of its own (warmed up under
  // the compute token at the lowest priority); adopt_loaded_model() takes it once it is ready.
  void load_model_async(int retain_cut);
  bool loading() const;
  // Takes a model loaded in the background: true when a load ended (`error` set when it failed).
  bool adopt_loaded_model(std::string* error);
  // The stream cannot run (memory): every frame of its input is reported failed with `reason`.
  void refuse(const std::string& reason);
  // Bytes of weights the loaded model keeps alive (0 without a model).
  int64_t retained_weight_bytes() const;

  // Prints the ready line (after the link's first handshake).
  void ready(double startup_s);
  // What the stream is after, said once at start: its objective and every active bound (the
  // default accuracy bound marked as such), or its fixed plan.
  std::string goal() const;
  // Whether any frame of this stream completed on the server, and the most frequent reason its
  // frames completed locally (not counting "plan" and the local lane), or "" when none did.
  bool offloaded_any() const;
  // Whether the last handshake listed this stream's model.
  bool served() const;
  std::string main_local_reason() const;
  // The link handshook again: plan with what the server now says (tail times, engine, whether it
  // serves this model).
  void on_handshake();
  // The share of the measured uplink bandwidth this stream plans with.
  void set_link_share(double share);
  // Bytes per second this stream's current plan sends (for the link split).
  double demanded_bytes_per_s() const;
  // For the outer loop that picks the executors' levels.
  StreamEnergyView energy_view() const;
  // Whether its first frame may have arrived (start_s after the loop started).
  bool started() const;
  // The device's power at its executor's current level (--objective energy plans with it).
  void set_device_power(const partitioner::DevicePower& power);
  // Whether LibTorch sees a CUDA device (a GPU executor can exist).
  static bool gpu_available();

  // The loop's questions and calls, in the order it makes them each turn.
  void expire_overdue();  // frames past their deadline finish locally
  void drain_lane();      // the local lane's finished frame, if any
  void on_reply(transport::ReceivedReply reply);
  // Whether a frame has arrived and the stream may start it now; `deadline` is when it is due
  // (arrival + the latency bound) for ordering the streams.
  bool frame_ready(partitioner::TimePoint now, partitioner::TimePoint* deadline);
  void start_frame();  // takes the arrived frame and runs/sends it
  // Takes no more frames (a signal asked the device to stop); frames in flight still finish.
  void stop();
  bool finished() const;                     // the input is exhausted and nothing is pending
  partitioner::TimePoint next_wake() const;  // next arrival or reply deadline
  int lane_fd() const;                       // readable when the local lane finished a frame (-1)
  bool lane_busy() const;
  // Lines missing their bound since the last call (for the manager).
  int misses_since_last_check();

  void summary();
  const nlohmann::json& summary_json() const;

 private:
  struct Impl;
  explicit Stream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgesplit::device
