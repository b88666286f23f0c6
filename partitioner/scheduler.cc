// The scheduler: cost model, constraints, choice with hysteresis, Pareto front (see scheduler.h).
#include "partitioner/scheduler.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "profiles/accuracy_interval.h"

namespace edgesplit::partitioner {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kBytesPerMsPerMbps = 125.0;  // 1e6 bits/s = 125 bytes/ms
// Relative difference below which two objective values count as equal (then latency decides).
constexpr double kTie = 1e-9;

constexpr std::array<Constraint, kConstraintCount> kConstraints = {
    Constraint::kAccuracyDrop, Constraint::kLatency,      Constraint::kFps,
    Constraint::kBytes,        Constraint::kDeviceMemory, Constraint::kServerMs};

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

const char* constraint_unit(Constraint c) {
  switch (c) {
    case Constraint::kAccuracyDrop:
      return " pp";
    case Constraint::kLatency:
      return " ms";
    case Constraint::kFps:
      return " fps";
    case Constraint::kBytes:
      return " bytes";
    case Constraint::kDeviceMemory:
      return " MB";
    case Constraint::kServerMs:
      return " ms";
  }
  return "";
}

const std::optional<double>& bound_of(const Constraints& c, Constraint k) {
  switch (k) {
    case Constraint::kAccuracyDrop:
      return c.max_accuracy_drop_pp;
    case Constraint::kLatency:
      return c.max_latency_ms;
    case Constraint::kFps:
      return c.min_fps;
    case Constraint::kBytes:
      return c.max_bytes;
    case Constraint::kDeviceMemory:
      return c.max_device_memory_mb;
    case Constraint::kServerMs:
      return c.max_server_ms;
  }
  return c.max_latency_ms;
}

double value_of(const PlanMetrics& m, Constraint k) {
  switch (k) {
    case Constraint::kAccuracyDrop:
      return m.accuracy_drop_pp;
    case Constraint::kLatency:  // per frame: the frames that do not leave at an exit
      return std::max(m.latency_ms, m.latency_slowest_ms);
    case Constraint::kFps:
      return m.fps;
    case Constraint::kBytes:
      return m.bytes;
    case Constraint::kDeviceMemory:
      return m.device_memory_mb;
    case Constraint::kServerMs:
      return m.server_ms;
  }
  return 0;
}

Status check_constraints(const Constraints& c) {
  for (Constraint k : kConstraints) {
    const auto& b = bound_of(c, k);
    if (b && !(*b >= 0 && std::isfinite(*b))) {
      return invalid_argument(std::string("constraint ") + constraint_name(k) +
                              " must be a finite number >= 0 (got " + number(*b) + ")");
    }
  }
  return Status();
}

// True when a is better than b: lower score, then lower latency.
bool better(const PlanEstimate& a, const PlanEstimate& b) {
  const double scale = std::max(std::fabs(a.score), std::fabs(b.score));
  if (std::fabs(a.score - b.score) > kTie * scale) return a.score < b.score;
  return a.metrics.latency_ms < b.metrics.latency_ms;
}

// True when a violates less than b: lower violation sum, then the better objective.
bool less_violating(const PlanEstimate& a, const PlanEstimate& b) {
  const double scale = std::max(a.violation, b.violation);
  if (std::fabs(a.violation - b.violation) > kTie * scale) return a.violation < b.violation;
  return better(a, b);
}

double relative_gain(double current, double best) {
  if (!(current > 0)) return 0;
  return (current - best) / current;
}

}  // namespace

const char* objective_name(Objective objective) {
  switch (objective) {
    case Objective::kLatency:
      return "latency";
    case Objective::kThroughput:
      return "throughput";
    case Objective::kEnergy:
      return "energy";
    case Objective::kData:
      return "data";
    case Objective::kCost:
      return "cost";
    case Objective::kAccuracy:
      return "accuracy";
  }
  return "unknown";
}

Result<Objective> parse_objective(const std::string& name) {
  for (Objective o : {Objective::kLatency, Objective::kThroughput, Objective::kEnergy,
                      Objective::kData, Objective::kCost, Objective::kAccuracy}) {
    if (name == objective_name(o)) return o;
  }
  return invalid_argument("unknown objective \"" + name +
                          "\" (expected latency, throughput, energy, data, cost or accuracy)");
}

const char* constraint_name(Constraint constraint) {
  switch (constraint) {
    case Constraint::kAccuracyDrop:
      return "max_accuracy_drop_pp";
    case Constraint::kLatency:
      return "max_latency_ms";
    case Constraint::kFps:
      return "min_fps";
    case Constraint::kBytes:
      return "max_bytes";
    case Constraint::kDeviceMemory:
      return "max_device_memory_mb";
    case Constraint::kServerMs:
      return "max_server_ms";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// Device power

Result<DevicePower> parse_device_power(const std::string& json_text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::parse_error& e) {
    std::string what = e.what();
    const auto pos = what.find("] ");
    if (pos != std::string::npos) what = what.substr(pos + 2);
    return invalid_argument("device description is not valid JSON: " + what);
  }
  if (!j.is_object()) return invalid_argument("a device description must be a JSON object");
  DevicePower p;
  for (const auto& [key, value] : j.items()) {
    if (key == "name") {
      if (!value.is_string()) {
        return invalid_argument("device description key \"name\" must be a string");
      }
      p.name = value.get<std::string>();
      continue;
    }
    double* target = key == "compute_watts" ? &p.compute_watts
                     : key == "radio_watts" ? &p.radio_watts
                     : key == "idle_watts"  ? &p.idle_watts
                                            : nullptr;
    if (!target) {
      return invalid_argument("unknown key \"" + key + "\" in device description (expected " +
                              "name, compute_watts, radio_watts, idle_watts)");
    }
    if (!value.is_number() || !(value.get<double>() >= 0) || !std::isfinite(value.get<double>())) {
      return invalid_argument("device description key \"" + key +
                              "\" must be a number of watts >= 0");
    }
    *target = value.get<double>();
  }
  return p;
}

Result<DevicePower> load_device_power(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return not_found("cannot open device description " + path + " (" + std::strerror(errno) + ")");
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto p = parse_device_power(text.str());
  if (!p.ok()) return Status(p.status().code(), path + ": " + p.status().message());
  return p;
}

// ---------------------------------------------------------------------------------------------
// Construction

Result<Scheduler> Scheduler::create(const profiles::Profile& profile, SchedulerOptions options) {
  FamilyMemberPlans only;
  only.profile = &profile;
  return create_family({only}, std::move(options));
}

Result<Scheduler> Scheduler::create_family(const std::vector<FamilyMemberPlans>& members,
                                           SchedulerOptions options) {
  if (members.empty()) return invalid_argument("a family needs at least one member");
  for (const FamilyMemberPlans& m : members) {
    if (!m.profile || m.profile->cuts.empty()) {
      return invalid_argument("the profile" + (m.name.empty() ? "" : " of member " + m.name) +
                              " lists no cuts; make it with edgesplit-profile");
    }
    if (!std::isfinite(m.drop_point_pp) || !std::isfinite(m.drop_high_pp)) {
      return invalid_argument("member " + m.name + ": its loss must be a finite number of points");
    }
  }
  EDGESPLIT_RETURN_IF_ERROR(check_constraints(options.constraints));
  if (!(options.switch_margin >= 0) || !(options.switch_min_gain >= 0) ||
      options.switch_after < 1 ||
      !(options.constraint_margin >= 0 && options.constraint_margin < 1)) {
    return invalid_argument(
        "hysteresis options must be switch_margin >= 0, switch_min_gain >= 0, "
        "switch_after >= 1 and 0 <= constraint_margin < 1");
  }
  if (!(options.objective_tolerance >= 0 && options.objective_tolerance < 1)) {
    return invalid_argument("objective_tolerance must lie in [0, 1)");
  }
  if (options.in_flight < 0) return invalid_argument("in_flight must be >= 0 (0: no window)");
  if (!(options.accuracy_confidence >= 0 && options.accuracy_confidence < 1)) {
    return invalid_argument(
        "accuracy_confidence must lie in [0, 1), e.g. 0.95 (0: point estimates)");
  }
  if (!(options.server_price_per_s >= 0)) {
    return invalid_argument("server_price_per_s must be >= 0");
  }
  const DevicePower& pw = options.power;
  if (!(pw.compute_watts >= 0 && pw.radio_watts >= 0 && pw.idle_watts >= 0)) {
    return invalid_argument("device powers must be >= 0 watts");
  }

  Scheduler s;
  s.options_ = std::move(options);
  const auto memory_mb = [](const profiles::CutProfile& c) {
    return static_cast<double>(c.head_weight_bytes + c.head_activation_bytes) / kMiB;
  };
  const bool upper = s.options_.accuracy_confidence > 0;
  for (size_t mi = 0; mi < members.size(); ++mi) {
    const FamilyMemberPlans& member = members[mi];
    const profiles::Profile& profile = *member.profile;
    const int m = static_cast<int>(mi);
    const double offset = upper ? member.drop_high_pp : member.drop_point_pp;
    s.member_names_.push_back(member.name);
    s.profile_cut_ids_.emplace_back();
    for (const profiles::CutProfile& cut : profile.cuts)
      s.profile_cut_ids_.back().push_back(cut.id);
    if (!member.remote) continue;
    const size_t last = profile.cuts.size() - 1;
    for (size_t ci = 0; ci < last; ++ci) {
      const profiles::CutProfile& cut = profile.cuts[ci];
      for (const profiles::EncodingProfile& e : cut.encodings) {
        Plan p;
        p.index = static_cast<int>(s.plans_.size());
        p.member = m;
        p.cut_id = cut.id;
        p.cut_name = cut.name;
        p.encoding = e.encoding;
        p.encoding_name = e.encoding.name();
        p.profiled_head_ms = cut.head.median_ms;
        p.profiled_server_ms = e.unpack.median_ms + cut.tail.median_ms;
        p.bytes = e.bytes_mean;
        PlanCost c;
        c.member = m;
        c.head_ms = cut.head.median_ms;
        c.pack_ms = e.pack.median_ms;
        c.unpack_ms = e.unpack.median_ms;
        c.tail_ms = cut.tail.median_ms;
        c.bytes = e.bytes_mean;
        c.accuracy_drop_point_pp = (profile.fp32_top1 - e.top1) * 100.0;
        c.accuracy_drop_pp = c.accuracy_drop_point_pp;
        if (upper) {
          if (e.paired() && profile.scored_images > 0) {
            c.accuracy_drop_pp =
                profiles::drop_interval(
                    profile.scored_images, e.lost, e.gained,
                    profiles::fp32_right_of(profile.fp32_top1, profile.scored_images),
                    s.options_.accuracy_confidence)
                    .high_pp;
          } else {
            s.intervals_known_ = false;
          }
        }
        c.accuracy_drop_point_pp += member.drop_point_pp;
        c.accuracy_drop_pp += offset;
        c.device_memory_mb = memory_mb(cut);
        c.cut_id = cut.id;
        s.plans_.push_back(std::move(p));
        s.costs_.push_back(c);
      }
    }
  }
  // The device-only plans last, member 0's first.
  for (size_t mi = 0; mi < members.size(); ++mi) {
    const FamilyMemberPlans& member = members[mi];
    const profiles::CutProfile& all = member.profile->cuts.back();
    Plan local;
    local.index = static_cast<int>(s.plans_.size());
    local.member = static_cast<int>(mi);
    local.cut_id = all.id;
    local.cut_name = all.name;
    local.local = true;
    local.encoding_name = "local";
    local.profiled_head_ms = all.head.median_ms;
    PlanCost c;
    c.member = local.member;
    c.head_ms = all.head.median_ms;
    c.device_memory_mb = memory_mb(all);
    c.local = true;
    c.cut_id = all.id;
    c.accuracy_drop_point_pp = member.drop_point_pp;
    c.accuracy_drop_pp = upper ? member.drop_high_pp : member.drop_point_pp;
    s.local_plans_.push_back(local.index);
    s.plans_.push_back(std::move(local));
    s.costs_.push_back(c);
  }
  // Early-exit variants of member 0's plans, last.
  const size_t plain_plans = s.plans_.size();
  for (const ExitOption& o : members.front().exits) {
    bool ok = o.threshold >= 0 && o.threshold <= 1 && !o.stages.empty() && o.min_cut <= o.max_cut &&
              std::isfinite(o.drop_point_pp) && std::isfinite(o.drop_high_pp);
    double rate = 0;
    for (size_t i = 0; i < o.stages.size() && ok; ++i) {
      const ExitStage& st = o.stages[i];
      ok = st.rate >= 0 && st.head_ms >= 0 && st.exit_ms >= 0 && std::isfinite(st.head_ms) &&
           std::isfinite(st.exit_ms) && (i == 0 || st.cut_id > o.stages[i - 1].cut_id);
      rate += st.rate;
    }
    for (size_t i = 0; i < o.stages.size() && ok && o.server; ++i) {
      ok = o.stages[i].tail_ms >= 0 && std::isfinite(o.stages[i].tail_ms);
    }
    if (!ok || !(rate <= 1 + 1e-9)) {
      return invalid_argument(
          "an exit option needs a threshold in [0, 1], exits at rising cuts with times >= 0, "
          "rates >= 0 that sum to at most 1, min_cut <= max_cut and finite losses");
    }
    // With exits on the server, every exit lies at or before the plans' cuts (on the device) or
    // after them (on the server), and the last after.
    bool sides = !o.server || o.stages.back().cut_id > o.max_cut;
    for (const ExitStage& st : o.stages) {
      sides = sides && (!o.server || st.cut_id <= o.min_cut || st.cut_id > o.max_cut);
    }
    if (!sides) {
      return invalid_argument(
          "exits on the server apply to plans that cut before an exit, with "
          "every exit before or at the plans' cuts or after them");
    }
    for (size_t i = 0; i < plain_plans; ++i) {
      const PlanCost& base = s.costs_[i];
      if (base.member != 0 || base.cut_id < o.min_cut || base.cut_id > o.max_cut) continue;
      if (o.server && base.local) continue;
      Plan p = s.plans_[i];
      p.index = static_cast<int>(s.plans_.size());
      p.exit_threshold = o.threshold;
      p.server_exits = o.server;
      for (const ExitStage& st : o.stages) p.exit_cuts.push_back(st.cut_id);
      PlanCost c = base;
      c.exit_stages = o.stages;
      for (ExitStage& st : c.exit_stages) st.on_server = o.server && st.cut_id > o.max_cut;
      c.server_exits = o.server;
      c.accuracy_drop_point_pp += o.drop_point_pp;
      c.accuracy_drop_pp += upper ? o.drop_high_pp : o.drop_point_pp;
      s.plans_.push_back(std::move(p));
      s.costs_.push_back(std::move(c));
    }
  }
  s.apply_constraints();
  return s;
}

void Scheduler::set_max_head_cut(std::optional<int> max_head_cut) {
  max_head_cut_ = max_head_cut;
  for (PlanCost& k : costs_) {
    k.beyond_budget = k.member == 0 && max_head_cut && k.cut_id > *max_head_cut;
  }
}

Status Scheduler::set_head_correction(int cut_id, double factor, int member) {
  if (!std::isfinite(factor) || !(factor > 0)) {
    return invalid_argument("a head correction must be finite and positive");
  }
  for (PlanCost& k : costs_) {
    if (k.cut_id == cut_id && k.member == member) k.head_correction = factor;
  }
  return Status();
}

double Scheduler::head_correction(int cut_id, int member) const {
  for (const PlanCost& k : costs_) {
    if (k.cut_id == cut_id && k.member == member) return k.head_correction;
  }
  return 1.0;
}

Result<bool> Scheduler::set_server_tail_ms(const std::vector<double>& tail_ms, int member) {
  if (member < 0 || member >= members()) return invalid_argument("no such family member");
  const std::vector<int>& ids = profile_cut_ids_[static_cast<size_t>(member)];
  if (tail_ms.size() != ids.size()) {
    return invalid_argument("the server states tail times for " + std::to_string(tail_ms.size()) +
                            " cuts but the profile has " + std::to_string(ids.size()));
  }
  for (double t : tail_ms) {
    if (!(t >= 0) || !std::isfinite(t)) {
      return invalid_argument("the server states a tail time that is negative or not a number");
    }
  }
  bool changed = false;
  for (size_t i = 0; i < plans_.size(); ++i) {
    PlanCost& k = costs_[i];
    if (k.local || k.member != member) continue;
    // Server exits: the tail from each exit's cut is the server's too.
    for (ExitStage& st : k.exit_stages) {
      for (size_t c = 0; c < ids.size() && st.on_server; ++c) {
        if (ids[c] == st.cut_id) st.tail_ms = tail_ms[c];
      }
    }
    for (size_t c = 0; c < ids.size(); ++c) {
      if (ids[c] != k.cut_id) continue;
      if (std::abs(k.tail_ms - tail_ms[c]) > 1e-3) {
        changed = true;
        k.tail_ms = tail_ms[c];
        plans_[i].profiled_server_ms = k.unpack_ms + k.tail_ms;
      }
      break;
    }
  }
  if (changed) apply_constraints();
  return changed;
}

void Scheduler::set_server_exits(bool held, const std::vector<std::pair<int, double>>& exit_ms) {
  server_exits_held_ = held;
  for (PlanCost& k : costs_) {
    if (!k.server_exits) continue;
    for (ExitStage& st : k.exit_stages) {
      if (!st.on_server) continue;
      for (const auto& [cut, ms] : exit_ms) {
        if (cut == st.cut_id && ms >= 0 && std::isfinite(ms)) st.exit_ms = ms;
      }
    }
  }
}

Status Scheduler::set_constraints(const Constraints& constraints) {
  EDGESPLIT_RETURN_IF_ERROR(check_constraints(constraints));
  options_.constraints = constraints;
  apply_constraints();
  return Status();
}

Status Scheduler::pin(int cut_id, const std::string& encoding_name, int member,
                      std::optional<double> exit_threshold, bool server_exits) {
  std::string names;
  bool cut_found = false;
  bool exit_found = false;
  for (const Plan& p : plans_) {
    if (p.cut_id != cut_id || p.member != member) continue;
    cut_found = true;
    if (p.exit_threshold.has_value() != exit_threshold.has_value() ||
        (exit_threshold && std::fabs(*p.exit_threshold - *exit_threshold) > 1e-9) ||
        (exit_threshold && p.server_exits != server_exits)) {
      continue;
    }
    exit_found = true;
    if (p.local || p.encoding_name == encoding_name) {
      pinned_ = p.index;
      return Status();
    }
    names += (names.empty() ? "" : ", ") + p.encoding_name;
  }
  if (!cut_found) {
    return not_found("the profile has no cut " + std::to_string(cut_id) + " (cuts 0.." +
                     std::to_string(profile_cut_ids_.at(static_cast<size_t>(member)).back()) + ")");
  }
  if (!exit_found) {
    return not_found("cut " + std::to_string(cut_id) + " has no plan with an exit threshold of " +
                     (exit_threshold ? number(*exit_threshold) : std::string("none")));
  }
  return not_found("cut " + std::to_string(cut_id) + " has no encoding \"" + encoding_name +
                   "\" in the profile (it has " + names + ")");
}

// ---------------------------------------------------------------------------------------------
// Cost model

PlanMetrics Scheduler::predict(const PlanCost& k, const Conditions& c) const {
  PlanMetrics m = predict_plan(k, c);
  m.latency_slowest_ms = m.latency_ms;
  if (k.exit_stages.empty()) return m;
  double device_leave = 0;  // fraction of frames that leave at the device's exits
  for (const ExitStage& st : k.exit_stages) device_leave += st.on_server ? 0 : st.rate;
  // The server's exits first: the expected metrics of a frame that is sent.
  if (k.server_exits) predict_server_exits(k, c, device_leave, m);
  if (k.exit_stages.front().on_server) return m;  // no exit on the device (they come first)
  // A frame leaving at exit i: the head up to its cut and the exit heads up to i, on the device.
  // The others: every exit head, then the plan (the head goes on from the last exit's cut).
  const double head_factor = k.head_correction * c.device_load;
  double exits_ms = 0;  // the exit heads so far
  double leave = 0;     // fraction of frames that leave
  double leave_ms = 0;  // their device time, weighted by their fractions
  for (const ExitStage& st : k.exit_stages) {
    if (st.on_server) continue;
    exits_ms += st.exit_ms * c.device_load;
    leave += st.rate;
    leave_ms +=
        st.rate * (st.head_ms * head_factor + (st.head_ms > 0 ? c.head_overhead_ms : 0) + exits_ms);
  }
  const double stay = std::max(0.0, 1.0 - leave);
  const auto go_on = [stay](double v) { return stay > 0 ? stay * v : 0.0; };
  const DevicePower& pw = options_.power;
  const double sent_exit_rate = k.server_exits ? m.exit_rate : 0;  // of the frames that go on
  m.latency_slowest_ms += exits_ms;
  m.latency_ms = leave_ms + leave * c.frame_overhead_ms + go_on(m.latency_ms + exits_ms);
  m.energy_j =
      pw.compute_watts * leave_ms * 1e-3 + go_on(m.energy_j + pw.compute_watts * exits_ms * 1e-3);
  m.head_ms = leave_ms + go_on(m.head_ms + exits_ms);
  m.pack_ms = go_on(m.pack_ms);
  m.transfer_ms = go_on(m.transfer_ms);
  m.rtt_ms = go_on(m.rtt_ms);
  m.queue_ms = go_on(m.queue_ms);
  m.unpack_ms = go_on(m.unpack_ms);
  m.tail_ms = go_on(m.tail_ms);
  m.bytes = go_on(m.bytes);
  m.server_ms = go_on(m.server_ms);
  m.cost = go_on(m.cost);
  if (k.local) {
    m.period_ms = m.head_ms;
  } else {
    m.period_ms = std::max({m.head_ms + m.pack_ms, m.transfer_ms, m.tail_ms + m.unpack_ms});
    if (options_.in_flight > 0) {
      m.period_ms = std::max(m.period_ms, m.latency_ms / options_.in_flight);
    }
  }
  m.fps = m.period_ms > 0 ? 1000.0 / m.period_ms : kInf;
  m.exit_rate = leave + go_on(sent_exit_rate);
  return m;
}

void Scheduler::predict_server_exits(const PlanCost& k, const Conditions& c, double device_leave,
                                     PlanMetrics& m) const {
  // The tail up to exit i: the plan's tail less the tail from the exit's cut, then the exit
  // heads up to i; a frame that leaves nowhere runs the whole tail and every exit head. The rates
  // are over the frames sent: those that did not leave at the device's exits.
  const double sent = 1.0 - device_leave;
  if (!(sent > 1e-12)) return;
  double exits_ms = 0;  // the exit heads so far
  double leave = 0;     // fraction of the frames sent that leave
  double tail_ms = 0;   // the expected tail
  for (const ExitStage& st : k.exit_stages) {
    if (!st.on_server) continue;
    const double rate = std::min(1.0, st.rate / sent);
    exits_ms += st.exit_ms * c.server_load;
    leave += rate;
    tail_ms += rate * (std::max(0.0, k.tail_ms - st.tail_ms) * c.server_load + exits_ms);
  }
  const double stay = std::max(0.0, 1.0 - leave);
  tail_ms += stay > 0 ? stay * (m.tail_ms + exits_ms) : 0.0;
  const DevicePower& pw = options_.power;
  m.latency_slowest_ms = m.latency_ms + exits_ms;
  m.latency_ms += tail_ms - m.tail_ms;
  m.tail_ms = tail_ms;
  m.server_ms = m.unpack_ms + m.tail_ms;
  m.cost = m.server_ms * 1e-3 * options_.server_price_per_s;
  m.energy_j = (pw.compute_watts * (m.head_ms + m.pack_ms) + pw.radio_watts * m.transfer_ms +
                pw.idle_watts * (m.rtt_ms + m.queue_ms + m.server_ms)) *
               1e-3;
  m.period_ms = std::max({m.head_ms + m.pack_ms, m.transfer_ms, m.tail_ms + m.unpack_ms});
  if (options_.in_flight > 0) {
    m.period_ms = std::max(m.period_ms, m.latency_ms / options_.in_flight);
  }
  m.fps = m.period_ms > 0 ? 1000.0 / m.period_ms : kInf;
  m.exit_rate = leave;
}

PlanMetrics Scheduler::predict_plan(const PlanCost& k, const Conditions& c) const {
  const DevicePower& pw = options_.power;
  PlanMetrics m;
  m.head_ms = k.head_ms * k.head_correction * c.device_load;
  if (k.head_ms > 0) m.head_ms += c.head_overhead_ms;
  m.accuracy_drop_pp = k.accuracy_drop_pp;
  m.accuracy_drop_point_pp = k.accuracy_drop_point_pp;
  m.device_memory_mb = k.device_memory_mb;
  if (k.local) {
    m.latency_ms = m.head_ms + c.frame_overhead_ms;
    m.period_ms = m.head_ms;
    m.fps = m.head_ms > 0 ? 1000.0 / m.head_ms : kInf;
    m.energy_j = pw.compute_watts * m.head_ms * 1e-3;
    return m;
  }
  const double bytes_per_ms = c.bandwidth_mbps * kBytesPerMsPerMbps;
  m.pack_ms = k.pack_ms;
  m.transfer_ms = bytes_per_ms > 0 ? k.bytes * (1.0 / bytes_per_ms) : kInf;
  m.rtt_ms = c.rtt_ms;
  m.queue_ms = c.server_queue_ms;
  m.unpack_ms = k.unpack_ms;
  m.tail_ms = k.tail_ms * c.server_load;
  m.latency_ms = m.head_ms + m.pack_ms + m.transfer_ms + m.rtt_ms + m.queue_ms + m.unpack_ms +
                 m.tail_ms + c.frame_overhead_ms;
  m.period_ms = std::max({m.head_ms + m.pack_ms, m.transfer_ms, m.tail_ms + m.unpack_ms});
  // With at most `in_flight` frames on their way, a new one starts only when one comes back.
  if (options_.in_flight > 0) {
    m.period_ms = std::max(m.period_ms, m.latency_ms / options_.in_flight);
  }
  m.fps = m.period_ms > 0 ? 1000.0 / m.period_ms : kInf;
  m.bytes = k.bytes;
  m.server_ms = m.unpack_ms + m.tail_ms;
  m.cost = m.server_ms * 1e-3 * options_.server_price_per_s;
  m.energy_j = (pw.compute_watts * (m.head_ms + m.pack_ms) + pw.radio_watts * m.transfer_ms +
                pw.idle_watts * (m.rtt_ms + m.queue_ms + m.server_ms)) *
               1e-3;
  return m;
}

double Scheduler::primary(const PlanMetrics& m) const {
  switch (options_.objective) {
    case Objective::kLatency:
      return m.latency_ms;
    case Objective::kThroughput:
      return m.period_ms;
    case Objective::kEnergy:
      return m.energy_j;
    case Objective::kData:
      return m.bytes;
    case Objective::kCost:
      return m.cost;
    case Objective::kAccuracy:
      return m.accuracy_drop_pp;
  }
  return m.latency_ms;
}

double Scheduler::violation(Constraint k, double value, double bound) {
  static constexpr std::array<double, kConstraintCount> kFloor = {1, 1, 1, 1024, 1, 1};
  const double scale = std::max(bound, kFloor[static_cast<int>(k)]);
  const double over = k == Constraint::kFps ? bound - value : value - bound;
  return over > 0 ? over / scale : 0;
}

void Scheduler::apply_constraints() {
  const Constraints& cs = options_.constraints;
  dynamic_bounds_.clear();
  for (Constraint k : {Constraint::kLatency, Constraint::kFps, Constraint::kServerMs}) {
    if (bound_of(cs, k)) dynamic_bounds_.push_back({k, *bound_of(cs, k)});
  }
  for (PlanCost& c : costs_) {
    c.static_violations.fill(0);
    c.static_violation = 0;
    PlanMetrics m;  // the condition-free values
    m.accuracy_drop_pp = c.accuracy_drop_pp;
    m.bytes = c.local ? 0 : c.bytes;
    m.device_memory_mb = c.device_memory_mb;
    for (Constraint k :
         {Constraint::kAccuracyDrop, Constraint::kBytes, Constraint::kDeviceMemory}) {
      if (!bound_of(cs, k)) continue;
      const double v = violation(k, value_of(m, k), *bound_of(cs, k));
      c.static_violations[static_cast<size_t>(k)] = v;
      c.static_violation += v;
    }
  }
}

void Scheduler::judge(const PlanCost& k, PlanEstimate& e) const {
  e.score = primary(e.metrics);
  e.violations = k.static_violations;
  double sum = k.static_violation;
  for (const DynamicBound& b : dynamic_bounds_) {
    const double v = violation(b.constraint, value_of(e.metrics, b.constraint), b.bound);
    e.violations[static_cast<size_t>(b.constraint)] = v;
    sum += v;
  }
  e.violation = sum;
  e.feasible = sum == 0;
}

PlanEstimate Scheduler::evaluate(int plan, const Conditions& conditions) const {
  PlanEstimate e;
  e.plan = plan;
  const PlanCost& k = costs_[static_cast<size_t>(plan)];
  e.available = available(k, conditions);
  e.metrics = predict(k, conditions);
  judge(k, e);
  return e;
}

std::vector<PlanEstimate> Scheduler::evaluate_all(const Conditions& conditions) const {
  std::vector<PlanEstimate> all;
  all.reserve(plans_.size());
  for (size_t i = 0; i < plans_.size(); ++i)
    all.push_back(evaluate(static_cast<int>(i), conditions));
  return all;
}

std::vector<PlanEstimate> Scheduler::pareto_front(const Conditions& conditions) const {
  std::vector<PlanEstimate> all = evaluate_all(conditions);
  all.erase(std::remove_if(all.begin(), all.end(), [](const auto& e) { return !e.available; }),
            all.end());
  // Sorted by latency, a plan can only be dominated by one before it (or by an equal one).
  std::sort(all.begin(), all.end(), [](const PlanEstimate& a, const PlanEstimate& b) {
    if (a.metrics.latency_ms != b.metrics.latency_ms) {
      return a.metrics.latency_ms < b.metrics.latency_ms;
    }
    if (a.metrics.bytes != b.metrics.bytes) return a.metrics.bytes < b.metrics.bytes;
    return a.metrics.accuracy_drop_pp < b.metrics.accuracy_drop_pp;
  });
  std::vector<PlanEstimate> front;
  for (const PlanEstimate& e : all) {
    bool dominated = false;
    for (const PlanEstimate& f : front) {
      const PlanMetrics& a = f.metrics;
      const PlanMetrics& b = e.metrics;
      if (a.latency_ms <= b.latency_ms && a.bytes <= b.bytes &&
          a.accuracy_drop_pp <= b.accuracy_drop_pp) {
        dominated = true;  // equal in all three counts too: keep the first of duplicates
        break;
      }
    }
    if (!dominated) front.push_back(e);
  }
  return front;
}

// ---------------------------------------------------------------------------------------------
// Decision

double Scheduler::gain(const PlanEstimate& current, const PlanEstimate& best) const {
  if (!best.feasible) return current.violation - best.violation;
  const double scale = std::max(std::fabs(current.score), std::fabs(best.score));
  // Inside the tolerance band the objectives count as equal and latency decides (as in decide()).
  const double band = std::max(kTie, options_.objective_tolerance) * scale;
  if (std::fabs(current.score - best.score) > band) {
    return relative_gain(current.score, best.score);
  }
  return relative_gain(current.metrics.latency_ms, best.metrics.latency_ms);
}

bool Scheduler::tolerable(const PlanEstimate& current) const {
  if (!current.available || costs_[static_cast<size_t>(current.plan)].static_violation > 0) {
    return false;
  }
  for (const DynamicBound& b : dynamic_bounds_) {
    if (current.violations[static_cast<size_t>(b.constraint)] > options_.constraint_margin) {
      return false;
    }
  }
  return true;
}

bool Scheduler::comfortably_feasible(const PlanEstimate& e) const {
  const double m = options_.constraint_margin;
  for (const DynamicBound& b : dynamic_bounds_) {
    const double v = value_of(e.metrics, b.constraint);
    if (b.constraint == Constraint::kFps ? v < b.bound * (1 + m) : v > b.bound * (1 - m)) {
      return false;
    }
  }
  return true;
}

std::string Scheduler::describe(int plan) const {
  const Plan& p = plans_[static_cast<size_t>(plan)];
  const std::string member = members() > 1 ? member_name(p.member) + "'s " : "";
  const bool both = p.server_exits && !p.exit_cuts.empty() && p.exit_cuts.front() <= p.cut_id;
  const char* side = !p.server_exits ? ""
                     : both          ? " on the device and the server"
                                     : " on the server";
  const std::string exits = p.exit_threshold ? std::string(" with early exits") + side +
                                                   " at threshold " + number(*p.exit_threshold)
                                             : "";
  if (p.local) {
    return (member.empty() ? "the " : member) + "device-only plan (cut " +
           std::to_string(p.cut_id) + ")" + exits;
  }
  return member + "cut " + std::to_string(p.cut_id) + " \"" + p.cut_name + "\" with " +
         p.encoding_name + exits;
}

Decision Scheduler::decide(const Conditions& conditions) {
  Decision d;
  feasible_.clear();
  if (pinned_) {
    const PlanEstimate e = evaluate(*pinned_, conditions);
    d.pinned = true;
    d.changed = !current_ || *current_ != *pinned_;
    current_ = *pinned_;
    challenger_ = -1;
    challenger_streak_ = 0;
    finish(e, d);
    return d;
  }
  int best_feasible = -1;
  int least_violating = -1;
  PlanEstimate best_f;
  PlanEstimate best_v;
  PlanEstimate e;
  const int n = static_cast<int>(plans_.size());
  for (int i = 0; i < n; ++i) {
    const PlanCost& k = costs_[static_cast<size_t>(i)];
    if (!available(k, conditions)) continue;
    ++d.available_plans;
    e.plan = i;
    e.metrics = predict(k, conditions);
    judge(k, e);
    if (e.feasible) {
      ++d.feasible_plans;
      feasible_.push_back(e);
      if (best_feasible < 0 || better(e, best_f)) {
        best_feasible = i;
        best_f = e;
      }
    } else {
      for (int c = 0; c < kConstraintCount; ++c) d.excluded_by[c] += e.violations[c] > 0;
      if (least_violating < 0 || less_violating(e, best_v)) {
        least_violating = i;
        best_v = e;
      }
    }
  }
  // Within the tolerance band of the best objective, the fastest feasible plan.
  if (best_feasible >= 0 && options_.objective_tolerance > 0) {
    const double limit = best_f.score + options_.objective_tolerance * std::fabs(best_f.score);
    for (const PlanEstimate& f : feasible_) {
      if (f.score <= limit && f.metrics.latency_ms < best_f.metrics.latency_ms) {
        best_f = f;
        best_feasible = f.plan;
      }
    }
  }
  feasible_.clear();
  // The device-only plan is available unless the memory budget took it (set_max_head_cut).
  if (best_feasible < 0 && least_violating < 0) {
    current_.reset();
    challenger_ = -1;
    challenger_streak_ = 0;
    PlanEstimate none = evaluate(local_plan(), conditions);
    none.available = false;
    d.changed = true;
    finish(none, d);
    d.feasible = false;
    d.binding_constraint = "max_device_memory_mb";
    d.explanation =
        "no plan can run: the server is not available and the device does not hold "
        "the whole model (memory budget)";
    return d;
  }
  const PlanEstimate& best = best_feasible >= 0 ? best_f : best_v;

  int chosen = best.plan;
  if (current_ && *current_ != best.plan) {
    const PlanEstimate cur = evaluate(*current_, conditions);
    // An unavailable current plan, or one clearly infeasible while a feasible plan exists, goes
    // now; otherwise the best plan has to be better by the hysteresis rules.
    const bool may_stay = best.feasible ? tolerable(cur) : cur.available;
    if (may_stay) {
      const double g = gain(cur, best);
      if (g <= options_.switch_min_gain || (best.feasible && !comfortably_feasible(best))) {
        chosen = *current_;
        challenger_ = -1;
        challenger_streak_ = 0;
      } else if (g <= options_.switch_margin) {
        challenger_streak_ = challenger_ == best.plan ? challenger_streak_ + 1 : 1;
        challenger_ = best.plan;
        if (challenger_streak_ < options_.switch_after) chosen = *current_;
      }
    }
  }
  d.changed = !current_ || *current_ != chosen;
  if (d.changed || chosen == best.plan) {
    challenger_ = -1;
    challenger_streak_ = 0;
  }
  current_ = chosen;

  finish(chosen == best.plan ? best : evaluate(chosen, conditions), d);
  return d;
}

void Scheduler::finish(const PlanEstimate& e, Decision& d) const {
  d.plan = plans_[static_cast<size_t>(e.plan)];
  d.predicted = e.metrics;
  d.feasible = e.feasible;
  if (d.feasible) return;
  int worst = 0;
  for (int c = 1; c < kConstraintCount; ++c) {
    if (e.violations[c] > e.violations[worst]) worst = c;
  }
  const Constraint k = kConstraints[static_cast<size_t>(worst)];
  d.binding_constraint = constraint_name(k);
  const std::string what = std::string(constraint_name(k)) + " = " +
                           number(*bound_of(options_.constraints, k)) + constraint_unit(k) +
                           " binds: " + describe(e.plan) + " predicts " +
                           number(value_of(e.metrics, k)) + constraint_unit(k);
  if (d.pinned) {
    d.explanation = "the pinned plan violates a constraint; " + what;
  } else if (d.feasible_plans == 0) {
    d.explanation = "no plan meets every constraint, running the least-violating one; " + what;
  } else {
    d.explanation = "keeping the current plan inside the constraint_margin band (" +
                    number(options_.constraint_margin) + ") of its bound; " + what;
  }
}

const Plan& without_exits(const std::vector<Plan>& plans, const Plan& p) {
  if (!p.exit_threshold) return p;
  for (const Plan& o : plans) {
    if (!o.exit_threshold && o.member == p.member && o.local == p.local && o.cut_id == p.cut_id &&
        o.encoding_name == p.encoding_name) {
      return o;
    }
  }
  return p;
}

}  // namespace edgesplit::partitioner
