// What edgesplit-device runs: the device-wide settings and one or more model streams, from the
// command line (one stream) or from a JSON config file (`--config FILE`, any number of streams).
// Free of LibTorch: parsing and checking a configuration runs no model.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "device/governor.h"
#include "packing/codec.h"
#include "packing/status.h"
#include "partitioner/model_graph.h"
#include "partitioner/scheduler.h"

namespace edgesplit::device {

// The local lane: whole frames run on the device on a thread of their own, so the runtime's loop
// stays free to take replies when they arrive (their round trips then measure the network, not a
// computation) and, while a lost server is away, to notice its return at once (the next frame is
// offloaded without waiting for a local one to finish); beside a full in-flight window it keeps
// the device busy while the server works (throughput).
enum class LocalLane {
  kAuto,  // frames planned on the device and outages; beside the window with --objective
          // throughput when the plan leaves the device idle half of each pipelined period or more
  kOn,    // the same, and beside any full window
  kOff,   // none of it: local frames run on the runtime's loop
};

// The accuracy bound a stream has unless the user sets one (--max-accuracy-drop P) or lifts it
// (--max-accuracy-drop none): top-1 points lost against fp32, from the profile. Without a bound
// the scheduler is free to send a 1-bit tensor that loses several points.
inline constexpr double kDefaultMaxAccuracyDropPp = 1.0;
// The bound is checked against the upper end of the loss's interval at this confidence (from the
// profile's paired counts), not the point estimate: --accuracy-confidence 0 takes the point.
inline constexpr double kDefaultAccuracyConfidence = 0.95;

inline partitioner::SchedulerOptions default_scheduler_options() {
  partitioner::SchedulerOptions o;
  o.constraints.max_accuracy_drop_pp = kDefaultMaxAccuracyDropPp;
  o.accuracy_confidence = kDefaultAccuracyConfidence;
  return o;
}

// One model stream: a model, its input, its objective and bounds, its priority.
struct StreamConfig {
  std::string name;        // unique within a config; in every JSON line as "stream"
  std::string model_path;  // TorchScript file
  // A derived variant of model_path (partitioner/variant.h: skipped blocks, low-rank layers, an
  // input size), built at load time and known by its variant digest; its profile is the
  // variant's (edgesplit-profile --variant). Empty: the model as it is.
  partitioner::VariantSpec variant;
  // A model family (profiles/family.h): the stream runs its members, the scheduler choosing the
  // member per frame with the cut and encoding (each member needs a profile and its accuracy
  // against the reference in the manifest). model_path, meta_path and profile_path are then the
  // reference's.
  std::string family_path;
  std::string meta_path;   // model metadata JSON; empty: looked up beside the model
  std::string input;       // image file, folder, video file or camera:N
  int64_t max_frames = 0;  // 0: the whole source
  int loop = 1;            // passes over a file/folder source (0: forever)
  // Frames arrive at this rate (a camera's frame rate); 0: as fast as the stream takes them.
  // Latency is counted from a frame's arrival, so a stream that falls behind sees it grow.
  double fps = 0;
  // The first frame arrives this many seconds after the runtime starts its loop (a stream that
  // joins later, for experiments).
  double start_s = 0;
  // The latency bound over time: from `first` seconds after the loop starts on, the bound is
  // `second` ms (the scheduler's max_latency_ms before the first step). Empty: fixed.
  std::vector<std::pair<double, double>> latency_steps;
  // Higher runs first when several streams have work ready, keeps its memory and threads when
  // the device cannot hold every stream, and is the last to be made server-only.
  int priority = 0;

  // A fixed plan: a cut id, "input" (= 0) or "device" (the last cut), with `encode` (or a JPEG of
  // the input when jpeg_quality > 0 at cut 0). Empty: the scheduler chooses every frame.
  std::string cut;
  packing::EncodeOptions encode;
  int jpeg_quality = 0;
  // An entropy-coded encoding of the profile at that cut ("ecsq1": --bits ecsq1), whose coding
  // table comes from the profile; encode.format is then kEntropyCoded.
  std::string entropy_encoding;

  // The scheduler's inputs. An empty profile path means MODEL.profile.json beside the model.
  // scheduler.constraints.max_device_memory_mb is the stream's own bound on head weights +
  // activations; the resource manager may lower it to the stream's share of the device.
  std::string profile_path;
  partitioner::SchedulerOptions scheduler = default_scheduler_options();
  // Whether max_accuracy_drop_pp is the default (kDefaultMaxAccuracyDropPp), not the user's.
  bool default_accuracy_bound = true;

  int top_k = 5;
  int in_flight = 0;  // frames sent and not yet answered (0: 1, or 4 for throughput)
  LocalLane local_lane = LocalLane::kAuto;
  // Head overhead (docs/runtime.md, "Heads after an idle gap"): while frames are paced (--fps),
  // every 20th whole-model frame's head runs once more back to back after the frame is done, and
  // the difference is planned with as a fixed addition to every head. false: off.
  bool head_overhead = true;
  // Per-cut head corrections (HeadErrorTracker) for every member of a family stream, each
  // member's heads judged against the recent heads' level; false (default): the reference
  // member's only (docs/elastic.md: in the same rounds they cost frames within a bound).
  bool member_corrections = false;
  int timeout_ms = 1000;  // a frame not answered by then is finished locally
  // While the server's queue is what keeps the stream on the device, the server is asked for its
  // queue wait with a ping this often (0: never).
  int server_wait_ping_ms = 250;
  int threads = 0;  // intra-op threads for this stream's networks (0: the manager decides)
  // Head exploration (latency objective): a plan whose head this device has not timed enough runs
  // now and then while it is predicted within this factor of the chosen plan's latency, so the
  // cut's own correction is learnt (docs/runtime.md, "Exploring near ties"). 0: never.
  double explore_within = 1.25;
  // Another cut's head is warmed to be explored only while what exploring has cost, measured, is
  // within this fraction of every frame's latency (0: no budget, the spacing alone).
  double explore_budget = 0.03;
  // With a latency bound, every head is planned at this quantile of the recent heads' measured /
  // profiled times (docs/runtime.md, "Family streams and latency bounds").
  double bound_quantile = 0.8;
  // With a latency bound, the share of frames to keep within it: the planning quantile starts at
  // bound_quantile and follows the recent share within (partitioner::BoundShareController). 0: off.
  double bound_share = 0;

  // Early exits (profiles/exits.h, docs/elastic.md): NAME_exits.json of the stream's model; empty:
  // none. With a fixed plan, exit_thresholds holds its one threshold; with the scheduler, the
  // thresholds it may choose among (empty: every threshold of the file's table).
  std::string exits_path;
  std::vector<double> exit_thresholds;
};

// What sets the device's speed (device/knobs.h).
enum class KnobKind {
  kNone,     // nothing: the hardware keeps its own governor
  kQuota,    // a cgroup CPU quota on this process (emulates a slower clock by slicing time)
  kCpufreq,  // cpufreq policies (real boards; needs write access to sysfs)
};
const char* knob_kind_name(KnobKind kind);
Result<KnobKind> parse_knob_kind(const std::string& name);

// Hardware knobs, energy and the outer loop that picks the executors' levels.
struct EnergyConfig {
  KnobKind knobs = KnobKind::kNone;
  // Device description JSON (device/energy.h: executors, levels, power); empty: no energy report.
  std::string description_path;
  // Who picks the level; unset: the knob holds the top level (or nothing, without a knob).
  std::optional<Governor> governor;
  // The executor that runs the streams (its cores become the process's CPU set); empty: the
  // description's first cpu executor.
  std::string executor;
  // Where the knobs and counters look (tests point them at fake trees).
  std::string cpufreq_root = "/sys/devices/system/cpu";
  std::string cgroup_root = "/sys/fs/cgroup";
  std::string sys_root = "/sys";
};

// Placement of the model's unit blocks over the description's executors, frames pipelined
// through them (docs/energy.md, Placement): every frame runs stage by stage on the device, and
// with a server may cross to it after the device's stages.
struct PlacementConfig {
  enum class Mode {
    kOff,    // the streams run as usual, on one executor
    kAuto,   // the cost model's split (partitioner/stage_placement.h) over `executors`
    kFixed,  // the stages given in `stages`
  };
  Mode mode = Mode::kOff;
  // kFixed: each stage's executor and the cut id its stage ends at (-1: the last stage, which
  // ends at the model's output).
  std::vector<std::pair<std::string, int>> stages;
  // kFixed: after the last stage (which then ends at a cut id), frames cross to the server
  // ("EXEC:CUT,...,server").
  bool to_server = false;
  // The executors auto may place stages on (empty: every cpu executor of the description).
  std::vector<std::string> executors;
  // The profiler's time per unit block and executor: blocks run back to back for this long.
  double block_ms = 50;
  // kAuto with a server: how often the placement is weighed again on the network as measured
  // during the run (0: never); it changes when another is predicted at least 10% better.
  int recheck_ms = 1000;
  std::string profile_in;   // a segment table to use instead of timing the blocks
  std::string profile_out;  // where to write the measured segment table
};

// Parses --placement's value: "auto", an executor name (the whole model there),
// "EXEC:CUT,EXEC:CUT,...,EXEC" (stages ending at those cut ids) or "EXEC:CUT,...,EXEC:CUT,server"
// (the server runs the rest). kInvalidArgument, one sentence.
Result<PlacementConfig> parse_placement(const std::string& text);

// The device as a whole.
struct DeviceConfig {
  std::string server;  // tcp://HOST:PORT; empty runs every frame on the device
  int handshake_timeout_ms = 2000;
  int retry_ms = 2000;  // how often to look for a server that never answered
  // SCHED_FIFO priority of the device's threads (1-99; 0: the normal scheduler). See
  // set_process_realtime (device/knobs.h).
  int realtime_priority = 0;
  // Threads for all streams together (0: LibTorch's default, i.e. the cores it sees).
  int threads = 0;
  // The whole process's resident memory (VmRSS, LibTorch's allocator included) must stay at or
  // below this many MiB; unset: no bound.
  std::optional<double> max_device_memory_mb;
  // How networks run; the cut ids do not depend on it.
  partitioner::Engine engine = partitioner::Engine::kOptimized;
  std::string device_power_path;  // device description JSON (compute/radio/idle watts)
  std::string output;             // JSON lines file; empty: stdout
  // JSON lines even on a terminal (a terminal otherwise gets a readable line per frame and a
  // live summary; a file or pipe always gets JSON lines).
  bool json = false;
  std::string device_name = "edgesplit-device";
  // CURVE (transport/curve.h): the server's public key (Z85; empty: plain TCP) and this device's
  // secret key (Z85; empty with a server key: an ephemeral key pair is made at start).
  std::string server_public_key;
  std::string device_secret_key;
  bool quiet = false;  // no log lines or summary on stderr
  // A server is required: exit with kExitNoServer (and the reason) when it cannot be reached, is
  // refused, does not serve a stream's model, or when a stream offloaded no frame because of it.
  bool require_server = false;
  EnergyConfig energy;
  PlacementConfig placement;  // command line only
  // Frames start only as stdin allows: each line holding a number N lets N more frames start, and
  // the run finishes when stdin closes. Lets a benchmark take turns between device processes
  // that stay loaded (bench/testbed: interleaved rounds) without pausing a frame in flight.
  bool frames_from_stdin = false;
  std::vector<StreamConfig> streams;
};

// Exit status of a run that needed a server (--require-server) and did not have one.
inline constexpr int kExitNoServer = 3;

// What the command line asks for: a configuration to run, or help to print.
struct DeviceCommand {
  DeviceConfig config;
  bool help = false;
  std::string help_text;  // set when help is true
};

// Parses edgesplit-device's command line. Either the single-model flags (--model, --input, --cut,
// --objective, ...: a config with one stream) or --config FILE (device-wide flags such as --server,
// --output, --threads, --max-device-memory-mb and --quiet may be given beside it and override the
// file's). kInvalidArgument with one sentence (naming the flag) for anything wrong.
Result<DeviceCommand> parse_device_flags(int argc, const char* const* argv);

// Parses a JSON config (the text of a --config file). Relative paths in it are taken relative to
// `base_dir` (the file's folder). kInvalidArgument with one sentence naming the stream and the
// field for anything wrong (unknown key, wrong type, out-of-range value, duplicate stream name).
Result<DeviceConfig> parse_device_config(const std::string& json_text,
                                         const std::string& base_dir = "");
// Reads and parses a config file (kNotFound when it cannot be read).
Result<DeviceConfig> load_device_config(const std::string& path);

// Checks what both paths must satisfy (at least one stream, unique names, ranges); called by the
// two parsers. kInvalidArgument with one sentence naming the stream and the field.
Status validate_device_config(const DeviceConfig& config);

}  // namespace edgesplit::device
