// Scheduler: chooses, for every frame, where to cut the model and how to encode what crosses the
// cut, from a profile (what each plan costs on this hardware) and the current Conditions (what the
// estimators measure), under the user's objective and constraints. Every (cut, encoding) of the
// profile is a plan, plus the device-only plan (the last cut); each decision evaluates all of them
// with the cost model of DESIGN.md. Plans may also carry early exits (ExitOption): a frame that an
// exit head on the device (or, past the cut, on the server) is confident about leaves there. Free
// of LibTorch.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "packing/status.h"
#include "partitioner/estimators.h"
#include "profiles/profile.h"

namespace edgesplit::partitioner {

// What to optimise.
enum class Objective {
  kLatency,     // minimise the predicted latency of one frame
  kThroughput,  // maximise pipelined frames per second (several frames in flight)
  kEnergy,      // minimise device energy per frame
  kData,        // minimise bytes sent per frame
  kCost,        // minimise server cost per frame (tail time x price)
  kAccuracy,    // minimise the top-1 points lost (what the accuracy bound is checked against):
                // the most accurate plan that meets the other bounds (a latency bound, mostly),
                // among a family's members (create_family) and encodings
};

// "latency", "throughput", "energy", "data", "cost", "accuracy".
const char* objective_name(Objective objective);
Result<Objective> parse_objective(const std::string& name);

// The constraints a plan can violate, in the order Decision::excluded_by counts them.
enum class Constraint {
  kAccuracyDrop,  // max_accuracy_drop_pp
  kLatency,       // max_latency_ms
  kFps,           // min_fps
  kBytes,         // max_bytes
  kDeviceMemory,  // max_device_memory_mb
  kServerMs,      // max_server_ms
};
inline constexpr int kConstraintCount = 6;

// The option name of a constraint: "max_accuracy_drop_pp", "max_latency_ms", "min_fps",
// "max_bytes", "max_device_memory_mb", "max_server_ms".
const char* constraint_name(Constraint constraint);

// Bounds a plan must meet; any combination, unset ones do not apply.
struct Constraints {
  // Top-1 drop vs the fp32 model, in percentage points: (fp32_top1 - encoding top1) x 100.
  std::optional<double> max_accuracy_drop_pp;
  std::optional<double> max_latency_ms;
  std::optional<double> min_fps;
  std::optional<double> max_bytes;  // bytes sent per frame
  // Head weights + head activations (CutProfile) in MB of 2^20 bytes.
  std::optional<double> max_device_memory_mb;
  // Server compute per frame: unpack + tail x server load (queueing excluded).
  std::optional<double> max_server_ms;
};

// Device power draw, for the energy objective. The defaults are ballpark figures for a
// phone-class or single-board ARM device, not a measurement of any particular one: compute 2.5 W
// is the extra draw of a quad-core Cortex-A7x cluster running a CNN flat out (a Raspberry Pi 4
// draws roughly 3 W more under a CPU stress test than idle); radio 1.2 W is an actively
// transmitting Wi-Fi or LTE radio (phone measurements put it between about 0.5 and 1.5 W); idle
// 0.3 W is the SoC waiting for the reply with the radio in power save. Measure and override them
// (a device description file) for real numbers.
struct DevicePower {
  std::string name = "default";
  double compute_watts = 2.5;
  double radio_watts = 1.2;
  double idle_watts = 0.3;
};

// Parses a device description: a JSON object with any of "name", "compute_watts",
// "radio_watts", "idle_watts" (absent keys keep the defaults above), e.g.
//   {"name": "rpi4", "compute_watts": 3.1, "radio_watts": 0.9, "idle_watts": 0.4}
// An unknown key, a wrong type or a negative power fails with kInvalidArgument naming the key.
Result<DevicePower> parse_device_power(const std::string& json_text);
// Reads parse_device_power's format from a file (kNotFound when it cannot be opened).
Result<DevicePower> load_device_power(const std::string& path);

struct SchedulerOptions {
  Objective objective = Objective::kLatency;
  Constraints constraints;
  DevicePower power;
  double server_price_per_s = 0;  // price of one second of server compute, for the cost objective
  // Hysteresis: the current plan is kept unless the best plan is better (in the objective, or in
  // violation when nothing is feasible) by more than `switch_margin` (relative), or by more than
  // `switch_min_gain` in `switch_after` consecutive decisions (the same challenger each time).
  // A current plan that became infeasible or unavailable is left at once.
  double switch_margin = 0.10;
  double switch_min_gain = 0.02;
  int switch_after = 8;
  // A band around the bounds that depend on the conditions (max_latency_ms, min_fps,
  // max_server_ms), so a plan sitting on a bound does not flap in and out of feasibility with
  // the noise: the current plan is kept while it violates them by at most this normalised
  // amount (the Decision then says so: feasible = false with the reason), and a feasible current
  // plan is only replaced by one that meets them with this much to spare.
  double constraint_margin = 0.05;
  // Feasible plans whose objective lies within this fraction of the best one count as equally
  // good, and the fastest of them (lowest predicted latency) is chosen: saving 2% of server time
  // or energy is not worth a plan twice as slow, and the profile's times are not that precise
  // anyway. 0: the objective alone decides (latency only breaks exact ties).
  double objective_tolerance = 0.05;
  // The accuracy a plan is judged by: 0 takes the profile's point estimate of the top-1 points
  // lost; a confidence in (0, 1) takes the upper end of the loss's interval at that confidence
  // (profiles/accuracy_interval.h, from the paired counts of the scored images), so a plan whose
  // loss is not known to within the bound is not feasible and no encoding is credited with a gain
  // beyond its interval. Encodings of a profile without paired counts keep the point estimate
  // (accuracy_intervals_known() says so).
  double accuracy_confidence = 0;
  // Frames the device keeps on their way at once: the pipelined period is at least latency /
  // in_flight (a window of 1 runs one frame at a time). 0: no window (the stages alone).
  int in_flight = 0;
};

// One plan: a cut and an encoding, or the device-only plan (of one member of a family).
struct Plan {
  int index = 0;   // position in Scheduler::plans()
  int member = 0;  // the family member whose plan it is (0 outside families)
  int cut_id = 0;
  std::string cut_name;
  bool local = false;             // device-only: nothing is sent
  profiles::Encoding encoding;    // unused when local
  std::string encoding_name;      // Encoding::name(); "local" for the device-only plan
  double profiled_head_ms = 0;    // to feed DeviceLoadEstimator with the measured head time
  double profiled_server_ms = 0;  // unpack + tail: to fill Exchange::profiled_server_ms
  double bytes = 0;               // bytes_mean from the profile
  // An early-exit variant of the plan (ExitOption): its threshold and the cuts of the exits a
  // frame passes on the device, rising. Unset: no exit (every plan create() makes).
  std::optional<double> exit_threshold;
  std::vector<int> exit_cuts;
  // The exits of exit_cuts after cut_id are on the server (ExitOption::server): the device sends
  // every frame that did not leave at an exit on the device with the threshold, and the server's
  // tail stops at the first exit that is confident enough.
  bool server_exits = false;
};

// A plan's predicted costs under some Conditions. Latency = head + pack + transfer + rtt + queue
// + unpack + tail (each already scaled by the load factors).
struct PlanMetrics {
  double head_ms = 0;
  double pack_ms = 0;
  double transfer_ms = 0;
  double rtt_ms = 0;
  double queue_ms = 0;
  double unpack_ms = 0;
  double tail_ms = 0;
  double latency_ms = 0;
  double period_ms = 0;  // pipelined: slowest stage of head + pack, transfer, unpack + tail, and
                         // latency / in_flight
  double fps = 0;        // pipelined throughput, 1000 / period_ms
  double energy_j = 0;   // device energy per frame
  double bytes = 0;
  double server_ms = 0;               // unpack + tail
  double cost = 0;                    // server_ms x price
  double accuracy_drop_pp = 0;        // what the bound is checked against (see accuracy_confidence)
  double accuracy_drop_point_pp = 0;  // the profile's point estimate
  double device_memory_mb = 0;
  // Early exits: the fraction of frames predicted to leave at an exit (0 without), and the
  // latency of a frame that does not (what max_latency_ms is checked against: the bound holds
  // per frame, as max_bytes does, checked against the bytes of a frame that goes on). Without
  // exits latency_slowest_ms = latency_ms; with them latency_ms and every other value above are
  // expectations over the frames that leave and those that go on.
  double exit_rate = 0;
  double latency_slowest_ms = 0;
};

// A plan evaluated under some Conditions against the scheduler's objective and constraints.
struct PlanEstimate {
  int plan = 0;           // index into Scheduler::plans()
  bool available = true;  // false: remote while there is no link or no server
  PlanMetrics metrics;
  bool feasible = true;
  double violation = 0;  // sum of normalised violations (see Scheduler::violation)
  std::array<double, kConstraintCount> violations{};
  double score = 0;  // the objective as a cost (lower is better; period_ms for throughput)
};

// What decide() returns each frame.
struct Decision {
  Plan plan;
  PlanMetrics predicted;
  bool feasible = true;
  // When `feasible` is false: the violated constraint that binds (constraint_name), and one
  // sentence saying so with the predicted value and the bound.
  std::string binding_constraint;
  std::string explanation;
  bool changed = false;  // a different plan than the previous decision's
  bool pinned = false;
  int available_plans = 0;  // plans that could run under these conditions
  int feasible_plans = 0;   // ... and meet every constraint
  // Per constraint: how many available plans violate it (one plan can count in several).
  std::array<int, kConstraintCount> excluded_by{};
};

// Early exits on the device at one threshold (profiles/exits.h as the scheduler sees it): the
// exits a frame passes, each with the fraction of all frames that leave there. Every plan of
// member 0 whose cut lies in [min_cut, max_cut] (the device-only plan included) gets a variant
// with them: a frame leaving at exit i costs the model's head up to that exit's cut and the exit
// heads up to i, and is finished on the device (nothing sent); the others run every exit head and
// then the plan as it is (the head continues from the last exit's cut). The variant loses the
// plan's points plus the cascade's against the whole model (the sum of the upper ends with
// accuracy_confidence > 0: conservative, as for family members).
//
// Exits on the server (server = true) apply to the remote plans of member 0 whose cut lies in
// [min_cut, max_cut], before the first exit's cut: every frame is sent; the server runs the tail
// to the first exit's cut and that exit head, and answers a frame that leaves there; the others go
// on to the next exit, and past the last one to the end. Expected server time = unpack + the
// tail up to exit 1 + exit_1 + sum over later exits of P(still there) x (the part between the
// exits + the exit head) + P(not leaving) x the rest of the tail; latency and energy follow it,
// bytes do not change (every frame is sent). The tail up to an exit is the plan's tail less the
// tail from the exit's cut (ExitStage::tail_ms, replaced by set_server_tail_ms as the plans' tail
// times are). Such plans are available only while set_server_exits says the server holds the
// exits.
//
// Exits on both sides (server = true with stages at or before min_cut): a plan cutting between
// two exits runs the exits at or before its cut on the device, as above, and sends the frames
// that did not leave there; the server runs the exits after the cut, as above, for those frames
// (the server stages' rates, fractions of all frames, are taken over the frames sent). The
// expected metrics are the device exits' mix over (the frames leaving on the device, the frames
// sent with their expected server time); a frame that leaves nowhere runs every exit head.
struct ExitStage {
  int cut_id = 0;
  double head_ms = 0;  // the model's head up to this exit's cut (profiled; device exits)
  double exit_ms = 0;  // the exit head itself (on the side it runs on)
  double rate = 0;     // fraction of all frames that leave here
  double tail_ms = 0;  // server exits: the model's tail from this exit's cut (what a frame leaving
                       // here does not run)
  bool on_server = false;  // set by create_family: server option, cut after the plan's
};
struct ExitOption {
  double threshold = 0;
  std::vector<ExitStage> stages;  // cuts rising
  int min_cut = 0;                // the plans' cuts it applies to
  int max_cut = 0;
  double drop_point_pp = 0;  // the cascade's top-1 loss against the whole model
  double drop_high_pp = 0;   // ... its upper end at the scheduler's accuracy_confidence
  bool server = false;       // the exits after the plan's cut run on the server; the others
                             // (cuts <= min_cut) on the device
};

// A member of a model family (profiles/family.h) as the scheduler sees it: its profile (what its
// plans cost and lose against its own fp32) and what its own fp32 loses against the family's
// reference on the same images (the family table's paired drop). A plan's loss against the
// reference is the member's loss plus the plan's; with accuracy_confidence > 0 the bound is
// checked against the sum of the two upper ends (conservative: the two losses are not independent).
struct FamilyMemberPlans {
  std::string name;
  const profiles::Profile* profile = nullptr;  // read by create_family only
  double drop_point_pp = 0;
  double drop_high_pp = 0;  // upper end at the scheduler's accuracy_confidence
  bool remote = true;       // false: only its device-only plan (no server serves it)
  // Early-exit options (member 0's only; ignored for the others). Their variants come after
  // every other plan, so the indices of those do not depend on them.
  std::vector<ExitOption> exits;
};

// The plan chooser. Holds the profile's plans, the options and the hysteresis state (the current
// plan). Not thread-safe: one decision at a time (the device agent calls it from its loop).
class Scheduler {
 public:
  // Fails with kInvalidArgument when the profile has no cuts or an option is out of range.
  static Result<Scheduler> create(const profiles::Profile& profile, SchedulerOptions options = {});
  // A scheduler over every plan of every member of a family: (member, cut, encoding). Member 0
  // comes first (the family's reference, normally); its remote plans keep the indices create()
  // would give them. The device-only plans of all members come last, member 0's first
  // (local_plan() is member 0's). set_max_head_cut, set_head_correction, set_server_tail_ms and
  // pin act on member 0's plans unless a member is given. kInvalidArgument for no members, a
  // member without a profile or with no cuts, or a loss that is not a finite number.
  static Result<Scheduler> create_family(const std::vector<FamilyMemberPlans>& members,
                                         SchedulerOptions options = {});

  // Evaluates every plan under `conditions` and returns the plan for the next frame. Without a
  // feasible plan it falls back, visibly (feasible = false), to the least-violating one. A pinned
  // plan is returned as is, with its predictions and feasibility, without a search (the plan
  // counts of the Decision then stay 0).
  Decision decide(const Conditions& conditions);

  // Pins a plan (baselines, debugging): `encoding_name` as Encoding::name(); for the last cut
  // (device-only) it is ignored. With `exit_threshold`, the plan's early-exit variant at that
  // threshold: with `server_exits`, the one whose exits after the cut run on the server (for a
  // cut before the exits, all of them); otherwise the one on the device. kNotFound with the
  // available names when there is no such plan.
  Status pin(int cut_id, const std::string& encoding_name, int member = 0,
             std::optional<double> exit_threshold = std::nullopt, bool server_exits = false);
  void unpin() { pinned_.reset(); }
  // Forgets the current plan: the next decision takes the best plan without hysteresis.
  void forget_current() {
    current_.reset();
    challenger_ = -1;
    challenger_streak_ = 0;
  }

  // Takes a remote plan out of the choice for good (the server refused it: it cannot decode that
  // encoding, or does not serve that cut); the next decision moves off it if it is current.
  // The device-only plan cannot be excluded.
  void exclude(int plan) {
    if (plan >= 0 && plan < static_cast<int>(costs_.size()) &&
        !costs_[static_cast<size_t>(plan)].local) {
      costs_[static_cast<size_t>(plan)].excluded = true;
    }
  }
  bool excluded(int plan) const {
    return plan >= 0 && plan < static_cast<int>(costs_.size()) &&
           costs_[static_cast<size_t>(plan)].excluded;
  }

  // The deepest cut whose head the device holds (the resource manager's memory budget): plans
  // cutting deeper, and the device-only plan unless `max_head_cut` is the last cut, are not
  // available. nullopt: no limit. Unlike exclude() this can be changed any time. With no plan
  // available at all (no server, and no whole model on the device), decide() returns the
  // device-only plan with available_plans = 0: the caller cannot run the frame.
  void set_max_head_cut(std::optional<int> max_head_cut);  // member 0's plans
  std::optional<int> max_head_cut() const { return max_head_cut_; }

  // Whether the server holds the exits of the server-exit plans (the handshake lists them):
  // without, those plans are not available (they are, until this is called). With `exit_ms`
  // (cut id -> the server's time of the exit head at that cut), their exit heads' times are
  // replaced. Changing it does not touch the pin or the hysteresis state.
  void set_server_exits(bool held, const std::vector<std::pair<int, double>>& exit_ms = {});
  bool server_exits_held() const { return server_exits_held_; }

  // The server's own unpack-free tail time per cut (from the handshake), in the profile's cut
  // order; replaces the profile's tail times in place, keeping exclusions, the pin and the
  // hysteresis state. kInvalidArgument (nothing changed) when the count differs from the
  // profile's cuts or a time is negative or not finite. Returns whether anything changed.
  Result<bool> set_server_tail_ms(const std::vector<double>& tail_ms, int member = 0);

  // A factor on the profile's head time at `cut_id` (HeadErrorTracker's correction: the profile
  // misjudged that head on this device), applied before the device-load factor; 1 removes it.
  // kInvalidArgument for a factor that is not finite and positive.
  Status set_head_correction(int cut_id, double factor, int member = 0);
  double head_correction(int cut_id, int member = 0) const;

  Status set_constraints(const Constraints& constraints);
  void set_objective(Objective objective) { options_.objective = objective; }
  // The device's power (the energy objective's figures), e.g. at a new clock level.
  void set_power(const DevicePower& power) { options_.power = power; }
  const SchedulerOptions& options() const { return options_; }
  // Whether every remote plan's accuracy has an interval (the profile has paired counts); false
  // when accuracy_confidence > 0 falls back to point estimates for some.
  bool accuracy_intervals_known() const { return intervals_known_; }

  const std::vector<Plan>& plans() const { return plans_; }
  // Index of the device-only plan in plans().
  // (member 0's; a family's other members' with local_plan(member)).
  int local_plan() const { return local_plans_.front(); }
  int local_plan(int member) const { return local_plans_.at(static_cast<size_t>(member)); }
  // Members of the family (1 for create()) and their names ("" for create()).
  int members() const { return static_cast<int>(member_names_.size()); }
  const std::string& member_name(int member) const {
    return member_names_.at(static_cast<size_t>(member));
  }
  std::optional<int> current_plan() const { return current_; }

  // Predictions for one plan / every plan (no hysteresis state is touched).
  PlanEstimate evaluate(int plan, const Conditions& conditions) const;
  std::vector<PlanEstimate> evaluate_all(const Conditions& conditions) const;
  // The available plans no other plan beats in latency, bytes and accuracy drop at once
  // (constraints ignored), sorted by latency: for reports and plots.
  std::vector<PlanEstimate> pareto_front(const Conditions& conditions) const;

  // Normalised violation of one constraint: (value - bound) / max(bound, floor) for upper bounds,
  // (bound - value) / max(bound, floor) for min_fps, 0 when met. The floors (1 pp, 1 ms, 1 fps,
  // 1 KiB, 1 MB, 1 ms) keep a zero bound from dwarfing the others. The least-violating plan
  // minimises the sum over constraints; the binding constraint is its largest term.
  static double violation(Constraint constraint, double value, double bound);

 private:
  // Per-plan numbers that do not depend on conditions.
  struct PlanCost {
    double head_ms = 0;
    double head_correction = 1;  // set_head_correction()
    double pack_ms = 0;
    double unpack_ms = 0;
    double tail_ms = 0;
    double bytes = 0;
    double accuracy_drop_pp = 0;
    double accuracy_drop_point_pp = 0;
    double device_memory_mb = 0;
    bool local = false;
    int member = 0;
    bool excluded = false;       // exclude(): the server refused it
    bool beyond_budget = false;  // set_max_head_cut(): the device does not hold this head
    int cut_id = 0;
    std::vector<ExitStage> exit_stages;  // an early-exit variant's exits (empty: none)
    bool server_exits = false;           // ... on the server
    // Violations of the constraints that do not depend on conditions (accuracy, bytes, memory),
    // recomputed when the constraints change.
    std::array<double, kConstraintCount> static_violations{};
    double static_violation = 0;
  };
  // A constraint whose value depends on conditions, with its bound.
  struct DynamicBound {
    Constraint constraint;
    double bound;
  };

  Scheduler() = default;
  void apply_constraints();
  PlanMetrics predict(const PlanCost& cost, const Conditions& c) const;
  // The plan without its exits (predict() then takes the exits into account).
  PlanMetrics predict_plan(const PlanCost& cost, const Conditions& c) const;
  // A plan with exits on the server: `m` is predict_plan's, turned into the expectation.
  void predict_server_exits(const PlanCost& cost, const Conditions& c, double device_leave,
                            PlanMetrics& m) const;
  void judge(const PlanCost& cost, PlanEstimate& e) const;
  double primary(const PlanMetrics& m) const;
  // Improvement of `best` over `current`: relative in the objective when `best` is feasible;
  // when nothing is feasible, the drop in normalised violation (a fraction of a bound).
  double gain(const PlanEstimate& current, const PlanEstimate& best) const;
  // Whether the current plan may stay: available, static bounds met, and the bounds that depend
  // on the conditions violated by at most options_.constraint_margin each.
  bool tolerable(const PlanEstimate& current) const;
  std::string describe(int plan) const;
  // Whether `e` meets the condition-dependent bounds with options_.constraint_margin to spare.
  bool comfortably_feasible(const PlanEstimate& e) const;
  // Fills the plan, predictions, feasibility and explanation of `d` from `e`.
  void finish(const PlanEstimate& e, Decision& d) const;
  bool available(const PlanCost& cost, const Conditions& c) const {
    if (cost.beyond_budget) return false;
    if (cost.server_exits && !server_exits_held_) return false;
    return cost.local || (!cost.excluded && c.server_available && c.bandwidth_mbps > 0);
  }

  SchedulerOptions options_;
  std::vector<Plan> plans_;
  std::vector<PlanCost> costs_;
  std::vector<DynamicBound> dynamic_bounds_;
  std::optional<int> current_;
  std::optional<int> pinned_;
  std::optional<int> max_head_cut_;
  // Per member: the profile's cut ids, in its order.
  std::vector<std::vector<int>> profile_cut_ids_;
  std::vector<int> local_plans_;  // per member: its device-only plan's index
  std::vector<std::string> member_names_;
  bool intervals_known_ = true;
  bool server_exits_held_ = true;
  int challenger_ = -1;
  int challenger_streak_ = 0;
  std::vector<PlanEstimate> feasible_;  // decide()'s scratch: the feasible plans of this decision
};

// The plan of `plans` with the same member, cut, encoding and side as `p` but no early exits
// (`p` itself when it has none, or when there is no such plan). A server probe runs it: a frame
// that left at an exit on the device would measure no server.
const Plan& without_exits(const std::vector<Plan>& plans, const Plan& p);

}  // namespace edgesplit::partitioner
