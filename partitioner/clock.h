// Clock: the time source the estimators read, so tests can drive time by hand and replay traces
// deterministically. Free of LibTorch.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace edgesplit::partitioner {

using TimePoint = std::chrono::steady_clock::time_point;

// Milliseconds from `from` to `to` (negative when `to` is earlier).
inline double ms_between(TimePoint from, TimePoint to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// A monotonic time source. Implementations must be safe to call from several threads.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint now() const = 0;
};

// The process's steady clock; what the device agent uses.
class SteadyClock final : public Clock {
 public:
  TimePoint now() const override { return std::chrono::steady_clock::now(); }
  // One shared instance (stateless, so sharing it is safe).
  static const SteadyClock& instance() {
    static const SteadyClock clock;
    return clock;
  }
};

// A clock that only moves when told to: starts at an arbitrary fixed point, advance() moves it
// forward. Thread-safe (the offset is atomic); never goes backwards.
class ManualClock final : public Clock {
 public:
  TimePoint now() const override {
    return TimePoint(std::chrono::nanoseconds(kStartNs + offset_ns_.load()));
  }
  // Moves time forward by `ms` (ignored when negative).
  void advance_ms(double ms) {
    if (ms > 0) offset_ns_ += static_cast<int64_t>(ms * 1e6);
  }

 private:
  static constexpr int64_t kStartNs = 1'000'000'000'000;  // 1000 s: far from zero
  std::atomic<int64_t> offset_ns_{0};
};

}  // namespace edgesplit::partitioner
