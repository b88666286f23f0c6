#include "device/stream.h"

#include "device/lane.h"
#include "device/placement.h"
#include "device/resources.h"

#include <torch/script.h>
#include <torch/torch.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <deque>
#include <filesystem>
#include <future>
#include <limits>
#include <map>
#include <set>
#include <thread>
#include <utility>

#include "imaging/image_codec.h"
#include "imaging/input_source.h"
#include "imaging/preprocess.h"
#include "partitioner/cut_table.h"
#include "partitioner/estimators.h"
#include "partitioner/exit_head.h"
#include "partitioner/exit_plans.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "partitioner/scheduler.h"
#include "partitioner/top_k.h"
#include "profiles/exits.h"
#include "profiles/family.h"
#include "profiles/profile.h"
#include "transport/protocol.h"

namespace edgesplit::device {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using partitioner::TimePoint;
namespace fs = std::filesystem;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double round3(double v) { return std::isfinite(v) ? std::round(v * 1000.0) / 1000.0 : -1.0; }

// The largest softmax probability of a logits tensor (computed in double).
double max_softmax(const at::Tensor& logits) {
  const at::Tensor l = logits.contiguous().to(torch::kFloat32);
  const float* v = l.data_ptr<float>();
  const int64_t n = l.numel();
  if (n == 0) return 0;
  const double top = *std::max_element(v, v + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(v[i]) - top);
  return 1.0 / sum;
}

constexpr double kMiB = 1024.0 * 1024.0;

// The runs of a head (or the whole model) that are cold: LibTorch's graph executor profiles a
// graph on its first run and optimises it on the second; the third runs at speed. MobileNetV2 on
// one thread here, no quota: cut 27's head took 91.8, 27.7, then 5.0-6.7 ms; the whole model, after
// one warm-up run, 82 ms on its next run and 9.2 after.
constexpr int kColdRuns = 2;
constexpr int kExploreBurst = 2;  // frames per head exploration (maybe_explore_head)

// Untimed runs of the head at `cut` (and its tail, where `with_tail` and this model holds it) on
// zeros of `shape`, on the calling thread.
void run_on_zeros(const partitioner::ModelGraph& model, int cut, const std::vector<int64_t>& shape,
                  int runs, bool with_tail) {
  const at::Tensor zeros = torch::zeros(shape, torch::kFloat32);
  for (int run = 0; run < runs; ++run) {
    auto crossing = model.run_head(cut, zeros);
    if (with_tail && model.can_run_tail(cut)) (void)model.run_tail(cut, crossing);
  }
}

struct RunStats {
  uint64_t decisions = 0;
  uint64_t plan_changes = 0;    // decisions that changed the plan (the first one is no change)
  uint64_t lane = 0;            // frames run whole by the local lane beside the window
  uint64_t lane_planned = 0;    // frames planned on the device (or left there) that the lane ran
  uint64_t device_probes = 0;   // frames run on the device to re-measure it (maybe_probe_device)
  uint64_t server_probes = 0;   // frames sent to re-measure the server (maybe_probe_server)
  std::map<int, int> explored;  // per cut: frames run to time its head (maybe_explore_head)
  std::map<int, int> beside_warm_up;  // per cut: heads that ran beside a warm-up (no sample)
  // Frames that ran the previous plan while the chosen plan's head was built and warmed on the
  // side (hold_while_warming), per the chosen plan's cut.
  std::map<int, int> held;
};

// Turns "device", "input" or a number into a cut id, or says what is allowed.
// Turns "device", "input", a cut id or a cut's name (as edgesplit-inspect prints them) into a cut
// id, or says what is allowed.
Result<int> resolve_cut(const std::string& spec, int device_cut,
                        const std::vector<std::pair<int, std::string>>& cuts) {
  if (spec == "device" || spec == "local") return device_cut;
  if (spec == "input") return 0;
  try {
    size_t used = 0;
    int id = std::stoi(spec, &used);
    if (used == spec.size()) {
      for (const auto& c : cuts) {
        if (c.first == id) return id;
      }
    }
  } catch (const std::exception&) {
  }
  for (const auto& c : cuts) {
    if (!c.second.empty() && c.second == spec) return c.first;
  }
  return invalid_argument("--cut " + spec + " is not a cut of this model: use an id 0.." +
                          std::to_string(device_cut) +
                          ", a cut's name, 'input' or 'device' (edgesplit-inspect lists the cuts)");
}

std::string default_profile_path(const std::string& model_path) {
  fs::path p(model_path);
  return (p.parent_path() / (p.stem().string() + ".profile.json")).string();
}

}  // namespace

// ----- Stream -----

struct Stream::Impl {
  StreamConfig cfg;
  const DeviceConfig& device;
  int index = 0;
  Link& link;
  Reporter& reporter;
  ComputeToken& token;

  partitioner::ModelInfo info;
  std::optional<profiles::Profile> profile;
  std::string profile_path;
  std::string digest;  // of the model file
  std::optional<partitioner::Scheduler> scheduler;
  std::optional<FramePlan> fixed;
  std::string fixed_cut_name;
  std::shared_ptr<partitioner::ModelGraph> model;  // null: nothing held (server-only)
  int device_cut = 0;
  std::vector<int> cut_ids;  // from the profile (or the model)
  int retain_cut = 0;
  int threads = 0;
  std::unique_ptr<imaging::FrameSource> source;
  std::string refused;  // the stream cannot run: every frame fails with this

  // A family stream's members besides the reference (member i + 1 of the scheduler), each held
  // whole on the device. The fields above are the reference's (member 0).
  struct Alternate {
    profiles::FamilyMember member;
    partitioner::ModelInfo info;
    profiles::Profile profile;
    std::string digest;  // its variant digest
    std::shared_ptr<partitioner::ModelGraph> model;
    int device_cut = 0;
    bool served = false;
  };
  std::vector<Alternate> alternates;
  std::string reference_name;  // the family's reference (family streams only)
  bool family() const { return !cfg.family_path.empty(); }
  const Alternate* alternate(int member) const {
    return member > 0 ? &alternates.at(static_cast<size_t>(member - 1)) : nullptr;
  }
  const partitioner::ModelGraph* model_of(int member) const {
    const Alternate* a = alternate(member);
    return a ? a->model.get() : model.get();
  }
  int device_cut_of(int member) const {
    const Alternate* a = alternate(member);
    return a ? a->device_cut : device_cut;
  }

  // Early exits (cfg.exits_path): each head with the cut it reads, in the model's order.
  struct ExitRunner {
    std::string position;
    int cut = -1;  // the model's cut of that name
    std::string cut_name;
    std::vector<int64_t> input_shape;
    std::string module_path;
    int64_t bytes = 0;    // what loading it adds (predicted)
    bool loaded = false;  // held with the model: its cut is at or before the cut the stream holds
    torch::jit::Module module;
    double ms = 0;                // its time on this device (an estimate until load() measures it)
    double profiled_head_ms = 0;  // the model's head up to its cut, from the profile (0: none)
  };
  std::optional<profiles::ExitSet> exit_set;
  std::vector<ExitRunner> exit_heads;
  partitioner::SchedulerOptions scheduler_options;  // what the scheduler was built with
  std::vector<std::string> exit_notes;              // said once, at start
  // Whether the server runs this stream's exits (the handshake lists the same exits file, at the
  // same cuts), and its times of the exit heads (cut id -> ms).
  bool server_exits_held = false;
  std::vector<std::pair<int, double>> server_exit_ms;
  bool said_server_exits = false;

  std::unique_ptr<LaneWorker> lane;
  // A model loaded off the loop, with the exit heads it holds (by index into exit_heads).
  struct LoadedModel {
    std::shared_ptr<partitioner::ModelGraph> model;
    std::vector<std::pair<size_t, torch::jit::Module>> exits;
  };
  std::future<Result<LoadedModel>> pending_load;
  int pending_retain = 0;
  bool lane_beside_window = false;
  bool lane_holds_planned = false;  // the lane's frame is a planned (not a beside-window) one
  bool server_was_lost = false;     // ... handed over while the server was lost
  size_t window = 1;
  std::deque<PendingFrame> pending;
  bool last_plan_local = false;
  bool chosen_local = false;       // the scheduler's last choice runs on the device (not a probe)
  uint64_t server_wait_seen = 0;   // the last Link::ServerWait::seq taken (take_server_wait)
  double last_device_share = 1.0;  // (head + pack) / pipelined period of the last plan
  double last_bytes = 0;
  double last_period_ms = 0;
  double link_share = 1.0;

  partitioner::ServerLoadEstimator server_load;
  partitioner::ServerProbeSchedule server_probes;  // maybe_probe_server
  // The server's recent batch size (its replies' batch_size, averaged) and the batch size whose
  // tail times (the server's --batch-sizes profile) the scheduler plans with.
  double server_batch = 1;
  int planned_batch = 1;
  partitioner::DeviceLoadEstimator device_load;
  partitioner::HeadErrorTracker head_errors;
  // The other family members' heads, by member, with cfg.member_corrections: each cut's
  // correction (a head more than kMemberResidualLimit off the recent heads' level is no sample)
  // and its runs so far (the first kColdRuns teach nothing).
  std::map<int, partitioner::HeadErrorTracker> member_errors;
  std::map<std::pair<int, int>, int> member_head_runs;  // (member, cut) -> runs
  // Per cut, the runs of its head on this device (the warm-up's included): the first kColdRuns
  // runs of a head at a new cut are cold ones (first allocations, the backend's primitives, the
  // graph executor's profiling run and then its optimising one), several times its later time,
  // and are not load samples.
  std::map<int, int> head_runs;
  // Per (member, cut), the server's replies to this stream's frames there. The first kColdRuns
  // are no samples of the server's load: its first tail at a cut is cold (built and profiled at
  // the first request; on loopback 16-50 ms against about 5 after it), and read as a server 4-8x
  // slower, every remote plan looked slower than the device, and a stream that went back to the
  // device never measured the server again.
  std::map<std::pair<int, int>, int> server_replies;
  // Builds and warms the head of a cut about to be explored, off the frame path.
  HeadWarmer warmer;
  std::set<int> warm_failed;  // cuts whose warm-up failed: not explored
  uint64_t seen_generation = 0;
  bool served = false;  // the last handshake listed this stream's model
  std::string server_engine;

  // Arrivals.
  std::optional<imaging::Frame> next;
  bool eof = false;
  int64_t arrivals = 0;
  Clock::time_point first_arrival{};
  std::optional<Clock::time_point> loop_start;  // the first time the loop asked for a frame
  size_t latency_step = 0;                      // steps of cfg.latency_steps applied
  Clock::time_point next_arrival{};
  int64_t next_frame = 0;

  RunStats stats;
  int frames_without_head = 0;       // decisions since a head last ran on the device
  int frames_since_explore = 0;      // decisions since a frame last explored a head
  int explore_burst_head = -1;       // the head whose exploration's second frame comes next,
  uint64_t explore_burst_at = 0;     // at this decision (stats.decisions), or not at all
  bool chosen_runs_no_head = false;  // the scheduler's last plan sends the input (no head)
  int last_run_plan = -1;            // the scheduler's plan (index) the last decision ran
  std::optional<Clock::time_point> holding_since;  // hold_while_warming: the hold's first frame
  std::set<int> hold_expired;  // cuts whose head was not warm within kMaxHold: not waited for again
  bool said_cut_table = false;
  bool said_unknown_tables = false;
  int corrections_said = 0;
  int misses = 0;  // since the manager last asked
  Clock::time_point run_start{};
  json summary_json;

  // What exploring has cost, measured: per explored frame, per first frame after an exploration
  // (its head runs after another head's work) and per frame that ran beside a head's warm-up
  // (which spends the same CPU), its latency beyond the recent median of the other frames;
  // against the latency of every frame. A warm-up, and so the exploring of another cut, starts
  // only while the cost is within cfg.explore_budget of the total (the spacing alone, from
  // predictions, let exploring cost 5-12% of the latency under a 10x CPU quota, most of it beside
  // warm-ups); a cut already warm is explored as before.
  double explore_cost_ms = 0, frames_ms = 0;
  bool after_explore = false;
  // The median of the last 9 frames neither explored, nor right after one, nor beside a warm-up.
  partitioner::RecentMedian plain_latency{9};

  Impl(const StreamConfig& c, const DeviceConfig& d, int i, Link& l, Reporter& r, ComputeToken& t)
      : cfg(c), device(d), index(i), link(l), reporter(r), token(t) {
    if (cfg.bound_share > 0) {
      partitioner::BoundShareOptions o;
      o.target = cfg.bound_share;
      o.lowest = cfg.bound_quantile;  // never less cautious than asked
      bound_share.emplace(cfg.bound_quantile, o);
    }
  }

  void log(const std::string& msg) {
    reporter.log(device.streams.size() > 1 ? "[" + cfg.name + "] " + msg : msg);
  }

  std::optional<double> latency_bound() const { return cfg.scheduler.constraints.max_latency_ms; }

  size_t pending_frames() const { return pending.size(); }
  bool lane_busy() const { return lane && !lane->idle(); }
  bool server_usable() const { return link.usable() && served; }
  bool server_lost() const { return link.state() == LinkState::kLost; }

  std::string local_reason(const FramePlan& plan) const {
    if (plan.device_probe) return "device probe";
    if (plan.explore) return "explore";
    if (plan.local) return "plan";
    if (!link.has_server()) return "no server";
    if (!link.usable()) return link.down_reason();
    if (!served) return "server does not serve this model";
    return "server unreachable";
  }

  // ----- the server's answer -----

  // Entropy-coded plans of `member` whose coding table the server does not list leave the choice
  // (its frames would be refused); said once per stream.
  void exclude_unknown_tables(int member, const ServedModel& m) {
    if (!scheduler) return;
    int excluded = 0;
    for (const auto& plan : scheduler->plans()) {
      const auto& table = plan.encoding.entropy_table;
      if (plan.member != member || plan.local || !table || m.codec_tables.count(table->id) > 0 ||
          scheduler->excluded(plan.index)) {
        continue;
      }
      scheduler->exclude(plan.index);
      ++excluded;
    }
    if (excluded > 0 && !said_unknown_tables) {
      said_unknown_tables = true;
      log("server " + link.endpoint() + " does not decode " + std::to_string(excluded) +
          " entropy-coded plans of this stream (its profile for the model lacks their coding "
          "tables; give it the profile this device uses): not choosing them");
    }
  }

  // Plans with exits on the server need a server that runs this stream's exits: the same file
  // (by digest) at the same cuts. Without, they leave the choice, said once.
  void note_server_exits(const ServedModel& m) {
    if (!exit_set) return;
    bool held = m.exits_digest == exit_set->digest && m.exit_ms.size() == exit_heads.size();
    for (size_t i = 0; held && i < exit_heads.size(); ++i) {
      held = m.exit_ms[i].first == exit_heads[i].cut;
    }
    server_exits_held = held;
    server_exit_ms = held ? m.exit_ms : std::vector<std::pair<int, double>>{};
    if (scheduler) scheduler->set_server_exits(server_exits_held, server_exit_ms);
    const bool planned =
        fixed ? fixed->server_exits
              : scheduler && std::any_of(scheduler->plans().begin(), scheduler->plans().end(),
                                         [](const partitioner::Plan& p) { return p.server_exits; });
    if (!held && planned && !said_server_exits) {
      said_server_exits = true;
      log("server " + link.endpoint() + " does not run this stream's exits (" + cfg.exits_path +
          ", " + exit_set->digest +
          (m.exits_digest.empty() ? "; it runs none" : "; it runs " + m.exits_digest) +
          "): leaving out the plans with exits on the server (start it with "
          "--exits " +
          cfg.exits_path + ")");
    } else if (held && planned) {
      said_server_exits = false;
    }
  }

  void on_handshake() {
    if (seen_generation == link.generation()) return;
    seen_generation = link.generation();
    const ServedModel* m = link.served(digest);
    const bool was_served = served;
    served = m != nullptr;
    const std::string own = cut_table();
    if (served && !m->cut_table.empty() && !own.empty() && m->cut_table != own) {
      // The same model file, cut differently: a cut id here would name another cut there.
      served = false;
      if (!said_cut_table) {
        said_cut_table = true;
        log("server " + link.endpoint() + " numbers this model's cuts differently (its cut table " +
            m->cut_table + ", this device's " + own +
            "; another edgesplit or LibTorch version?): finishing its frames on the device");
      }
      return;
    }
    if (!served) {
      log("server " + link.endpoint() + " does not serve this stream's model (" + digest +
          "; it serves " + link.served_list() + "): finishing its frames on the device");
      return;
    }
    server_engine = m->engine;
    exclude_unknown_tables(0, *m);
    note_server_exits(*m);
    if (!was_served && seen_generation > 1) log("the server serves this stream's model again");
    for (size_t i = 0; i < alternates.size(); ++i) {
      Alternate& a = alternates[i];
      const int member = static_cast<int>(i) + 1;
      const ServedModel* am = link.served(a.digest);
      a.served = am != nullptr;
      if (!scheduler) continue;
      if (!a.served) {
        // Its remote plans leave the choice; its device-only plan stays.
        for (const auto& plan : scheduler->plans()) {
          if (plan.member == member && !plan.local) scheduler->exclude(plan.index);
        }
      } else {
        exclude_unknown_tables(member, *am);
        if (!am->tail_ms.empty()) (void)scheduler->set_server_tail_ms(am->tail_ms, member);
      }
    }
    if (scheduler && !m->tail_ms.empty()) {
      planned_batch = 1;
      auto changed = scheduler->set_server_tail_ms(m->tail_ms);
      if (!changed.ok()) {
        log("ignoring the server's tail times: " + changed.status().message());
      } else if (*changed) {
        log("planning with the server's own tail times (" + std::to_string(m->tail_ms.size()) +
            " cuts)");
      }
    }
  }

  // A batching server's tail costs more per batch than alone: the scheduler plans with the tail
  // times of the measured batch size nearest to the server's recent mean (when the server sent
  // them), so a request's expected server time is what a batch of that size takes.
  void note_server_batch(uint32_t batch) {
    server_batch = 0.8 * server_batch + 0.2 * static_cast<double>(batch);
    const ServedModel* m = link.served(digest);
    if (!scheduler || fixed || !m || m->batch_tail_ms.empty() || m->tail_ms.empty()) return;
    int nearest = 1;
    double gap = std::abs(server_batch - 1);
    for (const auto& [n, per_cut] : m->batch_tail_ms) {
      if (std::abs(server_batch - n) < gap) {
        gap = std::abs(server_batch - n);
        nearest = n;
      }
    }
    if (nearest == planned_batch) return;
    auto changed =
        scheduler->set_server_tail_ms(nearest == 1 ? m->tail_ms : m->batch_tail_ms.at(nearest));
    if (!changed.ok()) return;
    planned_batch = nearest;
    log("the server runs batches of about " + std::to_string(static_cast<int>(server_batch + 0.5)) +
        ": planning with its tail times at batch " + std::to_string(nearest));
  }

  // The cut table this stream plans with: its profile's, else its model's ("" before either).
  std::string cut_table() const {
    std::vector<partitioner::CutTableEntry> table;
    if (profile) {
      for (const auto& c : profile->cuts) table.push_back({c.id, c.name, c.shapes});
    } else if (model) {
      for (const auto& c : model->cuts()) {
        partitioner::CutTableEntry e{c.id, c.name, {}};
        for (const auto& t : c.tensors) e.shapes.push_back(t.shape);
        table.push_back(std::move(e));
      }
    }
    return table.empty() ? "" : partitioner::cut_table_digest(table);
  }

  // The median of the recent frames' overheads (0 before the first frame).
  static constexpr size_t kOverheadSamples = 15;
  std::deque<double> overheads;
  double frame_overhead_ms() const {
    if (overheads.empty()) return 0;
    std::vector<double> v(overheads.begin(), overheads.end());
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
  }

  // Heads after an idle gap (Conditions::head_overhead_ms). While frames are paced by a frame
  // rate, every kOverheadEvery-th whole-model frame on the loop (the first ones sooner) runs its
  // head once more back to back once the frame is done and the next one is not due for a while:
  // the first run's time less the second's is what the gap cost. The median of the recent ones
  // is added to every planned head, and taken off every measured head before it teaches the load
  // factor and the per-cut corrections, which then describe back-to-back speed as the profile
  // does. One stream only (a second run would delay another stream's frame).
  static constexpr int kOverheadEvery = 20;
  static constexpr int kOverheadFirst = 3;  // samples taken every 4th frame at the start
  partitioner::RecentMedian overhead_samples{9};
  int overhead_count = 0;
  int64_t overhead_candidates = 0;
  std::pair<int, int> overhead_head{-1, -1};  // (member, cut) of the last whole-model frame
  int overhead_same = 0;                      // frames in a row with that head
  bool head_overhead_timed() const {
    return cfg.head_overhead && cfg.fps > 0 && device.streams.size() == 1;
  }
  double head_overhead_ms() const {
    return overhead_count >= kOverheadFirst ? std::max(0.0, overhead_samples.value()) : 0.0;
  }
  // A measured head as if it had run back to back (never below half of it).
  double back_to_back_ms(double measured_ms) const {
    return std::max(measured_ms - head_overhead_ms(), 0.5 * measured_ms);
  }
  void maybe_time_head_again(const partitioner::ModelGraph& graph, int member, int head_cut,
                             const at::Tensor& input, double head_ms) {
    if (!head_overhead_timed() || head_cut <= 0) return;
    // A head's first runs after a switch are cold for other reasons (its weights, its kernels'
    // first calls): only heads that ran the frame before too.
    const std::pair<int, int> key{member, head_cut};
    overhead_same = key == overhead_head ? overhead_same + 1 : 0;
    overhead_head = key;
    if (overhead_same < kColdRuns) return;
    ++overhead_candidates;
    const int64_t every = overhead_count < kOverheadFirst ? 4 : kOverheadEvery;
    if (overhead_candidates % every != 0) return;
    // Only in the gap before the next frame: its arrival is `arrivals` periods after the first.
    const auto next = first_arrival + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(arrivals / cfg.fps));
    const auto now = Clock::now();
    if (next - now < std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double, std::milli>(3 * head_ms + 1))) {
      return;
    }
    double again_ms = 0;
    try {
      ComputeToken::Hold hold(token, cfg.priority, next);
      torch::NoGradGuard no_grad;
      const auto t0 = Clock::now();
      graph.run_head(head_cut, input);
      again_ms = ms_between(t0, Clock::now());
    } catch (const std::exception&) {
      return;  // the frame itself ran: a failure here says nothing new
    }
    overhead_samples.add(head_ms - again_ms);
    ++overhead_count;
  }

  // Recent heads' measured / profiled times. A latency bound holds per frame: while one is set,
  // plans are judged at the cfg.bound_quantile quantile of these (0.8 by default) rather than at
  // the load's level, so that a contender whose time slices make every other frame slow is
  // planned for, not averaged away.
  static constexpr size_t kLoadSamples = 12;
  // With cfg.bound_share, the quantile above follows the recent share of frames within the bound.
  std::optional<partitioner::BoundShareController> bound_share;
  std::deque<double> load_samples;
  void note_load_sample(double ratio) {
    if (!std::isfinite(ratio) || !(ratio > 0)) return;
    load_samples.push_back(ratio);
    if (load_samples.size() > kLoadSamples) load_samples.pop_front();
    head_level.add(ratio);
  }
  double load_for_bound() const {
    if (load_samples.size() < 5) return 0;
    if (bound_share) {
      return partitioner::interpolated_quantile({load_samples.begin(), load_samples.end()},
                                                bound_share->quantile());
    }
    std::vector<double> v(load_samples.begin(), load_samples.end());
    const size_t k = std::min(
        v.size() - 1, static_cast<size_t>(cfg.bound_quantile * static_cast<double>(v.size())));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k];
  }

  // The load a head's per-cut error is judged against: the median of the last few load samples
  // (each measured / (profiled x its cut's correction), mostly the chosen plan's heads), not the
  // load factor plans are made with. That factor is the cautious one (the higher of a fast and a
  // slow average, DeviceLoadEstimator), above the typical head by as much as the heads vary, and
  // it is learnt from the chosen cut's own heads: against it, that cut's residuals sat below 1,
  // its correction fell, the factor rose with it, and every other cut (correction 1) looked slower
  // by as much. In one run under a 10x CPU quota the whole model's correction fell to 0.55 over
  // the 100 frames the stream ran it, and no other plan could win back.
  // Against the median, the chosen cut's residuals centre on 1, and another cut's correction is
  // its typical speed relative to the chosen cut's. A median of 5 follows a load step after 3
  // samples, before 4 of 5 residuals could make a correction.
  partitioner::RecentMedian head_level{5};
  double correction_reference() const {
    return head_level.ready() ? head_level.value() : device_load.load_factor();
  }

  // What the scheduler would decide under `c`, decided by a copy so that the stream's own
  // hysteresis is left alone.
  partitioner::Decision decide_apart(const partitioner::Conditions& c) const {
    partitioner::Scheduler what_if = *scheduler;
    return what_if.decide(c);
  }

  // The plan the scheduler settles on under the conditions measured so far (its hysteresis
  // starting fresh): what the ready line shows and prime() warms.
  partitioner::Decision preview_decision() const { return decide_apart(conditions()); }

  partitioner::Conditions conditions() const {
    partitioner::Conditions c = link.network_conditions();
    c.frame_overhead_ms = frame_overhead_ms();
    c.head_overhead_ms = head_overhead_ms();
    c.bandwidth_mbps *= link_share;
    c.server_queue_ms = server_load.queue_ms();
    c.server_load = server_load.load_factor();
    c.device_load = device_load.load_factor();
    if (latency_bound()) c.device_load = std::max(c.device_load, load_for_bound());
    c.server_available = c.server_available && server_usable();
    return c;
  }

  // ----- planning -----

  FramePlan choose_plan() {
    FramePlan plan;
    if (fixed) plan = *fixed;
    last_plan_local = plan.local;
    // Without predictions only a plan that sends the input leaves the device idle.
    last_device_share = plan.local || plan.cut > 0 ? 1.0 : 0.0;
    if (!scheduler) return plan;
    if (!fixed) take_server_wait();
    partitioner::Conditions c = conditions();
    plan.conditions = c;
    partitioner::Decision d = scheduler->decide(c);
    if (d.changed && stats.decisions > 0) ++stats.plan_changes;
    ++stats.decisions;
    take_warmed_head();
    if (!fixed) {
      plan.held_for_cut = hold_while_warming(d, c);
      last_run_plan = d.plan.index;
      take_plan(plan, d.plan);
    }
    plan.profiled_head_ms = d.plan.profiled_head_ms;
    plan.profiled_server_ms = d.plan.profiled_server_ms;
    last_plan_local = plan.local;
    chosen_runs_no_head = !d.plan.local && d.plan.cut_id == 0;
    const auto& m = d.predicted;
    last_device_share =
        plan.local || !(m.period_ms > 0) ? 1.0 : (m.head_ms + m.pack_ms) / m.period_ms;
    last_bytes = plan.local ? 0 : m.bytes;
    last_period_ms = m.period_ms;
    // After the stream's view of its plan is taken: a probe frame does not change it.
    if (!fixed && plan.held_for_cut < 0) maybe_probe_device(plan, d, c);
    if (!fixed && plan.held_for_cut < 0 && !plan.device_probe) maybe_probe_server(plan, d, c);
    if (!fixed) maybe_ask_server_wait(d, c);
    chosen_local = d.plan.local;
    if (!fixed && !plan.device_probe && plan.held_for_cut < 0) maybe_explore_head(plan, d, c);
    plan.decision = std::move(d);
    return plan;
  }

  // What a frame runs, from the scheduler's plan.
  static void take_plan(FramePlan& plan, const partitioner::Plan& q) {
    plan.member = q.member;
    plan.cut = q.cut_id;
    plan.local = q.local;
    plan.encode = q.encoding.encode_options();
    plan.jpeg_quality = q.local ? 0 : q.encoding.jpeg_quality;
    plan.encoding_name = q.encoding_name;
    plan.exit_threshold = q.exit_threshold;
    plan.server_exits = q.server_exits;
  }

  // The device-load factor learns only from heads that run: one slow local frame (a cold cache, a
  // CPU quota's period spent) can make every local plan look slower than a remote one for good.
  // With the latency objective, while the chosen plan runs no head on the device, a frame runs
  // on the device instead now and then (partitioner::device_probe_every: when the device-only
  // plan is predicted within 4x of the chosen one, every 3rd frame at most, and rarer the more
  // the probe costs, so that probes add at most 3% to the mean latency): a frame a little slower,
  // now and then, against staying on the wrong side for good.

  void maybe_probe_device(FramePlan& plan, partitioner::Decision& d,
                          const partitioner::Conditions& c) {
    if (plan.local || plan.cut > 0 || plan.member != 0 || !holds_whole_model() ||
        cfg.scheduler.objective != partitioner::Objective::kLatency) {
      return;
    }
    if (stats.decisions == explore_burst_at) return;  // an exploration's second frame comes now
    const partitioner::DeviceProbeOptions probe;
    if (++frames_without_head < probe.at_least) return;
    const partitioner::PlanEstimate local = scheduler->evaluate(scheduler->local_plan(), c);
    if (!local.available || !local.feasible) return;
    const int every =
        partitioner::device_probe_every(local.metrics.latency_ms, d.predicted.latency_ms, probe);
    if (every == 0 || frames_without_head < every) return;
    frames_without_head = 0;
    ++stats.device_probes;
    plan.local = true;
    plan.device_probe = true;
    plan.exit_threshold.reset();
    plan.server_exits = false;
    plan.cut = device_cut;
    plan.jpeg_quality = 0;
    plan.encoding_name = "local";
    plan.profiled_head_ms = whole_model_profiled_ms();
    d.plan = scheduler->plans()[static_cast<size_t>(scheduler->local_plan())];
    d.predicted = local.metrics;
    d.changed = false;
  }

  // A stream on the device because the server's queue looked long hears of the queue from the
  // server itself between its server probes: every --server-wait-ping-ms (default 250; 0: never)
  // it pings the server, whose reply carries its estimate of the wait (Pong.wait_us, protocol
  // 1.4); the next plan takes it as a sole queue sample (ServerLoadEstimator::add_queue_report),
  // so a queue that has drained is believed at once and the stream offloads again within about a
  // ping's interval, where the server probes' doubling intervals (below) can leave it up to 8 s
  // late. A ping costs 64 bytes each way and no compute on either side. Asked only where the
  // queue is what keeps the stream on the device: the plan the scheduler would choose with no
  // queue is remote. The handshake's calibration pings carry the wait too: taken before any reply
  // has, a device that joins a busy server plans its first frames with the queue it would meet.

  void take_server_wait() {
    const Link::ServerWait w = link.server_wait();
    if (w.seq == server_wait_seen) return;
    server_wait_seen = w.seq;
    if (chosen_local || !server_load.has_queue_sample()) {
      server_load.add_queue_report(w.ms, /*sole=*/true);
    }
  }

  void maybe_ask_server_wait(const partitioner::Decision& d, const partitioner::Conditions& c) {
    if (cfg.server_wait_ping_ms <= 0 || !d.plan.local || !(c.server_queue_ms > 0) ||
        !server_usable() ||
        !link.may_ask_server_wait(std::chrono::milliseconds(cfg.server_wait_ping_ms))) {
      return;
    }
    partitioner::Conditions no_queue = c;
    no_queue.server_queue_ms = 0;
    if (decide_apart(no_queue).plan.local) return;
    link.ask_server_wait();
  }

  // The server's load factor and queue time are learnt from its replies only: a stream that went
  // to the device because the server looked slow (other devices' burst, a cold tail) would never
  // measure it again, and would stay on the device after the server had recovered. So while the
  // chosen plan runs on the device, a frame runs the plan the scheduler would choose if the
  // server were at its profile with no queue, now and then (partitioner::ServerProbeSchedule:
  // 0.5 s after the stream went local, then at intervals doubling up to 8 s). Only where that
  // plan is remote and the server is usable: otherwise the server's state is not what keeps the
  // stream on the device. A plan whose head is not built is warmed on the side first (HeadWarmer,
  // at the lowest priority) and probed at a later turn. Its reply is a sole sample
  // (ServerLoadEstimator::add_reply): a server found at its profile is believed at once.
  void maybe_probe_server(FramePlan& plan, partitioner::Decision& d,
                          const partitioner::Conditions& c) {
    const auto now = Clock::now();
    if (!server_probes.due(now, d.plan.local) || !scheduler) return;
    if (!server_usable() || !model) {
      server_probes.postpone(now);
      return;
    }
    partitioner::Conditions neutral = c;
    neutral.server_load = 1;
    neutral.server_queue_ms = 0;
    // An early-exit plan is probed without its exits: a frame that left at an exit on the device
    // would measure no server, and one answered by an exit on the server reads it faster than
    // its profile.
    const partitioner::Plan q =
        partitioner::without_exits(scheduler->plans(), decide_apart(neutral).plan);
    const bool runs_now = q.cut_id == 0 || (q.member == 0 && model->can_run_head(q.cut_id) &&
                                            model->head_built(q.cut_id));
    if (q.local || !runs_now) {
      // A head never built here is built and warmed on the side first, as for exploring.
      if (!q.local && q.member == 0 && model->can_run_head(q.cut_id) && warmer.cut() < 0 &&
          !warm_failed.count(q.cut_id)) {
        warmer.start(model, q.cut_id, info.input_shape, kColdRuns, threads);
      }
      server_probes.postpone(now);
      return;
    }
    const partitioner::PlanEstimate e = scheduler->evaluate(q.index, c);
    if (!e.available) {
      server_probes.postpone(now);
      return;
    }
    server_probes.sent(now);
    ++stats.server_probes;
    take_plan(plan, q);
    plan.server_probe = true;
    plan.profiled_head_ms = q.profiled_head_ms;
    plan.profiled_server_ms = q.profiled_server_ms;
    d.plan = q;
    d.predicted = e.metrics;
    d.changed = false;
  }

  // A warm-up that has ended (HeadWarmer, started to explore a head or to switch to it): its
  // head's runs so far, or the cut is marked as failed and neither explored nor waited for.
  void take_warmed_head() {
    const int warming = warmer.cut();
    if (warming < 0) return;
    auto error = warmer.take();
    if (!error) return;
    if (error->empty()) {
      // The stream's own first run of it still counts as cold: its tensors come from this
      // thread's heap, not the warm-up thread's, and may fault some pages in (up to 1,200 in
      // the 10x testbed runs, 0.17 s; 5,500-6,300 and up to 1.7 s before prime()).
      head_runs[warming] = std::max(head_runs[warming], kColdRuns - 1);
      char buf[128];
      std::snprintf(buf, sizeof buf, "built and warmed the head at cut %d (%.0f ms)", warming,
                    warmer.last_ms());
      log(buf);
    } else {
      warm_failed.insert(warming);
      log("the head at cut " + std::to_string(warming) +
          " failed its warm-up, and is neither explored nor waited for: " + *error);
    }
  }

  // The longest a stream keeps its previous plan while the chosen plan's head warms: a slow
  // warm-up (behind one of another cut to explore, at SCHED_IDLE, on a device busy on every core)
  // must not keep the stream off the plan it chose for long; past it, the frame builds the head
  // itself, as without a hold.
  static constexpr auto kMaxHold = std::chrono::seconds(5);

  // When the scheduler moves to a split plan whose head this device has never built, building it
  // inside the frame costs that frame the build and the head's cold runs (under a 10x CPU quota
  // 0.5-1.9 s for one of MobileNetV2's heads, against 20-80 ms warm). So while the plan the
  // stream ran last still runs here, is available and meets every constraint, the frames keep
  // it, and the new head is built and warmed on a side thread (HeadWarmer, at normal priority);
  // the first frame that runs it finds it warm. Not for early-exit plans (their
  // exit heads are built with the frame) nor beyond kMaxHold. Returns the cut waited for
  // (d then holds the previous plan and its prediction), or -1.
  int hold_while_warming(partitioner::Decision& d, const partitioner::Conditions& c) {
    const partitioner::Plan& q = d.plan;
    const int cut = q.cut_id;
    const bool cold = model && q.member == 0 && !q.local && cut > 0 && !q.exit_threshold &&
                      model->can_run_head(cut) && !warm_failed.count(cut) &&
                      !hold_expired.count(cut) && (!model->head_built(cut) || warmer.cut() == cut);
    const auto now = Clock::now();
    if (cold && holding_since && now - *holding_since > kMaxHold) {
      hold_expired.insert(cut);
      log("the head at cut " + std::to_string(cut) +
          " was not warm within 5 s: the next frame builds it");
    }
    if (!cold || hold_expired.count(cut) || last_run_plan < 0 || last_run_plan == q.index) {
      holding_since.reset();
      return -1;
    }
    const partitioner::Plan& prev = scheduler->plans()[static_cast<size_t>(last_run_plan)];
    const partitioner::ModelGraph* graph = model_of(prev.member);
    const int prev_head = prev.local ? device_cut_of(prev.member) : prev.cut_id;
    const bool runs_now =
        prev_head == 0 ||
        (graph && (prev.local ? prev.member != 0 || holds_whole_model()
                              : graph->can_run_head(prev_head) && graph->head_built(prev_head)));
    if (!runs_now) {
      holding_since.reset();
      return -1;
    }
    const partitioner::PlanEstimate e = scheduler->evaluate(prev.index, c);
    if (!e.available || !e.feasible) {
      holding_since.reset();
      return -1;
    }
    if (warmer.cut() < 0) {
      // At normal priority: the stream waits for this head, and a warm-up at SCHED_IDLE gets no
      // CPU on a device busy on every core (the head's build would then hold up the frame that
      // builds it after kMaxHold, behind the model's build lock).
      warmer.start(model, cut, info.input_shape, kColdRuns, threads, /*idle=*/false);
    }
    if (!holding_since) {
      holding_since = now;
      auto label = [](const partitioner::Plan& p) {
        return p.local ? std::string("local")
                       : p.encoding_name + " at cut " + std::to_string(p.cut_id);
      };
      log("keeps its plan (" + label(prev) + ") while the chosen plan's head (" + label(q) +
          ") is built and warmed");
    }
    ++stats.held[cut];
    d.plan = prev;
    d.predicted = e.metrics;
    d.changed = false;
    return cut;
  }

  // The head time of a plan is its profiled time x the cut's correction x the device-load factor,
  // and the load factor is learnt from the heads that run: those of the chosen plan. A head of
  // another length need not run at that factor (a CPU quota slices time, so a head shorter than
  // what is left of a quota period runs at full speed while the whole model spans periods; caches
  // and cores differ too), and the per-cut correction (HeadErrorTracker) that would say so learns
  // only from heads that run. So with the latency objective, when the best plan whose head the
  // device has not timed enough is predicted within cfg.explore_within of the chosen one, a frame
  // runs it instead now and then (as far apart as device probes: every 3rd frame at most, and at
  // most 3% added to the mean latency), until its cut has the samples a correction needs. Its
  // head time teaches the cut's correction, not the load (which stays the chosen plan's); the
  // plan then wins or loses on its corrected prediction. A head never run here is first built and
  // run until warm on a side thread at the lowest priority (HeadWarmer), and explored after; a
  // cut is explored at most min_samples + kColdRuns + 1 times, two frames each (the first, a
  // lead-in, is no sample).
  void maybe_explore_head(FramePlan& plan, partitioner::Decision& d,
                          const partitioner::Conditions& c) {
    ++frames_since_explore;
    if (!model || !(cfg.explore_within >= 1) || plan.member != 0 || plan.exit_threshold ||
        cfg.scheduler.objective != partitioner::Objective::kLatency) {
      return;
    }
    const partitioner::DeviceProbeOptions every_options{3, cfg.explore_within, 0.03};
    // An exploration is two frames in a row with the same head; the first is no sample. A head
    // run right after another plan's work is slower than the same head run again: in the 10x
    // testbed runs (MobileNetV2, cut 27) a median of 59-65 ms after a whole-model or JPEG frame,
    // against 42 ms after a cut-27 head, and explored one-frame heads after those plans set the
    // cut's correction about 1.4x too high.
    const int burst_head =
        stats.decisions == explore_burst_at ? std::exchange(explore_burst_head, -1) : -1;
    if (burst_head < 0 && frames_since_explore < every_options.at_least) return;
    const double chosen_ms = d.predicted.latency_ms;
    if (!(chosen_ms > 0)) return;
    const int chosen_head = plan.local ? device_cut : plan.cut;
    const int max_explores = partitioner::HeadErrorOptions{}.min_samples + kColdRuns + 1;
    std::optional<partitioner::PlanEstimate> best;
    for (const partitioner::PlanEstimate& e : scheduler->evaluate_all(c)) {
      if (!e.available || !e.feasible) continue;
      const partitioner::Plan& q = scheduler->plans()[static_cast<size_t>(e.plan)];
      if (q.member != 0 || q.exit_threshold || (q.local && !holds_whole_model())) continue;
      if (!q.local && !model->can_run_head(q.cut_id)) continue;
      const int head = q.local ? device_cut : q.cut_id;
      if (head <= 0 || head == chosen_head) continue;
      if (burst_head >= 0) {
        if (head != burst_head) continue;  // the exploration's second frame: its head only
      } else {
        if (head_errors.known(head) || warm_failed.count(head)) continue;
        auto it = stats.explored.find(head);
        if (it != stats.explored.end() && it->second >= kExploreBurst * max_explores) continue;
      }
      if (!best || e.metrics.latency_ms < best->metrics.latency_ms) best = e;
    }
    if (!best) return;
    const partitioner::Plan& q = scheduler->plans()[static_cast<size_t>(best->plan)];
    const int head = q.local ? device_cut : q.cut_id;
    if (burst_head < 0) {
      // A head never built here is built and warmed on the side first (HeadWarmer), as soon as
      // it is the candidate; the frames go on with the chosen plan meanwhile.
      if (head_runs[head] < kColdRuns - 1) {
        if (!warmer.busy() && warmer.cut() < 0 && !over_explore_budget()) {
          warmer.start(model, head, info.input_shape, kColdRuns, threads);
        }
        return;
      }
      // Explorations as far apart as device probes would be, for two frames' cost.
      const int every = kExploreBurst * partitioner::device_probe_every(best->metrics.latency_ms,
                                                                        chosen_ms, every_options);
      if (every == 0 || frames_since_explore < every) return;
      explore_burst_head = head;
      explore_burst_at = stats.decisions + 1;
    }
    frames_since_explore = 0;
    ++stats.explored[head];
    take_plan(plan, q);  // member 0, no exits (the candidates above)
    plan.explore = true;
    plan.explore_lead_in = burst_head < 0;
    plan.profiled_head_ms = q.profiled_head_ms;
    plan.profiled_server_ms = q.profiled_server_ms;
    d.plan = q;
    d.predicted = best->metrics;
    d.changed = false;
  }

  double whole_model_profiled_ms() const {
    return scheduler
               ? scheduler->plans()[static_cast<size_t>(scheduler->local_plan())].profiled_head_ms
               : 0;
  }

  bool holds_whole_model() const { return model && retain_cut == device_cut; }

  // The cuts a fixed plan may name: the model's when it is loaded (a profile may list only some),
  // else the profile's.
  std::vector<std::pair<int, std::string>> known_cuts() const {
    std::vector<std::pair<int, std::string>> out;
    if (model) {
      for (const auto& c : model->cuts()) out.emplace_back(c.id, c.name);
    } else if (profile) {
      for (const auto& c : profile->cuts) out.emplace_back(c.id, c.name);
    }
    return out;
  }

  partitioner::LoadOptions load_options(int retain) const {
    partitioner::LoadOptions lo;
    lo.input_shape = info.input_shape;
    lo.engine = device.engine;
    lo.variant = cfg.variant;
    if (profile && retain < device_cut) {
      lo.retain = partitioner::Retain::kHeadsUpTo;
      lo.retain_cut = retain;
    }
    return lo;
  }

  void start_lane_if_wanted() {
    if (!lane && cfg.local_lane != LocalLane::kOff && link.has_server() &&
        !(fixed && fixed->local) && holds_whole_model()) {
      lane = std::make_unique<LaneWorker>(model, &token, cfg.priority, threads);
    }
  }

  bool lane_wanted() const {
    if (!lane || !lane_beside_window || !lane->idle() || !server_usable() || last_plan_local) {
      return false;
    }
    return cfg.local_lane == LocalLane::kOn || last_device_share <= 0.5;
  }

  // ----- arrivals -----

  // Reads the next frame from the source when none is waiting; sets its arrival time.
  void read_ahead(Clock::time_point now) {
    if (!loop_start) loop_start = now;
    apply_latency_step(now);
    if (next || eof) return;
    // While the lane runs a frame the next one waits for, the next image is read once that frame
    // is done, as a device-only run reads it: read now, its decoding would take CPU time from the
    // frame on the lane wherever the device has less than a core to spare (a single core, a
    // quota), and make the frame slower than the same plan run without a server.
    if (lane_waits_next()) return;
    if (!source) {
      eof = true;
      return;
    }
    next = source->next();
    if (!next) {
      eof = true;
      return;
    }
    if (cfg.fps > 0) {
      if (arrivals == 0) first_arrival = std::max(now, join_time());
      next_arrival = first_arrival + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(arrivals / cfg.fps));
    } else {
      next_arrival = Clock::time_point{};  // arrives when taken
    }
    ++arrivals;
  }

  // When the stream's first frame may arrive (its start_s after the loop started).
  Clock::time_point join_time() const {
    return *loop_start +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.start_s));
  }
  bool started(Clock::time_point now) const { return loop_start && now >= join_time(); }

  // The latency bound's schedule (latency_steps): the step in force at `now`.
  void apply_latency_step(Clock::time_point now) {
    if (cfg.latency_steps.empty() || !scheduler) return;
    const double t = std::chrono::duration<double>(now - *loop_start).count();
    size_t k = latency_step;
    while (k < cfg.latency_steps.size() && cfg.latency_steps[k].first <= t) ++k;
    if (k == latency_step) return;
    latency_step = k;
    const double ms = cfg.latency_steps[k - 1].second;
    cfg.scheduler.constraints.max_latency_ms = ms;
    partitioner::Constraints c = scheduler->options().constraints;
    c.max_latency_ms = ms;
    (void)scheduler->set_constraints(c);
    char buf[160];
    std::snprintf(buf, sizeof buf, "stream \"%s\": latency bound now %g ms", cfg.name.c_str(), ms);
    reporter.log(buf);
  }

  // Whether the next frame waits for the lane's frame: a planned local frame runs on the lane
  // one at a time, except that, while a lost server is away, the first frame after its return is
  // offloaded at once.
  bool lane_waits_next() {
    return lane_holds_planned && lane_busy() && !(server_usable() && server_was_lost);
  }

  bool frame_ready(Clock::time_point now, Clock::time_point* due) {
    read_ahead(now);
    if (!next) return false;
    if (!started(now)) return false;
    if (cfg.fps > 0 && now < next_arrival) return false;
    // A frame planned to run on the device runs on the local lane, and the next frame waits
    // for it (one local frame at a time), while the loop keeps taking replies as they come
    // and, while a lost server is away, keeps asking whether it is back: the first frame
    // after its return is offloaded without waiting for a local frame to finish.
    if (lane_waits_next()) return false;
    const bool window_open = pending_frames() < window;
    const bool beside = !window_open && lane_wanted();
    if (!window_open && !beside) return false;
    const Clock::time_point arrival = cfg.fps > 0 ? next_arrival : now;
    const auto bound = latency_bound();
    *due = arrival + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double, std::milli>(bound ? *bound : 1e7));
    return true;
  }

  void start() {
    const auto now = Clock::now();
    imaging::Frame frame = std::move(*next);
    next.reset();
    PendingFrame p;
    p.frame = next_frame++;
    p.source = frame.source;
    p.start = cfg.fps > 0 ? next_arrival : now;
    const auto bound = latency_bound();
    p.due = p.start + std::chrono::duration_cast<Clock::duration>(
                          std::chrono::duration<double, std::milli>(bound ? *bound : 1e7));
    if (!refused.empty()) {
      emit_failure(p, refused);
      return;
    }
    if (pending_frames() < window) {
      start_frame(frame, std::move(p));
    } else {
      start_lane_frame(frame, std::move(p));
    }
  }

  // ----- frames -----

  void start_lane_frame(const imaging::Frame& frame, PendingFrame p) {
    p.plan.local = true;
    p.plan.cut = device_cut;
    p.plan.encoding_name = "local";
    if (hand_to_lane(frame, std::move(p), "local lane", /*planned=*/false)) ++stats.lane;
  }

  bool hand_to_lane(const imaging::Frame& frame, PendingFrame p, std::string reason, bool planned) {
    const auto t0 = Clock::now();
    std::optional<at::Tensor> input = prepare_input(frame, p, nullptr);
    link.note_busy(t0);
    if (!input) return false;
    p.lane_reason = std::move(reason);
    p.plan.profiled_head_ms = whole_model_profiled_ms();
    lane_holds_planned = planned;
    server_was_lost = planned && server_lost();
    lane->submit(std::move(p), std::move(*input));
    return true;
  }

  void start_frame(const imaging::Frame& frame, PendingFrame p) {
    const auto t_begin = Clock::now();
    p.plan = choose_plan();
    const Alternate* alt = alternate(p.plan.member);
    const bool on_device = p.plan.local || !server_usable() || (alt && !alt->served);
    if (on_device && !alt && !holds_whole_model()) {
      emit_failure(p, local_reason(p.plan) +
                          "; this stream holds no whole model on the device (memory budget)");
      return;
    }
    if (on_device && !alt && lane && lane->idle() && !p.plan.exit_threshold) {
      // The whole frame on the local lane; the loop stays free for replies and probes.
      const std::string reason = local_reason(p.plan);
      if (hand_to_lane(frame, std::move(p), reason, /*planned=*/true)) ++stats.lane_planned;
      link.probe_if_due(true);
      return;
    }

    cv::Mat image8;
    std::optional<at::Tensor> prepared = prepare_input(frame, p, &image8, alt ? alt->info : info);
    if (!prepared) {
      link.note_busy(t_begin);
      return;
    }
    at::Tensor input = std::move(*prepared);

    const partitioner::ModelGraph* graph = model_of(p.plan.member);
    const int head_cut = p.plan.local ? device_cut_of(p.plan.member) : p.plan.cut;
    if (head_cut > 0 && (!graph || !graph->can_run_head(head_cut))) {
      emit_failure(p, "this device does not hold the head of cut " + std::to_string(head_cut) +
                          " (memory budget)");
      return;
    }
    Clock::time_point t_pre, t_head;
    at::Tensor exit_logits;
    const bool with_exits = p.plan.exit_threshold && !alt && head_cut > 0 && !exit_heads.empty() &&
                            exit_heads.front().cut <= head_cut;
    bool continued_from_exit = true;  // the head went on from the last exit's cut
    try {
      ComputeToken::Hold hold(token, cfg.priority, p.due);
      set_threads(threads);
      // A head's graph is built the first time its cut is chosen: not part of its time (a cold
      // first run would tell the device-load estimate the device is many times slower than it is),
      // but of the frame's latency, and said in its line (head_build_ms).
      const bool head_was_built = head_cut <= 0 || graph->head_built(head_cut);
      const Clock::time_point t_build = Clock::now();
      if (head_cut > 0 && p.plan.local) {
        graph->prepare(head_cut);
      } else if (head_cut > 0) {
        graph->prepare_head(head_cut);  // the server runs the tail
      }
      if (with_exits) prepare_exits(*graph, head_cut);
      t_pre = Clock::now();
      if (!head_was_built) p.head_build_ms = ms_between(t_build, t_pre);
      const int64_t faults_before = thread_minor_faults();
      torch::NoGradGuard no_grad;
      if (head_cut == 0) {
        p.crossing = {input};
      } else if (with_exits) {
        exit_logits = run_with_exits(p, *graph, head_cut, input, &continued_from_exit);
      } else {
        p.crossing = graph->run_head(head_cut, input);
      }
      t_head = Clock::now();
      const int64_t faults_after = thread_minor_faults();
      if (faults_before >= 0 && faults_after >= 0) {
        p.head_page_faults = faults_after - faults_before;
      }
    } catch (const std::exception& e) {
      link.note_busy(t_begin);
      emit_failure(p, std::string("head failed: ") + e.what());
      return;
    }
    p.head_ms = ms_between(t_pre, t_head) - p.exit_ms;
    if (p.exit_left >= 0) {
      // The frame left at an exit: finished here, nothing sent.
      link.note_busy(t_begin);
      const ExitRunner& x = exit_heads[static_cast<size_t>(p.exit_left)];
      note_head_time(x.cut, p.head_ms, x.profiled_head_ms);
      char why[128];
      std::snprintf(why, sizeof why, "exit %s: confidence %.3f >= %g", x.position.c_str(),
                    p.exit_confidences.back(), *p.plan.exit_threshold);
      const at::Tensor flat = exit_logits.contiguous().reshape({-1});
      auto top = partitioner::top_k(flat.data_ptr<float>(), static_cast<size_t>(flat.numel()),
                                    static_cast<size_t>(cfg.top_k));
      emit(record(p, std::move(top), "exit", why), p);
      return;
    }
    if (alt) {
      frames_without_head = 0;
      if (head_cut > 0 && p.plan.profiled_head_ms > 0) {
        note_alternate_head(p.plan.member, head_cut, back_to_back_ms(p.head_ms),
                            p.plan.profiled_head_ms);
      }
    } else if (head_cut > 0 && continued_from_exit) {
      // (A head that ran again from the input after the exits is not the profiled head.)
      note_head_time(head_cut, p.head_ms, p.plan.profiled_head_ms, head_sample(p.plan));
    }
    if (on_device) {
      link.note_busy(t_begin);
      const double head_ms = p.head_ms;
      const int member = p.plan.member;
      finish_local(p, local_reason(p.plan));
      if (!with_exits && graph) maybe_time_head_again(*graph, member, head_cut, input, head_ms);
      return;
    }

    std::vector<std::vector<uint8_t>> payloads;
    wire::InferRequest req;
    req.set_model_digest(alt ? alt->digest : digest);
    req.set_cut(static_cast<uint32_t>(p.plan.cut));
    req.set_top_k(static_cast<uint32_t>(cfg.top_k));
    if (p.plan.jpeg_quality > 0) {
      auto jpeg = imaging::encode_jpeg(image8, p.plan.jpeg_quality);
      if (!jpeg.ok()) {
        link.note_busy(t_begin);
        finish_local(p, "cannot encode JPEG: " + jpeg.status().message());
        return;
      }
      auto* t = req.add_tensors();
      t->set_packed_bytes(jpeg->size());
      t->set_encoding(wire::TENSOR_JPEG);
      p.bytes_sent += jpeg->size();
      payloads.push_back(std::move(jpeg).value());
    } else {
      for (size_t i = 0; i < p.crossing.size(); ++i) {
        at::Tensor t = p.crossing[i].contiguous();
        packing::EncodeOptions eo = p.plan.encode;
        eo.non_negative_hint =
            eo.non_negative_hint || crossing_non_negative(p.plan.member, p.plan.cut, i);
        auto packed = packing::encode(t.data_ptr<float>(), static_cast<size_t>(t.numel()),
                                      t.sizes().vec(), eo);
        if (!packed.ok()) {
          link.note_busy(t_begin);
          finish_local(p, "cannot pack: " + packed.status().message());
          return;
        }
        req.add_tensors()->set_packed_bytes(packed->size());
        p.bytes_sent += packed->size();
        payloads.push_back(std::move(packed).value());
      }
    }
    auto t_pack = Clock::now();
    p.pack_ms = ms_between(t_head, t_pack);
    link.note_busy(t_begin);
    p.request_id = link.next_request_id(index);
    p.sent = Clock::now();
    p.deadline = p.sent + std::chrono::milliseconds(cfg.timeout_ms);
    req.set_priority(static_cast<uint32_t>(std::max(0, cfg.priority)));
    if (p.plan.exit_threshold && p.plan.server_exits && server_exits_held) {
      // On the wire 0 means no exit: a threshold of 0 (every frame leaves at the first exit)
      // goes as the smallest positive float, which every confidence reaches.
      req.set_exit_threshold(
          std::max(static_cast<float>(*p.plan.exit_threshold), std::numeric_limits<float>::min()));
    }
    req.set_deadline_us(server_deadline_us(p.bytes_sent));
    Status sent = link.send_infer(p.request_id, req, std::move(payloads));
    if (!sent.ok()) {
      finish_local(p, "send failed");
      return;
    }
    pending.push_back(std::move(p));
    // A probe the estimators ask for goes out when this frame is on its way, just before the loop
    // waits: its reply is then timed as it arrives.
    link.probe_if_due(false);
  }

  // How long after it arrives the server's result can still help: the frame's timeout less the
  // expected upload of `bytes` and half a round trip back (the device finishes the frame itself
  // at its timeout, so a later result is of no use); at least 1 ms.
  uint64_t server_deadline_us(int64_t bytes) const {
    const partitioner::Conditions net = link.network_conditions();
    double transfer_ms = net.rtt_ms / 2;
    if (net.bandwidth_mbps > 0)
      transfer_ms += static_cast<double>(bytes) * 8e-3 / net.bandwidth_mbps;
    const double budget_ms = static_cast<double>(cfg.timeout_ms) - transfer_ms - net.rtt_ms / 2;
    return static_cast<uint64_t>(std::max(1.0, budget_ms) * 1000);
  }

  bool crossing_non_negative(int member, int cut, size_t i) const {
    const partitioner::ModelGraph* graph = model_of(member);
    if (!graph || !graph->has_cut(cut)) return false;
    const auto& point = graph->cut(cut);
    return i < point.tensors.size() && point.tensors[i].non_negative;
  }

  std::optional<at::Tensor> prepare_input(const imaging::Frame& frame, PendingFrame& p,
                                          cv::Mat* image8) {
    return prepare_input(frame, p, image8, info);
  }

  std::optional<at::Tensor> prepare_input(const imaging::Frame& frame, PendingFrame& p,
                                          cv::Mat* image8, const partitioner::ModelInfo& info) {
    const auto t0 = Clock::now();
    auto resized = imaging::resize_and_crop(frame.image, info);
    if (!resized.ok()) {
      emit_failure(p, "cannot preprocess: " + resized.status().message());
      return std::nullopt;
    }
    auto data = imaging::normalize_to_tensor(*resized, info);
    if (!data.ok()) {
      emit_failure(p, "cannot preprocess: " + data.status().message());
      return std::nullopt;
    }
    at::Tensor input = torch::from_blob(data->data(), info.input_shape, torch::kFloat32).clone();
    if (image8) *image8 = std::move(resized).value();
    p.preprocess_ms = ms_between(t0, Clock::now());
    return input;
  }

  // ----- early exits -----

  // Reads cfg.exits_path and the heads it names; checks that they were trained on this model and
  // maps each to the profile's cut of its name (load() checks the model's).
  Status load_exit_heads() {
    auto set = profiles::load_exits(cfg.exits_path);
    if (!set.ok()) return set.status();
    if (set->model_digest != digest) {
      return invalid_argument("the exit heads of " + cfg.exits_path + " were trained on model " +
                              set->model_digest + ", not on " + cfg.model_path + " (" + digest +
                              "): train exits for this model with models/train_exits.py");
    }
    const double whole_ms = profile ? profile->cuts.back().head.median_ms : 0;
    for (const profiles::ExitHead& h : set->exits) {
      ExitRunner r;
      r.position = h.position;
      r.cut_name = h.cut_name;
      r.input_shape = h.input_shape;
      if (profile) {
        for (const auto& c : profile->cuts) {
          if (c.name != h.cut_name) continue;
          r.cut = c.id;
          r.profiled_head_ms = c.head.median_ms;
        }
        if (r.cut < 0) {
          return invalid_argument("exit " + h.position + " of " + cfg.exits_path + " reads cut \"" +
                                  h.cut_name + "\", which profile " + profile_path +
                                  " does not list: profile the model with that cut "
                                  "(edgesplit-inspect lists the model's cuts)");
        }
      }
      r.module_path = h.module_path;
      r.bytes = profiles::predicted_exit_head_bytes(h);
      // Loaded with the model (load_exit_modules), not before the process measures its base.
      // Until load() measures it: the whole model's time in proportion to the multiply-adds.
      r.ms = set->backbone_macs > 0
                 ? whole_ms * static_cast<double>(h.macs) / static_cast<double>(set->backbone_macs)
                 : 0;
      exit_heads.push_back(std::move(r));
    }
    exit_set = std::move(set).value();
    return Status();
  }

  // Whether the stream holds exit head `x` when it holds the heads up to `retain` (nothing at 0;
  // a head whose cut is not known yet, without a profile, goes with the whole model).
  static bool holds_exit(const ExitRunner& x, int retain) {
    return retain > 0 && (x.cut < 0 || x.cut <= retain);
  }

  // Loads the exit heads the stream holds with the heads up to `retain` and lets the others go.
  Status load_exit_modules(int retain) {
    for (ExitRunner& x : exit_heads) {
      const bool wanted = holds_exit(x, retain);
      if (wanted && !x.loaded) {
        auto module = partitioner::load_exit_head(x.module_path, x.input_shape, device.engine);
        if (!module.ok()) return module.status();
        x.module = std::move(module).value();
        x.loaded = true;
      } else if (!wanted && x.loaded) {
        x.module = torch::jit::Module();
        x.loaded = false;
      }
    }
    return Status();
  }

  // The exit heads and what each adds when held (for the memory options).
  std::vector<HeldExit> held_exits() const {
    std::vector<HeldExit> out;
    for (const ExitRunner& x : exit_heads) out.push_back({std::max(x.cut, 0), x.bytes});
    return out;
  }

  // With the model loaded: maps each exit to the model's cut of its name, checks the tensor it
  // reads, and measures each exit head the stream holds on this device (the median of 9 runs
  // after 2 warm-ups).
  Status attach_exits() {
    int previous = -1;
    for (ExitRunner& x : exit_heads) {
      int id = -1;
      for (const auto& c : model->cuts()) {
        if (c.name == x.cut_name) id = c.id;
      }
      if (id < 0) {
        return invalid_argument("exit " + x.position + " of " + cfg.exits_path + " reads cut \"" +
                                x.cut_name +
                                "\", which the model does not have (edgesplit-inspect lists its "
                                "cuts)");
      }
      const partitioner::CutPoint& cut = model->cut(id);
      if (cut.tensors.size() != 1 || cut.tensors[0].shape != x.input_shape) {
        return invalid_argument("exit " + x.position + " of " + cfg.exits_path +
                                " takes a tensor of another shape than cut \"" + x.cut_name +
                                "\" carries (the model's input size differs from training?)");
      }
      if (id <= previous) {
        return invalid_argument(cfg.exits_path + " must list its exits in the model's order");
      }
      previous = id;
      x.cut = id;
      if (!x.loaded) continue;
      try {
        c10::InferenceMode inference;
        const at::Tensor zeros = torch::zeros(x.input_shape, torch::kFloat32);
        std::vector<double> times;
        for (int i = 0; i < 11; ++i) {
          const auto t0 = Clock::now();
          (void)x.module.forward({zeros});
          if (i >= 2) times.push_back(ms_between(t0, Clock::now()));
        }
        std::nth_element(times.begin(), times.begin() + 4, times.end());
        x.ms = times[4];
      } catch (const std::exception& e) {
        std::string what = e.what();
        what = what.substr(0, what.find('\n'));
        return invalid_argument("exit head " + x.position + " of " + cfg.exits_path +
                                " failed on a tensor of its input shape: " + what);
      }
    }
    return Status();
  }

  // The scheduler over the stream's members (and the exits' options when the exits are mapped).
  Status build_scheduler() {
    std::vector<partitioner::FamilyMemberPlans> members;
    members.push_back({reference_name, &*profile, 0, 0, true, {}});
    for (const Alternate& a : alternates) {
      members.push_back({a.member.name,
                         &a.profile,
                         a.member.accuracy->drop_pp,
                         a.member.accuracy->high_pp,
                         true,
                         {}});
    }
    if (exit_set && !exit_heads.empty() && exit_heads.front().cut >= 0) {
      std::vector<int> cuts;
      std::vector<double> ms;
      for (const ExitRunner& x : exit_heads) {
        cuts.push_back(x.cut);
        ms.push_back(x.ms);
      }
      // A fixed plan pins its threshold among the table's; the scheduler chooses among the
      // thresholds given (every one of the table by default).
      const std::vector<double> offered =
          cfg.cut.empty() ? cfg.exit_thresholds : std::vector<double>{};
      exit_notes.clear();
      auto options = partitioner::exit_options(*exit_set, *profile, cuts, ms, offered,
                                               scheduler_options.accuracy_confidence, &exit_notes);
      if (!options.ok()) return options.status();
      members.front().exits = std::move(options).value();
      // The same exits on the server, for the plans cutting before the first (the exit heads'
      // times there come with the handshake; until then this device's stand in).
      auto on_server = partitioner::server_exit_options(*exit_set, *profile, cuts, ms, offered,
                                                        scheduler_options.accuracy_confidence);
      if (!on_server.ok()) return on_server.status();
      for (auto& o : *on_server) members.front().exits.push_back(std::move(o));
    }
    auto sched = partitioner::Scheduler::create_family(members, scheduler_options);
    if (!sched.ok()) return sched.status();
    scheduler = std::move(sched).value();
    scheduler->set_server_exits(server_exits_held, server_exit_ms);
    return Status();
  }

  // Builds what a frame with exits runs up to `head_cut` (the heads and the parts between the
  // exits' cuts), so that the first such frame does not pay for it in its time.
  void prepare_exits(const partitioner::ModelGraph& graph, int head_cut) const {
    int at = 0;
    for (const ExitRunner& x : exit_heads) {
      if (x.cut > head_cut) break;
      if (at == 0) {
        graph.prepare_head(x.cut);
      } else if (graph.can_run_between(at, x.cut)) {
        graph.prepare_between(at, x.cut);
      }
      at = x.cut;
    }
    if (at > 0 && at < head_cut && graph.can_run_between(at, head_cut)) {
      graph.prepare_between(at, head_cut);
    }
  }

  // Runs the head of `head_cut` with the exits on the way: the model's head up to the first
  // exit's cut, its exit head, and so on; at the first exit whose max softmax reaches the
  // threshold the frame leaves (p.exit_left, and its logits are returned), else the head goes on
  // from the last exit's cut to `head_cut` (p.crossing). Where the device holds no part between
  // two cuts (a memory bound keeps only heads) the next part runs from the input
  // (*continued = false). A threshold of 1 or more never lets a frame leave.
  at::Tensor run_with_exits(PendingFrame& p, const partitioner::ModelGraph& graph, int head_cut,
                            const at::Tensor& input, bool* continued) {
    const double threshold = *p.plan.exit_threshold;
    std::vector<at::Tensor> x;
    int at = 0;
    *continued = true;
    for (size_t i = 0; i < exit_heads.size(); ++i) {
      ExitRunner& e = exit_heads[i];
      if (e.cut > head_cut) break;
      if (at == 0) {
        x = graph.run_head(e.cut, input);
      } else if (graph.can_run_between(at, e.cut)) {
        x = graph.run_between(at, e.cut, x);
      } else {
        x = graph.run_head(e.cut, input);
        *continued = false;
      }
      at = e.cut;
      const auto t0 = Clock::now();
      at::Tensor logits;
      {
        c10::InferenceMode inference;  // as the model's parts run (their tensors are such)
        logits = e.module.forward({x.at(0)}).toTensor();
      }
      const double confidence = max_softmax(logits);
      p.exit_ms += ms_between(t0, Clock::now());
      p.exit_confidences.push_back(confidence);
      if (threshold < 1 && confidence >= threshold) {
        p.exit_left = static_cast<int>(i);
        return logits;
      }
    }
    if (at == head_cut) {
      p.crossing = std::move(x);
    } else if (graph.can_run_between(at, head_cut)) {
      p.crossing = graph.run_between(at, head_cut, x);
    } else {
      p.crossing = graph.run_head(head_cut, input);
      *continued = false;
    }
    return at::Tensor();
  }

  // A head (or the whole model) ran: the per-cut error first, against the recent heads' median
  // load (correction_reference()), then the load, from the profiled time as corrected for this cut.
  // What a head's time teaches: an explored head feeds only the cut's correction, an
  // exploration's lead-in neither.
  enum class HeadSample { kCorrectionAndLoad, kCorrectionOnly, kNone };
  static HeadSample head_sample(const FramePlan& plan) {
    if (plan.explore_lead_in) return HeadSample::kNone;
    return plan.explore ? HeadSample::kCorrectionOnly : HeadSample::kCorrectionAndLoad;
  }

  void note_head_time(int cut, double measured_ms, double profiled_ms,
                      HeadSample sample = HeadSample::kCorrectionAndLoad) {
    frames_without_head = 0;
    if (++head_runs[cut] <= kColdRuns) return;  // a cold run
    if (sample == HeadSample::kNone) return;
    if (!(profiled_ms > 0)) return;
    const double measured_as_run_ms = measured_ms;
    measured_ms = back_to_back_ms(measured_ms);
    // A head that ran beside a warm-up shared the device with it (under a CPU quota the warm-up's
    // thread spends the same quota, SCHED_IDLE or not, when it runs on another core): not a
    // sample of the cut's correction nor of the load.
    const auto now = Clock::now();
    if (warmer.overlaps(
            now - std::chrono::microseconds(static_cast<int64_t>(measured_as_run_ms * 1e3)), now)) {
      ++stats.beside_warm_up[cut];
      return;
    }
    const double correction = head_errors.correction(cut);
    learn_head_error(head_errors, 0, cut, measured_ms, profiled_ms);
    if (sample == HeadSample::kCorrectionOnly) return;
    // While the chosen plan runs no head, this one is a device probe: the only sample for a while.
    device_load.add_head_time(measured_ms, profiled_ms * correction, chosen_runs_no_head);
    if (profiled_ms * correction >= 0.5) note_load_sample(measured_ms / (profiled_ms * correction));
  }

  // Another family member's head ran: the device's load from it and, with
  // cfg.member_corrections, that member's own per-cut correction, judged as the reference's are
  // (after its cold runs, against the recent heads' level), so that a member running slower or
  // faster than its profile says, relative to the others, is planned as it runs. Without them
  // every member is planned at its profile times the one load factor: a member whose profile
  // promised a saving the device does not see (a smaller input, where preprocessing dominates)
  // was chosen as the cheaper one at no gain in latency.
  // Members of one family differ in speed relative to their profiles by well under 2x; a head
  // beyond that from the recent heads' level met something else (a contender's time slice that a
  // larger member's head spans and a smaller one's fits between), and as a sample it would leave
  // the member planned slower after the contender has gone, until it ran again.
  static constexpr double kMemberResidualLimit = 2.0;
  void note_alternate_head(int member, int cut, double measured_ms, double profiled_ms) {
    double correction = 1;
    if (cfg.member_corrections) {
      if (++member_head_runs[{member, cut}] <= kColdRuns) return;
      partitioner::HeadErrorOptions options;
      options.max_residual = kMemberResidualLimit;
      partitioner::HeadErrorTracker& errors =
          member_errors.try_emplace(member, options).first->second;
      correction = errors.correction(cut);
      learn_head_error(errors, member, cut, measured_ms, profiled_ms);
    }
    device_load.add_head_time(measured_ms, profiled_ms * correction);
    note_load_sample(measured_ms / (profiled_ms * correction));
  }

  // A head's time teaches `errors` (member's per-cut corrections) against the recent heads'
  // level; a correction that changes is planned with, and the first few changes are said.
  void learn_head_error(partitioner::HeadErrorTracker& errors, int member, int cut,
                        double measured_ms, double profiled_ms) {
    const double was = errors.correction(cut);
    if (!errors.add(cut, measured_ms, profiled_ms, correction_reference()) || !scheduler) return;
    const double now = errors.correction(cut);
    if (!scheduler->set_head_correction(cut, now, member).ok() || corrections_said >= 5) return;
    ++corrections_said;
    const std::string whose = member == 0 ? "the head" : alternate(member)->member.name + "'s head";
    const char* others = member == 0 ? "cuts" : "heads";
    char buf[240];
    std::snprintf(buf, sizeof buf,
                  "%s at cut %d runs %.2fx its profiled time relative to the other %s: planning "
                  "with that (was %.2fx)",
                  whose.c_str(), cut, now, others, was);
    log(buf);
  }

  void expire_overdue() {
    auto now = Clock::now();
    for (auto it = pending.begin(); it != pending.end();) {
      if (it->deadline > now) {
        ++it;
        continue;
      }
      PendingFrame p = std::move(*it);
      it = pending.erase(it);
      link.give_up(p.request_id, static_cast<int64_t>(p.bytes_sent), ms_between(p.sent, now),
                   cfg.timeout_ms);
      finish_local(p, "timeout");
    }
  }

  void drain_lane() {
    if (!lane) return;
    std::optional<LaneWorker::Done> d = lane->take();
    if (!d) return;
    PendingFrame& p = d->frame;
    if (!d->error.empty()) {
      emit_failure(p, "local lane: " + d->error);
      return;
    }
    p.head_ms = d->ms;
    p.head_page_faults = d->page_faults;
    note_head_time(device_cut, d->ms, p.plan.profiled_head_ms, head_sample(p.plan));
    auto top =
        partitioner::top_k(d->logits.data_ptr<float>(), static_cast<size_t>(d->logits.numel()),
                           static_cast<size_t>(cfg.top_k));
    emit(record(p, std::move(top), "local", p.lane_reason), p);
  }

  void on_reply(transport::ReceivedReply r) {
    auto it = std::find_if(pending.begin(), pending.end(), [&](const PendingFrame& p) {
      return p.request_id == r.reply.request_id();
    });
    if (it == pending.end()) return;  // the link routes only awaited replies
    PendingFrame p = std::move(*it);
    pending.erase(it);
    finish_remote(p, r);
  }

  void finish_remote(PendingFrame& p, const transport::ReceivedReply& r) {
    const wire::Reply& reply = r.reply;
    if (reply.status() != wire::STATUS_OK || !reply.has_infer()) {
      // A refusal of the plan itself (the server cannot decode it or does not serve the cut) will
      // not change: the scheduler stops choosing that plan. Busy or shutting down is transient.
      const bool plan_refused = reply.status() == wire::STATUS_MALFORMED ||
                                reply.status() == wire::STATUS_BAD_CUT ||
                                reply.status() == wire::STATUS_TOO_LARGE;
      if (plan_refused && scheduler && !fixed && p.plan.decision &&
          !scheduler->excluded(p.plan.decision->plan.index)) {
        scheduler->exclude(p.plan.decision->plan.index);
        log("the server refused plan " + std::to_string(p.plan.cut) + ":" + p.plan.encoding_name +
            " (" + reply.message() + "): not choosing it again");
      }
      link.note_answer();
      if (reply.status() == wire::STATUS_DEADLINE_EXCEEDED) {
        // Refused on arrival: the server's queue wait is why, a sample of it as a reply's would be.
        if (reply.has_wait_us()) {
          server_load.add_queue_report(static_cast<double>(reply.wait_us()) / 1000.0, false);
        }
        finish_local(p, "server deadline exceeded");
      } else {
        finish_local(p, "server error: " + reply.message());
      }
      return;
    }
    link.note_answer();
    const wire::InferReply& ir = reply.infer();
    std::vector<partitioner::ClassScore> top;
    for (const auto& c : ir.top()) top.push_back({static_cast<int>(c.index()), c.score()});
    const double rtt = r.timing.round_trip_ms();
    const double queue_ms = ir.queue_us() / 1000.0;
    const double compute_ms = (ir.unpack_us() + ir.compute_us()) / 1000.0;
    partitioner::Exchange e;
    e.request_bytes = static_cast<int64_t>(r.timing.bytes_sent);
    e.round_trip_ms = link.effective_round_trip_ms(r, queue_ms + compute_ms);
    e.server_queue_ms = queue_ms;
    e.server_compute_ms = compute_ms;
    e.profiled_server_ms = p.plan.profiled_server_ms;
    const double transfer_ms = link.paired_transfer_ms(r, queue_ms + compute_ms);
    if (transfer_ms != Link::kNotPaired) {
      e.transfer_measured = true;
      e.transfer_ms = transfer_ms;
    }
    if (e.round_trip_ms >= 0) {
      link.network().add_exchange(e);
    } else {
      link.network().add_answer();  // the server's own times are still good
    }
    // A frame answered at a server exit ran part of the tail: not a sample of the server's load;
    // nor are the first replies at a cut (server_replies).
    // A server probe's reply is the only one for a while: a sample even at a cut the stream has
    // not sent to before, and one below the level's band is believed at once.
    const bool warm = ++server_replies[{p.plan.member, p.plan.cut}] > kColdRuns;
    if (!ir.has_server_exit() && (warm || p.plan.server_probe)) {
      server_load.add_reply(e.server_queue_ms, e.server_compute_ms, e.profiled_server_ms,
                            p.plan.server_probe);
    }
    if (ir.batch_size() > 0 && p.plan.member == 0) note_server_batch(ir.batch_size());

    FrameRecord rec;
    if (ir.has_server_exit() && p.plan.exit_threshold) {
      const wire::ServerExitResult& x = ir.server_exit();
      char why[160];
      std::snprintf(why, sizeof why, "server exit %s: confidence %.3f >= %g", x.position().c_str(),
                    x.confidence(), *p.plan.exit_threshold);
      rec = record(p, std::move(top), "server_exit", why);
      rec.exit->position = x.position();
      rec.exit->cut = static_cast<int>(x.cut());
      rec.exit->cut_name = cut_name(rec.exit->cut);
      rec.exit->confidences.push_back(x.confidence());  // after the device's, if any
    } else {
      rec = record(p, std::move(top), "server", "");
    }
    rec.server = FrameRecord::ServerTimes{std::max(0.0, rtt - queue_ms - compute_ms), queue_ms,
                                          ir.unpack_us() / 1000.0, ir.compute_us() / 1000.0};
    emit(std::move(rec), p);
  }

  void finish_local(PendingFrame& p, const std::string& reason) {
    const partitioner::ModelGraph* graph = model_of(p.plan.member);
    const int cut = p.plan.local ? device_cut_of(p.plan.member) : p.plan.cut;
    if (!graph || !graph->can_run_tail(cut)) {
      emit_failure(p, reason + "; this device does not hold the tail of cut " +
                          std::to_string(cut) + " (memory budget)");
      return;
    }
    Clock::time_point t0, t1;
    at::Tensor logits;
    try {
      ComputeToken::Hold hold(token, cfg.priority, p.due);
      set_threads(threads);
      // A split cut's tail is built the first time a frame must finish there (not part of its
      // time, as for heads).
      graph->prepare_tail(cut);
      t0 = Clock::now();
      torch::NoGradGuard no_grad;
      logits = graph->run_tail(cut, p.crossing).contiguous().reshape({-1});
      t1 = Clock::now();
    } catch (const std::exception& e) {
      emit_failure(p, reason + "; the local tail failed: " + e.what());
      return;
    }
    double tail_ms = ms_between(t0, t1);
    link.note_busy(t0);
    auto top = partitioner::top_k(logits.data_ptr<float>(), static_cast<size_t>(logits.numel()),
                                  static_cast<size_t>(cfg.top_k));
    FrameRecord rec = record(p, std::move(top), "local", reason);
    rec.local_tail_ms = tail_ms;
    emit(std::move(rec), p);
  }

  void emit_failure(PendingFrame& p, const std::string& reason) {
    emit(record(p, {}, "failed", reason), p);
    log("frame " + p.source + ": " + reason);
  }

  std::string cut_name(int cut) const {
    if (model && model->has_cut(cut)) return model->cut(cut).name;
    if (profile) {
      for (const auto& c : profile->cuts) {
        if (c.id == cut) return c.name;
      }
    }
    return cut == 0 ? "input" : "";
  }

  FrameRecord record(const PendingFrame& p, std::vector<partitioner::ClassScore> top,
                     const std::string& where, const std::string& reason) const {
    FrameRecord r;
    r.stream = cfg.name;
    r.frame = p.frame;
    r.source = p.source;
    r.top = std::move(top);
    r.labels = &info.labels;
    if (const Alternate* a = alternate(p.plan.member)) {
      r.member = a->member.name;
      r.cut = p.plan.local ? a->device_cut : p.plan.cut;
      r.cut_name = a->model && a->model->has_cut(r.cut) ? a->model->cut(r.cut).name : "";
    } else {
      if (family()) r.member = reference_name;
      r.cut = p.plan.local ? device_cut : p.plan.cut;
      r.cut_name = cut_name(r.cut);
    }
    r.by_scheduler = scheduler && !fixed;
    r.explore = p.plan.explore;
    r.explore_lead_in = p.plan.explore_lead_in;
    r.held_for_cut = p.plan.held_for_cut;
    r.server_probe = p.plan.server_probe;
    if (p.plan.local) {
      r.encoding = "local";
    } else if (p.plan.jpeg_quality > 0) {
      r.encoding = "jpeg" + std::to_string(p.plan.jpeg_quality);
    } else {
      r.encoding = p.plan.encoding_name;
      r.precision = packing::precision_name(p.plan.encode.format, p.plan.encode.bits);
      r.lossless = packing::lossless_name(p.plan.encode.lossless);
    }
    r.completed = where;
    r.reason = reason;
    r.bytes_sent = p.bytes_sent;
    r.preprocess_ms = p.preprocess_ms;
    r.head_ms = p.head_ms;
    r.head_page_faults = p.head_page_faults;
    r.head_build_ms = p.head_build_ms;
    r.pack_ms = p.pack_ms;
    if (p.plan.decision) {
      r.decision = *p.plan.decision;
      r.objective = cfg.scheduler.objective;
      r.conditions = p.plan.conditions;
      r.link_share = link_share;
    }
    r.max_latency_ms = latency_bound();
    if (p.plan.exit_threshold) {
      FrameRecord::ExitRecord e;
      e.threshold = *p.plan.exit_threshold;
      e.confidences = p.exit_confidences;
      e.ms = p.exit_ms;
      if (p.plan.server_exits) {
        // Exits at or before the cut ran on the device: both sides.
        const bool both = !exit_heads.empty() && exit_heads.front().cut >= 0 &&
                          exit_heads.front().cut <= p.plan.cut;
        e.side = both ? "both" : "server";
      }
      if (p.exit_left >= 0) {
        const ExitRunner& x = exit_heads.at(static_cast<size_t>(p.exit_left));
        e.position = x.position;
        e.cut = x.cut;
        e.cut_name = x.cut_name;
      }
      r.exit = std::move(e);
    }
    return r;
  }

  // Reports a finished frame; its latency counts from its arrival.
  void emit(FrameRecord r, const PendingFrame& p) {
    const auto now = Clock::now();
    r.latency_ms = ms_between(p.start, now);
    // The frame's time beyond its plan's stages (preprocessing, waiting for the loop, reporting):
    // what every plan's latency adds (Conditions::frame_overhead_ms). Not a head's build, which
    // a frame pays once per cut (under a 10x quota a 0.5 s build read as 502 ms of overhead on
    // every plan for the next two frames).
    std::optional<double> overhead;
    if (r.completed == "local" && p.lane_reason.empty()) {
      overhead = r.latency_ms - p.head_ms - p.exit_ms - r.local_tail_ms.value_or(0);
    } else if (r.completed == "exit") {
      overhead = r.latency_ms - p.head_ms - p.exit_ms;
    } else if (r.completed == "server" || r.completed == "server_exit") {
      overhead = r.latency_ms - p.head_ms - p.exit_ms - p.pack_ms - ms_between(p.sent, now);
    }
    if (overhead) {
      *overhead -= p.head_build_ms;
      overheads.push_back(std::max(0.0, *overhead));
      if (overheads.size() > kOverheadSamples) overheads.pop_front();
    }
    if (r.max_latency_ms) {
      const bool within = r.completed != "failed" && r.latency_ms <= *r.max_latency_ms;
      if (!within) ++misses;
      if (bound_share) bound_share->note(within);
    }
    r.beside_warm_up = warmer.overlaps(p.start, now);
    count_explore_cost(p.plan.explore, r.beside_warm_up, r.latency_ms);
    reporter.frame(r);
  }

  bool over_explore_budget() const {
    return cfg.explore_budget > 0 && explore_cost_ms > cfg.explore_budget * frames_ms;
  }

  // What exploring costs (maybe_explore_head's budget): an explored frame's latency, the next
  // frame's and that of a frame beside a warm-up, beyond the median of the last plain frames.
  void count_explore_cost(bool explored, bool beside_warm_up, double latency_ms) {
    frames_ms += latency_ms;
    if (explored || after_explore || beside_warm_up) {
      if (!plain_latency.empty()) {
        explore_cost_ms += std::max(0.0, latency_ms - plain_latency.value());
      }
      after_explore = explored;
      return;
    }
    plain_latency.add(latency_ms);
  }
};

Stream::Stream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Stream::~Stream() = default;

const std::string& Stream::name() const { return impl_->cfg.name; }
int Stream::index() const { return impl_->index; }
int Stream::priority() const { return impl_->cfg.priority; }

Result<std::unique_ptr<Stream>> Stream::create(const StreamConfig& config,
                                               const DeviceConfig& device, int index, Link& link,
                                               Reporter& reporter, ComputeToken& token) {
  auto impl = std::make_unique<Impl>(config, device, index, link, reporter, token);
  Impl& s = *impl;
  const std::string who = device.streams.size() > 1 ? "stream \"" + config.name + "\": " : "";
  auto fail = [&](const Status& st) { return Status(st.code(), who + st.message()); };

  auto info = partitioner::load_model_info(config.model_path, config.meta_path);
  if (!info.ok()) return fail(info.status());
  info = partitioner::with_variant_input(*info, config.variant);
  if (!info.ok()) return fail(info.status());
  Status input_ok = imaging::validate_input_info(*info);
  if (!input_ok.ok()) return fail(input_ok);
  s.info = std::move(info).value();

  auto digest = partitioner::model_file_digest(config.model_path);
  if (!digest.ok()) return fail(digest.status());
  // A derived variant is known by its own digest (the server serves it under that one too).
  s.digest = partitioner::variant_digest(*digest, config.variant);

  const bool explicit_profile = !config.profile_path.empty();
  // The profile beside the model is the model's, never a variant's: a variant's is named.
  s.profile_path = explicit_profile ? config.profile_path : default_profile_path(config.model_path);
  if (explicit_profile || (config.variant.empty() && fs::exists(s.profile_path))) {
    auto loaded = profiles::load_profile(s.profile_path);
    if (!loaded.ok()) return fail(loaded.status());
    s.profile = std::move(loaded).value();
    if (s.profile->model_digest != s.digest) {
      const std::string as_variant =
          config.variant.empty() ? "" : " as the variant " + config.variant.canonical();
      return fail(invalid_argument("profile " + s.profile_path + " was made for model " +
                                   s.profile->model_digest + ", not for " + config.model_path +
                                   as_variant + " (" + s.digest +
                                   "): profile this model with edgesplit-profile"));
    }
    for (const auto& c : s.profile->cuts) s.cut_ids.push_back(c.id);
    s.device_cut = s.cut_ids.empty() ? 0 : s.cut_ids.back();
    // Head and tail times that do not add up to the whole model mislead every plan: said once,
    // at start (checked here as well, for profiles written before the profiler checked them or
    // edited since). A wide spread is the profiler's to say.
    for (const auto& w :
         profiles::check_timings(*s.profile, 0.15, std::numeric_limits<double>::infinity())) {
      s.log("warning: profile " + s.profile_path + ": " + w);
    }
  } else if (config.cut.empty() && !config.variant.empty()) {
    return fail(invalid_argument(
        "no profile for the variant " + config.variant.canonical() + " of " + config.model_path +
        ": make one with edgesplit-profile --variant and pass --profile FILE, or fix the plan "
        "with --cut"));
  } else if (config.cut.empty()) {
    return fail(invalid_argument(
        "no profile for " + config.model_path + " (looked for " + s.profile_path +
        "): run edgesplit-profile on it, pass --profile FILE, or fix the plan with --cut"));
  }

  if (s.family()) {
    auto family = profiles::load_family(config.family_path);
    if (!family.ok()) return fail(family.status());
    s.reference_name = family->reference;
    if (!s.profile) {
      return fail(invalid_argument("family " + config.family_path + ": its reference \"" +
                                   family->reference +
                                   "\" has no profile: profile it and name it in the manifest"));
    }
    std::string no_profile, no_accuracy;
    for (const profiles::FamilyMember& m : family->members) {
      if (m.name == family->reference) continue;
      const std::string what = "family member \"" + m.name + "\"";
      Impl::Alternate a;
      a.member = m;
      auto minfo = partitioner::load_model_info(m.model, m.meta);
      if (!minfo.ok()) return fail(invalid_argument(what + ": " + minfo.status().message()));
      minfo = partitioner::with_variant_input(*minfo, m.variant);
      if (!minfo.ok()) return fail(invalid_argument(what + ": " + minfo.status().message()));
      a.info = *minfo;
      Status member_input = imaging::validate_input_info(a.info);
      if (!member_input.ok()) return fail(invalid_argument(what + ": " + member_input.message()));
      auto file_digest = partitioner::model_file_digest(m.model);
      if (!file_digest.ok()) return fail(file_digest.status());
      a.digest = partitioner::variant_digest(*file_digest, m.variant);
      // A member without a profile or an accuracy is left out, said once: a manifest may list
      // more variants than a device has profiled.
      if (m.profile.empty()) {
        no_profile += (no_profile.empty() ? "" : ", ") + m.name;
        continue;
      }
      if (!m.accuracy) {
        no_accuracy += (no_accuracy.empty() ? "" : ", ") + m.name;
        continue;
      }
      auto prof = profiles::load_profile(m.profile, a.digest);
      if (!prof.ok()) return fail(invalid_argument(what + ": " + prof.status().message()));
      if (prof->cuts.empty()) return fail(invalid_argument(what + ": its profile lists no cuts"));
      a.profile = std::move(prof).value();
      a.device_cut = a.profile.cuts.back().id;
      s.alternates.push_back(std::move(a));
    }
    if (!no_profile.empty()) {
      s.log("family members without a profile are not used: " + no_profile +
            " (edgesplit-profile makes one, --variant for a derived one; name it in the manifest)");
    }
    if (!no_accuracy.empty()) {
      s.log("family members without an accuracy against \"" + family->reference +
            "\" are not used: " + no_accuracy + " (edgesplit-family table --update measures it)");
    }
  }

  if (!config.exits_path.empty()) {
    Status exits = s.load_exit_heads();
    if (!exits.ok()) return fail(exits);
  }

  if (s.profile) {
    partitioner::SchedulerOptions so = config.scheduler;
    // The window the stream keeps (Stream::load sets the same): the pipelined period's floor.
    so.in_flight = config.in_flight > 0 ? config.in_flight
                   : config.scheduler.objective == partitioner::Objective::kThroughput ? 4
                                                                                       : 1;
    if (!device.device_power_path.empty()) {
      auto power = partitioner::load_device_power(device.device_power_path);
      if (!power.ok()) return fail(power.status());
      so.power = *power;
    }
    s.scheduler_options = so;
    Status built = s.build_scheduler();
    if (!built.ok()) return fail(built);
    for (const std::string& note : s.exit_notes) s.log(note);
    if (s.exit_set && so.accuracy_confidence > 0) {
      bool paired = true;
      for (const auto& l : s.exit_set->cascade) paired = paired && l.lost && l.gained;
      if (!paired) {
        s.log("the exits' table " + config.exits_path +
              " has top-1s but no paired counts: their losses are judged at the widest interval "
              "those allow (every frame that leaves counted as changed)");
      }
    }
    if (so.constraints.max_accuracy_drop_pp && so.accuracy_confidence > 0 &&
        !s.scheduler->accuracy_intervals_known()) {
      s.log("profile " + s.profile_path +
            " has no paired accuracy counts (made before they were recorded): the accuracy bound "
            "is checked against point estimates; re-profile for intervals");
    }
  }
  return std::unique_ptr<Stream>(new Stream(std::move(impl)));
}

StreamPlanInfo Stream::plan_info() const {
  const Impl& s = *impl_;
  StreamPlanInfo out;
  out.name = s.cfg.name;
  out.priority = s.cfg.priority;
  out.device_cut = s.device_cut;
  if (!s.profile) {
    // A fixed plan without a profile: the whole model (the cut is only known after loading).
    MemoryOption o;
    o.retain_cut = -1;
    o.bytes = 0;
    o.meets_bounds = true;
    out.options.push_back(o);
    return out;
  }
  partitioner::Conditions c = s.conditions();
  // Before the first handshake the estimators know nothing: plan as if the server answers.
  if (s.link.has_server() && s.link.state() == LinkState::kNeverUp) {
    c.server_available = true;
    if (!(c.bandwidth_mbps > 0)) c.bandwidth_mbps = 10;
  }
  if (s.family()) {
    // A family stream holds every member whole, and the reference's exit heads: one option, the
    // sum of their peaks.
    MemoryOption o;
    o.retain_cut = -1;
    o.bytes = predicted_load_bytes(*s.profile, s.profile->cuts.back());
    for (const auto& a : s.alternates) {
      o.bytes += predicted_load_bytes(a.profile, a.profile.cuts.back());
    }
    for (const HeldExit& x : s.held_exits()) o.bytes += x.bytes;
    o.meets_bounds = true;
    out.options.push_back(o);
    return out;
  }
  std::optional<int> fixed_cut;
  if (!s.cfg.cut.empty()) {
    auto cut = resolve_cut(s.cfg.cut, s.device_cut, s.known_cuts());
    if (cut.ok()) fixed_cut = *cut;
  }
  out.options = memory_options(*s.profile, *s.scheduler, c, fixed_cut, s.held_exits());
  return out;
}

Status Stream::load(int retain_cut, int threads) {
  Impl& s = *impl_;
  const std::string who = s.device.streams.size() > 1 ? "stream \"" + s.cfg.name + "\": " : "";
  s.threads = threads;
  s.retain_cut = retain_cut < 0 ? s.device_cut : retain_cut;
  if (s.retain_cut > 0 || !s.profile) {
    const partitioner::LoadOptions lo = s.load_options(s.retain_cut);
    auto model = partitioner::ModelGraph::load(s.cfg.model_path, lo);
    if (!model.ok()) return Status(model.status().code(), who + model.status().message());
    s.model = std::move(model).value();
    if (!s.profile) {
      s.device_cut = s.model->device_cut();
      s.retain_cut = s.device_cut;
      for (const auto& c : s.model->cuts()) s.cut_ids.push_back(c.id);
    }
  }
  if (!s.exit_heads.empty()) {
    Status loaded = s.load_exit_modules(s.model ? s.retain_cut : 0);
    if (!loaded.ok()) return Status(loaded.code(), who + loaded.message());
  }
  if (s.model && !s.exit_heads.empty()) {
    Status attached = s.attach_exits();
    if (!attached.ok()) return Status(attached.code(), who + attached.message());
    // Planned again with the exit heads' measured times.
    if (s.scheduler) {
      Status built = s.build_scheduler();
      if (!built.ok()) return Status(built.code(), who + built.message());
    }
  }
  if (s.scheduler) s.scheduler->set_max_head_cut(s.retain_cut);

  if (!s.cfg.cut.empty()) {
    auto cut = resolve_cut(s.cfg.cut, s.device_cut, s.known_cuts());
    if (!cut.ok()) return Status(cut.status().code(), who + cut.status().message());
    FramePlan f;
    f.cut = *cut;
    f.local = *cut == s.device_cut;
    f.encode = s.cfg.encode;
    f.jpeg_quality = s.cfg.jpeg_quality;
    if (f.jpeg_quality > 0 && f.cut != 0) {
      return invalid_argument(who + "a JPEG plan sends the input: use it with --cut input (0)");
    }
    if (f.cut > s.retain_cut) {
      return invalid_argument(who + "the memory bound leaves this stream the heads up to cut " +
                              std::to_string(s.retain_cut) + ", below its fixed cut " +
                              std::to_string(f.cut) +
                              ": raise --max-device-memory-mb or fix a shallower cut");
    }
    profiles::Encoding e;
    e.format = f.encode.format;
    e.bits = f.encode.bits;
    e.lossless = f.encode.lossless;
    e.per_channel = f.encode.per_channel;
    e.clip_percentile = f.encode.range.clip_percentile;
    e.jpeg_quality = f.jpeg_quality;
    f.encoding_name = f.local ? "local" : e.name();
    if (!f.local && !s.cfg.entropy_encoding.empty()) {
      // The coding table is the profile's, at this cut.
      const profiles::EncodingProfile* found = nullptr;
      std::string names;
      if (s.profile) {
        for (const auto& c : s.profile->cuts) {
          if (c.id != f.cut) continue;
          for (const auto& ep : c.encodings) {
            if (!ep.encoding.entropy_table) continue;
            names += (names.empty() ? "" : ", ") + ep.encoding.name();
            if (ep.encoding.name() == s.cfg.entropy_encoding) found = &ep;
          }
        }
      }
      if (!found) {
        return invalid_argument(
            who + "--bits " + s.cfg.entropy_encoding + " needs the profile's coding table at cut " +
            std::to_string(f.cut) + ", and " +
            (!s.profile      ? std::string("this stream has no profile")
             : names.empty() ? std::string("the profile has no entropy-coded encoding there")
                             : "the profile has only " + names + " there") +
            " (edgesplit-profile fits them: --entropy-bits)");
      }
      f.encode = found->encoding.encode_options();
      f.encoding_name = found->encoding.name();
    }
    if (!s.exit_heads.empty()) {
      f.exit_threshold = s.cfg.exit_thresholds.at(0);
      // The exits after the cut run on the server (when it runs them), those at or before it on
      // the device.
      f.server_exits = !f.local && s.exit_heads.back().cut >= 0 && f.cut < s.exit_heads.back().cut;
    }
    s.fixed = f;
    if (s.scheduler) {
      // Pinned: the scheduler predicts for the fixed plan when the profile has it.
      Status pinned = s.scheduler->pin(f.cut, f.encoding_name, 0, f.exit_threshold, f.server_exits);
      if (!pinned.ok()) s.scheduler.reset();
    }
    if (s.model && (f.local || s.model->can_run_head(f.cut))) {
      if (f.local) {
        s.model->prepare(s.device_cut);
      } else {
        s.model->prepare_head(f.cut);
      }
    }
  }
  // The exits' cuts are known now (the model's, where the profile did not name them), and the
  // fixed plan: whether the server runs this stream's exits, judged again.
  if (s.exit_set && s.served) {
    if (const ServedModel* m = s.link.served(s.digest)) s.note_server_exits(*m);
  }

  // One warm-up run of what the stream will run most (the whole model, or its deepest kept head),
  // so that the first measured time is not a cold one (graph building, the backend's first
  // primitives): a cold first frame would make the device-load estimate say the device is many
  // times slower than it is, and the scheduler would keep away from local plans.
  if (s.model && s.retain_cut > 0) {
    try {
      torch::NoGradGuard no_grad;
      set_threads(threads);
      s.model->prepare(s.retain_cut);
      run_on_zeros(*s.model, s.retain_cut, s.info.input_shape, kColdRuns, true);
      s.head_runs[s.retain_cut] = kColdRuns;
      // With exits, the parts between their cuts and on to the fixed plan's cut (or the deepest
      // kept one) too, passing every exit (a threshold of 1 lets no frame leave).
      const int exit_cut = s.fixed && !s.fixed->local ? s.fixed->cut : s.retain_cut;
      if (!s.exit_heads.empty() && exit_cut >= s.exit_heads.front().cut) {
        s.prepare_exits(*s.model, exit_cut);
        PendingFrame warm;
        warm.plan.exit_threshold = 1.0;
        bool continued = true;
        (void)s.run_with_exits(warm, *s.model, exit_cut,
                               torch::zeros(s.info.input_shape, torch::kFloat32), &continued);
      }
    } catch (const std::exception& e) {
      return internal_error(who + "the model failed its warm-up run: " + e.what());
    }
  }

  // A family's other members, whole, each warmed up once.
  for (Impl::Alternate& a : s.alternates) {
    partitioner::LoadOptions lo;
    lo.input_shape = a.info.input_shape;
    lo.engine = s.device.engine;
    lo.variant = a.member.variant;
    auto model = partitioner::ModelGraph::load(a.member.model, lo);
    if (!model.ok()) {
      return Status(model.status().code(),
                    who + "family member \"" + a.member.name + "\": " + model.status().message());
    }
    a.model = std::move(model).value();
    try {
      torch::NoGradGuard no_grad;
      set_threads(threads);
      a.model->prepare(a.device_cut);
      (void)a.model->run(torch::zeros(a.info.input_shape, torch::kFloat32));
    } catch (const std::exception& e) {
      return internal_error(who + "family member \"" + a.member.name +
                            "\" failed its warm-up run: " + e.what());
    }
  }

  imaging::SourceOptions so;
  so.max_frames = s.cfg.max_frames;
  so.loop = s.cfg.loop;
  auto source = imaging::open_source(s.cfg.input, so);
  if (!source.ok()) return Status(source.status().code(), who + source.status().message());
  s.source = std::move(source).value();

  s.window = s.cfg.in_flight > 0 ? static_cast<size_t>(s.cfg.in_flight)
             : (s.scheduler && s.cfg.scheduler.objective == partitioner::Objective::kThroughput)
                 ? 4
                 : 1;
  const bool throughput =
      s.scheduler && !s.fixed && s.cfg.scheduler.objective == partitioner::Objective::kThroughput;
  s.lane_beside_window =
      s.cfg.local_lane == LocalLane::kOn || (s.cfg.local_lane == LocalLane::kAuto && throughput);
  return Status();  // the local lane starts in prime()
}

void Stream::prime() {
  Impl& s = *impl_;
  // One more untimed run of what the stream runs most, and of each family member, on this thread
  // (the one that runs heads): releasing freed memory (malloc_trim) after loading gave the pages of
  // the load's warm-up runs back to the system, and the first head this thread ran afterwards
  // faulted them in again inside its time: 5,500-6,300 page faults and 0.7-1.7 s for MobileNetV2's
  // head at cut 27 under a 10x CPU quota, 50 ms warm. Freed activations then stay in this
  // thread's heap (set_compute_threads keeps the heap from trimming itself; the runtime trims
  // again only when a memory bound makes it drop or load a model), and heads, prefixes of the
  // model, reuse them.
  try {
    torch::NoGradGuard no_grad;
    set_threads(s.threads);
    if (s.model && s.retain_cut > 0) {
      run_on_zeros(*s.model, s.retain_cut, s.info.input_shape, 1, true);
    }
    for (Impl::Alternate& a : s.alternates) {
      if (a.model) (void)a.model->run(torch::zeros(a.info.input_shape, torch::kFloat32));
    }
    // The head of the split plan the scheduler starts with (as the ready line previews it),
    // built and run until warm now rather than in the first frame: on loopback the first frame
    // at MobileNetV2's cut 37 took a median of 101 ms without it, 76 ms with it (11 after).
    if (s.model && s.scheduler && !s.fixed) {
      s.take_server_wait();  // the calibration pings' report of the queue (the ready line's too)
      const partitioner::Decision d = s.preview_decision();
      const int cut = d.plan.cut_id;
      if (!d.plan.local && d.plan.member == 0 && !d.plan.exit_threshold && cut > 0 &&
          cut != s.retain_cut && s.model->can_run_head(cut) && !s.model->head_built(cut)) {
        s.model->prepare_head(cut);
        run_on_zeros(*s.model, cut, s.info.input_shape, kColdRuns, false);
        s.head_runs[cut] += kColdRuns;
      }
    }
  } catch (const std::exception&) {
    // The model's runs passed in load(); a failure here (the new head's build) is met again, and
    // reported, by the frame that needs it.
  }
  // After the release too: the lane's own warm-up keeps its thread's pages. Its warm-up holds the
  // compute token, and the first frame waited for it (69.7 ms with the lane, 13.0-22.1 without,
  // on loopback, MobileNetV2): it ends here, before the ready line (frame 0 then took 14.2 ms).
  s.start_lane_if_wanted();
  if (s.lane) s.lane->wait_until_warm();
}

bool Stream::adaptable() const {
  const Impl& s = *impl_;
  return s.profile && s.scheduler && s.cfg.cut.empty() && s.refused.empty() && !finished() &&
         !s.family();
}

int Stream::retain_cut() const { return impl_->model ? impl_->retain_cut : 0; }

bool Stream::release_model() {
  Impl& s = *impl_;
  if (!s.model) return true;
  if (s.lane_busy() || !s.pending.empty()) return false;
  s.lane.reset();
  s.model.reset();
  s.retain_cut = 0;
  (void)s.load_exit_modules(0);  // lets every exit head go
  if (s.scheduler) {
    s.scheduler->set_max_head_cut(0);
    s.scheduler->forget_current();
  }
  return true;
}

void Stream::load_model_async(int retain_cut) {
  Impl& s = *impl_;
  if (s.pending_load.valid()) return;
  s.pending_retain = retain_cut;
  const partitioner::LoadOptions lo = s.load_options(retain_cut);
  const std::string path = s.cfg.model_path;
  const std::vector<int64_t> shape = s.info.input_shape;
  ComputeToken* token = &s.token;
  const int threads = s.threads;
  // The exit heads held with these heads, loaded on the same thread.
  std::vector<std::pair<size_t, Impl::ExitRunner>> exits;
  for (size_t i = 0; i < s.exit_heads.size(); ++i) {
    const Impl::ExitRunner& x = s.exit_heads[i];
    if (!x.loaded && Impl::holds_exit(x, retain_cut)) {
      Impl::ExitRunner what;
      what.module_path = x.module_path;
      what.input_shape = x.input_shape;
      exits.emplace_back(i, std::move(what));
    }
  }
  const partitioner::Engine engine = s.device.engine;
  s.pending_load = std::async(
      std::launch::async,
      [lo, path, shape, token, threads, retain_cut, exits, engine]() -> Result<Impl::LoadedModel> {
        Impl::LoadedModel out;
        for (const auto& [i, x] : exits) {
          auto module = partitioner::load_exit_head(x.module_path, x.input_shape, engine);
          if (!module.ok()) return module.status();
          out.exits.emplace_back(i, std::move(module).value());
        }
        auto model = partitioner::ModelGraph::load(path, lo);
        if (!model.ok()) return model.status();
        try {
          ComputeToken::Hold hold(*token, INT_MIN, TimePoint::max());
          set_threads(threads);
          torch::NoGradGuard no_grad;
          (*model)->prepare(retain_cut);
          auto crossing = (*model)->run_head(retain_cut, torch::zeros(shape, torch::kFloat32));
          if ((*model)->can_run_tail(retain_cut)) (void)(*model)->run_tail(retain_cut, crossing);
        } catch (const std::exception& e) {
          return internal_error(std::string("the model failed its warm-up run: ") + e.what());
        }
        out.model = std::move(model).value();
        return out;
      });
}

bool Stream::loading() const { return impl_->pending_load.valid(); }

bool Stream::adopt_loaded_model(std::string* error) {
  Impl& s = *impl_;
  if (!s.pending_load.valid()) return false;
  if (s.pending_load.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return false;
  auto loaded = s.pending_load.get();
  if (!loaded.ok()) {
    if (error) *error = loaded.status().message();
    return true;
  }
  s.model = std::move(loaded->model);
  for (auto& [i, module] : loaded->exits) {
    s.exit_heads.at(i).module = std::move(module);
    s.exit_heads.at(i).loaded = true;
  }
  s.retain_cut = s.pending_retain;
  if (s.scheduler) {
    s.scheduler->set_max_head_cut(s.retain_cut);
    s.scheduler->forget_current();
  }
  s.start_lane_if_wanted();
  return true;
}

void Stream::refuse(const std::string& reason) {
  impl_->refused = reason;
  imaging::SourceOptions so;
  so.max_frames = impl_->cfg.max_frames;
  so.loop = impl_->cfg.loop;
  auto source = imaging::open_source(impl_->cfg.input, so);
  if (source.ok()) impl_->source = std::move(source).value();
  impl_->log(reason);
}

int64_t Stream::retained_weight_bytes() const {
  return impl_->model ? impl_->model->retained_weight_bytes() : 0;
}

namespace {

std::string number_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

std::string Stream::goal() const {
  const Impl& s = *impl_;
  if (!s.cfg.cut.empty()) {
    std::string enc = s.cfg.jpeg_quality > 0 ? "jpeg" + std::to_string(s.cfg.jpeg_quality)
                      : !s.cfg.entropy_encoding.empty()
                          ? s.cfg.entropy_encoding
                          : packing::precision_name(s.cfg.encode.format, s.cfg.encode.bits);
    if (s.cfg.jpeg_quality == 0 && s.cfg.encode.lossless != packing::Lossless::kNone) {
      enc += "+" + packing::lossless_name(s.cfg.encode.lossless);
    }
    const bool local = s.cfg.cut == "device" || s.cfg.cut == "local";
    const std::string exits =
        s.cfg.exits_path.empty()
            ? ""
            : ", early exits at threshold " + number_text(s.cfg.exit_thresholds.at(0));
    return local
               ? "fixed plan: every frame on the device" + exits
               : "fixed plan: cut " + s.cfg.cut + " " + enc + exits + " (no objective, no bounds)";
  }
  const auto& k = s.cfg.scheduler.constraints;
  std::string out = std::string("objective ") +
                    partitioner::objective_name(s.cfg.scheduler.objective) + "; bounds: ";
  std::string bounds;
  auto add = [&](const std::string& b) { bounds += (bounds.empty() ? "" : ", ") + b; };
  if (k.max_accuracy_drop_pp) {
    const double conf = s.cfg.scheduler.accuracy_confidence;
    add("top-1 drop <= " + number_text(*k.max_accuracy_drop_pp) +
        (*k.max_accuracy_drop_pp == 1 ? " point" : " points") +
        (conf > 0 ? " at the upper end of its " + number_text(100 * conf) + "% interval" : "") +
        (s.cfg.default_accuracy_bound ? " (the default; --max-accuracy-drop none lifts it)" : ""));
  }
  if (k.max_latency_ms) add("latency <= " + number_text(*k.max_latency_ms) + " ms");
  if (k.min_fps) add("fps >= " + number_text(*k.min_fps));
  if (k.max_bytes) add("bytes/frame <= " + number_text(*k.max_bytes));
  if (k.max_device_memory_mb) {
    add("head memory <= " + number_text(*k.max_device_memory_mb) + " MB");
  }
  if (k.max_server_ms) add("server ms <= " + number_text(*k.max_server_ms));
  if (s.device.max_device_memory_mb) {
    add("process memory <= " + number_text(*s.device.max_device_memory_mb) + " MiB");
  }
  out += bounds.empty() ? "none (top-1 may drop: the accuracy bound is lifted)" : bounds;
  if (s.cfg.scheduler.objective == partitioner::Objective::kData) {
    out += "; the data objective runs frames on the device (0 bytes) unless a bound rules it out";
  }
  if (!s.cfg.exits_path.empty()) out += "; plans with and without early exits";
  return out;
}

bool Stream::served() const { return impl_->served; }

bool Stream::offloaded_any() const {
  const json& j = impl_->summary_json;
  return j.is_object() && j.value("on_server", uint64_t{0}) > 0;
}

std::string Stream::main_local_reason() const {
  const json& j = impl_->summary_json;
  if (!j.is_object() || !j.contains("local_reasons")) return "";
  std::string best;
  uint64_t most = 0;
  for (const auto& [k, v] : j["local_reasons"].items()) {
    if (k == "plan" || k == "local lane" || k == "device probe" || !v.is_number_unsigned()) {
      continue;
    }
    if (v.get<uint64_t>() > most) {
      most = v.get<uint64_t>();
      best = k;
    }
  }
  return best;
}

void Stream::ready(double startup_s) {
  Impl& s = *impl_;
  s.on_handshake();
  s.run_start = Clock::now();
  json j;
  j["type"] = "ready";
  j["stream"] = s.cfg.name;
  j["model"] = fs::path(s.cfg.model_path).stem().string();
  j["model_digest"] = s.digest;
  if (!s.cfg.variant.empty()) j["variant"] = s.cfg.variant.label();
  if (s.family()) {
    json members = json::array();
    members.push_back({{"name", s.reference_name}, {"digest", s.digest}, {"reference", true}});
    for (const auto& a : s.alternates) {
      members.push_back(
          {{"name", a.member.name},
           {"digest", a.digest},
           {"variant", a.member.variant.label()},
           {"drop_pp", a.member.accuracy->drop_pp},
           {"drop_interval_pp", {a.member.accuracy->low_pp, a.member.accuracy->high_pp}},
           {"device_ms", a.profile.cuts.back().head.median_ms},
           {"served", a.served}});
    }
    j["family"] = {{"manifest", s.cfg.family_path}, {"members", members}};
  }
  j["server"] = s.device.server;
  j["connected"] = s.server_usable();
  j["link"] = link_state_name(s.link.state());
  j["plan"] = s.scheduler && !s.fixed ? "scheduler" : "fixed";
  j["goal"] = goal();
  if (s.scheduler && !s.fixed) {
    j["objective"] = partitioner::objective_name(s.cfg.scheduler.objective);
    const auto& k = s.cfg.scheduler.constraints;
    json bounds = json::object();
    if (k.max_accuracy_drop_pp) {
      bounds["max_accuracy_drop"] = *k.max_accuracy_drop_pp;
      bounds["accuracy_confidence"] = s.cfg.scheduler.accuracy_confidence;
    }
    if (k.max_latency_ms) bounds["max_latency_ms"] = *k.max_latency_ms;
    if (k.min_fps) bounds["min_fps"] = *k.min_fps;
    if (k.max_bytes) bounds["max_bytes_per_frame"] = *k.max_bytes;
    if (k.max_device_memory_mb) bounds["max_device_memory_mb"] = *k.max_device_memory_mb;
    if (k.max_server_ms) bounds["max_server_ms"] = *k.max_server_ms;
    j["constraints"] = bounds;
    j["default_accuracy_bound"] = s.cfg.default_accuracy_bound;
    const partitioner::Decision d = s.preview_decision();
    json plan{{"cut", d.plan.cut_id},
              {"cut_name", d.plan.cut_name},
              {"encoding", d.plan.encoding_name},
              {"feasible", d.feasible},
              {"predicted_latency_ms", round3(d.predicted.latency_ms)},
              {"predicted_bytes", round3(d.plan.local ? 0 : d.predicted.bytes)}};
    if (!d.feasible) plan["explanation"] = d.explanation;
    if (d.plan.exit_threshold) {
      plan["exit_threshold"] = *d.plan.exit_threshold;
      plan["predicted_exit_rate"] = round3(d.predicted.exit_rate);
    }
    if (s.family()) {
      plan["member"] =
          d.plan.member == 0 ? s.reference_name : s.alternate(d.plan.member)->member.name;
    }
    j["initial_plan"] = plan;
  }
  if (s.exit_set) {
    json heads = json::array();
    for (const auto& x : s.exit_heads) {
      heads.push_back({{"position", x.position},
                       {"cut", x.cut},
                       {"cut_name", x.cut_name},
                       {"ms", round3(x.ms)}});
    }
    json thresholds = json::array();
    for (const auto& l : s.exit_set->cascade) thresholds.push_back(l.threshold);
    j["exits"] = {{"file", s.cfg.exits_path}, {"heads", heads}, {"thresholds", thresholds}};
    if (s.fixed && s.fixed->exit_threshold) j["exits"]["threshold"] = *s.fixed->exit_threshold;
  }
  j["priority"] = s.cfg.priority;
  if (s.cfg.fps > 0) j["fps"] = s.cfg.fps;
  if (s.latency_bound()) {
    j["max_latency_ms"] = *s.latency_bound();
    j["bound_quantile"] = s.cfg.bound_quantile;
    if (s.bound_share) j["bound_share"] = s.cfg.bound_share;
  }
  j["retain_cut"] = s.retain_cut;
  j["holds"] = !s.model                ? "nothing (server-only)"
               : s.holds_whole_model() ? "whole model"
                                       : "heads up to cut " + std::to_string(s.retain_cut);
  j["in_flight"] = s.window;
  j["local_lane"] = s.lane != nullptr;
  j["head_overhead"] = s.head_overhead_timed() ? "auto" : "off";
  if (s.family()) j["member_corrections"] = s.cfg.member_corrections ? "on" : "off";
  j["engine"] = s.model ? s.model->engine_report().summary() : "none (no model held)";
  if (!s.server_engine.empty()) j["server_engine"] = s.server_engine;
  j["threads"] = s.threads > 0 ? s.threads : at::get_num_threads();
  j["startup_s"] = round3(startup_s);
  if (!s.refused.empty()) j["refused"] = s.refused;
  s.reporter.emit(j);
  // A terminal already shows the ready line as text.
  if (!s.reporter.readable()) {
    s.log("engine: " + j["engine"].get<std::string>() +
          (s.server_engine.empty() ? "" : "; server: " + s.server_engine));
  }
}

void Stream::on_handshake() { impl_->on_handshake(); }
void Stream::set_link_share(double share) { impl_->link_share = share; }
double Stream::demanded_bytes_per_s() const {
  const Impl& s = *impl_;
  if (s.last_plan_local || !(s.last_bytes > 0)) return 0;
  double rate = s.cfg.fps > 0 ? s.cfg.fps : (s.last_period_ms > 0 ? 1000.0 / s.last_period_ms : 0);
  return s.last_bytes * rate;
}

StreamEnergyView Stream::energy_view() const {
  const Impl& s = *impl_;
  StreamEnergyView v;
  v.name = s.cfg.name;
  v.fps = s.cfg.fps;
  v.max_latency_ms = s.latency_bound();
  v.threads = s.threads;
  v.running = !s.eof && s.refused.empty() && s.started(Clock::now());
  v.fixed = s.fixed.has_value();
  if (!v.running || !s.scheduler || v.fixed) return v;
  using partitioner::Constraint;
  for (const auto& e : s.scheduler->evaluate_all(s.conditions())) {
    if (!e.available) continue;
    bool meets = true;
    for (Constraint k :
         {Constraint::kAccuracyDrop, Constraint::kBytes, Constraint::kDeviceMemory}) {
      if (e.violations[static_cast<size_t>(k)] > 0) meets = false;
    }
    if (meets) v.plans.push_back(e.metrics);
  }
  return v;
}

bool Stream::started() const { return impl_->started(Clock::now()); }

void Stream::set_device_power(const partitioner::DevicePower& power) {
  if (impl_->scheduler) impl_->scheduler->set_power(power);
}

bool Stream::gpu_available() { return torch::cuda::is_available(); }

void Stream::expire_overdue() { impl_->expire_overdue(); }
void Stream::drain_lane() { impl_->drain_lane(); }
void Stream::on_reply(transport::ReceivedReply reply) { impl_->on_reply(std::move(reply)); }

bool Stream::frame_ready(TimePoint now, TimePoint* deadline) {
  return impl_->frame_ready(now, deadline);
}
void Stream::start_frame() { impl_->start(); }

void Stream::stop() {
  impl_->eof = true;
  impl_->next.reset();
}

bool Stream::finished() const {
  const Impl& s = *impl_;
  return s.eof && !s.next && s.pending.empty() && !s.lane_busy();
}

TimePoint Stream::next_wake() const {
  const Impl& s = *impl_;
  TimePoint t = TimePoint::max();
  for (const auto& p : s.pending) t = std::min(t, p.deadline);
  if (s.next && s.cfg.fps > 0 && s.pending.size() < s.window) t = std::min(t, s.next_arrival);
  return t;
}

int Stream::lane_fd() const { return impl_->lane ? impl_->lane->wake_fd() : -1; }
bool Stream::lane_busy() const { return impl_->lane_busy(); }

int Stream::misses_since_last_check() {
  int m = impl_->misses;
  impl_->misses = 0;
  return m;
}

void Stream::summary() {
  Impl& s = *impl_;
  StreamSummaryInfo info;
  info.stream = s.cfg.name;
  info.late_replies = s.link.late_replies(s.index);
  info.plan_changes = s.stats.plan_changes;
  info.probes = s.link.probes_sent();
  info.server_probes = s.stats.server_probes;
  if (s.lane) {
    info.local_lane = s.stats.lane + s.stats.lane_planned;
    info.local_lane_beside_window = s.stats.lane;
  }
  // Per cut of one tracker: its samples, measured / profiled and correction.
  auto head_stats = [](const partitioner::HeadErrorTracker& errors) {
    json out = json::object();
    for (const auto& [cut, e] : errors.stats()) {
      out[std::to_string(cut)] = {{"frames", e.samples},
                                  {"measured_over_profiled_p50", round3(e.median_ratio)},
                                  {"correction", round3(e.correction)}};
    }
    return out;
  };
  if (json heads = head_stats(s.head_errors); !heads.empty()) info.heads = std::move(heads);
  for (const auto& [member, errors] : s.member_errors) {
    json heads = head_stats(errors);
    if (!heads.empty()) info.member_heads[s.alternate(member)->member.name] = std::move(heads);
  }
  // Per-cut counts, also for cuts with no sample yet (cold runs only, or every head beside a
  // warm-up).
  auto add_count = [&info](const std::map<int, int>& counts, const char* key) {
    for (const auto& [cut, n] : counts) {
      if (info.heads.is_null()) info.heads = json::object();
      json& h = info.heads[std::to_string(cut)];
      if (!h.contains("frames")) h = {{"frames", 0}, {"correction", 1.0}};
      h[key] = n;
    }
  };
  add_count(s.stats.explored, "explored");
  add_count(s.stats.beside_warm_up, "beside_warm_up");
  add_count(s.stats.held, "held");
  if ((!s.stats.explored.empty() || s.explore_cost_ms > 0) && s.frames_ms > 0) {
    info.explore_cost_fraction = std::round(s.explore_cost_ms / s.frames_ms * 1e4) / 1e4;
  }
  info.max_latency_ms = s.latency_bound();
  if (s.bound_share) {
    info.bound_share = {{"target", s.cfg.bound_share},
                        {"recent_within", round3(s.bound_share->share_within())},
                        {"quantile", round3(s.bound_share->quantile())}};
  }
  info.wall_s = ms_between(s.run_start, Clock::now()) / 1000.0;
  info.name_in_log = s.device.streams.size() > 1;
  s.summary_json = s.reporter.summary(info);
}

const json& Stream::summary_json() const { return impl_->summary_json; }

}  // namespace edgesplit::device
