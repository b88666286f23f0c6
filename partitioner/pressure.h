// CPU pressure: how much of the time runnable tasks wait for a CPU, read from Linux's pressure
// stall information (/proc/pressure/cpu), so the device agent notices a CPU contender before frames
// miss their deadlines. Free of LibTorch.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

#include "packing/status.h"

namespace edgesplit::partitioner {

// One reading of a PSI cpu file. Totals are cumulative stalled time in microseconds.
struct CpuPressureSample {
  double some_avg10 = 0;  // percent of the last 10 s in which some runnable task waited
  double full_avg10 = 0;  // percent in which all non-idle tasks waited (0 when has_full is false)
  uint64_t some_total_us = 0;
  uint64_t full_total_us = 0;
  bool has_full = false;  // kernels before 5.13 write no "full" line for the cpu
};

// Parses the text of /proc/pressure/cpu (or a cgroup's cpu.pressure): a "some" line and an
// optional "full" line, each exactly "avg10=A avg60=A avg300=A total=N" with non-negative A and
// integer N. Returns kInvalidArgument with one sentence when the text is anything else.
[[nodiscard]] Result<CpuPressureSample> parse_cpu_pressure(std::string_view text);

struct CpuPressureMonitorOptions {
  // A sample() sooner than this after the previous reading returns the previous fraction.
  double min_interval_ms = 50;
  // Time constant of the exponentially weighted average behind smoothed() (<= 0: no smoothing).
  double time_constant_ms = 500;
  // baseline() is the minimum of smoothed() over this many most recent fractions (at least 1).
  int baseline_samples = 100;
};

// Turns the cumulative "some" stall total into the fraction (0..1) of wall time in which at least
// one runnable task waited for a CPU, over each interval between two samples.
//
// What the number means: with the system-wide file, it counts the waits of every task, this
// process's own included. An inference pool with more threads than free cores reads well above 0
// with no one else on the machine, so compare against the caller's own baseline:
// smoothed() - baseline() is the pressure added since the quietest recent stretch, i.e. by a
// contender that arrived later. It is not the CPU share a contender takes, nor the slowdown of a
// frame; it only says that runnable work is queueing. Inside a container, /proc/pressure/cpu is
// usually the host's; pass the group's /sys/fs/cgroup/.../cpu.pressure to watch one cgroup.
//
// Time is injected: sample() takes the caller's monotonic milliseconds (any origin, e.g.
// ms_between(start, clock.now()) with a partitioner::Clock), so tests drive it by hand.
// When the file cannot be read or parsed at construction, available() is false, the reason is
// kept, and sample() returns std::nullopt without touching the file again. Never throws, never
// logs. Not thread-safe: one thread samples and reads it (or the caller guards it).
class CpuPressureMonitor {
 public:
  explicit CpuPressureMonitor(std::string path = "/proc/pressure/cpu",
                              CpuPressureMonitorOptions options = {});

  bool available() const { return reason_.empty(); }
  // One sentence saying why the monitor is unavailable; empty when it is available.
  const std::string& unavailable_reason() const { return reason_; }

  // Reads the file and returns the stalled fraction since the previous reading, clamped to
  // [0, 1]. std::nullopt on the first reading (no interval yet), when unavailable, or when this
  // read fails (the next good one then measures over the whole gap). Sooner than min_interval_ms
  // after the previous reading (or not after it): the previous fraction, without reading.
  std::optional<double> sample(double now_ms);

  // The fraction of the most recent interval; std::nullopt before the second reading.
  std::optional<double> last() const { return last_; }
  // Exponentially weighted average of the fractions (weighted by interval length); 0 before any.
  double smoothed() const { return smoothed_; }
  // Minimum of smoothed() over the last baseline_samples fractions; 0 before any.
  double baseline() const;

 private:
  std::string path_;
  CpuPressureMonitorOptions options_;
  std::string reason_;  // empty: available
  bool has_reading_ = false;
  double reading_ms_ = 0;          // time of the previous reading
  uint64_t reading_total_us_ = 0;  // its some total
  std::optional<double> last_;     // fraction of the previous interval
  double smoothed_ = 0;
  std::deque<double> recent_smoothed_;  // the last baseline_samples values of smoothed_
};

}  // namespace edgesplit::partitioner
