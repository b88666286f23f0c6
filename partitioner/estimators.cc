// Estimators of bandwidth, base round trip, server and device load (see estimators.h).
#include "partitioner/estimators.h"

#include <algorithm>
#include <cmath>

namespace edgesplit::partitioner {

// ---------------------------------------------------------------------------------------------
// LevelTracker

LevelTracker::LevelTracker(Cautious cautious, LevelTrackerOptions options)
    : cautious_(cautious), options_(options) {}

bool LevelTracker::beyond(double sample, double reference, bool cautious_side) const {
  const bool low_side = (cautious_ == Cautious::kLow) == cautious_side;
  if (low_side) return sample < reference * (1 - options_.jump_ratio) - options_.jump_abs;
  return sample > reference * (1 + options_.jump_ratio) + options_.jump_abs;
}

void LevelTracker::add(double sample, bool recover_at_once) {
  if (!std::isfinite(sample)) return;
  if (samples_ == 0) {
    reset(sample);
    return;
  }
  const double level = value();
  ++samples_;
  double averaged = sample;
  if (options_.max_single_ratio > 1 && level > 0) {
    averaged = cautious_ == Cautious::kHigh ? std::min(sample, level * options_.max_single_ratio)
                                            : std::max(sample, level / options_.max_single_ratio);
  }
  fast_ += options_.fast_alpha * (averaged - fast_);
  slow_ += options_.slow_alpha * (averaged - slow_);

  // Runs of samples beyond the band are measured against the level the run started from, so a
  // step followed by its own smoothing still counts as one run.
  int side = 0;
  const double reference = run_length_ > 0 ? run_reference_ : level;
  if (beyond(sample, reference, true)) {
    side = 1;
  } else if (beyond(sample, reference, false)) {
    side = -1;
  }
  if (side == 0 || side != run_side_) {
    run_side_ = side;
    run_length_ = 0;
    run_sum_ = 0;
    run_reference_ = level;
  }
  if (side == 0) return;
  if (run_length_ == 0 ||
      std::abs(sample - run_reference_) < std::abs(run_nearest_ - run_reference_)) {
    run_nearest_ = sample;
  }
  ++run_length_;
  run_sum_ += sample;
  const int needed = side > 0 ? options_.jump_samples_cautious
                              : (recover_at_once ? 1 : options_.jump_samples_recover);
  if (run_length_ >= needed) {
    const bool nearest = options_.max_single_ratio > 1 && side > 0;
    const double to = nearest ? run_nearest_ : run_sum_ / run_length_;
    const int64_t kept = samples_;
    reset(to);
    samples_ = kept;
  }
}

void LevelTracker::reset(double level) {
  fast_ = slow_ = level;
  samples_ = 1;
  run_side_ = 0;
  run_length_ = 0;
  run_sum_ = 0;
  run_reference_ = level;
}

double LevelTracker::value() const {
  if (samples_ == 0) return 0;
  return cautious_ == Cautious::kLow ? std::min(fast_, slow_) : std::max(fast_, slow_);
}

// ---------------------------------------------------------------------------------------------
// NetworkEstimator

NetworkEstimator::NetworkEstimator(const Clock& clock, NetworkEstimatorOptions options)
    : clock_(clock),
      options_(options),
      bandwidth_(LevelTracker::Cautious::kLow, options.bandwidth) {
  last_bandwidth_sample_ = last_rtt_sample_ = last_probe_sent_ = clock.now();
}

void NetworkEstimator::add_rtt_sample(double wire_ms, bool behind_other_traffic, TimePoint now) {
  while (!rtt_window_.empty() && rtt_window_.back().second >= wire_ms) rtt_window_.pop_back();
  rtt_window_.emplace_back(now, wire_ms);
  // The newest sample always stays, so the window never empties.
  while (ms_between(rtt_window_.front().first, now) > options_.rtt_window_ms) {
    rtt_window_.pop_front();
  }
  last_rtt_sample_ = now;
  rtt_suspect_ = false;
  if (behind_other_traffic) return;
  // How far round trips lie above the base: the delays pooling must outweigh (add_paired).
  const double excess = wire_ms - rtt_ms();
  rtt_excess_ms_ = rtt_excess_samples_++ == 0 ? excess : 0.9 * rtt_excess_ms_ + 0.1 * excess;
}

double NetworkEstimator::paired_pool_ms() const {
  // Each exchange adds its own delay difference, so the noise grows as the root of their number.
  const double noise = rtt_excess_ms_ * std::sqrt(static_cast<double>(std::max(1, paired_count_)));
  return std::clamp(options_.paired_noise_factor * noise, options_.paired_sample_min_ms,
                    options_.paired_sample_max_ms);
}

void NetworkEstimator::add_exchange(const Exchange& e) {
  const TimePoint now = clock_.now();
  consecutive_timeouts_ = 0;
  const double server_ms = std::max(0.0, e.server_queue_ms) + std::max(0.0, e.server_compute_ms);
  const double wire_ms = std::max(0.0, e.round_trip_ms - server_ms);
  if (e.request_bytes <= options_.rtt_sample_max_bytes) {
    add_rtt_sample(wire_ms, e.behind_other_traffic, now);
    return;
  }
  const double bytes = static_cast<double>(e.request_bytes);
  if (e.transfer_measured) {
    add_paired(e.request_bytes, e.transfer_ms, now);  // the base rtt plays no part
    return;
  }
  const double transfer_ms = wire_ms - rtt_ms();
  if (has_rtt() && transfer_ms < -options_.min_transfer_ms) {
    // Faster than the base round trip: the base is too high. Only a lower bound here.
    rtt_suspect_ = true;
    add_bandwidth_bound(bytes / std::max(wire_ms, options_.min_transfer_ms), now);
    return;
  }
  if (e.request_bytes < options_.bandwidth_sample_min_bytes) {
    // A mid-size exchange: a sample only when its transfer stands out of the round trip's noise.
    const double visible =
        std::max(options_.mid_sample_min_ms, options_.mid_sample_min_rtt_fraction * rtt_ms());
    if (!has_rtt() || transfer_ms < visible) return;
    add_bandwidth_sample(e.request_bytes, transfer_ms, now);
    return;
  }
  if (transfer_ms < options_.min_transfer_ms) {
    // Too fast to time: the link moves at least this much.
    add_bandwidth_bound(bytes / options_.min_transfer_ms, now);
  } else {
    add_bandwidth_sample(e.request_bytes, transfer_ms, now);
  }
}

void NetworkEstimator::add_bandwidth_sample(int64_t bytes, double transfer_ms, TimePoint now) {
  bandwidth_.add(static_cast<double>(bytes) / transfer_ms);
  largest_timed_bytes_ = std::max(largest_timed_bytes_, bytes);
  last_bandwidth_sample_ = now;
  any_bandwidth_ = true;
}

void NetworkEstimator::add_paired(int64_t request_bytes, double transfer_ms, TimePoint now) {
  const double bytes = static_cast<double>(request_bytes);
  if (transfer_ms >= paired_pool_ms() && paired_bytes_ == 0) {
    // Long enough to stand out of the noise by itself (a probe, a large frame): one sample.
    add_bandwidth_sample(request_bytes, transfer_ms, now);
    return;
  }
  if (paired_bytes_ > 0 && ms_between(paired_since_, now) > options_.paired_pool_max_ms) {
    // Too fast to time in so long: the link moved at least this much. A bound only, which does not
    // count as a sample (the probes that time such a link stay due).
    raise_to(paired_bytes_ / std::max(paired_ms_, paired_pool_ms()));
    clear_pool();
  }
  if (paired_bytes_ == 0) paired_since_ = now;
  paired_bytes_ += bytes;
  paired_ms_ += transfer_ms;
  ++paired_count_;
  const double pool_ms = paired_pool_ms();
  if (!bandwidth_.has_value() && paired_ms_ < pool_ms) {
    // No estimate yet (the calibration probe on a fast link): what there is, now.
    if (paired_ms_ < options_.min_transfer_ms) {
      add_bandwidth_bound(paired_bytes_ / options_.min_transfer_ms, now);
    } else {
      add_bandwidth_sample(static_cast<int64_t>(paired_bytes_), paired_ms_, now);
    }
    clear_pool();
  } else if (paired_ms_ >= pool_ms) {
    add_bandwidth_sample(static_cast<int64_t>(paired_bytes_), paired_ms_, now);
    clear_pool();
  } else if (paired_bytes_ >= options_.paired_faster_factor * pool_ms * bandwidth_.value()) {
    // By the estimate these bytes take several pools' time, and they took less than one: the link
    // is at least that much faster. Raised now, long before such a pool would fill.
    raise_to(paired_bytes_ / pool_ms);
    clear_pool();
  }
}

void NetworkEstimator::raise_to(double at_least) {
  if (at_least > bandwidth_.value()) bandwidth_.reset(at_least);
}

void NetworkEstimator::clear_pool() {
  paired_bytes_ = 0;
  paired_ms_ = 0;
  paired_count_ = 0;
}

void NetworkEstimator::add_bandwidth_bound(double at_least, TimePoint now) {
  raise_to(at_least);
  last_bandwidth_sample_ = now;
  any_bandwidth_ = true;
}

void NetworkEstimator::add_timeout(int64_t /*request_bytes*/, double /*waited_ms*/) {
  // A lost reply says nothing reliable about the link (the server may be down or overloaded);
  // only repeated losses count, as unavailability.
  ++consecutive_timeouts_;
}

void NetworkEstimator::probe_sent() {
  last_probe_sent_ = clock_.now();
  any_probe_ = true;
}

ProbeRequest NetworkEstimator::probe_due(bool plan_is_local) const {
  const TimePoint now = clock_.now();
  const double since_probe = ms_between(last_probe_sent_, now);
  ProbeRequest p;
  if (rtt_suspect_ && server_available() &&
      (!any_probe_ || since_probe >= options_.recheck_rtt_gap_ms)) {
    p.kind = ProbeRequest::Kind::kRoundTrip;
    p.bytes = options_.rtt_probe_bytes;
    return p;
  }
  const double interval = bandwidth_.step_pending()
                              ? std::min(options_.probe_interval_ms, options_.confirm_probe_ms)
                              : options_.probe_interval_ms;
  if (any_probe_ && since_probe < interval) return {};
  if (!server_available()) {
    p.kind = ProbeRequest::Kind::kRoundTrip;
    p.bytes = options_.rtt_probe_bytes;
    return p;
  }
  const bool bandwidth_stale =
      !any_bandwidth_ || bandwidth_.step_pending() ||
      ms_between(last_bandwidth_sample_, now) >= options_.probe_interval_ms;
  // Frames too small to measure the link leave the estimate to age: refresh it now and then.
  const bool bandwidth_old =
      !any_bandwidth_ || ms_between(last_bandwidth_sample_, now) >= options_.bandwidth_refresh_ms;
  if ((plan_is_local && bandwidth_stale) || bandwidth_old) {
    const double bytes = bandwidth_.value() * options_.probe_transfer_ms;
    const auto grown =
        static_cast<int64_t>(options_.probe_growth * static_cast<double>(largest_timed_bytes_));
    p.kind = ProbeRequest::Kind::kBandwidth;
    p.bytes = std::clamp(std::min(static_cast<int64_t>(bytes), grown), options_.probe_bytes_min,
                         options_.probe_bytes_max);
    return p;
  }
  if (!has_rtt() || ms_between(last_rtt_sample_, now) >= options_.rtt_probe_interval_ms) {
    p.kind = ProbeRequest::Kind::kRoundTrip;
    p.bytes = options_.rtt_probe_bytes;
  }
  return p;
}

int device_probe_every(double local_ms, double chosen_ms, const DeviceProbeOptions& o) {
  if (!(chosen_ms > 0) || !(local_ms < o.within * chosen_ms)) return 0;
  const double extra = std::max(0.0, local_ms - chosen_ms);
  const double every = std::ceil(extra / (o.budget * chosen_ms));
  return std::max(o.at_least, static_cast<int>(std::min(every, 1e6)));
}

bool ServerProbeSchedule::due(TimePoint now, bool local) {
  if (!local) {
    local_ = false;
    interval_ = options_.first;
    return false;
  }
  if (!local_) {
    local_ = true;
    next_ = now + interval_;
  }
  return now >= next_;
}

void ServerProbeSchedule::sent(TimePoint now) {
  interval_ = std::min(interval_ * 2, options_.max);
  next_ = now + interval_;
}

void ServerProbeSchedule::postpone(TimePoint now) { next_ = now + options_.first; }

// ---------------------------------------------------------------------------------------------
// Load

ServerLoadEstimator::ServerLoadEstimator(LoadEstimatorOptions options)
    : options_(options),
      load_(LevelTracker::Cautious::kHigh, options.load),
      queue_(LevelTracker::Cautious::kHigh, options.queue) {}

void ServerLoadEstimator::add_reply(double queue_ms, double compute_ms, double profiled_ms,
                                    bool sole) {
  queue_.add(std::max(0.0, queue_ms), sole);
  if (profiled_ms >= options_.min_profiled_ms && compute_ms > 0) {
    load_.add(compute_ms / profiled_ms, sole);
  }
}

void ServerLoadEstimator::add_queue_report(double queue_ms, bool sole) {
  queue_.add(std::max(0.0, queue_ms), sole);
}

DeviceLoadEstimator::DeviceLoadEstimator(LoadEstimatorOptions options)
    : options_(options), load_(LevelTracker::Cautious::kHigh, options.device) {}

void DeviceLoadEstimator::add_head_time(double measured_ms, double profiled_ms, bool sole) {
  if (profiled_ms >= options_.min_profiled_ms && measured_ms > 0) {
    load_.add(measured_ms / profiled_ms, sole);
  }
}

// ---------------------------------------------------------------------------------------------
// HeadErrorTracker

namespace {
double median_of(std::deque<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
}  // namespace

void RecentMedian::add(double sample) {
  if (!std::isfinite(sample)) return;
  samples_.push_back(sample);
  if (samples_.size() > n_) samples_.pop_front();
}

double RecentMedian::value() const { return median_of(samples_); }

BoundShareController::BoundShareController(double initial_quantile, BoundShareOptions options)
    : options_(options),
      quantile_(std::clamp(initial_quantile, options.lowest, options.highest)),
      miss_share_(1 - options.target) {}

void BoundShareController::note(bool within) {
  ++frames_;
  const double a = std::clamp(options_.alpha, 0.0, 1.0);
  miss_share_ = (1 - a) * miss_share_ + a * (within ? 0.0 : 1.0);
  const double allowed = 1 - options_.target;
  quantile_ = std::clamp(quantile_ + options_.gain * (miss_share_ - allowed), options_.lowest,
                         options_.highest);
}

double interpolated_quantile(std::vector<double> samples, double q) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  const double pos = std::clamp(q, 0.0, 1.0) * static_cast<double>(samples.size() - 1);
  const auto lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, samples.size() - 1);
  return samples[lo] + (samples[hi] - samples[lo]) * (pos - static_cast<double>(lo));
}

bool HeadErrorTracker::add(int cut, double measured_ms, double profiled_ms, double load) {
  if (!(profiled_ms >= options_.min_profiled_ms) || !(measured_ms > 0) || !(load > 0)) {
    return false;
  }
  PerCut& c = cuts_[cut];
  const double residual = measured_ms / (profiled_ms * c.correction * load);
  const double r = options_.max_residual;
  if (r > 0 && (residual > std::max(r, 1 / r) || residual < std::min(r, 1 / r))) return false;
  ++c.samples;
  const auto window = static_cast<size_t>(std::max(1, options_.window));
  c.ratios.push_back(measured_ms / profiled_ms);
  if (c.ratios.size() > window) c.ratios.pop_front();
  c.residuals.push_back(residual);
  if (c.residuals.size() > window) c.residuals.pop_front();
  if (static_cast<int>(c.residuals.size()) < options_.min_samples) return false;
  const double med = median_of(c.residuals);
  const double t = options_.threshold;
  if (std::abs(med - 1) <= t) return false;
  size_t same_side = 0;
  for (double r : c.residuals) same_side += med > 1 ? (r > 1 + t) : (r < 1 - t);
  if (static_cast<double>(same_side) <
      options_.consistent * static_cast<double>(c.residuals.size())) {
    return false;
  }
  const double m = std::max(1.0, options_.max_correction);
  c.correction = std::clamp(c.correction * med, 1 / m, m);
  // The samples were relative to the old correction.
  c.residuals.clear();
  return true;
}

double HeadErrorTracker::correction(int cut) const {
  auto it = cuts_.find(cut);
  return it == cuts_.end() ? 1.0 : it->second.correction;
}

int64_t HeadErrorTracker::samples(int cut) const {
  auto it = cuts_.find(cut);
  return it == cuts_.end() ? 0 : it->second.samples;
}

std::map<int, HeadErrorTracker::CutStats> HeadErrorTracker::stats() const {
  std::map<int, CutStats> out;
  for (const auto& [cut, c] : cuts_) {
    CutStats s;
    s.samples = c.samples;
    s.median_ratio = median_of(c.ratios);
    s.median_residual = c.residuals.empty() ? 1.0 : median_of(c.residuals);
    s.correction = c.correction;
    out[cut] = s;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// ConditionsEstimator

ConditionsEstimator::ConditionsEstimator(const Clock& clock, NetworkEstimatorOptions network,
                                         LoadEstimatorOptions load)
    : network_(clock, network), server_(load), device_(load) {}

void ConditionsEstimator::add_exchange(const Exchange& exchange) {
  network_.add_exchange(exchange);
  server_.add_reply(exchange.server_queue_ms, exchange.server_compute_ms,
                    exchange.profiled_server_ms);
}

void ConditionsEstimator::add_server_reply(const Exchange& exchange) {
  network_.add_answer();
  server_.add_reply(exchange.server_queue_ms, exchange.server_compute_ms,
                    exchange.profiled_server_ms);
}

Conditions ConditionsEstimator::conditions() const {
  Conditions c;
  c.bandwidth_mbps = network_.bandwidth_mbps();
  c.rtt_ms = network_.rtt_ms();
  c.server_queue_ms = server_.queue_ms();
  c.device_load = device_.load_factor();
  c.server_load = server_.load_factor();
  c.server_available = network_.server_available();
  return c;
}

}  // namespace edgesplit::partitioner
