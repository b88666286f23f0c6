// Estimators: what the scheduler needs to know about right now (bandwidth, base round trip,
// server queue and speed, device speed), estimated from every exchange with the server and every
// head run. Time comes from a Clock so tests replay traces deterministically. Free of LibTorch.
//
// None of these classes is thread-safe: the device agent feeds and reads them from one thread
// (or guards them with its own mutex).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <utility>
#include <vector>

#include "partitioner/clock.h"

namespace edgesplit::partitioner {

// The conditions a plan is evaluated under (DESIGN.md, "The cost model").
struct Conditions {
  double bandwidth_mbps = 0;     // uplink payload rate in megabits/s (1e6); <= 0: no usable link
  double rtt_ms = 0;             // base round trip of a small message, server time excluded
  double server_queue_ms = 0;    // expected wait in the server's queue
  double device_load = 1;        // measured / profiled head time (> 1: the device is slower)
  double server_load = 1;        // measured / profiled server compute time
  bool server_available = true;  // false after repeated timeouts: only the device-only plan runs
  // What every frame costs on the device besides its plan (preprocessing, waiting for the loop,
  // reporting), measured: added to every plan's latency, so that a latency bound is checked
  // against the whole frame, not the network alone.
  double frame_overhead_ms = 0;
  // What a head costs beyond its profiled time x correction x load when the device idled before
  // it (caches gone cold between frames paced by a frame rate), measured: added to every head that
  // runs, whatever its size. Profiles time heads back to back; at 30 fps a head on this machine
  // runs 0.6-1.2 ms over that whatever its size, which one load factor (a ratio) cannot express.
  double head_overhead_ms = 0;
};

// Tunables of LevelTracker.
struct LevelTrackerOptions {
  double fast_alpha = 0.5;  // weight of a new sample in the fast average
  double slow_alpha = 0.1;  // ... in the slow average
  // A sample beyond `jump_ratio` of the level (plus `jump_abs`) counts towards a jump.
  double jump_ratio = 0.3;
  double jump_abs = 0;
  // Consecutive jump samples that reset the level to their mean: towards the cautious side
  // (a bandwidth drop, a load rise) and away from it.
  int jump_samples_cautious = 2;
  int jump_samples_recover = 3;
  // When > 1, a sample on the cautious side enters the averages at most this many times the
  // level (it still counts whole towards a jump): one outlier (a head that lost the CPU for a
  // quota period or two) moves the level part of the way, while a real step is still followed
  // whole after `jump_samples_cautious` samples. A jump on the cautious side then resets the
  // level to the run's sample nearest the level it started from, not to the run's mean: one
  // outlier and one ordinary slow sample do not make a step to their mean, while a real step
  // (every sample at the new level) is followed as before. 0: samples enter as they are.
  double max_single_ratio = 0;
};

// Smooths a noisy measured level (a bandwidth, a load factor, a queue time) while following real
// steps quickly. It keeps a fast and a slow exponentially weighted average and reports the more
// cautious of the two (the lower for a bandwidth, the higher for a load), so a drop shows within
// one sample; `jump_samples_cautious` consecutive samples beyond the jump band reset the level to
// their mean (a real step is fully followed after two samples), and `jump_samples_recover`
// samples on the other side do the same for improvements. Noise inside the band is averaged.
class LevelTracker {
 public:
  enum class Cautious { kLow, kHigh };
  explicit LevelTracker(Cautious cautious, LevelTrackerOptions options = {});

  // With `recover_at_once`, a sample beyond the band on the side away from caution moves the level
  // to it at once, as a run of `jump_samples_recover` would (for a sample that is the only one
  // for a long while: a device probe while the chosen plan runs no head).
  void add(double sample, bool recover_at_once = false);
  // Forgets the history and sets the level.
  void reset(double level);
  bool has_value() const { return samples_ > 0; }
  // The level; 0 before any sample.
  double value() const;
  int64_t samples() const { return samples_; }
  // Whether the last samples began a run beyond the band that has not yet moved the level: a step
  // that one or two more samples would confirm.
  bool step_pending() const { return run_length_ > 0; }

 private:
  bool beyond(double sample, double reference, bool cautious_side) const;

  Cautious cautious_;
  LevelTrackerOptions options_;
  double fast_ = 0;
  double slow_ = 0;
  int64_t samples_ = 0;
  // Current run of consecutive samples beyond the band, on one side.
  int run_side_ = 0;  // +1 cautious side, -1 the other, 0 none
  int run_length_ = 0;
  double run_sum_ = 0;
  double run_nearest_ = 0;  // the run's sample nearest run_reference_ (max_single_ratio > 1)
  double run_reference_ = 0;
};

// One request/reply with the server, as the device measured it and the reply reported it.
struct Exchange {
  int64_t request_bytes = 0;      // bytes the device sent (header + payload)
  double round_trip_ms = 0;       // send to reply, measured on the device
  double server_queue_ms = 0;     // reported by the server: time in its queue
  double server_compute_ms = 0;   // reported by the server: unpack + tail (+ batching)
  double profiled_server_ms = 0;  // the profile's unpack + tail for this plan; 0 for a probe
  // The request's transfer time measured by itself (transfer_measured): the request went right
  // behind a small ping (its lead), and transfer = the gap between the two replies - the
  // request's server time. The round trip drops out of the difference, and so does, on average,
  // the delay a device adds to each reply before it takes it off the socket (a device process
  // waiting for its CPU slice), which `wire time - base rtt` counts whole against the luckiest
  // ping of the window. Can be negative for a small request (the delays of the two replies differ).
  bool transfer_measured = false;
  double transfer_ms = 0;
  // Sent while other requests were in flight: its round trip may include their uploads. Still a
  // base-rtt sample (the base is a minimum), but not one of how far round trips scatter above it
  // (the delays a reply picks up on the device, which size the pools of measured transfers).
  bool behind_other_traffic = false;
};

// What the estimator asks the device to send so its estimates stay alive.
struct ProbeRequest {
  enum class Kind { kNone, kRoundTrip, kBandwidth };
  Kind kind = Kind::kNone;
  int64_t bytes = 0;  // payload size to send
  bool due() const { return kind != Kind::kNone; }
};

struct NetworkEstimatorOptions {
  // Exchanges up to this size (about one packet) are round-trip samples.
  int64_t rtt_sample_max_bytes = 1500;
  // Exchanges from this size on are bandwidth samples. Between the two, an exchange is one only
  // when its transfer time stands out of the round trip's noise: at least
  // `mid_sample_min_rtt_fraction` of the base rtt and `mid_sample_min_ms` (a 2 KB frame on a slow
  // link; on a fast one it says nothing and the bandwidth probe below refreshes the estimate).
  int64_t bandwidth_sample_min_bytes = 4096;
  double mid_sample_min_rtt_fraction = 0.5;
  double mid_sample_min_ms = 1.0;
  // A transfer time (wire time - base rtt) below this is too small to measure: the sample then
  // only says the bandwidth is at least bytes / min_transfer_ms.
  double min_transfer_ms = 0.05;
  // A wire time below the base rtt shows the base too high (its samples waited behind other
  // traffic): the exchange only says the bandwidth is at least bytes / wire time, and a round-trip
  // probe is due at once (no sooner than this after the last probe) to measure the base again.
  double recheck_rtt_gap_ms = 100;
  // Base rtt = minimum wire time of the round-trip samples of the last `rtt_window_ms`; older
  // minima expire, so the base can rise again after a route change.
  double rtt_window_ms = 10000;
  // While the plan is device-only (nothing sent), a bandwidth probe is due after this long
  // without a bandwidth sample; when the server is unavailable, a round-trip probe instead.
  double probe_interval_ms = 1000;
  // ... and after this long when the last bandwidth sample began a run beyond the tracker's band
  // (the link may have stepped): the samples that confirm a step come sooner than the refresh.
  double confirm_probe_ms = 250;
  // A round-trip probe is due after this long without a round-trip sample, whatever the plan.
  double rtt_probe_interval_ms = 2000;
  // While the plan sends frames too small to be bandwidth samples, a bandwidth probe is due after
  // this long without one (a probe costs the link probe_transfer_ms every this often).
  double bandwidth_refresh_ms = 5000;
  // Bandwidth probe size: what the current estimate moves in probe_transfer_ms, within bounds,
  // and at most probe_growth x the largest exchange whose transfer was timed (an estimate raised
  // by untimed exchanges alone must not size a probe that holds a slow link for long).
  double probe_transfer_ms = 20;
  double probe_growth = 4;
  int64_t probe_bytes_min = 16 << 10;
  int64_t probe_bytes_max = 256 << 10;
  int64_t rtt_probe_bytes = 64;
  // Exchanges with a measured transfer (Exchange::transfer_measured) are pooled until their
  // transfer times add up to `paired_noise_factor` x how far round-trip samples lie above the
  // base rtt on average (the delays a reply can pick up on the device) x the square root of the
  // pool's exchanges, within [paired_sample_min_ms, paired_sample_max_ms] (a sample within about
  // 20% whatever the size of the exchanges), then give one sample: bytes / time, both summed. An
  // exchange whose transfer alone is that long (a probe, a large frame) is a sample by itself.
  // Summed, the differences of two replies' delays cancel; a small frame's own ratio would be
  // ruled by them. On a device that takes replies at once, every exchange is a sample. A pool
  // open for longer than `paired_pool_max_ms` is closed as a lower bound only (a link too fast to
  // time with such small exchanges: the probes time it), and so is a pool whose bytes would take
  // `paired_faster_factor` x its time at the estimate (the link got faster). Before the first
  // sample, an exchange gives one at once.
  double paired_noise_factor = 4;
  double paired_sample_min_ms = 1;
  double paired_sample_max_ms = 100;
  double paired_pool_max_ms = 5000;
  double paired_faster_factor = 4;
  // Consecutive timeouts after which the server counts as unavailable (a reply resets it).
  int timeouts_unavailable = 2;
  LevelTrackerOptions bandwidth{0.5, 0.1, 0.3, 0, 2, 3};
};

// Bandwidth and base round trip from exchanges: wire time = round trip - server time (queue +
// compute, as the reply reports them); small exchanges give base-rtt samples, big ones bandwidth
// samples = bytes / (wire time - base rtt). Before any round-trip sample the base rtt counts as
// 0, which under-estimates the bandwidth consistently (predicted transfer + rtt still equals the
// measured wire time).
class NetworkEstimator {
 public:
  explicit NetworkEstimator(const Clock& clock, NetworkEstimatorOptions options = {});

  void add_exchange(const Exchange& exchange);
  // A request that got no reply within `waited_ms`.
  void add_timeout(int64_t request_bytes, double waited_ms);
  // A reply whose timing is not used: only resets the timeout count.
  void add_answer() { consecutive_timeouts_ = 0; }
  // Marks a probe as sent now, so probe_due() waits for its reply instead of asking again.
  void probe_sent();

  // 0 before any bandwidth sample.
  double bandwidth_mbps() const { return bandwidth_.value() / 125.0; }
  double rtt_ms() const { return rtt_window_.empty() ? 0 : rtt_window_.front().second; }
  bool has_bandwidth() const { return bandwidth_.has_value(); }
  bool has_rtt() const { return !rtt_window_.empty(); }
  bool server_available() const { return consecutive_timeouts_ < options_.timeouts_unavailable; }
  int64_t bandwidth_samples() const { return bandwidth_.samples(); }
  // Whether to send a probe now, and how big; `plan_is_local`: the current plan sends nothing.
  ProbeRequest probe_due(bool plan_is_local) const;

 private:
  void add_rtt_sample(double wire_ms, bool behind_other_traffic, TimePoint now);
  // A timed transfer: a bandwidth sample.
  void add_bandwidth_sample(int64_t bytes, double transfer_ms, TimePoint now);
  // An untimed one: the link moves at least `at_least` bytes/ms (raises the estimate if lower).
  void add_bandwidth_bound(double at_least, TimePoint now);
  // An exchange with a measured transfer: a sample by itself, or into the pool.
  void add_paired(int64_t request_bytes, double transfer_ms, TimePoint now);
  // Raises the estimate to `at_least` (bytes/ms) if lower, without counting a sample.
  void raise_to(double at_least);
  void clear_pool();
  // The transfer time a pool gathers before it gives a sample.
  double paired_pool_ms() const;

  const Clock& clock_;
  NetworkEstimatorOptions options_;
  LevelTracker bandwidth_;                               // bytes per millisecond
  std::deque<std::pair<TimePoint, double>> rtt_window_;  // (time, wire ms), values increasing
  bool any_bandwidth_ = false;
  TimePoint last_bandwidth_sample_{};
  TimePoint last_rtt_sample_{};
  TimePoint last_probe_sent_{};
  bool any_probe_ = false;
  bool rtt_suspect_ = false;  // an exchange's wire time was below the base rtt
  int64_t largest_timed_bytes_ = 0;
  double paired_bytes_ = 0;  // the open pool of paired exchanges
  double paired_ms_ = 0;
  int paired_count_ = 0;
  TimePoint paired_since_{};
  double rtt_excess_ms_ = 0;  // average of round-trip samples - base rtt
  int64_t rtt_excess_samples_ = 0;
  int consecutive_timeouts_ = 0;
};

// Device probes: the device-load factor learns only from heads that run, so a stream whose plan
// runs no head on the device now and then runs a frame on the device instead. A probe is due
// after `frames_without_head` frames when the device-only plan's predicted latency `local_ms` is
// within `within` x the chosen plan's `chosen_ms`, at most every `at_least` frames, and further
// apart the more it is predicted to cost: its extra latency, spread over the frames between
// probes, stays within `budget` of the chosen plan's latency.
struct DeviceProbeOptions {
  int at_least = 3;
  double within = 4.0;
  double budget = 0.03;
};
// Frames between probes for these predictions (0: no probe, the device is too far behind).
int device_probe_every(double local_ms, double chosen_ms, const DeviceProbeOptions& o = {});

// Server probes: the server's load factor and queue time are learnt only from its replies, so a
// stream that went to the device because the server looked slow (a burst of other devices'
// requests, a cold tail) would not measure the server again, and would stay on the device after
// the server had recovered. While the chosen plan runs on the device, a frame goes to the server
// now and then (the stream sends one only where the server's state is what keeps it on the
// device): the first `first` after the stream went local, then at intervals that double up to
// `max` while the stream stays there. Back on a remote plan, the schedule starts over.
struct ServerProbeOptions {
  std::chrono::milliseconds first{500};
  std::chrono::milliseconds max{8000};
};

class ServerProbeSchedule {
 public:
  explicit ServerProbeSchedule(ServerProbeOptions options = {}) : options_(options) {}
  // Once per decision: `local`, whether the chosen plan runs on the device. True when a probe is
  // due now; the caller then sends one and calls sent(), or postpone()s it.
  bool due(TimePoint now, bool local);
  // A probe went out: the next is due one interval later, and the interval doubles (up to max).
  void sent(TimePoint now);
  // No probe now (the server's state does not decide, or none can run yet): asked again `first`
  // later, the interval unchanged.
  void postpone(TimePoint now);
  // When the next probe is due; TimePoint::max() while the chosen plan is remote.
  TimePoint next() const { return local_ ? next_ : TimePoint::max(); }
  std::chrono::milliseconds interval() const { return interval_; }

 private:
  ServerProbeOptions options_;
  bool local_ = false;
  TimePoint next_{};
  std::chrono::milliseconds interval_{options_.first};
};

struct LoadEstimatorOptions {
  // Load samples from operations profiled shorter than this are too noisy to use.
  double min_profiled_ms = 0.5;
  LevelTrackerOptions load{0.5, 0.1, 0.3, 0.05, 2, 3};
  LevelTrackerOptions queue{0.5, 0.1, 0.3, 1.0, 2, 3};
  // The device's own load factor: one head far slower than the level (a frame that lost its core
  // for a while) counts at most 1.5x the level until a second one confirms it. Plans that run no
  // head do not measure the device, so a level raised by one outlier could otherwise keep every
  // local plan out until the next device probe.
  LevelTrackerOptions device{0.5, 0.1, 0.3, 0.05, 2, 3, 1.5};
};

// Server speed and queue from the load report in each reply: load = reported compute time /
// profiled compute time of the same plan; queue = reported queue time. Both start at their
// neutral values (load 1, queue 0) until the first reply.
class ServerLoadEstimator {
 public:
  explicit ServerLoadEstimator(LoadEstimatorOptions options = {});
  // `sole`: the only reply for a while (a server probe while the chosen plan runs on the device).
  // A sample below the level's band then moves the level to it at once, as a run of recoveries
  // would: no reply would confirm it while the stream stays on the device. A sample above it is
  // taken as any other.
  void add_reply(double queue_ms, double compute_ms, double profiled_compute_ms, bool sole = false);
  // The server's own estimate of its queue wait (a ping's Pong.wait_us): a queue sample alone.
  void add_queue_report(double queue_ms, bool sole);
  double load_factor() const { return load_.has_value() ? load_.value() : 1.0; }
  double queue_ms() const { return queue_.value(); }
  bool has_queue_sample() const { return queue_.has_value(); }

 private:
  LoadEstimatorOptions options_;
  LevelTracker load_;
  LevelTracker queue_;
};

// Device speed: measured head time / profiled head time (another app on the device, thermal
// throttling, a CPU quota all show up here). 1 until the first usable sample.
class DeviceLoadEstimator {
 public:
  explicit DeviceLoadEstimator(LoadEstimatorOptions options = {});
  // `sole`: the only head for a while (a device probe while the chosen plan runs none). One below
  // the level's band moves the level to it at once: the plan runs no head that would confirm it
  // within a few frames, and a load factor left high keeps every plan with a head out, probes'
  // turns included (they come rarer the slower the device looks). A sample above it is taken
  // as any other (two in a row make a step), so one slow probe does not raise it at once either.
  void add_head_time(double measured_ms, double profiled_ms, bool sole = false);
  double load_factor() const { return load_.has_value() ? load_.value() : 1.0; }

 private:
  LoadEstimatorOptions options_;
  LevelTracker load_;
};

// Per-cut error of the profile's head times, apart from the device's load. The load factor is
// learnt from every head the device runs, so when the profile misjudges one cut (a timing run hit
// by a slow spell, a head that runs differently on this device) that cut's error is spread over
// every plan. Each sample here is measured / (profiled x correction x load) at the time, relative
// to the cut's current correction; a cut whose recent samples (at least `min_samples` of the last
// `window`) lie consistently on one side of 1 by more than `threshold` gets the correction that
// makes its median 1 (the device then feeds the load estimator profiled x correction, so the load
// factor stays the device's own). With one cut only, its error and the load cannot be told apart:
// the load factor takes both and the correction stays 1.
struct HeadErrorOptions {
  int window = 10;
  int min_samples = 5;
  double threshold = 0.10;  // |median - 1| beyond this, relative
  double consistent = 0.8;  // fraction of the window on the median's side of 1 +- threshold
  double min_profiled_ms = 0.5;
  double max_correction = 4;  // a correction is clamped to [1/max, max]
  // > 0: a head whose residual (measured / (profiled x correction x load)) lies beyond [1/max,
  // max] met something other than the cut's own speed (a contender's time slice that this head
  // spanned and others fitted between) and is no sample; 0: every head is one.
  double max_residual = 0;
};

class HeadErrorTracker {
 public:
  explicit HeadErrorTracker(HeadErrorOptions options = {}) : options_(options) {}
  // A head at `cut` ran in `measured_ms`, profiled at `profiled_ms` (uncorrected), while the load
  // factor was `load`. Returns whether the cut's correction changed.
  bool add(int cut, double measured_ms, double profiled_ms, double load);
  // The cut's correction (1 until its error is consistent).
  double correction(int cut) const;
  // Samples taken at the cut so far (0 for a cut never seen), and whether that is enough for a
  // correction to have been judged (min_samples).
  int64_t samples(int cut) const;
  bool known(int cut) const { return samples(cut) >= options_.min_samples; }

  struct CutStats {
    int64_t samples = 0;         // every sample taken
    double median_ratio = 0;     // measured / profiled (no load removed) over the window
    double median_residual = 0;  // measured / (profiled x correction x load) over the window
    double correction = 1;
  };
  std::map<int, CutStats> stats() const;

 private:
  struct PerCut {
    std::deque<double> residuals;  // measured / (profiled x correction x load)
    std::deque<double> ratios;     // measured / profiled
    int64_t samples = 0;
    double correction = 1;
  };
  HeadErrorOptions options_;
  std::map<int, PerCut> cuts_;
};

// The median of the last `n` samples (a head's per-cut error is judged against the recent heads'
// median load, HeadErrorTracker; the device's load factor, cautious, sits above it by as much as
// the heads vary).
class RecentMedian {
 public:
  explicit RecentMedian(size_t n) : n_(n == 0 ? 1 : n) {}
  void add(double sample);
  // Whether `n` samples have been added; value() is the median of the last `n` (of those there
  // are before that, 0 before any).
  bool ready() const { return samples_.size() >= n_; }
  bool empty() const { return samples_.empty(); }
  double value() const;

 private:
  size_t n_;
  std::deque<double> samples_;
};

// The share of recent frames within a latency bound, and the quantile of recent heads' load at
// which plans under the bound are made, following it (`--bound-share`, docs/runtime.md): a fixed
// quantile holds the bound for whatever share of frames the members' spread gives (near a bound
// between two members' times, fewer than wanted; far from one, more, at the cost of top-1). The
// quantile rises while more recent frames than the target allows are over the bound, and falls
// while fewer are: an integral controller on an exponentially weighted share of misses.
struct BoundShareOptions {
  double target = 0.9;  // the share of frames within the bound
  double alpha = 0.05;  // the weight of each new frame in the recent miss share (about 20 frames)
  double gain = 0.1;    // quantile change per frame per unit of (miss share - allowed)
  double lowest = 0.5;  // the quantile's range
  double highest = 1.0;
};

class BoundShareController {
 public:
  BoundShareController(double initial_quantile, BoundShareOptions options);
  // One finished frame that ran under the bound: within it or not.
  void note(bool within);
  double quantile() const { return quantile_; }
  // The recent share within (exponentially weighted; the target before any frame).
  double share_within() const { return 1 - miss_share_; }
  int64_t frames() const { return frames_; }

 private:
  BoundShareOptions options_;
  double quantile_;
  double miss_share_;
  int64_t frames_ = 0;
};

// The q quantile of `samples` (0 <= q <= 1), linear between order statistics; 0 when empty.
double interpolated_quantile(std::vector<double> samples, double q);

// The three estimators together: what the device agent feeds after every exchange and head run,
// and reads Conditions from before every decision.
class ConditionsEstimator {
 public:
  explicit ConditionsEstimator(const Clock& clock, NetworkEstimatorOptions network = {},
                               LoadEstimatorOptions load = {});

  // A reply arrived: feeds the network and server estimators.
  void add_exchange(const Exchange& exchange);
  // A reply whose round trip cannot be trusted (the device was busy when it could have arrived):
  // feeds only the server estimator, and counts as an answer (no longer timed out).
  void add_server_reply(const Exchange& exchange);
  void add_timeout(int64_t request_bytes, double waited_ms) {
    network_.add_timeout(request_bytes, waited_ms);
  }
  void add_head_time(double measured_ms, double profiled_ms) {
    device_.add_head_time(measured_ms, profiled_ms);
  }
  ProbeRequest probe_due(bool plan_is_local) const { return network_.probe_due(plan_is_local); }
  void probe_sent() { network_.probe_sent(); }

  Conditions conditions() const;
  const NetworkEstimator& network() const { return network_; }
  const ServerLoadEstimator& server() const { return server_; }
  const DeviceLoadEstimator& device() const { return device_; }

 private:
  NetworkEstimator network_;
  ServerLoadEstimator server_;
  DeviceLoadEstimator device_;
};

}  // namespace edgesplit::partitioner
