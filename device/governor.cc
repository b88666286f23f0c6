#include "device/governor.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace edgesplit::device {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double slowdown(const ExecutorDescription& x, int level) {
  return x.top_mhz() / x.levels.at(static_cast<size_t>(level)).freq_mhz;
}

// A stream's plan at fixed levels: what it adds to its executor.
struct Option {
  int plan = 0;
  double cost_w = 0;  // (active - idle) x utilization share + radio power
  double util = 0;    // share of the executor's cores
  double serial = 0;  // share of the executor's loop (heads run one after the other)
};

int lowest_at_or_above(const std::vector<PowerLevel>& levels, double mhz) {
  for (size_t i = 0; i < levels.size(); ++i) {
    if (levels[i].freq_mhz >= mhz - 1e-9) return static_cast<int>(i);
  }
  return static_cast<int>(levels.size()) - 1;
}

}  // namespace

const char* governor_name(Governor g) {
  switch (g) {
    case Governor::kManager:
      return "manager";
    case Governor::kPerformance:
      return "performance";
    case Governor::kSchedutil:
      return "schedutil";
    case Governor::kOndemand:
      return "ondemand";
  }
  return "?";
}

Result<Governor> parse_governor(const std::string& name) {
  for (Governor g :
       {Governor::kManager, Governor::kPerformance, Governor::kSchedutil, Governor::kOndemand}) {
    if (name == governor_name(g)) return g;
  }
  return invalid_argument("--governor must be manager, performance, schedutil or ondemand, not \"" +
                          name + "\"");
}

std::optional<double> predicted_watts(const std::vector<ExecutorDescription>& executors,
                                      const std::vector<StreamLoad>& streams,
                                      const std::vector<int>& levels, const std::vector<int>& plans,
                                      const ManagerOptions& options) {
  std::vector<double> util(executors.size(), 0.0), serial(executors.size(), 0.0);
  double watts = 0;
  for (size_t s = 0; s < streams.size(); ++s) {
    const StreamLoad& st = streams[s];
    if (st.plans.empty() || st.fps <= 0) continue;
    const int p = plans.at(s);
    if (p < 0) return std::nullopt;
    const PlanDemand& d = st.plans.at(static_cast<size_t>(p));
    const auto e = static_cast<size_t>(st.executor);
    const ExecutorDescription& x = executors.at(e);
    const double ms = d.device_ms * slowdown(x, levels.at(e));
    if (st.max_latency_ms && ms + d.other_ms > *st.max_latency_ms) return std::nullopt;
    const double busy = st.fps * ms / 1000.0;
    serial[e] += busy;
    util[e] += busy * d.threads / static_cast<double>(std::max<size_t>(1, x.cores.size()));
    watts += st.fps * d.radio_j;
  }
  for (size_t e = 0; e < executors.size(); ++e) {
    if (util[e] > options.max_utilization + 1e-12 || serial[e] > options.max_utilization + 1e-12) {
      return std::nullopt;
    }
    watts +=
        EnergyMeter::modeled_watts(executors[e].levels.at(static_cast<size_t>(levels[e])), util[e]);
  }
  return watts;
}

LevelChoice choose_levels(const std::vector<ExecutorDescription>& executors,
                          const std::vector<StreamLoad>& streams, const ManagerOptions& options) {
  LevelChoice best;
  best.watts = kInf;
  const size_t ne = executors.size();
  std::vector<int> levels(ne, 0);
  std::vector<std::vector<Option>> options_per(streams.size());
  std::vector<int> plans(streams.size(), -1);
  const double cap = options.max_utilization + 1e-12;
  for (;;) {
    // The executors' idle power at these levels, and each stream's options.
    double base = 0;
    for (size_t e = 0; e < ne; ++e)
      base += executors[e].levels[static_cast<size_t>(levels[e])].idle_watts;
    bool possible = true;
    std::vector<double> min_cost(streams.size(), 0.0);
    for (size_t s = 0; s < streams.size() && possible; ++s) {
      options_per[s].clear();
      const StreamLoad& st = streams[s];
      if (st.plans.empty() || st.fps <= 0) continue;
      const auto e = static_cast<size_t>(st.executor);
      const ExecutorDescription& x = executors[e];
      const PowerLevel& lv = x.levels[static_cast<size_t>(levels[e])];
      const double cores = static_cast<double>(std::max<size_t>(1, x.cores.size()));
      for (size_t p = 0; p < st.plans.size(); ++p) {
        const PlanDemand& d = st.plans[p];
        const double ms = d.device_ms * slowdown(x, levels[e]);
        if (st.max_latency_ms && ms + d.other_ms > *st.max_latency_ms) continue;
        Option o;
        o.plan = static_cast<int>(p);
        o.serial = st.fps * ms / 1000.0;
        o.util = o.serial * d.threads / cores;
        o.cost_w = (lv.active_watts - lv.idle_watts) * o.util + st.fps * d.radio_j;
        options_per[s].push_back(o);
      }
      if (options_per[s].empty()) {
        possible = false;
        break;
      }
      std::sort(options_per[s].begin(), options_per[s].end(),
                [](const Option& a, const Option& b) { return a.cost_w < b.cost_w; });
      min_cost[s] = options_per[s].front().cost_w;
    }
    if (possible && base < best.watts) {
      std::vector<double> rest(streams.size() + 1, 0.0);
      for (size_t s = streams.size(); s-- > 0;) rest[s] = rest[s + 1] + min_cost[s];
      std::vector<double> util(ne, 0.0), serial(ne, 0.0);
      std::vector<int> current(streams.size(), -1);
      // Branch and bound over the streams, cheapest options first.
      auto search = [&](auto&& self, size_t s, double cost) -> void {
        if (base + cost + rest[s] >= best.watts) return;
        if (s == streams.size()) {
          best.watts = base + cost;
          best.levels = levels;
          best.plans = current;
          best.feasible = true;
          return;
        }
        if (options_per[s].empty()) {  // a stream without frames or plans
          self(self, s + 1, cost);
          return;
        }
        const auto e = static_cast<size_t>(streams[s].executor);
        for (const Option& o : options_per[s]) {
          if (util[e] + o.util > cap || serial[e] + o.serial > cap) continue;
          util[e] += o.util;
          serial[e] += o.serial;
          current[s] = o.plan;
          self(self, s + 1, cost + o.cost_w);
          util[e] -= o.util;
          serial[e] -= o.serial;
        }
        current[s] = -1;
      };
      search(search, 0, 0.0);
    }
    // Next level combination.
    size_t e = 0;
    while (e < ne && ++levels[e] == static_cast<int>(executors[e].levels.size())) levels[e++] = 0;
    if (e == ne) break;
  }
  if (best.feasible) return best;
  // Nothing meets every bound: the top levels, and each stream's fastest plan.
  best = LevelChoice{};
  for (const auto& x : executors) best.levels.push_back(static_cast<int>(x.levels.size()) - 1);
  for (const auto& st : streams) {
    int fastest = -1;
    double lat = kInf;
    for (size_t p = 0; p < st.plans.size(); ++p) {
      const double l = st.plans[p].device_ms + st.plans[p].other_ms;
      if (l < lat) {
        lat = l;
        fastest = static_cast<int>(p);
      }
    }
    best.plans.push_back(fastest);
  }
  ManagerOptions loose;
  loose.max_utilization = kInf;
  std::vector<StreamLoad> unbounded = streams;
  for (auto& st : unbounded) st.max_latency_ms.reset();
  best.watts = predicted_watts(executors, unbounded, best.levels, best.plans, loose).value_or(0);
  best.feasible = false;
  return best;
}

int schedutil_level(const std::vector<PowerLevel>& levels, int current, double utilization) {
  if (levels.empty()) return 0;
  const double f = levels.at(static_cast<size_t>(current)).freq_mhz;
  return lowest_at_or_above(levels, 1.25 * f * std::clamp(utilization, 0.0, 1.0));
}

int ondemand_level(const std::vector<PowerLevel>& levels, int current, double utilization) {
  if (levels.empty()) return 0;
  (void)current;
  const double u = std::clamp(utilization, 0.0, 1.0);
  if (u > 0.8) return static_cast<int>(levels.size()) - 1;
  const double lo = levels.front().freq_mhz, hi = levels.back().freq_mhz;
  return lowest_at_or_above(levels, lo + u * (hi - lo));
}

}  // namespace edgesplit::device
