// Energy: a device description (executors, each with a table of levels {freq_mhz, active_watts,
// idle_watts}, and the radio's power), and an energy meter that reads a counter where the machine
// has one (powercap's energy_uj on x86, an INA3221 power monitor's rails on a Jetson) and models
// the energy otherwise (active power x busy time from this process's CPU accounting + idle power
// x idle time). Every figure says which it is. Free of LibTorch.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "packing/status.h"

namespace edgesplit::device {

// One level of an executor: its clock and the executor's power when all its cores are busy
// (active) and when none is (idle), in watts.
struct PowerLevel {
  double freq_mhz = 0;
  double active_watts = 0;
  double idle_watts = 0;
};

// A group of cores (or a GPU) that runs at one level at a time.
struct ExecutorDescription {
  std::string name;                // "big", "little", "gpu"
  std::string kind = "cpu";        // "cpu" or "gpu"
  std::vector<int> cores;          // CPU ids (cpu executors)
  std::vector<PowerLevel> levels;  // ascending freq_mhz
  double top_mhz() const { return levels.empty() ? 0 : levels.back().freq_mhz; }
};

// Whether two executors share a core (a "little" executor made of one of the big cores): the
// same silicon, whose power is counted once.
bool shares_cores(const ExecutorDescription& a, const ExecutorDescription& b);

struct DeviceDescription {
  std::string name;
  std::vector<std::string> sources;  // where the figures come from
  double radio_watts = 0;            // transmitting, on top of the executors' power
  std::vector<ExecutorDescription> executors;
  // The executor with this name, or -1.
  int executor(const std::string& name) const;
};

// Parses a device description:
//   {"name": "...", "sources": ["..."], "radio_watts": 0.9,
//    "executors": [{"name": "big", "kind": "cpu", "cores": "0-3",
//                   "levels": [{"freq_mhz": 600, "active_watts": 3.6, "idle_watts": 2.7}, ...]}]}
// Levels are sorted by frequency. kInvalidArgument, one sentence naming the executor and the
// field, for anything wrong (no executors, no levels, negative or non-finite power, idle above
// active, repeated frequency, unknown keys).
Result<DeviceDescription> parse_device_description(const std::string& json_text);
Result<DeviceDescription> load_device_description(const std::string& path);

// A hardware energy counter: powercap (/sys/class/powercap/*/energy_uj, microjoules, wrapping at
// max_energy_range_uj) or an INA3221 (/sys/class/hwmon/hwmon*/name = ina3221: in*_input mV x
// curr*_input mA per rail, integrated between reads). Not thread-safe.
class EnergyCounter {
 public:
  // The first counter under `sys_root` (/sys on a real machine) that can be read, or nullopt.
  static std::optional<EnergyCounter> find(const std::string& sys_root = "/sys");
  // Joules since the previous call (the first call returns 0); `now_s` on a steady clock.
  double joules_since_last(double now_s);
  const std::string& describe() const { return describe_; }

 private:
  enum class Kind { kPowercap, kIna3221 };
  Kind kind_ = Kind::kPowercap;
  std::vector<std::string> files_;  // energy_uj; or in_input, curr_input pairs
  std::string describe_;
  double range_uj_ = 0;
  std::optional<double> last_uj_;
  std::optional<double> last_watts_;
  double last_s_ = 0;
  double read_watts() const;
};

// Device energy over time: measured from an EnergyCounter when there is one, modeled from the
// description otherwise. The runtime calls advance() about once a second and at the end.
class EnergyMeter {
 public:
  // `executor`: the one this process runs on; the others idle at the levels advance() is given.
  EnergyMeter(DeviceDescription description, int executor, std::optional<EnergyCounter> counter);

  // The interval since the previous call: `wall_s` long, `busy_cpu_s` of this process's CPU time
  // in it (all its threads), at `levels` (an index into each executor's table). `cpu_scale` turns
  // the measured CPU time into the time a core at that level would be busy (top / level under a
  // quota, which slices time at full clock; 1 under cpufreq). `now_s` feeds the counter. Returns
  // the joules of the interval.
  double advance(double wall_s, double busy_cpu_s, const std::vector<int>& levels, double cpu_scale,
                 double now_s);
  // The modeled power of one executor at a level and utilization (0..1 of its cores).
  static double modeled_watts(const PowerLevel& level, double utilization);

  double joules() const { return joules_; }
  bool measured() const { return counter_.has_value(); }
  const char* source() const { return measured() ? "measured" : "modeled"; }
  // One sentence: what is measured or how it is modeled.
  std::string describe() const;
  const DeviceDescription& description() const { return description_; }
  int executor() const { return executor_; }
  // Utilization of the process's executor in the last interval (0..1).
  double last_utilization() const { return last_utilization_; }

 private:
  DeviceDescription description_;
  int executor_;
  std::optional<EnergyCounter> counter_;
  double joules_ = 0;
  double last_utilization_ = 0;
};

// CPU seconds this process has used so far (all threads, user + system).
double process_cpu_seconds();

}  // namespace edgesplit::device
