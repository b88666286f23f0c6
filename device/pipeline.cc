#include "device/pipeline.h"

#include <torch/torch.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "device/energy.h"
#include "device/knobs.h"
#include "device/lane.h"
#include "device/link.h"
#include "device/runtime.h"
#include "imaging/input_source.h"
#include "imaging/preprocess.h"
#include "packing/check.h"
#include "packing/codec.h"
#include "partitioner/cut_table.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "partitioner/stage_placement.h"
#include "partitioner/top_k.h"

namespace edgesplit::device {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using partitioner::SegmentTable;
using Tensors = std::vector<at::Tensor>;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// A bandwidth estimate this far above the one a placement was chosen on is past the estimator's
// jump band: a run of samples moved it, not one.
const double kConfirmedRise = 1 + partitioner::NetworkEstimatorOptions{}.bandwidth.jump_ratio;

double round3(double v) { return std::isfinite(v) ? std::round(v * 1000.0) / 1000.0 : -1.0; }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

// A bounded FIFO between two threads: push blocks while full, pop while empty; close() wakes
// both (push then fails, pop drains what is left, then gives nothing). Thread-safe.
template <class T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {}
  bool push(T v) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return closed_ || items_.size() < capacity_; });
    if (closed_) return false;
    items_.push_back(std::move(v));
    not_empty_.notify_one();
    return true;
  }
  std::optional<T> pop() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return closed_ || !items_.empty(); });
    if (items_.empty()) return std::nullopt;
    T v = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_one();
    return v;
  }
  // An item when one is there, without waiting; `drained` tells whether the queue is closed and
  // empty (nothing will come).
  std::optional<T> try_pop(bool* drained) {
    std::lock_guard<std::mutex> lock(mu_);
    *drained = closed_ && items_.empty();
    if (items_.empty()) return std::nullopt;
    T v = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_one();
    return v;
  }
  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    not_full_.notify_all();
    not_empty_.notify_all();
  }

 private:
  size_t capacity_;
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<T> items_;
  bool closed_ = false;
};

// One executor's thread: pinned to the executor's cores, with its intra-op threads (LibTorch's
// OpenMP setting is per thread: the threads a stage's operators fork inherit the CPU set and the
// cgroup), autograd off. Runs the jobs posted to it in order. The destructor finishes the jobs
// posted and joins.
class ExecutorThread {
 public:
  ExecutorThread(std::vector<int> cores, int threads)
      : cores_(std::move(cores)), threads_(threads) {}
  ~ExecutorThread() {
    jobs_.close();
    if (thread_.joinable()) thread_.join();
  }
  ExecutorThread(const ExecutorThread&) = delete;
  ExecutorThread& operator=(const ExecutorThread&) = delete;

  // Starts the thread; its kernel thread id once it runs pinned, or why it could not be pinned.
  Result<int> start() {
    std::promise<std::pair<int, std::string>> started;
    auto ready = started.get_future();
    thread_ = std::thread([this, &started] { loop(started); });
    auto [tid, error] = ready.get();
    if (tid < 0) return unavailable(error);
    return tid;
  }
  std::future<void> post(std::function<void()> job) {
    std::packaged_task<void()> task(std::move(job));
    auto done = task.get_future();
    jobs_.push(std::move(task));
    return done;
  }
  // Runs `job` on the thread and waits; its exception is rethrown here.
  void run(std::function<void()> job) { post(std::move(job)).get(); }

 private:
  void loop(std::promise<std::pair<int, std::string>>& started) {
    const int tid = static_cast<int>(::syscall(SYS_gettid));
    const Status pinned = set_thread_affinity(cores_);
    if (!pinned.ok()) {
      started.set_value({-1, pinned.message()});
      return;
    }
    set_threads(threads_);
    torch::NoGradGuard no_grad;
    started.set_value({tid, ""});
    while (auto job = jobs_.pop()) (*job)();
  }

  std::vector<int> cores_;
  int threads_;
  BoundedQueue<std::packaged_task<void()>> jobs_{64};
  std::thread thread_;
};

// An executor the run may place stages on: its description, its thread and its knob.
struct ExecutorRun {
  ExecutorDescription description;
  std::vector<int> cores;  // the description's cores this machine has
  double mhz = 0;          // its top level
  std::unique_ptr<Knob> knob;
  std::unique_ptr<ExecutorThread> thread;
  std::string level_note;  // how the level is set
};

// Thrown for a mistake the user must fix (one sentence); caught by run_pipeline.
struct UserError {
  std::string message;
};

// Runs the blocks from cut `from` to cut `to` (the model's output after the last cut).
Tensors run_span(const partitioner::ModelGraph& model, int from, int to, const Tensors& x) {
  Tensors y = model.run_between(from, to, x);
  if (to == model.device_cut()) return {model.run_tail(to, y)};
  return y;
}

// A frame on its way through the stages.
struct Item {
  int64_t frame = 0;
  Tensors x;  // the tensors at the cut it has reached; the logits at the end
  Clock::time_point started;
  std::vector<double> stage_ms;  // per stage (the crossing's: hand-over to answer)
  std::string error;
  // The crossing to the server: the top classes it answered (x is then left empty), or why the
  // frame finished on the device instead.
  std::optional<std::vector<partitioner::ClassScore>> top;
  std::string completed = "device";
  std::string reason;
  int64_t bytes = 0;          // sent to the server
  double round_trip_ms = -1;  // of its request, when answered
  double server_ms = -1;      // the server's unpack and compute
  uint64_t request_id = 0;
  Clock::time_point sent, deadline;
  bool done = false;  // in the crossing: answered, or finished on the device
};

class PipelineRun {
 public:
  PipelineRun(const DeviceConfig& config, const std::atomic<int>& stop, std::ostream& out,
              std::unique_ptr<ServerChannel> channel)
      : config_(config),
        stream_(config.streams.front()),
        stop_(stop),
        out_(out),
        channel_(std::move(channel)) {}
  ~PipelineRun() {
    // The link lives on its thread: it is closed there, before the thread ends.
    watching_ = false;
    if (link_thread_) link_thread_->run([this] { link_.reset(); });
  }

  int run();

 private:
  void log(const std::string& line) const {
    if (!config_.quiet) std::cerr << "edgesplit-device: " << line << '\n';
  }
  void emit(const json& j) { out_ << j.dump() << '\n' << std::flush; }

  void open_executors();
  void load_model();
  void load_frames();
  void time_blocks();
  void read_table();
  partitioner::StagePlacement choose();
  // --placement auto's choice over the device's executors and, when the server serves and is
  // available (network_), every crossing to it; no log lines. Empty when none meets --min-fps.
  std::optional<partitioner::StagePlacement> best_auto() const;
  // `placement` predicted again on network_ (a crossing to a server that is not available counts
  // as never finishing).
  partitioner::StagePlacement predicted_again(const partitioner::StagePlacement& placement) const;
  // During a run: the placement to change to when, on the network the link measured since,
  // another is predicted at least 10% better than `current` (or meets --min-fps where `current`
  // no longer does) at this check and the one before; `why` says so.
  std::optional<partitioner::StagePlacement> better_placement(
      const partitioner::StagePlacement& current, std::string* why);
  // The frames from `first_frame` on through `placement`, until the last or, with --placement
  // auto and a server, until another placement is predicted better (frames in flight finish
  // first): then that placement and why.
  struct Epoch {
    int64_t next_frame = 0;
    std::optional<partitioner::StagePlacement> next;
    std::string why;
  };
  Epoch run_frames(const partitioner::StagePlacement& placement, int64_t first_frame);
  // The placement line (and its log line); `replaced`: the reason it replaces the one before.
  void announce(const partitioner::StagePlacement& placement, const std::vector<int>& helper_cores,
                int64_t from_frame, const std::string& replaced);
  // On the link's thread: the link's network estimate, for the main thread's seen_network().
  void publish_network();
  partitioner::Conditions seen_network() const {
    std::lock_guard<std::mutex> lock(seen_mu_);
    return seen_network_;
  }
  // The server: its link on a thread of its own, the handshake, and the network estimate.
  void connect_server();
  // Every inner cut's tensor packed once with the stream's encoding: bytes and packing time.
  void measure_crossings();
  std::vector<partitioner::ServerCrossing> crossings() const;
  partitioner::ServerCrossing crossing(int cut_index) const;
  // The crossing as a stage: sends the frames the device's last stage hands over (up to `window`
  // in flight), passes them on in order once answered, and finishes on the device (the tail from
  // `cut` on this thread) a frame the server does not answer in time or at all.
  void server_stage(BoundedQueue<Item>* in, BoundedQueue<Item>* out, int cut, size_t window);
  // The request for a frame's tensors packed at `cut` (`bytes` of them).
  wire::InferRequest infer_request(int cut, const std::vector<std::vector<uint8_t>>& payloads,
                                   int64_t bytes) const;
  // A burst of requests at the crossing `cut_index`, `window` in flight as the run keeps them,
  // each packed as the run packs it: the period the server answers at, against the crossing's
  // prediction; what exceeds it becomes every crossing's per-request overhead. False (and one
  // line saying why) when the burst did not get through.
  bool calibrate_crossing(int cut_index, int window);
  // The link's thread and the main thread (frames in and out, the output lines) on the cores that
  // hold no stage of `placement`, when there are such cores, so that their work per frame does not
  // take a stage's time; on every core this process may use otherwise. The cores they got.
  std::vector<int> place_helpers(const partitioner::StagePlacement& placement);
  int window_for(const partitioner::StagePlacement& placement) const {
    const size_t stages = placement.stages.size() + (placement.server ? 1 : 0);
    return stream_.in_flight > 0 ? stream_.in_flight : static_cast<int>(2 * stages);
  }
  void finish_on_device(Item& item, int cut, const std::string& reason);

  const DeviceConfig& config_;
  const StreamConfig& stream_;
  const std::atomic<int>& stop_;
  std::ostream& out_;
  std::vector<ExecutorRun> executors_;
  partitioner::ModelInfo info_;
  std::shared_ptr<partitioner::ModelGraph> model_;
  std::vector<at::Tensor> inputs_;
  std::vector<std::string> sources_;
  int64_t frames_ = 0;
  SegmentTable table_;
  std::vector<double> blocks_sum_ms_, whole_ms_;  // per executor, when measured here
  std::unique_ptr<ServerChannel> channel_;
  std::unique_ptr<ExecutorThread> link_thread_;
  std::unique_ptr<Link> link_;          // used on link_thread_ only
  bool server_serves_ = false;          // up, serving this model with this device's cut table
  std::string server_note_;             // why the server cannot take frames (when it cannot)
  std::vector<double> server_tail_ms_;  // per cut id, the server's own (empty: not stated)
  partitioner::Conditions network_;     // what placements are predicted on (main thread)
  mutable std::mutex seen_mu_;
  partitioner::Conditions seen_network_;  // the link's latest estimate (publish_network)
  std::atomic<bool> watching_{false};     // the link's thread tends the link between frames
  Clock::time_point run_start_;           // the first frame's start (frame lines' t_ms)
  std::optional<partitioner::StagePlacement> candidate_;  // better at the last check
  partitioner::Conditions placed_on_;    // the network the running placement was chosen on
  std::vector<int64_t> crossing_bytes_;  // per cut index of the table (0: not measured)
  std::vector<double> pack_ms_;
  double server_overhead_ms_ = 0;  // per request, beyond the tail (calibrate_crossing)
  std::vector<int> usable_cores_;  // this process's CPU set at the start
  std::string said_fallback_;      // the last reason a frame finished on the device, said once
};

void PipelineRun::open_executors() {
  auto description = load_device_description(config_.energy.description_path);
  if (!description.ok()) throw UserError{description.status().message()};
  const PlacementConfig& pc = config_.placement;
  std::vector<std::string> names;
  if (pc.mode == PlacementConfig::Mode::kFixed) {
    for (const auto& s : pc.stages) names.push_back(s.first);
  } else if (!pc.executors.empty()) {
    names = pc.executors;
  } else {
    for (const auto& x : description->executors) {
      if (x.kind == "cpu") names.push_back(x.name);
    }
  }
  double fastest = 0;
  for (const auto& x : description->executors) {
    if (x.kind == "cpu") fastest = std::max(fastest, x.top_mhz());
  }
  const long here = ::sysconf(_SC_NPROCESSORS_CONF);
  for (const std::string& name : names) {
    const int i = description->executor(name);
    if (i < 0) {
      throw UserError{"--placement names executor \"" + name + "\", which " +
                      config_.energy.description_path + " does not list"};
    }
    for (const auto& e : executors_) {
      if (e.description.name == name) throw UserError{"--placement names \"" + name + "\" twice"};
    }
    const ExecutorDescription& x = description->executors[static_cast<size_t>(i)];
    if (x.kind != "cpu") {
      throw UserError{"executor \"" + name +
                      "\" is a GPU: stages run on cpu executors only (this LibTorch has no CUDA "
                      "and no stage is built for a GPU)"};
    }
    ExecutorRun e;
    e.description = x;
    for (int c : x.cores) {
      if (c < here) e.cores.push_back(c);
    }
    if (e.cores.empty()) {
      throw UserError{"executor \"" + name + "\"'s cores do not exist on this machine"};
    }
    e.mhz = x.top_mhz();
    executors_.push_back(std::move(e));
  }
  for (auto& e : executors_) {
    e.thread = std::make_unique<ExecutorThread>(e.cores, static_cast<int>(e.cores.size()));
    auto tid = e.thread->start();
    if (!tid.ok())
      throw UserError{"executor \"" + e.description.name + "\": " + tid.status().message()};
    const KnobKind kind = config_.energy.knobs;
    if (kind == KnobKind::kQuota && e.mhz < fastest * 0.9999) {
      auto knob = open_thread_quota_knob(config_.energy.cgroup_root,
                                         static_cast<int>(e.cores.size()), fastest, *tid);
      if (!knob.ok()) throw UserError{knob.status().message()};
      Status set = (*knob)->set_mhz(e.mhz);
      if (!set.ok()) throw UserError{set.message()};
      e.level_note = (*knob)->describe();
      e.knob = std::move(knob).value();
    } else if (kind == KnobKind::kCpufreq) {
      auto knob = open_cpufreq_knob(config_.energy.cpufreq_root, e.cores);
      if (!knob.ok()) throw UserError{knob.status().message()};
      Status set = (*knob)->set_mhz(e.mhz);
      if (!set.ok()) throw UserError{set.message()};
      e.level_note = (*knob)->describe();
      e.knob = std::move(knob).value();
    } else {
      e.level_note =
          kind == KnobKind::kNone ? "no knob: the hardware's own clock" : "the top level: no quota";
    }
  }
  std::vector<RestoreStep> steps;
  for (const auto& e : executors_) {
    if (e.knob) {
      for (auto& s : e.knob->restore_steps()) steps.push_back(std::move(s));
    }
  }
  arm_emergency_restore(steps);
}

void PipelineRun::load_model() {
  auto info = partitioner::load_model_info(stream_.model_path, stream_.meta_path);
  if (!info.ok()) throw UserError{info.status().message()};
  if (info.ok()) info = partitioner::with_variant_input(*info, stream_.variant);
  if (!info.ok()) throw UserError{info.status().message()};
  Status input_ok = imaging::validate_input_info(*info);
  if (!input_ok.ok()) throw UserError{input_ok.message()};
  info_ = std::move(info).value();
  partitioner::LoadOptions lo;
  lo.input_shape = info_.input_shape;
  lo.engine = config_.engine;
  lo.variant = stream_.variant;
  auto model = partitioner::ModelGraph::load(stream_.model_path, lo);
  if (!model.ok()) throw UserError{model.status().message()};
  model_ = std::move(model).value();
  log("model " + stream_.model_path + ": " + std::to_string(model_->cuts().size()) +
      " cuts, engine " + model_->engine_report().summary());
}

// Up to 64 frames of the input, decoded and preprocessed before anything is timed; the run
// cycles through them for --max-frames frames (default: each once).
void PipelineRun::load_frames() {
  constexpr int64_t kPreloaded = 64;
  if (stream_.max_frames == 0 && stream_.loop == 0) {
    throw UserError{"--placement needs a finite run: give --max-frames N"};
  }
  imaging::SourceOptions so;
  so.max_frames = stream_.max_frames > 0 ? std::min(stream_.max_frames, kPreloaded) : kPreloaded;
  so.loop = stream_.loop;
  auto source = imaging::open_source(stream_.input, so);
  if (!source.ok()) throw UserError{source.status().message()};
  while (auto frame = (*source)->next()) {
    auto resized = imaging::resize_and_crop(frame->image, info_);
    if (!resized.ok())
      throw UserError{"cannot preprocess " + frame->source + ": " + resized.status().message()};
    auto data = imaging::normalize_to_tensor(*resized, info_);
    if (!data.ok())
      throw UserError{"cannot preprocess " + frame->source + ": " + data.status().message()};
    inputs_.push_back(torch::from_blob(data->data(), info_.input_shape, torch::kFloat32).clone());
    sources_.push_back(frame->source);
  }
  if (inputs_.empty()) throw UserError{"the input " + stream_.input + " gave no frame"};
  frames_ = stream_.max_frames > 0 ? stream_.max_frames : static_cast<int64_t>(inputs_.size());
}

// The placement profiler: every unit block on every executor at the executor's level, the whole
// chain of blocks once per frame (after two untimed frames) for block_ms x blocks in all; a
// block's time is its mean over the frames. Under a quota the throttled time falls on the blocks
// in proportion to their work over many frames, as in the pipeline.
void PipelineRun::time_blocks() {
  const auto& cuts = model_->cuts();
  table_ = SegmentTable{};
  for (const auto& c : cuts) table_.cut_ids.push_back(c.id);
  for (const auto& e : executors_) {
    table_.executors.push_back(
        {e.description.name, e.cores, static_cast<int>(e.cores.size()), e.mhz});
  }
  const int blocks = table_.blocks();
  for (int b = 0; b < blocks; ++b) {
    model_->prepare_between(table_.cut_ids[static_cast<size_t>(b)],
                            table_.cut_ids[static_cast<size_t>(b) + 1]);
  }
  // The blocks run in order, frame after frame, each on what the one before gave (as in a stage:
  // its input fresh from the block before, its weights not left in the cache by a run of itself),
  // each timed.
  const double budget_ms = config_.placement.block_ms * blocks;
  for (auto& e : executors_) {
    std::vector<double> row(static_cast<size_t>(blocks), 0.0);
    double whole_ms = 0;
    e.thread->run([&] {
      auto pass = [&](std::vector<double>* acc) {
        Tensors x = {inputs_.front()};
        for (int b = 0; b < blocks; ++b) {
          const int from = table_.cut_ids[static_cast<size_t>(b)];
          const int to = table_.cut_ids[static_cast<size_t>(b) + 1];
          const auto t0 = Clock::now();
          x = run_span(*model_, from, to, x);
          if (acc) (*acc)[static_cast<size_t>(b)] += ms_between(t0, Clock::now());
        }
      };
      for (int i = 0; i < 2; ++i) pass(nullptr);
      int runs = 0;
      const auto t0 = Clock::now();
      while (runs < 5 || ms_between(t0, Clock::now()) < budget_ms) {
        pass(&row);
        ++runs;
      }
      for (double& v : row) v /= runs;
      // The whole model as one graph, as many frames: what the blocks add up to in a stage.
      const Tensors input = {inputs_.front()};
      const auto w0 = Clock::now();
      for (int i = 0; i < runs; ++i)
        (void)run_span(*model_, table_.cut_ids.front(), table_.cut_ids.back(), input);
      whole_ms = ms_between(w0, Clock::now()) / runs;
    });
    double sum = 0;
    for (double v : row) sum += v;
    // A block timed as a graph of its own converts its input and output between LibTorch's dense
    // layout and the backend's blocked one at each of its cuts; a stage runs its blocks as one
    // graph and converts only at its two ends. What the blocks add up to beyond the whole model's
    // time is taken as that conversion, in proportion to each inner cut's elements: a cut's
    // conversion leaves its two blocks' times (half each) and is what a stage starting or ending
    // there pays (cut_ms).
    double inner_elements = 0;
    for (size_t i = 1; i + 1 < table_.cut_ids.size(); ++i) {
      inner_elements += static_cast<double>(model_->cut(table_.cut_ids[i]).elements);
    }
    const double per_element =
        inner_elements > 0 ? std::max(0.0, sum - whole_ms) / inner_elements : 0;
    std::vector<double> at_cut;
    for (size_t i = 0; i < table_.cut_ids.size(); ++i) {
      at_cut.push_back(per_element * static_cast<double>(model_->cut(table_.cut_ids[i]).elements) /
                       2);
    }
    for (size_t b = 0; b < row.size(); ++b)
      row[b] = std::max(0.0, row[b] - at_cut[b] - at_cut[b + 1]);
    table_.cut_ms.push_back(std::move(at_cut));
    table_.block_ms.push_back(std::move(row));
    blocks_sum_ms_.push_back(sum);
    whole_ms_.push_back(whole_ms);
    char line[200];
    std::snprintf(line, sizeof line,
                  "placement profiler: %d blocks on %s at %.0f MHz: %.2f ms a frame as blocks, "
                  "%.2f ms as one graph",
                  blocks, e.description.name.c_str(), e.mhz, sum, whole_ms);
    log(line);
  }
  // The handoff: a token passed between the first two executors' threads through the queue the
  // stages use, 200 round trips; one way is half a round trip.
  if (executors_.size() >= 2) {
    BoundedQueue<int> there(1), back(1);
    constexpr int kTrips = 200;
    double total_ms = 0;
    auto pong = executors_[1].thread->post([&] {
      for (int i = 0; i < kTrips; ++i) {
        auto v = there.pop();
        if (!v) return;
        back.push(*v);
      }
    });
    executors_[0].thread->run([&] {
      const auto t0 = Clock::now();
      for (int i = 0; i < kTrips; ++i) {
        there.push(i);
        (void)back.pop();
      }
      total_ms = ms_between(t0, Clock::now());
    });
    pong.get();
    table_.handoff_ms = total_ms / (2.0 * kTrips);
  }
  if (!config_.placement.profile_out.empty()) {
    std::ofstream f(config_.placement.profile_out);
    f << partitioner::segment_table_json(table_, model_->digest(),
                                         partitioner::engine_name(config_.engine));
    if (!f) {
      throw UserError{"cannot write --placement-profile-out " + config_.placement.profile_out};
    }
  }
}

// A segment table from --placement-profile: the same model, engine and cuts, and every executor
// of the run with the same cores and level; its rows are reordered to the run's executors.
void PipelineRun::read_table() {
  const std::string& path = config_.placement.profile_in;
  std::ifstream f(path);
  if (!f) throw UserError{"cannot read --placement-profile " + path};
  std::stringstream text;
  text << f.rdbuf();
  std::string digest, engine;
  auto t = partitioner::parse_segment_table(text.str(), &digest, &engine);
  if (!t.ok()) throw UserError{path + ": " + t.status().message()};
  if (digest != model_->digest() || engine != partitioner::engine_name(config_.engine)) {
    throw UserError{path +
                    " was measured for another model or engine: measure it again with "
                    "--placement-profile-out"};
  }
  std::vector<int> ids;
  for (const auto& c : model_->cuts()) ids.push_back(c.id);
  if (t->cut_ids != ids) throw UserError{path + " has other cuts than the model"};
  table_ = SegmentTable{};
  table_.cut_ids = t->cut_ids;
  table_.handoff_ms = t->handoff_ms;
  for (const auto& e : executors_) {
    const int i = t->executor(e.description.name);
    if (i < 0 || t->executors[static_cast<size_t>(i)].cores != e.cores ||
        std::abs(t->executors[static_cast<size_t>(i)].mhz - e.mhz) > 0.5) {
      throw UserError{path + " has no row for executor \"" + e.description.name +
                      "\" on these cores at this level: measure it again with "
                      "--placement-profile-out"};
    }
    table_.executors.push_back(t->executors[static_cast<size_t>(i)]);
    table_.block_ms.push_back(t->block_ms[static_cast<size_t>(i)]);
    if (!t->cut_ms.empty()) table_.cut_ms.push_back(t->cut_ms[static_cast<size_t>(i)]);
  }
}

void PipelineRun::connect_server() {
  if (!channel_) return;
  std::vector<int> all;
  for (long c = 0; c < ::sysconf(_SC_NPROCESSORS_CONF); ++c) all.push_back(static_cast<int>(c));
  // Not pinned to an executor's cores: its work per frame is small (packing, the replies, the tail
  // of a frame the server does not answer) and must not wait for a busy stage's time slice.
  link_thread_ = std::make_unique<ExecutorThread>(all, 1);
  auto tid = link_thread_->start();
  if (!tid.ok()) throw UserError{"the server's link thread: " + tid.status().message()};
  const LinkOptions lo = link_options(config_);
  std::vector<partitioner::CutTableEntry> own;
  for (const auto& c : model_->cuts()) {
    partitioner::CutTableEntry e{c.id, c.name, {}};
    for (const auto& t : c.tensors) e.shapes.push_back(t.shape);
    own.push_back(std::move(e));
  }
  const std::string own_table = partitioner::cut_table_digest(own);
  link_thread_->run([&] {
    link_ = std::make_unique<Link>(lo, std::move(channel_), partitioner::SteadyClock::instance(),
                                   [this](const std::string& line) { log(line); });
    const LinkState state = link_->connect();
    network_ = link_->network_conditions();
    publish_network();
    if (state != LinkState::kUp) {
      server_note_ = link_->down_reason();
      return;
    }
    const ServedModel* m = link_->served(model_->digest());
    if (!m) {
      server_note_ = "the server does not serve " + stream_.model_path + " (it serves " +
                     link_->served_list() + ")";
      return;
    }
    if (!m->cut_table.empty() && m->cut_table != own_table) {
      server_note_ = "the server's cut table for this model differs from this device's (" +
                     m->cut_table + " against " + own_table + ")";
      return;
    }
    server_serves_ = true;
    if (m->tail_ms.size() == model_->cuts().size()) server_tail_ms_ = m->tail_ms;
  });
  char line[200];
  std::snprintf(line, sizeof line, ": %.2f Mbit/s, round trip %.2f ms", network_.bandwidth_mbps,
                network_.rtt_ms);
  log("server " + config_.server + ": " +
      (server_serves_ ? std::string("serves this model") + line +
                            (server_tail_ms_.empty() ? ", no tail times stated" : "")
                      : server_note_));
}

Result<std::vector<std::vector<uint8_t>>> pack_crossing(const partitioner::ModelGraph& model,
                                                        const packing::EncodeOptions& encode,
                                                        int cut, const Tensors& x, int64_t* bytes) {
  std::vector<std::vector<uint8_t>> payloads;
  *bytes = 0;
  const auto& tensors = model.cut(cut).tensors;
  for (size_t i = 0; i < x.size(); ++i) {
    const at::Tensor t = x[i].contiguous();
    packing::EncodeOptions eo = encode;
    eo.non_negative_hint = eo.non_negative_hint || (i < tensors.size() && tensors[i].non_negative);
    auto packed =
        packing::encode(t.data_ptr<float>(), static_cast<size_t>(t.numel()), t.sizes().vec(), eo);
    if (!packed.ok()) return packed.status();
    *bytes += static_cast<int64_t>(packed->size());
    payloads.push_back(std::move(packed).value());
  }
  return payloads;
}

void PipelineRun::measure_crossings() {
  const int blocks = table_.blocks();
  crossing_bytes_.assign(table_.cut_ids.size(), 0);
  pack_ms_.assign(table_.cut_ids.size(), 0);
  for (int b = 0; b < blocks; ++b) {
    model_->prepare_between(table_.cut_ids[static_cast<size_t>(b)],
                            table_.cut_ids[static_cast<size_t>(b) + 1]);
  }
  executors_.front().thread->run([&] {
    Tensors x = {inputs_.front()};
    for (int i = 1; i < blocks; ++i) {
      const int cut = table_.cut_ids[static_cast<size_t>(i)];
      x = run_span(*model_, table_.cut_ids[static_cast<size_t>(i) - 1], cut, x);
      std::vector<double> times;
      for (int r = 0; r < 3; ++r) {
        int64_t bytes = 0;
        const auto t0 = Clock::now();
        auto packed = pack_crossing(*model_, stream_.encode, cut, x, &bytes);
        times.push_back(ms_between(t0, Clock::now()));
        if (!packed.ok()) {
          throw UserError{"cannot pack the tensor at cut " + std::to_string(cut) + ": " +
                          packed.status().message()};
        }
        crossing_bytes_[static_cast<size_t>(i)] = bytes;
      }
      pack_ms_[static_cast<size_t>(i)] = median(times);
    }
  });
}

partitioner::ServerCrossing PipelineRun::crossing(int i) const {
  partitioner::ServerCrossing c;
  c.cut_index = i;
  const double bytes = static_cast<double>(crossing_bytes_.at(static_cast<size_t>(i)));
  c.send_ms = pack_ms_.at(static_cast<size_t>(i)) +
              (network_.bandwidth_mbps > 0 ? bytes * 8 / (network_.bandwidth_mbps * 1000) : 0);
  c.round_trip_ms = network_.rtt_ms;
  const int cut = table_.cut_ids[static_cast<size_t>(i)];
  if (cut >= 0 && static_cast<size_t>(cut) < server_tail_ms_.size()) {
    c.server_ms = server_tail_ms_[static_cast<size_t>(cut)];
  }
  c.overhead_ms = server_overhead_ms_;
  return c;
}

std::vector<partitioner::ServerCrossing> PipelineRun::crossings() const {
  std::vector<partitioner::ServerCrossing> out;
  // Only where the server states its tail time (its profile may time some cuts only).
  for (int i = 1; i < table_.blocks(); ++i) {
    const partitioner::ServerCrossing c = crossing(i);
    if (crossing_bytes_[static_cast<size_t>(i)] > 0 && c.server_ms > 0) out.push_back(c);
  }
  return out;
}

partitioner::StagePlacement PipelineRun::choose() {
  const PlacementConfig& pc = config_.placement;
  if (pc.mode == PlacementConfig::Mode::kFixed) {
    std::vector<std::pair<int, int>> stages;
    for (size_t i = 0; i < pc.stages.size(); ++i) {
      int end = table_.blocks();
      if (pc.stages[i].second >= 0) {
        const auto it =
            std::find(table_.cut_ids.begin(), table_.cut_ids.end(), pc.stages[i].second);
        if (it == table_.cut_ids.end() || it == table_.cut_ids.begin() ||
            pc.stages[i].second == table_.cut_ids.back()) {
          throw UserError{"--placement: cut " + std::to_string(pc.stages[i].second) +
                          " is not a cut between two blocks of this model (edgesplit-inspect "
                          "lists them)"};
        }
        end = static_cast<int>(it - table_.cut_ids.begin());
      }
      stages.emplace_back(static_cast<int>(i), end);
    }
    if (!pc.to_server) {
      auto p = partitioner::evaluate_placement(table_, stages);
      if (!p.ok()) throw UserError{"--placement: " + p.status().message()};
      return *p;
    }
    const int at = stages.back().second;
    auto p = partitioner::evaluate_placement(partitioner::leading_blocks(table_, at), stages);
    if (!p.ok()) throw UserError{"--placement: " + p.status().message()};
    if (!server_serves_) {
      log("frames finish on the device while the server cannot take them: " + server_note_);
    }
    const partitioner::ServerCrossing c = crossing(at);
    if (server_serves_ && !(c.server_ms > 0)) {
      log("the server states no tail time for cut " +
          std::to_string(table_.cut_ids[static_cast<size_t>(at)]) +
          " (its profile did not time it): the prediction leaves the server's tail out");
    }
    return partitioner::with_server(*p, table_, c);
  }
  if (link_ && !(server_serves_ && !server_tail_ms_.empty() && network_.bandwidth_mbps > 0 &&
                 network_.server_available)) {
    log("placing every block on the device: " +
        (!server_serves_              ? server_note_
         : !network_.server_available ? std::string("the server did not answer the link's probes")
                                      : std::string("the server states no tail times (start it "
                                                    "with its profile) or the bandwidth is "
                                                    "unknown")));
  }
  const std::optional<partitioner::StagePlacement> p = best_auto();
  if (!p) {
    throw UserError{
        "no placement over these executors meets --min-fps (the fastest period "
        "predicted is above the bound)"};
  }
  return *p;
}

std::optional<partitioner::StagePlacement> PipelineRun::best_auto() const {
  const auto& s = stream_.scheduler;
  const bool throughput = s.objective == partitioner::Objective::kThroughput;
  std::optional<double> bound;
  if (s.constraints.min_fps && *s.constraints.min_fps > 0) bound = 1000.0 / *s.constraints.min_fps;
  const auto objective = throughput ? partitioner::PlacementObjective::kThroughput
                                    : partitioner::PlacementObjective::kLatency;
  if (link_ && server_serves_ && !server_tail_ms_.empty() && network_.bandwidth_mbps > 0 &&
      network_.server_available) {
    return partitioner::best_placement_with_server(table_, crossings(), objective, bound);
  }
  return partitioner::best_placement(table_, objective, bound);
}

partitioner::StagePlacement PipelineRun::predicted_again(
    const partitioner::StagePlacement& placement) const {
  std::vector<std::pair<int, int>> stages;
  for (const auto& s : placement.stages) stages.emplace_back(s.executor, s.end_block);
  if (!placement.server) {
    auto p = partitioner::evaluate_placement(table_, stages);
    return p.ok() ? *p : placement;
  }
  const int at = placement.server->cut_index;
  auto p = partitioner::evaluate_placement(partitioner::leading_blocks(table_, at), stages);
  if (!p.ok()) return placement;
  partitioner::StagePlacement out = partitioner::with_server(*p, table_, crossing(at));
  if (!network_.server_available) {
    out.period_ms = std::numeric_limits<double>::infinity();
    out.latency_ms = std::numeric_limits<double>::infinity();
  }
  return out;
}

bool same_placement(const partitioner::StagePlacement& a, const partitioner::StagePlacement& b) {
  if (a.stages.size() != b.stages.size() || a.server.has_value() != b.server.has_value()) {
    return false;
  }
  for (size_t i = 0; i < a.stages.size(); ++i) {
    if (a.stages[i].executor != b.stages[i].executor ||
        a.stages[i].first_block != b.stages[i].first_block ||
        a.stages[i].end_block != b.stages[i].end_block) {
      return false;
    }
  }
  return !a.server || a.server->cut_index == b.server->cut_index;
}

std::optional<partitioner::StagePlacement> PipelineRun::better_placement(
    const partitioner::StagePlacement& current, std::string* why) {
  const partitioner::Conditions seen = seen_network();
  if (!(seen.bandwidth_mbps > 0)) return std::nullopt;
  network_ = seen;
  const partitioner::StagePlacement now = predicted_again(current);
  const std::optional<partitioner::StagePlacement> best = best_auto();
  if (!best || same_placement(*best, current)) {
    candidate_.reset();
    return std::nullopt;
  }
  const auto& s = stream_.scheduler;
  const bool throughput = s.objective == partitioner::Objective::kThroughput;
  const double a = throughput ? now.period_ms : now.latency_ms;
  const double b = throughput ? best->period_ms : best->latency_ms;
  const bool bounded = s.constraints.min_fps && *s.constraints.min_fps > 0;
  const bool rescues = bounded && now.period_ms > 1000.0 / *s.constraints.min_fps;
  if (!(b < 0.9 * a) && !rescues) {
    candidate_.reset();
    return std::nullopt;
  }
  // One low bandwidth sample moves the estimate at once (it is cautious), and a change of
  // placement drains the pipeline: the same placement must win two checks in a row. A rise past
  // the tracker's band took a run of samples already (LevelTracker): it needs no second check.
  const bool rose = seen.server_available && placed_on_.server_available &&
                    seen.bandwidth_mbps > kConfirmedRise * placed_on_.bandwidth_mbps;
  if (!rose && (!candidate_ || !same_placement(*candidate_, *best))) {
    candidate_ = best;
    return std::nullopt;
  }
  candidate_.reset();
  placed_on_ = seen;
  char line[240];
  std::snprintf(line, sizeof line,
                "%.2f Mbit/s, round trip %.2f ms%s: predicted %s %.2f ms against %.2f ms for the "
                "placement running",
                seen.bandwidth_mbps, seen.rtt_ms,
                seen.server_available ? "" : ", the server not available",
                throughput ? "period" : "latency", b, a);
  *why = line;
  return best;
}

void PipelineRun::publish_network() {
  const partitioner::Conditions c = link_->network_conditions();
  std::lock_guard<std::mutex> lock(seen_mu_);
  seen_network_ = c;
}

PipelineRun::Epoch PipelineRun::run_frames(const partitioner::StagePlacement& placement,
                                           int64_t first_frame) {
  const size_t k = placement.stages.size();
  struct StageSpan {
    int from = 0, to = 0;
    ExecutorThread* thread = nullptr;
  };
  std::vector<StageSpan> spans;
  for (const auto& s : placement.stages) {
    StageSpan sp;
    sp.from = table_.cut_ids[static_cast<size_t>(s.first_block)];
    sp.to = table_.cut_ids[static_cast<size_t>(s.end_block)];
    sp.thread = executors_[static_cast<size_t>(s.executor)].thread.get();
    model_->prepare_between(sp.from, sp.to);
    spans.push_back(sp);
  }
  // One untimed frame through every stage on its own thread (a thread's first inference pays
  // for its setup).
  {
    Tensors x = {inputs_.front()};
    for (const auto& sp : spans) sp.thread->run([&] { x = run_span(*model_, sp.from, sp.to, x); });
  }
  const bool to_server = placement.server.has_value();
  // The crossing counts as a stage: frames on the link and at the server are in flight too.
  const size_t all_stages = k + (to_server ? 1 : 0);
  const int window = window_for(placement);
  std::vector<std::unique_ptr<BoundedQueue<Item>>> queues;
  for (size_t i = 0; i <= all_stages; ++i) {
    queues.push_back(std::make_unique<BoundedQueue<Item>>(static_cast<size_t>(window)));
  }
  std::vector<std::future<void>> workers;
  for (size_t s = 0; s < k; ++s) {
    BoundedQueue<Item>* in = queues[s].get();
    BoundedQueue<Item>* next = queues[s + 1].get();
    const StageSpan sp = spans[s];
    workers.push_back(sp.thread->post([this, in, next, sp] {
      while (auto item = in->pop()) {
        const auto t0 = Clock::now();
        if (item->error.empty()) {
          try {
            item->x = run_span(*model_, sp.from, sp.to, item->x);
          } catch (const std::exception& e) {
            item->error = e.what();
          }
        }
        item->stage_ms.push_back(ms_between(t0, Clock::now()));
        next->push(std::move(*item));
      }
      next->close();
    }));
  }
  if (to_server) {
    const int cut = table_.cut_ids[static_cast<size_t>(placement.server->cut_index)];
    model_->prepare_between(cut, model_->device_cut());  // for frames that finish on the device
    BoundedQueue<Item>* in = queues[k].get();
    BoundedQueue<Item>* next = queues[k + 1].get();
    workers.push_back(link_thread_->post([this, in, next, cut, window] {
      server_stage(in, next, cut, static_cast<size_t>(window));
    }));
  }
  // Without a crossing, the link's thread keeps the network estimate alive (probes, and pings
  // to a server that was lost) for the checks below.
  const bool recheck = config_.placement.mode == PlacementConfig::Mode::kAuto && link_ &&
                       server_serves_ && config_.placement.recheck_ms > 0;
  watching_ = true;
  std::future<void> watch;
  if (recheck && !to_server) {
    watch = link_thread_->post([this] {
      while (watching_.load()) {
        link_->tend();
        link_->probe_if_due(true);
        (void)link_->poll(std::chrono::milliseconds(20));
        publish_network();
      }
    });
  }
  const auto recheck_every = std::chrono::milliseconds(std::max(1, config_.placement.recheck_ms));
  auto next_check = Clock::now() + recheck_every;
  Epoch epoch;
  const auto start = Clock::now();
  int64_t answered = 0;  // by the server
  std::vector<double> done_ms, latency_ms;
  std::vector<std::vector<double>> stage_ms(all_stages);
  int64_t submitted = first_frame, finished = 0, failed = 0;
  bool interrupted = false;
  auto submit = [&] {
    Item it;
    it.frame = submitted;
    it.x = {inputs_[static_cast<size_t>(submitted) % inputs_.size()].clone()};
    it.started = Clock::now();
    ++submitted;
    queues.front()->push(std::move(it));
  };
  while (submitted < frames_ && submitted < first_frame + window) submit();
  if (submitted >= frames_) queues.front()->close();
  while (auto item = queues.back()->pop()) {
    const auto now = Clock::now();
    EDGESPLIT_CHECK_EQ(item->frame, first_frame + finished);  // stages are FIFO: frames in order
    ++finished;
    done_ms.push_back(ms_between(start, now));
    latency_ms.push_back(ms_between(item->started, now));
    for (size_t s = 0; s < all_stages && s < item->stage_ms.size(); ++s) {
      stage_ms[s].push_back(item->stage_ms[s]);
    }
    json j{{"type", "frame"},
           {"stream", stream_.name},
           {"frame", item->frame},
           {"source", sources_[static_cast<size_t>(item->frame) % sources_.size()]},
           {"t_ms", round3(ms_between(run_start_, now))},
           {"latency_ms", round3(latency_ms.back())}};
    json sm = json::array();
    for (double v : item->stage_ms) sm.push_back(round3(v));
    j["stage_ms"] = sm;
    if (to_server) {
      j["completed"] = item->completed;
      if (!item->reason.empty()) j["reason"] = item->reason;
      if (item->bytes > 0) j["bytes"] = item->bytes;
      if (item->round_trip_ms >= 0) j["round_trip_ms"] = round3(item->round_trip_ms);
      if (item->server_ms >= 0) j["server_ms"] = round3(item->server_ms);
    }
    if (!item->error.empty()) {
      ++failed;
      j["error"] = item->error;
    } else {
      // The server's top classes, or the device's from the logits.
      std::vector<partitioner::ClassScore> top;
      if (item->top) {
        ++answered;
        top = *item->top;
      } else {
        const at::Tensor logits = item->x.at(0).contiguous().reshape({-1});
        top = partitioner::top_k(logits.data_ptr<float>(), static_cast<size_t>(logits.numel()),
                                 static_cast<size_t>(stream_.top_k));
      }
      json tj = json::array();
      for (const auto& c : top) {
        json e{{"index", c.index}, {"score", c.score}};
        if (static_cast<size_t>(c.index) < info_.labels.size()) {
          e["label"] = info_.labels[static_cast<size_t>(c.index)];
        }
        tj.push_back(e);
      }
      j["top"] = tj;
    }
    emit(j);
    if (!interrupted && stop_.load() != 0) {
      interrupted = true;
      log("interrupted: the frames in flight finish");
      queues.front()->close();
    }
    if (recheck && !interrupted && !epoch.next && submitted < frames_ && now >= next_check) {
      next_check = now + recheck_every;
      epoch.next = better_placement(placement, &epoch.why);
      if (epoch.next) queues.front()->close();  // the frames in flight finish as placed
    }
    if (!interrupted && !epoch.next && submitted < frames_) {
      submit();
      if (submitted >= frames_) queues.front()->close();
    }
  }
  watching_ = false;
  if (watch.valid()) watch.get();
  for (auto& w : workers) w.get();
  epoch.next_frame = submitted;

  // The period in steady state: from the end of the window's first frames on, so that filling
  // the pipeline does not count.
  const size_t n = done_ms.size();
  const size_t skip = std::min(n > 1 ? n - 2 : 0, static_cast<size_t>(window));
  double period = 0;
  if (n >= 2) period = (done_ms.back() - done_ms[skip]) / static_cast<double>(n - 1 - skip);
  json stages = json::array();
  for (size_t s = 0; s < all_stages; ++s) {
    std::vector<double> steady(
        stage_ms[s].begin() + static_cast<std::ptrdiff_t>(std::min(skip, stage_ms[s].size())),
        stage_ms[s].end());
    if (s == k) {  // the crossing: hand-over to answer
      stages.push_back({{"executor", "server"},
                        {"predicted_ms", round3(placement.server->latency_ms())},
                        {"measured_ms", round3(median(steady))}});
      continue;
    }
    stages.push_back(
        {{"executor", table_.executors[static_cast<size_t>(placement.stages[s].executor)].name},
         {"predicted_ms", round3(placement.stages[s].ms)},
         {"measured_ms", round3(median(steady))}});
  }
  const double error = placement.period_ms > 0 ? period / placement.period_ms - 1 : 0;
  emit(
      {{"type", "placement_summary"},
       {"stream", stream_.name},
       {"from_frame", first_frame},
       {"frames", finished},
       {"failed", failed},
       {"in_flight", window},
       {"wall_s", round3(n ? done_ms.back() / 1000.0 : 0)},
       {"fps", round3(n ? 1000.0 * static_cast<double>(n) / done_ms.back() : 0)},
       {"period_ms", round3(period)},
       {"steady_fps", round3(period > 0 ? 1000.0 / period : 0)},
       {"predicted_period_ms", round3(placement.period_ms)},
       {"predicted_fps", round3(placement.fps())},
       {"period_error", round3(error)},
       {"latency_ms",
        {{"p50", round3(percentile(latency_ms, 50))}, {"p95", round3(percentile(latency_ms, 95))}}},
       {"predicted_latency_ms", round3(placement.latency_ms)},
       {"stages", stages},
       {"answered_by_server", answered},
       {"interrupted", interrupted},
       {"replaced", epoch.next.has_value()}});
  char line[256];
  std::snprintf(line, sizeof line,
                "%lld frames, %.1f frames/s in steady state (period %.2f ms, predicted %.2f ms: "
                "%+.1f%%)",
                static_cast<long long>(finished), period > 0 ? 1000.0 / period : 0.0, period,
                placement.period_ms, 100 * error);
  log(line);
  return epoch;
}

void PipelineRun::finish_on_device(Item& item, int cut, const std::string& reason) {
  item.completed = "device";
  item.reason = reason;
  item.done = true;
  if (reason != said_fallback_) {
    said_fallback_ = reason;
    log("frames finish on the device: " + reason);
  }
  if (!item.error.empty()) return;
  try {
    item.x = run_span(*model_, cut, model_->device_cut(), item.x);
  } catch (const std::exception& e) {
    item.error = e.what();
  }
}

wire::InferRequest PipelineRun::infer_request(int cut,
                                              const std::vector<std::vector<uint8_t>>& payloads,
                                              int64_t bytes) const {
  wire::InferRequest req;
  req.set_model_digest(model_->digest());
  req.set_cut(static_cast<uint32_t>(cut));
  req.set_top_k(static_cast<uint32_t>(stream_.top_k));
  for (const auto& p : payloads) req.add_tensors()->set_packed_bytes(p.size());
  req.set_priority(static_cast<uint32_t>(std::max(0, stream_.priority)));
  // The server's result helps until the frame's timeout, less the upload and half a round trip
  // back (the device finishes the frame itself then).
  const partitioner::Conditions net = link_->network_conditions();
  double left_ms = stream_.timeout_ms - net.rtt_ms / 2;
  if (net.bandwidth_mbps > 0) {
    left_ms -= static_cast<double>(bytes) * 8 / (net.bandwidth_mbps * 1000);
  }
  req.set_deadline_us(static_cast<uint64_t>(std::max(1.0, left_ms) * 1000));
  return req;
}

bool PipelineRun::calibrate_crossing(int cut_index, int window) {
  const int cut = table_.cut_ids[static_cast<size_t>(cut_index)];
  model_->prepare_between(table_.cut_ids.front(), cut);
  Tensors x;
  executors_.front().thread->run(
      [&] { x = run_span(*model_, table_.cut_ids.front(), cut, {inputs_.front()}); });
  // Enough requests that the filling of the window (left out) is a small part.
  const int n = std::max(24, 4 * window);
  std::string problem;
  std::vector<Clock::time_point> answered;
  link_thread_->run([&] {
    struct Pending {
      uint64_t id;
      int64_t bytes;
      Clock::time_point sent;
    };
    std::vector<Pending> pending;
    const auto timeout = std::chrono::milliseconds(stream_.timeout_ms);
    int sent = 0;
    // After a problem no more is sent, and what is in flight is waited for (up to --timeout-ms),
    // so that the run starts with nothing of the burst on the link.
    while (!pending.empty() || (static_cast<int>(answered.size()) < n && problem.empty())) {
      while (problem.empty() && sent < n && static_cast<int>(pending.size()) < window) {
        link_->tend();
        if (!link_->usable()) {
          problem = link_->down_reason();
          break;
        }
        int64_t bytes = 0;
        auto payloads = pack_crossing(*model_, stream_.encode, cut, x, &bytes);
        if (!payloads.ok()) {
          problem = "cannot pack: " + payloads.status().message();
          break;
        }
        const wire::InferRequest req = infer_request(cut, *payloads, bytes);
        const uint64_t id = link_->next_request_id(0);
        Status ok = link_->send_infer(id, req, std::move(payloads).value());
        if (!ok.ok()) {
          problem = "send failed: " + ok.message();
          break;
        }
        pending.push_back({id, bytes, Clock::now()});
        ++sent;
      }
      for (FrameReply& r : link_->poll(std::chrono::milliseconds(1))) {
        const wire::Reply& reply = r.reply.reply;
        auto it = std::find_if(pending.begin(), pending.end(),
                               [&](const Pending& p) { return p.id == reply.request_id(); });
        if (it == pending.end()) continue;
        pending.erase(it);
        link_->note_answer();
        if (reply.status() == wire::STATUS_OK) {
          answered.push_back(Clock::now());
        } else if (problem.empty()) {
          problem = "the server answered " + wire::Status_Name(reply.status()) +
                    (reply.message().empty() ? "" : " (" + reply.message() + ")");
        }
      }
      const auto now = Clock::now();
      for (auto it = pending.begin(); it != pending.end();) {
        if (now - it->sent < timeout) {
          ++it;
          continue;
        }
        link_->give_up(it->id, it->bytes, ms_between(it->sent, now), stream_.timeout_ms);
        if (problem.empty()) problem = "a request went unanswered within --timeout-ms";
        it = pending.erase(it);
      }
    }
  });
  if (!problem.empty()) {
    log("the crossing's cost is predicted without a measured server overhead: " + problem);
    return false;
  }
  const size_t skip = static_cast<size_t>(window);
  const double period =
      ms_between(answered[skip - 1], answered.back()) / static_cast<double>(answered.size() - skip);
  partitioner::ServerCrossing c = crossing(cut_index);
  c.overhead_ms = 0;  // the prediction without an overhead: what the burst is measured against
  server_overhead_ms_ = std::max(0.0, period - c.period_ms());
  emit({{"type", "server_calibration"},
        {"stream", stream_.name},
        {"cut", cut},
        {"requests", n},
        {"in_flight", window},
        {"period_ms", round3(period)},
        {"predicted_period_ms", round3(c.period_ms())},
        {"overhead_ms", round3(server_overhead_ms_)}});
  char line[200];
  std::snprintf(line, sizeof line,
                "a burst of %d requests at cut %d: the server answered every %.2f ms (predicted "
                "%.2f ms); %.2f ms per request counted as server overhead",
                n, cut, period, c.period_ms(), server_overhead_ms_);
  log(line);
  return true;
}

std::vector<int> PipelineRun::place_helpers(const partitioner::StagePlacement& placement) {
  std::set<int> held;
  for (const auto& s : placement.stages) {
    for (int c : executors_[static_cast<size_t>(s.executor)].cores) held.insert(c);
  }
  std::vector<int> cores;
  for (int c : usable_cores_) {
    if (!held.count(c)) cores.push_back(c);
  }
  if (cores.empty()) cores = usable_cores_;
  if (cores.empty() || !set_thread_affinity(cores).ok()) return {};
  if (link_thread_) link_thread_->run([&] { (void)set_thread_affinity(cores); });
  return cores;
}

void PipelineRun::server_stage(BoundedQueue<Item>* in, BoundedQueue<Item>* out, int cut,
                               size_t window) {
  const std::chrono::milliseconds timeout(stream_.timeout_ms);
  const partitioner::NetworkEstimatorOptions estimator_options;
  const int64_t kTimedBytes = estimator_options.bandwidth_sample_min_bytes;
  const int64_t kRttSampleBytes = estimator_options.rtt_sample_max_bytes;
  int64_t smallest_sent = std::numeric_limits<int64_t>::max();  // this stage's tensors, packed
  std::deque<Item> flight;  // in the order the device's last stage handed them over
  bool drained = false;
  auto send = [&](Item& it) {
    if (!it.error.empty()) {
      it.done = true;
      return;
    }
    link_->tend();
    if (!link_->usable() || !server_serves_) {
      const auto t0 = Clock::now();
      finish_on_device(it, cut, link_->usable() ? server_note_ : link_->down_reason());
      link_->note_busy(t0);  // a reply that came meanwhile waited here, not on the network
      return;
    }
    const auto t0 = Clock::now();
    auto payloads = pack_crossing(*model_, stream_.encode, cut, it.x, &it.bytes);
    link_->note_busy(t0);
    if (!payloads.ok()) {
      finish_on_device(it, cut, "cannot pack: " + payloads.status().message());
      return;
    }
    smallest_sent = std::min(smallest_sent, it.bytes);
    const wire::InferRequest req = infer_request(cut, *payloads, it.bytes);
    it.request_id = link_->next_request_id(0);
    it.deadline = Clock::now() + timeout;
    // The frame keeps its tensors until answered: without an answer, its tail runs here.
    Status sent = link_->send_infer(it.request_id, req, std::move(payloads).value());
    if (!sent.ok()) finish_on_device(it, cut, "send failed: " + sent.message());
  };
  while (true) {
    while (!drained && flight.size() < window) {
      std::optional<Item> it = flight.empty() ? in->pop() : in->try_pop(&drained);
      if (!it) {
        if (flight.empty()) drained = true;
        break;
      }
      it->sent = Clock::now();
      flight.push_back(std::move(*it));
      send(flight.back());
    }
    const bool waiting =
        std::any_of(flight.begin(), flight.end(), [](const Item& it) { return !it.done; });
    if (waiting) {
      for (FrameReply& r : link_->poll(std::chrono::milliseconds(1))) {
        auto it = std::find_if(flight.begin(), flight.end(), [&](const Item& f) {
          return !f.done && f.request_id == r.reply.reply.request_id();
        });
        if (it == flight.end()) continue;
        const wire::Reply& reply = r.reply.reply;
        link_->note_answer();
        if (reply.status() != wire::STATUS_OK || !reply.has_infer()) {
          finish_on_device(*it, cut,
                           reply.status() == wire::STATUS_DEADLINE_EXCEEDED
                               ? std::string("server deadline exceeded")
                               : "server error: " + reply.message());
          continue;
        }
        const wire::InferReply& ir = reply.infer();
        // The network estimate learns the bandwidth from the answers, as a stream's does
        // (device/stream.cc); not the base round trip: with several frames in flight, queued at
        // the server and in the uplink, a small frame's wire time is not one (the probes time it).
        partitioner::Exchange e;
        e.request_bytes = static_cast<int64_t>(r.reply.timing.bytes_sent);
        e.server_queue_ms = ir.queue_us() / 1000.0;
        e.server_compute_ms = (ir.unpack_us() + ir.compute_us()) / 1000.0;
        if (cut >= 0 && static_cast<size_t>(cut) < server_tail_ms_.size()) {
          e.profiled_server_ms = server_tail_ms_[static_cast<size_t>(cut)];
        }
        e.round_trip_ms =
            link_->effective_round_trip_ms(r.reply, e.server_queue_ms + e.server_compute_ms);
        const double transfer_ms =
            link_->paired_transfer_ms(r.reply, e.server_queue_ms + e.server_compute_ms);
        if (transfer_ms != Link::kNotPaired) {
          e.transfer_measured = true;
          e.transfer_ms = transfer_ms;
        }
        if (e.round_trip_ms >= 0 && e.request_bytes > kRttSampleBytes) {
          link_->network().add_exchange(e);
        } else {
          link_->network().add_answer();
        }
        std::vector<partitioner::ClassScore> top;
        for (const auto& c : ir.top()) top.push_back({static_cast<int>(c.index()), c.score()});
        it->top = std::move(top);
        it->x.clear();
        it->completed = "server";
        it->round_trip_ms = r.reply.timing.round_trip_ms();
        it->server_ms = (ir.unpack_us() + ir.compute_us()) / 1000.0;
        it->done = true;
      }
      link_->tend();
      const auto now = Clock::now();
      for (Item& it : flight) {
        if (it.done || now < it.deadline) continue;
        link_->give_up(it.request_id, it.bytes, ms_between(it.sent, now), stream_.timeout_ms);
        finish_on_device(it, cut, "server timeout");
        link_->note_busy(now);
      }
      // Tensors too small to time the link leave the bandwidth estimate as it was: the link's
      // probes keep it fresh then, as when no frame crosses (a probe about once a second).
      link_->probe_if_due(smallest_sent < kTimedBytes);
      publish_network();
    }
    while (!flight.empty() && flight.front().done) {
      Item& front = flight.front();
      front.stage_ms.push_back(ms_between(front.sent, Clock::now()));
      out->push(std::move(front));
      flight.pop_front();
    }
    if (drained && flight.empty()) break;
  }
  out->close();
}

void PipelineRun::announce(const partitioner::StagePlacement& placement,
                           const std::vector<int>& helper_cores, int64_t from_frame,
                           const std::string& replaced) {
  json alternatives = json::object();
  for (size_t e = 0; e < table_.executors.size(); ++e) {
    auto alone = partitioner::evaluate_placement(table_, {{static_cast<int>(e), table_.blocks()}});
    if (alone.ok()) alternatives[table_.executors[e].name] = round3(alone->period_ms);
  }
  json stages = json::array();
  std::string said;
  for (const auto& s : placement.stages) {
    const int from = table_.cut_ids[static_cast<size_t>(s.first_block)];
    const int to = table_.cut_ids[static_cast<size_t>(s.end_block)];
    const std::string& name = table_.executors[static_cast<size_t>(s.executor)].name;
    stages.push_back({{"executor", name},
                      {"from_cut", from},
                      {"to_cut", to},
                      {"from", model_->cut(from).name},
                      {"to", model_->cut(to).name},
                      {"predicted_ms", round3(s.ms)}});
    said += (said.empty() ? "" : " | ") + name + " cuts " + std::to_string(from) + "-" +
            std::to_string(to);
  }
  json line_json{
      {"type", "placement"},
      {"stream", stream_.name},
      {"mode", config_.placement.mode == PlacementConfig::Mode::kAuto ? "auto" : "fixed"},
      {"stages", stages},
      {"predicted_period_ms", round3(placement.period_ms)},
      {"predicted_fps", round3(placement.fps())},
      {"predicted_latency_ms", round3(placement.latency_ms)},
      {"single_executor_period_ms", alternatives},
      {"helper_cores", helper_cores},
      {"from_frame", from_frame},
      {"t_ms", round3(from_frame > 0 ? ms_between(run_start_, Clock::now()) : 0.0)}};
  if (!replaced.empty()) line_json["replaces_because"] = replaced;
  if (link_) {
    line_json["network"] = {{"bandwidth_mbps", round3(network_.bandwidth_mbps)},
                            {"rtt_ms", round3(network_.rtt_ms)},
                            {"server_serves", server_serves_},
                            {"server_available", network_.server_available}};
    if (!server_serves_) line_json["network"]["why_not"] = server_note_;
  }
  if (placement.server) {
    const partitioner::ServerCrossing& c = *placement.server;
    const int cut = table_.cut_ids[static_cast<size_t>(c.cut_index)];
    line_json["server"] = {
        {"cut", cut},
        {"cut_name", model_->cut(cut).name},
        {"bytes", crossing_bytes_[static_cast<size_t>(c.cut_index)]},
        {"encoding", packing::precision_name(stream_.encode.format, stream_.encode.bits)},
        {"predicted_send_ms", round3(c.send_ms)},
        {"predicted_round_trip_ms", round3(c.round_trip_ms)},
        {"predicted_server_ms", round3(c.server_ms)},
        {"predicted_overhead_ms", round3(c.overhead_ms)}};
    said += " | server from cut " + std::to_string(cut);
  }
  emit(line_json);
  char line[160];
  std::snprintf(line, sizeof line, ": predicted period %.2f ms (%.1f frames/s), latency %.2f ms",
                placement.period_ms, placement.fps(), placement.latency_ms);
  log("placement " + said + line);
}

int PipelineRun::run() {
  try {
    partitioner::set_compute_threads(1);
    usable_cores_ = process_affinity();
    load_model();
    load_frames();
    open_executors();
    for (const auto& e : executors_) {
      log("executor " + e.description.name + ": cores " + std::to_string(e.cores.size()) + ", " +
          std::to_string(static_cast<int>(e.mhz)) + " MHz, " + e.level_note);
    }
    if (config_.placement.profile_in.empty()) {
      time_blocks();
    } else {
      read_table();
    }
    json profile{{"type", "segment_table"},
                 {"stream", stream_.name},
                 {"source",
                  config_.placement.profile_in.empty() ? "measured" : config_.placement.profile_in},
                 {"cut_ids", table_.cut_ids},
                 {"handoff_ms", round3(table_.handoff_ms)}};
    json names = json::array();
    for (int id : table_.cut_ids) names.push_back(model_->cut(id).name);
    profile["cut_names"] = names;
    json ex = json::array();
    for (size_t e = 0; e < table_.executors.size(); ++e) {
      json row = json::array();
      for (double v : table_.block_ms[e]) row.push_back(round3(v));
      ex.push_back({{"name", table_.executors[e].name},
                    {"cores", table_.executors[e].cores},
                    {"threads", table_.executors[e].threads},
                    {"mhz", table_.executors[e].mhz},
                    {"level", executors_[e].level_note},
                    {"block_ms", row}});
      if (!table_.cut_ms.empty()) {
        json cuts = json::array();
        for (double v : table_.cut_ms[e]) cuts.push_back(round3(v));
        ex.back()["cut_ms"] = cuts;
      }
      if (e < whole_ms_.size()) {
        ex.back()["blocks_timed_alone_ms"] = round3(blocks_sum_ms_[e]);
        ex.back()["whole_model_ms"] = round3(whole_ms_[e]);
      }
    }
    profile["executors"] = ex;
    emit(profile);

    connect_server();
    if (link_) measure_crossings();
    partitioner::StagePlacement placement = choose();
    std::vector<int> helper_cores = place_helpers(placement);
    // The server's cost per request beyond its tail is measured on the chosen crossing, then every
    // crossing is weighed again with it.
    if (placement.server && server_serves_ &&
        calibrate_crossing(placement.server->cut_index, window_for(placement))) {
      placement = choose();
      helper_cores = place_helpers(placement);
    }
    run_start_ = Clock::now();
    placed_on_ = network_;
    announce(placement, helper_cores, 0, "");
    for (Epoch epoch = run_frames(placement, 0); epoch.next && stop_.load() == 0;
         epoch = run_frames(placement, epoch.next_frame)) {
      placement = *epoch.next;
      helper_cores = place_helpers(placement);
      log("placement changed at frame " + std::to_string(epoch.next_frame) + ": " + epoch.why);
      announce(placement, helper_cores, epoch.next_frame, epoch.why);
    }
  } catch (const UserError& e) {
    std::cerr << "edgesplit-device: " << e.message << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "edgesplit-device: the placement run failed: " << e.what() << '\n';
    return 1;
  }
  return stop_.load() != 0 ? 128 + stop_.load() : 0;
}

}  // namespace

int run_pipeline(const DeviceConfig& config, const std::atomic<int>& stop, std::ostream& out,
                 std::unique_ptr<ServerChannel> channel) {
  PipelineRun run(config, stop, out, std::move(channel));
  return run.run();
}

}  // namespace edgesplit::device
