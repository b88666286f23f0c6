// Checks the hierarchical manager's outer loop against brute force on random synthetic level
// tables and streams (the same lowest power, the same feasibility, bounds met at the levels it
// picks), its fallback when nothing is feasible, and the schedutil-like and ondemand-like
// governors' levels.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "device/governor.h"

using namespace edgesplit::device;

namespace {

// Every level combination and every plan of every stream.
LevelChoice brute_force(const std::vector<ExecutorDescription>& ex,
                        const std::vector<StreamLoad>& streams, const ManagerOptions& o) {
  LevelChoice best;
  best.watts = std::numeric_limits<double>::infinity();
  std::vector<int> levels(ex.size(), 0);
  for (;;) {
    std::vector<int> plans(streams.size(), 0);
    for (;;) {
      auto w = predicted_watts(ex, streams, levels, plans, o);
      if (w && *w < best.watts) {
        best.watts = *w;
        best.levels = levels;
        best.plans = plans;
        best.feasible = true;
      }
      size_t s = 0;
      while (s < streams.size() &&
             ++plans[s] == static_cast<int>(std::max<size_t>(1, streams[s].plans.size()))) {
        plans[s++] = 0;
      }
      if (s == streams.size()) break;
    }
    size_t e = 0;
    while (e < ex.size() && ++levels[e] == static_cast<int>(ex[e].levels.size())) levels[e++] = 0;
    if (e == ex.size()) break;
  }
  return best;
}

ExecutorDescription random_executor(std::mt19937& rng, const std::string& name, int cores) {
  ExecutorDescription x;
  x.name = name;
  for (int c = 0; c < cores; ++c) x.cores.push_back(c);
  std::uniform_int_distribution<int> nlev(1, 6);
  std::uniform_real_distribution<double> u(0, 1);
  const int n = nlev(rng);
  double f = 300 + 300 * u(rng), idle = 0.2 + u(rng), active = idle + 0.3 + u(rng);
  for (int i = 0; i < n; ++i) {
    x.levels.push_back({f, active, idle});
    f += 100 + 400 * u(rng);
    idle += 0.1 * u(rng);
    active += 0.2 + 1.5 * u(rng);  // power grows faster than the clock
  }
  return x;
}

}  // namespace

TEST_CASE("the outer loop matches brute force on random tables") {
  std::mt19937 rng(1616);
  std::uniform_real_distribution<double> u(0, 1);
  int feasible = 0, infeasible = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<ExecutorDescription> ex;
    const int ne = 1 + trial % 2;
    for (int e = 0; e < ne; ++e) ex.push_back(random_executor(rng, "e" + std::to_string(e), 1 + e));
    std::vector<StreamLoad> streams;
    const int ns = 1 + static_cast<int>(u(rng) * 3);
    for (int s = 0; s < ns; ++s) {
      StreamLoad st;
      st.executor = static_cast<int>(u(rng) * ne);
      st.fps = 1 + 30 * u(rng);
      if (u(rng) < 0.8) st.max_latency_ms = 10 + 150 * u(rng);
      const int np = 1 + static_cast<int>(u(rng) * 5);
      for (int p = 0; p < np; ++p) {
        PlanDemand d;
        d.device_ms = u(rng) < 0.2 ? 0 : 40 * u(rng);
        d.other_ms = 60 * u(rng);
        d.radio_j = 0.05 * u(rng);
        d.threads = 1 + static_cast<int>(u(rng) * 2);
        st.plans.push_back(d);
      }
      streams.push_back(st);
    }
    ManagerOptions o;
    o.max_utilization = 0.7 + 0.3 * u(rng);
    const LevelChoice got = choose_levels(ex, streams, o);
    const LevelChoice want = brute_force(ex, streams, o);
    REQUIRE(got.feasible == want.feasible);
    if (want.feasible) {
      ++feasible;
      CHECK(got.watts == doctest::Approx(want.watts).epsilon(1e-9));
      // What it picked is feasible and costs what it says.
      auto w = predicted_watts(ex, streams, got.levels, got.plans, o);
      REQUIRE(w.has_value());
      CHECK(*w == doctest::Approx(got.watts).epsilon(1e-9));
    } else {
      ++infeasible;
      for (size_t e = 0; e < ex.size(); ++e) {
        CHECK(got.levels[e] == static_cast<int>(ex[e].levels.size()) - 1);
      }
    }
  }
  // Both kinds of instance were exercised.
  CHECK(feasible > 500);
  CHECK(infeasible > 100);
}

TEST_CASE("the outer loop lowers the level while the bound holds and raises it when tightened") {
  ExecutorDescription cpu;
  cpu.name = "big";
  cpu.cores = {0, 1, 2, 3};
  cpu.levels = {{600, 3.3, 2.7}, {1000, 4.4, 2.8}, {1500, 6.4, 2.9}};
  StreamLoad st;
  st.fps = 10;
  st.plans = {PlanDemand{20, 0, 0, 4}};  // device-only, 20 ms at 1500 MHz on four cores
  st.max_latency_ms = 100;
  auto loose = choose_levels({cpu}, {st});
  REQUIRE(loose.feasible);
  CHECK(loose.levels[0] == 0);  // 50 ms at 600 MHz
  st.max_latency_ms = 40;
  auto tight = choose_levels({cpu}, {st});
  REQUIRE(tight.feasible);
  CHECK(tight.levels[0] == 1);  // 30 ms at 1000 MHz
  st.max_latency_ms = 10;
  auto impossible = choose_levels({cpu}, {st});
  CHECK_FALSE(impossible.feasible);
  CHECK(impossible.levels[0] == 2);
  CHECK(impossible.plans[0] == 0);
  // A second plan that offloads (little device time, some radio) wins under the tight bound
  // when its radio energy is below what the higher level costs.
  st.max_latency_ms = 40;
  st.plans.push_back(PlanDemand{2, 25, 0.01, 1});
  auto offload = choose_levels({cpu}, {st});
  REQUIRE(offload.feasible);
  CHECK(offload.plans[0] == 1);
  CHECK(offload.levels[0] == 0);
}

TEST_CASE("schedutil-like and ondemand-like governors") {
  const std::vector<PowerLevel> t = {{600, 1, 0.5}, {1000, 2, 0.6}, {1500, 3, 0.7}};
  // schedutil: 1.25 x f_cur x util.
  CHECK(schedutil_level(t, 2, 0.0) == 0);
  CHECK(schedutil_level(t, 2, 0.3) == 0);  // 562 MHz
  CHECK(schedutil_level(t, 2, 0.5) == 1);  // 937 MHz
  CHECK(schedutil_level(t, 2, 0.6) == 2);  // 1125 MHz
  CHECK(schedutil_level(t, 0, 1.0) == 1);  // 750 MHz: one step up from a saturated bottom
  CHECK(schedutil_level(t, 1, 1.0) == 2);
  // ondemand: top above 80%, else proportional between min and max.
  CHECK(ondemand_level(t, 0, 0.81) == 2);
  CHECK(ondemand_level(t, 2, 0.0) == 0);
  CHECK(ondemand_level(t, 2, 0.4) == 1);  // 960 MHz
  CHECK(ondemand_level(t, 2, 0.5) == 2);  // 1050 MHz
  CHECK(parse_governor("schedutil").ok());
  CHECK(parse_governor("fast").status().message().find("manager, performance") !=
        std::string::npos);
}
