// What the device says: one JSON line per event (ready, frame, summary, device) for files, pipes
// and tools, or, on a terminal, a readable line per frame and a live summary per stream; and log
// lines on stderr. Free of LibTorch.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "partitioner/scheduler.h"
#include "partitioner/top_k.h"

namespace edgesplit::device {

// One finished frame, as its stream saw it: what the frame line says.
struct FrameRecord {
  std::string stream;
  int64_t frame = 0;
  std::string source;
  std::vector<partitioner::ClassScore> top;
  const std::vector<std::string>* labels = nullptr;  // class names (may be null)
  std::string member;  // the family member that ran it (family streams only)
  int cut = 0;
  std::string cut_name;
  bool by_scheduler = false;
  bool explore = false;          // run to time a head near the chosen plan (FramePlan::explore)
  bool explore_lead_in = false;  // the first of an exploration's two frames (not a sample)
  bool beside_warm_up = false;   // it ran while a head was being warmed (HeadWarmer)
  int held_for_cut = -1;         // >= 0: it ran the previous plan while this cut's head warmed
  bool server_probe = false;     // sent to re-measure the server (FramePlan::server_probe)
  std::string encoding;          // "local", "jpegQ" or the encoding's name
  std::string precision;         // packed encodings only: "q4", "fp16", ...
  std::string lossless;          // packed encodings only
  // "server", "local", "exit" (left at an exit on the device), "server_exit" (answered by the
  // server at one of its exits: exit.side "server") or "failed"
  std::string completed;
  std::string reason;  // why it completed locally or failed
  size_t bytes_sent = 0;
  double preprocess_ms = 0, head_ms = 0, pack_ms = 0;
  int64_t head_page_faults = -1;  // -1: not measured (not printed)
  double head_build_ms = 0;       // the frame built its head's graph (0: not printed)
  // The scheduler's decision and what it planned with (absent without a scheduler).
  std::optional<partitioner::Decision> decision;
  partitioner::Objective objective = partitioner::Objective::kLatency;
  partitioner::Conditions conditions;
  double link_share = 1;
  // A reply from the server: its times.
  struct ServerTimes {
    double wire_ms = 0, queue_ms = 0, unpack_ms = 0, compute_ms = 0;
  };
  std::optional<ServerTimes> server;
  std::optional<double> local_tail_ms;
  // A plan with early exits: the threshold, the max softmax of each exit head that ran, and
  // where the frame left (completed "exit") or that it went on.
  struct ExitRecord {
    double threshold = 0;
    std::vector<double> confidences;
    double ms = 0;         // the exit heads' time
    std::string position;  // the exit it left at ("" : it went on)
    int cut = 0;           // ... its cut
    std::string cut_name;
    // Where its exits ran: "device", "server" (server exits), or "both" (those at or before the
    // cut on the device, the later ones on the server).
    std::string side = "device";
  };
  std::optional<ExitRecord> exit;
  double latency_ms = 0;                 // from the frame's arrival
  std::optional<double> max_latency_ms;  // the stream's bound, when it has one
};

// What a stream adds to its summary line beyond what its frames say.
struct StreamSummaryInfo {
  std::string stream;
  uint64_t late_replies = 0;
  uint64_t plan_changes = 0;
  uint64_t probes = 0;
  uint64_t server_probes = 0;  // frames sent to re-measure the server while on the device
  // Frames the local lane ran (when it runs): all of them, and those beside a full window.
  std::optional<uint64_t> local_lane;
  std::optional<uint64_t> local_lane_beside_window;
  // Per cut whose head ran: measured against profiled head time and the correction planned with
  // ({"8": {"frames", "measured_over_profiled_p50", "correction"}}), with "explored" for cuts
  // whose head was explored (frames run to time it though another plan was chosen); null when
  // none ran.
  nlohmann::json heads;
  // The same for a family's other members, by member name ({"resnet20-28px": {"14": {...}}});
  // null when none ran past its cold runs or member corrections are off.
  nlohmann::json member_heads;
  // With --bound-share: the target, the recent share within and the planning quantile at the end.
  nlohmann::json bound_share;
  // What exploring heads cost, measured: explored frames', the next frames' and those beside a
  // warm-up, their latency beyond the recent median of the other frames, over every frame's
  // latency; unset when nothing was explored or warmed.
  std::optional<double> explore_cost_fraction;
  std::optional<double> max_latency_ms;
  double wall_s = 0;
  bool name_in_log = false;  // several streams: the stderr line names the stream
};

class Reporter {
 public:
  // `readable`: a person reads `out` (a terminal and no --json): frames and summaries are printed
  // as text instead of JSON. `quiet`: no log lines on stderr.
  Reporter(std::ostream& out, bool readable, bool quiet);

  // One event: a JSON line, or its readable form.
  void emit(const nlohmann::json& event);
  // A finished frame: its line, and its stream's tally for the summary.
  void frame(const FrameRecord& record);
  // A stream's summary line (and one log line on stderr), from its tally; returns the line.
  nlohmann::json summary(const StreamSummaryInfo& info);
  // The frame line of a record (what frame() prints).
  static nlohmann::json frame_json(const FrameRecord& record);
  // A log line on stderr ("edgesplit-device: ..."), unless quiet.
  void log(const std::string& message);
  // Start-up: log lines are held until release_logs() (which prints `first` before them) or
  // drop_held_logs() (a start-up error is then said alone, in one sentence).
  void hold_logs() { holding_ = true; }
  void release_logs(const std::vector<std::string>& first);
  void drop_held_logs() {
    held_.clear();
    holding_ = false;
  }
  bool readable() const { return readable_; }
  // Fields added to every frame and summary line from now on (the device's levels and energy
  // so far: device/power_control.h); an object, or null for none.
  void set_device_fields(const nlohmann::json& fields) { device_fields_ = fields; }
  bool quiet() const { return quiet_; }

  // "frame" events in readable mode: "[stream] #12 cat.png  tabby cat 0.81  cut 8 q4+zstd  23.1 ms
  // 1.2 kB  server"; every few seconds a live line per stream (frames, p50, on server, local).
  static std::string readable_frame(const nlohmann::json& frame);

 private:
  struct Tally {
    std::vector<double> latencies_ms;
    std::vector<double> prediction_ratios;  // predicted / measured latency
    uint64_t frames = 0, on_server = 0, local = 0, failed = 0, bytes_sent = 0, within_bound = 0;
    uint64_t exit_plan_frames = 0;                  // frames planned with early exits
    std::map<std::string, uint64_t> exits;          // exit position -> frames that left there
    uint64_t server_exits = 0;                      // ... of them at an exit on the server
    std::map<std::string, uint64_t> plans;          // "cut:encoding" -> frames
    std::map<std::string, uint64_t> members;        // family member -> frames (family streams)
    std::map<std::string, uint64_t> local_reasons;  // why frames completed locally -> frames
  };
  struct Live {
    uint64_t frames = 0, server = 0, local = 0, failed = 0;
    double latency_sum_ms = 0;
  };
  void live_line();

  std::ostream& out_;
  bool readable_;
  bool quiet_;
  bool holding_ = false;
  std::vector<std::string> held_;
  std::map<std::string, Live> live_;
  std::map<std::string, Tally> tally_;
  nlohmann::json device_fields_;
  std::chrono::steady_clock::time_point last_live_{};
};

}  // namespace edgesplit::device
