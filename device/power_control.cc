#include "device/power_control.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace edgesplit::device {
namespace {

using json = nlohmann::json;

double round3(double v) { return std::isfinite(v) ? std::round(v * 1000.0) / 1000.0 : -1.0; }

std::string mhz_text(double mhz) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g MHz", mhz);
  return buf;
}

}  // namespace

Result<std::unique_ptr<PowerControl>> PowerControl::open(
    const EnergyConfig& config, const PowerControlEnv& env,
    std::function<void(const std::string&)> log) {
  auto described = load_device_description(config.description_path);
  if (!described.ok()) {
    return Status(described.status().code(),
                  "--device-description: " + described.status().message());
  }
  DeviceDescription d = std::move(described).value();
  std::unique_ptr<PowerControl> pc(new PowerControl());
  pc->config_ = config;
  pc->log_ = std::move(log);
  // A GPU executor only where LibTorch sees one; otherwise it is left out, without an error.
  for (size_t i = 0; i < d.executors.size();) {
    if (d.executors[i].kind == "gpu" && !env.gpu_available) {
      pc->notes_.push_back("executor \"" + d.executors[i].name +
                           "\" (gpu) left out: LibTorch sees no CUDA device here");
      d.executors.erase(d.executors.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      ++i;
    }
  }
  if (!config.executor.empty()) {
    pc->executor_ = d.executor(config.executor);
    if (pc->executor_ < 0 || d.executors[static_cast<size_t>(pc->executor_)].kind != "cpu") {
      std::string names;
      for (const auto& x : d.executors) {
        if (x.kind == "cpu") names += (names.empty() ? "" : ", ") + x.name;
      }
      return invalid_argument("--executor " + config.executor + ": " + d.name +
                              " has no such cpu executor (it has " + names + ")");
    }
  } else {
    pc->executor_ = -1;
    for (size_t i = 0; i < d.executors.size() && pc->executor_ < 0; ++i) {
      if (d.executors[i].kind == "cpu") pc->executor_ = static_cast<int>(i);
    }
    if (pc->executor_ < 0) {
      return invalid_argument("--device-description " + config.description_path +
                              " has no cpu executor for the streams to run on");
    }
  }
  const ExecutorDescription& self = d.executors[static_cast<size_t>(pc->executor_)];
  for (const auto& x : d.executors) pc->levels_.push_back(static_cast<int>(x.levels.size()) - 1);

  // The executor's cores that exist here.
  const std::vector<int> allowed = process_affinity();
  std::vector<int> cores;
  for (int c : self.cores) {
    if (std::find(allowed.begin(), allowed.end(), c) != allowed.end()) cores.push_back(c);
  }
  pc->cores_ = std::max<int>(1, static_cast<int>(cores.size()));
  if (cores.size() < self.cores.size()) {
    pc->notes_.push_back(
        "executor \"" + self.name + "\" names " + std::to_string(self.cores.size()) + " core(s); " +
        std::to_string(cores.size()) + " of them are this process's here: it runs on those");
  }
  if (env.set_affinity && !cores.empty() && cores != allowed) {
    Status pinned = set_process_affinity(cores);
    if (!pinned.ok()) pc->notes_.push_back(pinned.message());
  }

  const int pid = env.pid > 0 ? env.pid : static_cast<int>(::getpid());
  Result<std::unique_ptr<Knob>> knob = std::unique_ptr<Knob>();
  if (config.knobs == KnobKind::kCpufreq) {
    knob = open_cpufreq_knob(config.cpufreq_root, cores);
  } else if (config.knobs == KnobKind::kQuota) {
    // A quota of every core stands for the fastest cpu executor's top clock, so a "little"
    // executor with a lower top gets a smaller share of its core.
    double ref = 0;
    for (const auto& x : d.executors) {
      if (x.kind == "cpu") ref = std::max(ref, x.top_mhz());
    }
    knob = open_quota_knob(config.cgroup_root, pc->cores_, ref, pid, env.self_cgroup);
    if (knob.ok()) pc->cpu_scale_ref_ = ref;
  }
  if (!knob.ok()) {
    pc->notes_.push_back(std::string("--knobs ") + knob_kind_name(config.knobs) + ": " +
                         knob.status().message() + "; the device runs without a frequency knob");
  } else if (*knob) {
    pc->knob_ = std::move(knob).value();
    pc->notes_.push_back("knob: " + pc->knob_->describe());
  }
  auto counter = EnergyCounter::find(config.sys_root);
  pc->meter_ = std::make_unique<EnergyMeter>(d, pc->executor_, std::move(counter));
  pc->notes_.push_back(pc->meter_->describe());
  if (pc->knob_) {
    Status top = pc->apply(pc->levels_[static_cast<size_t>(pc->executor_)]);
    if (!top.ok()) {
      pc->notes_.push_back(top.message() + "; the device runs without a frequency knob");
      pc->knob_.reset();
    }
  }
  if (config.governor) {
    pc->notes_.push_back(std::string("governor: ") + governor_name(*config.governor) +
                         (pc->knob_ ? "" : " (no knob: its levels are reported, not applied)"));
  }
  pc->refresh_frame_fields();
  return pc;
}

PowerControl::~PowerControl() {
  if (knob_) knob_->restore();
}

std::vector<RestoreStep> PowerControl::restore_steps() const {
  return knob_ ? knob_->restore_steps() : std::vector<RestoreStep>{};
}

double PowerControl::level_mhz() const {
  const auto& x = meter_->description().executors.at(static_cast<size_t>(executor_));
  return x.levels.at(static_cast<size_t>(level())).freq_mhz;
}

Status PowerControl::apply(int level) {
  const auto& x = meter_->description().executors.at(static_cast<size_t>(executor_));
  const double mhz = x.levels.at(static_cast<size_t>(level)).freq_mhz;
  if (knob_) EDGESPLIT_RETURN_IF_ERROR(knob_->set_mhz(mhz));
  levels_[static_cast<size_t>(executor_)] = level;
  return Status::ok_status();
}

partitioner::DevicePower PowerControl::device_power() const {
  const DeviceDescription& d = meter_->description();
  const auto& x = d.executors.at(static_cast<size_t>(executor_));
  const PowerLevel& p = x.levels.at(static_cast<size_t>(level()));
  partitioner::DevicePower power;
  power.name = d.name + " at " + mhz_text(p.freq_mhz);
  // A head keeps one core busy per thread; the description's active power is all cores busy.
  power.compute_watts = (p.active_watts - p.idle_watts);
  power.radio_watts = d.radio_watts;
  power.idle_watts = p.idle_watts;
  return power;
}

void PowerControl::refresh_frame_fields() {
  json levels = json::object();
  const auto& ex = meter_->description().executors;
  const auto& self = ex.at(static_cast<size_t>(executor_));
  for (size_t e = 0; e < ex.size(); ++e) {
    if (static_cast<int>(e) != executor_ && shares_cores(ex[e], self)) continue;
    levels[ex[e].name] = ex[e].levels.at(static_cast<size_t>(levels_[e])).freq_mhz;
  }
  frame_fields_ = json{{"levels", levels},
                       {"energy_j", round3(meter_->joules())},
                       {"energy_t_s", last_s_ ? round3(*last_s_ - start_s_) : 0.0},
                       {"energy", meter_->source()}};
}

int PowerControl::pick_level(const std::vector<StreamEnergyView>& streams, std::string* note) {
  const DeviceDescription& d = meter_->description();
  const auto& x = d.executors.at(static_cast<size_t>(executor_));
  const int top = static_cast<int>(x.levels.size()) - 1;
  const int now = level();
  switch (*config_.governor) {
    case Governor::kPerformance:
      return top;
    case Governor::kSchedutil:
      return schedutil_level(x.levels, now, meter_->last_utilization());
    case Governor::kOndemand:
      return ondemand_level(x.levels, now, meter_->last_utilization());
    case Governor::kManager:
      break;
  }
  // The outer loop: each stream's plans brought back to the top level (their measured head
  // times were taken at the current one), then the lowest-power levels meeting every bound.
  const double to_top = x.levels.at(static_cast<size_t>(now)).freq_mhz / x.top_mhz();
  std::vector<StreamLoad> loads;
  for (const auto& v : streams) {
    if (!v.running) continue;
    if (v.fixed || v.plans.empty() || !(v.fps > 0)) {
      *note = "stream \"" + v.name + "\" " +
              (v.fixed           ? std::string("has a fixed plan")
               : v.plans.empty() ? std::string("has no plan to offer")
                                 : std::string("has no --fps")) +
              ": the manager keeps the top level";
      return top;
    }
    StreamLoad s;
    s.name = v.name;
    s.executor = executor_;
    s.fps = v.fps;
    s.max_latency_ms = v.max_latency_ms;
    const int threads = v.threads > 0 ? std::min(v.threads, cores_) : cores_;
    for (const auto& m : v.plans) {
      PlanDemand p;
      // Everything but the network and the server runs on the device: the head, packing, and
      // the frame's own overhead (decoding, preprocessing, the loop), all slower at a lower level.
      const double away_ms = m.transfer_ms + m.rtt_ms + m.queue_ms + m.unpack_ms + m.tail_ms;
      const double device_ms = std::max(0.0, m.latency_ms - away_ms);
      p.device_ms = device_ms * to_top;
      p.other_ms = away_ms;
      p.radio_j = d.radio_watts * m.transfer_ms * 1e-3;
      p.threads = threads;
      s.plans.push_back(p);
    }
    loads.push_back(std::move(s));
  }
  // The executors the streams do not run on count at their idle power only; one sharing cores
  // with the streams' is the same silicon and counts nothing.
  std::vector<ExecutorDescription> executors = d.executors;
  for (size_t e = 0; e < executors.size(); ++e) {
    if (static_cast<int>(e) == executor_) {
      executors[e].cores.resize(static_cast<size_t>(cores_));
    } else if (shares_cores(executors[e], x)) {
      for (auto& l : executors[e].levels) l.active_watts = l.idle_watts = 0;
    }
  }
  // What the model misses (other threads, other work of the process) shows in the measured
  // utilization: when it is above what the cheapest plans predict at this level, every plan's
  // device time is scaled up by the ratio.
  double predicted = 0;
  for (const auto& l : loads) {
    double least = 1e300;
    for (const auto& p : l.plans) {
      least = std::min(least, l.fps * p.device_ms / to_top * 1e-3 * p.threads / cores_);
    }
    predicted += least;
  }
  const double measured = meter_->last_utilization();
  if (predicted > 0 && measured > predicted) {
    const double k = measured / predicted;
    for (auto& l : loads) {
      for (auto& p : l.plans) p.device_ms *= k;
    }
  }
  const LevelChoice choice = choose_levels(executors, loads);
  if (!choice.feasible) {
    *note = "no level meets every stream's bound: the top level";
    return top;
  }
  const int chosen = choice.levels[static_cast<size_t>(executor_)];
  if (chosen < miss_floor_) {
    *note = "a stream missed its bound at a lower level: not below " +
            mhz_text(x.levels.at(static_cast<size_t>(miss_floor_)).freq_mhz) + " for now";
    return miss_floor_;
  }
  for (size_t e = 0; e < levels_.size(); ++e) {
    if (static_cast<int>(e) != executor_) levels_[e] = choice.levels[e];
  }
  char buf[96];
  std::snprintf(buf, sizeof buf, "predicted %.2f W", choice.watts);
  *note = buf;
  return chosen;
}

void PowerControl::account(double now_s) {
  const double cpu = process_cpu_seconds();
  if (!last_s_) {
    last_s_ = now_s;
    start_s_ = now_s;
    last_cpu_s_ = cpu;
    (void)meter_->advance(0, 0, levels_, 1, now_s);
    return;
  }
  const double wall = now_s - *last_s_;
  const double scale = cpu_scale_ref_ > 0 ? cpu_scale_ref_ / level_mhz() : 1.0;
  (void)meter_->advance(wall, cpu - last_cpu_s_, levels_, scale, now_s);
  seconds_at_level_[level()] += wall;
  last_s_ = now_s;
  last_cpu_s_ = cpu;
}

json PowerControl::tick(double now_s, const std::vector<StreamEnergyView>& streams,
                        const std::string& why) {
  account(now_s);
  // A level at which a stream missed its bound is not chosen again until the streams or their
  // bounds change, or kMissMemoryS pass: the prediction was wrong there.
  std::string signature;
  for (const auto& v : streams) {
    if (v.running) signature += v.name + "@" + std::to_string(v.max_latency_ms.value_or(0)) + ";";
  }
  if (signature != signature_ || now_s >= miss_floor_until_s_) miss_floor_ = 0;
  signature_ = signature;
  if (why.find("missed its bound") != std::string::npos) {
    const int top =
        static_cast<int>(
            meter_->description().executors.at(static_cast<size_t>(executor_)).levels.size()) -
        1;
    miss_floor_ = std::min(top, std::max(miss_floor_, level() + 1));
    miss_floor_until_s_ = now_s + kMissMemoryS;
  }
  json event;
  if (config_.governor) {
    std::string note;
    const int now = level();
    int want = pick_level(streams, &note);
    // Up at once; down on a regular turn only after two in a row ask for it (no flapping on
    // noise).
    if (want < now && why == "tick") {
      if (++lower_streak_ < 2) want = now;
    } else {
      lower_streak_ = 0;
    }
    if (want != now) {
      lower_streak_ = 0;
      Status applied = apply(want);
      if (!applied.ok()) {
        if (!said_fallback_) log_(applied.message() + "; the level stays");
        said_fallback_ = true;
      } else {
        ++level_changes_;
        const auto& x = meter_->description().executors.at(static_cast<size_t>(executor_));
        event = json{{"type", "levels"},
                     {"governor", governor_name(*config_.governor)},
                     {"executor", x.name},
                     {"level", want},
                     {"freq_mhz", x.levels.at(static_cast<size_t>(want)).freq_mhz},
                     {"from_mhz", x.levels.at(static_cast<size_t>(now)).freq_mhz},
                     {"why", why},
                     {"utilization", round3(meter_->last_utilization())}};
        if (!note.empty()) event["note"] = note;
        if (knob_) {
          if (auto rb = knob_->current_mhz()) event["read_back_mhz"] = round3(*rb);
        }
      }
    }
  }
  refresh_frame_fields();
  return event;
}

json PowerControl::summary(double now_s, uint64_t frames) {
  account(now_s);
  refresh_frame_fields();
  const double wall = last_s_ ? *last_s_ - start_s_ : 0;
  json j;
  j["joules"] = round3(meter_->joules());
  j["source"] = meter_->source();
  j["how"] = meter_->describe();
  j["mean_watts"] = wall > 0 ? round3(meter_->joules() / wall) : 0.0;
  if (frames > 0) j["joules_per_frame"] = round3(meter_->joules() / static_cast<double>(frames));
  j["description"] = meter_->description().name;
  const auto& x = meter_->description().executors.at(static_cast<size_t>(executor_));
  j["executor"] = x.name;
  j["knob"] = knob_ ? knob_->kind() : std::string("none");
  if (knob_ && knob_->emulated()) {
    j["knob_note"] = "a CPU quota slices time and does not slow the clock";
  }
  j["governor"] = config_.governor ? governor_name(*config_.governor) : "none";
  json at = json::object();
  for (const auto& [lv, s] : seconds_at_level_) {
    at[mhz_text(x.levels.at(static_cast<size_t>(lv)).freq_mhz)] = round3(s);
  }
  j["seconds_at_level"] = at;
  j["level_changes"] = level_changes_;
  return j;
}

}  // namespace edgesplit::device
