// The device's power control: the knob that sets its executor's level (device/knobs.h), the
// energy meter (device/energy.h) and the governor that picks the level about once a second and
// when a stream starts, stops or misses its bound (device/governor.h: the hierarchical manager's
// outer loop, or a performance / schedutil-like / ondemand-like baseline). The streams'
// schedulers stay the inner loop: they plan each frame at the level set here (their measured
// head times follow it). Owned by the runtime's loop; not thread-safe. Free of LibTorch.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "device/config.h"
#include "device/energy.h"
#include "device/governor.h"
#include "device/knobs.h"
#include "partitioner/scheduler.h"

namespace edgesplit::device {

// What the outer loop needs of a stream: its plans evaluated at the current conditions (the
// available ones meeting the bounds speed does not change: accuracy, bytes, memory), its arrival
// rate, latency bound and threads.
struct StreamEnergyView {
  std::string name;
  bool running = false;  // has frames to come and may run them
  bool fixed = false;    // a fixed plan: its plans are not offered to the loop
  double fps = 0;        // 0: frames as fast as they are taken
  std::optional<double> max_latency_ms;
  int threads = 0;  // intra-op threads (0: LibTorch's default, every core)
  std::vector<partitioner::PlanMetrics> plans;
};

// Where the knobs and counters are, for tests (fake trees) and the real machine.
struct PowerControlEnv {
  bool gpu_available = false;  // LibTorch sees a CUDA device
  int pid = 0;                 // the process the quota applies to (0: this one)
  std::string self_cgroup;     // the text of /proc/self/cgroup (empty: read it)
  bool set_affinity = true;    // pin the process to its executor's cores
};

class PowerControl {
 public:
  // Reads the description and opens the knob. A knob that cannot be opened (no cpufreq, no
  // write access, no cgroup) is said once through `log` and the device runs without it (its
  // level stays what the hardware has); a description that cannot be read, or an --executor it
  // does not have, is a user error (kInvalidArgument / kNotFound, one sentence).
  static Result<std::unique_ptr<PowerControl>> open(const EnergyConfig& config,
                                                    const PowerControlEnv& env,
                                                    std::function<void(const std::string&)> log);
  ~PowerControl();

  // Lines for the start of the run: what is driven and how energy is obtained.
  const std::vector<std::string>& notes() const { return notes_; }
  // What a signal handler must undo (device/knobs.h's arm_emergency_restore).
  std::vector<RestoreStep> restore_steps() const;

  // The outer loop's turn: accounts the energy since the last one (`now_s` on a steady clock)
  // and lets the governor pick the level. `why`: "tick", "a stream started", ... Returns a
  // "levels" event when the level changed (null otherwise).
  nlohmann::json tick(double now_s, const std::vector<StreamEnergyView>& streams,
                      const std::string& why);

  // The device's state for every frame line: {"levels": {EXECUTOR: MHz}, "energy_j": joules so
  // far as of the last turn, "energy_t_s": that turn's time in seconds since the first turn,
  // "energy": "measured" | "modeled"}.
  const nlohmann::json& frame_fields() const { return frame_fields_; }
  // The summary: energy, its source and how it was obtained, mean power, time per level.
  nlohmann::json summary(double now_s, uint64_t frames);
  // The device's power at the current level, for --objective energy: the executor's dynamic
  // power (active - idle), the radio's, the idle power.
  partitioner::DevicePower device_power() const;

  int level() const { return levels_.at(static_cast<size_t>(executor_)); }
  double level_mhz() const;
  bool has_knob() const { return knob_ != nullptr; }
  const EnergyMeter& meter() const { return *meter_; }

 private:
  PowerControl() = default;
  // The energy since the last turn.
  void account(double now_s);
  int pick_level(const std::vector<StreamEnergyView>& streams, std::string* note);
  void refresh_frame_fields();
  Status apply(int level);

  EnergyConfig config_;
  std::function<void(const std::string&)> log_;
  std::vector<std::string> notes_;
  std::unique_ptr<Knob> knob_;
  std::unique_ptr<EnergyMeter> meter_;
  int executor_ = 0;
  std::vector<int> levels_;
  int cores_ = 1;             // the executor's cores on this machine
  double cpu_scale_ref_ = 0;  // a quota's full-clock MHz (0: no emulation)
  std::optional<double> last_s_;
  double last_cpu_s_ = 0;
  double start_s_ = 0;
  int lower_streak_ = 0;  // turns in a row that proposed a lower level
  uint64_t level_changes_ = 0;
  std::map<int, double> seconds_at_level_;
  nlohmann::json frame_fields_;
  bool said_fallback_ = false;
  static constexpr double kMissMemoryS = 10;
  int miss_floor_ = 0;  // the lowest level the manager may choose (after a miss)
  double miss_floor_until_s_ = 0;
  std::string signature_;  // the running streams and their bounds
};

}  // namespace edgesplit::device
