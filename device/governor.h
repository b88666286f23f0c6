// The outer loop of the hierarchical manager, and the governors it is compared with. The
// manager picks each executor's level so that every stream still has a plan meeting its latency
// bound at the lowest predicted power (the executors' active and idle power at their levels plus
// the radio's); the streams' schedulers then pick their plans per frame at those levels (the
// inner loop). The baselines follow utilization as Linux's governors do: performance (top level
// always), schedutil (next = 1.25 x top x utilization) and ondemand (top above 80% load, else
// proportional). Pure logic, free of LibTorch and of the clock.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "device/energy.h"
#include "packing/status.h"

namespace edgesplit::device {

enum class Governor { kManager, kPerformance, kSchedutil, kOndemand };
const char* governor_name(Governor g);
Result<Governor> parse_governor(const std::string& name);

// One plan a stream could run, as the outer loop sees it.
struct PlanDemand {
  double device_ms = 0;  // device compute per frame at the executor's top level (wall time)
  double other_ms = 0;   // the rest of its latency (transfer, round trip, server), level-free
  double radio_j = 0;    // radio energy per frame
  int threads = 1;       // cores its device compute keeps busy
};

// A stream: which executor it runs on, its frame rate, its bound, its plans.
struct StreamLoad {
  std::string name;
  int executor = 0;
  double fps = 0;
  std::optional<double> max_latency_ms;
  std::vector<PlanDemand> plans;
};

struct ManagerOptions {
  // No executor is planned busier than this (its cores, and its one loop that runs the heads
  // one after the other): headroom for the noise of measured times.
  double max_utilization = 0.9;
};

// The outer loop's choice.
struct LevelChoice {
  std::vector<int> levels;  // per executor, an index into its table
  std::vector<int> plans;   // per stream, the plan the prediction assumed (-1: none)
  double watts = 0;         // predicted power of the whole choice
  bool feasible = false;    // false: no level meets every bound; top levels, fastest plans
};

// Predicted power of running `plans` at `levels`, or nullopt when a latency bound or a
// utilization limit is not met.
std::optional<double> predicted_watts(const std::vector<ExecutorDescription>& executors,
                                      const std::vector<StreamLoad>& streams,
                                      const std::vector<int>& levels, const std::vector<int>& plans,
                                      const ManagerOptions& options = {});

// The lowest-power feasible (levels, plans), exactly: every level combination, and per
// combination a branch-and-bound over the streams' plans. When nothing is feasible: every
// executor at its top level and each stream's fastest plan, feasible = false.
LevelChoice choose_levels(const std::vector<ExecutorDescription>& executors,
                          const std::vector<StreamLoad>& streams,
                          const ManagerOptions& options = {});

// Linux-like governors over a level table (ascending freq_mhz). `current` is the level now,
// `utilization` the busy fraction of the executor measured at it (0..1).
// schedutil: the lowest level at or above 1.25 x f_current x utilization.
int schedutil_level(const std::vector<PowerLevel>& levels, int current, double utilization);
// ondemand: the top level above 80% utilization; else the lowest level at or above
// f_min + utilization x (f_top - f_min).
int ondemand_level(const std::vector<PowerLevel>& levels, int current, double utilization);

}  // namespace edgesplit::device
