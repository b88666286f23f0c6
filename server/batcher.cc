#include "server/batcher.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <string>

namespace edgesplit::server {

Status check_batching(BatchingOptions& options) {
  if (options.max_batch < 1) return invalid_argument("--max-batch must be at least 1");
  if (options.max_batch > 1024) return invalid_argument("--max-batch must be at most 1024");
  if (options.capacity < 1) return invalid_argument("--queue must be at least 1");
  if (options.max_queue_delay.count() < 0) {
    return invalid_argument("--max-queue-delay-us must be 0 or more");
  }
  if (options.max_queue_delay > std::chrono::seconds(10)) {
    return invalid_argument("--max-queue-delay-us must be at most 10000000 (10 s)");
  }
  if (!(options.fit_margin >= 0 && options.fit_margin <= 10)) {
    return invalid_argument("--fit-margin must be between 0 and 10 (mean deviations)");
  }
  std::sort(options.preferred_batch.begin(), options.preferred_batch.end());
  options.preferred_batch.erase(
      std::unique(options.preferred_batch.begin(), options.preferred_batch.end()),
      options.preferred_batch.end());
  for (size_t p : options.preferred_batch) {
    if (p < 1 || p > options.max_batch) {
      return invalid_argument("--preferred-batch sizes must be between 1 and --max-batch (" +
                              std::to_string(options.max_batch) + "); got " + std::to_string(p));
    }
  }
  return Status();
}

namespace {

// Whether a comes before b in a batch: higher priority, then earlier arrival.
bool before(const Ticket& a, const Ticket& b) {
  return a.priority != b.priority ? a.priority > b.priority : a.seq < b.seq;
}

// The time (in requests' worth) at which workers free from `starts` (sorted) have done `n` more
// requests between them, each taking the next one as it frees: the water-filling level L, where a
// worker free at s takes L - s (0 for no requests).
double finish_level(double n, const std::vector<double>& starts) {
  if (n <= 0 || starts.empty()) return n <= 0 ? 0.0 : std::numeric_limits<double>::infinity();
  double sum = 0;
  double level = 0;
  for (size_t i = 0; i < starts.size(); ++i) {
    sum += starts[i];
    level = (n + sum) / static_cast<double>(i + 1);
    if (i + 1 == starts.size() || level <= starts[i + 1]) break;
  }
  return level;
}

// The largest batch of at most `take` of `order` (one key's tickets in batch order, each able to
// make its deadline alone) whose every ticket can still make its deadline in a batch of that size:
// for k from `take` down, the first k tickets with time for a batch of k.
std::vector<size_t> fit_to_deadlines(const std::vector<Ticket>& tickets,
                                     const std::vector<size_t>& order, size_t take, TimePoint now,
                                     BatchRowsTimeFn expected_ms, const void* context) {
  std::vector<size_t> batch;
  for (size_t k = take; k >= 1; --k) {
    const double need = expected_ms(context, tickets[order.front()].key, k);
    batch.clear();
    for (size_t i : order) {
      if (cannot_meet(tickets[i], now, need)) continue;
      batch.push_back(i);
      if (batch.size() == k) return batch;
    }
  }
  return {order.front()};  // not reached: every ticket makes a batch of one
}

// The tickets of `order` ahead of the last one `d.batch` took that it passed over (no time for a
// batch of its size) wait for a smaller batch on the next worker to be free, with no other idle:
// this one once its batch is done, or a busy one once the rows it has left are (at this key's time
// per request). One that cannot make its deadline alone even then is expired now (`d.expired`),
// so that its device is told at once.
void expire_passed_over(const std::vector<Ticket>& tickets, const std::vector<size_t>& order,
                        BatchDecision& d, TimePoint now, BatchRowsTimeFn expected_ms,
                        const void* context, BatchTimeFn row_ms,
                        const std::vector<double>& busy_rows) {
  const BatchKey& key = tickets[order.front()].key;
  double free_ms = expected_ms(context, key, d.batch.size());
  const double row = row_ms ? row_ms(context, key) : 0.0;
  if (row > 0) {
    for (double rows : busy_rows) free_ms = std::min(free_ms, std::max(0.0, rows) * row);
  }
  const double alone = expected_ms(context, key, 1);
  for (size_t i : order) {
    if (i == d.batch.back()) break;
    if (std::find(d.batch.begin(), d.batch.end(), i) == d.batch.end() &&
        cannot_meet(tickets[i], now, free_ms + alone)) {
      d.expired.push_back(i);
    }
  }
}

}  // namespace

size_t balanced_share(size_t count, size_t idle_workers, const std::vector<double>& busy_rows) {
  if (count == 0) return 0;
  // The other workers: the other idle ones start now, busy ones when their work left is done.
  std::vector<double> others(std::max<size_t>(1, idle_workers) - 1, 0.0);
  for (double b : busy_rows) others.push_back(std::max(0.0, b));
  std::sort(others.begin(), others.end());
  std::vector<double> all = others;
  all.insert(all.begin(), 0.0);  // this worker
  const double level = finish_level(static_cast<double>(count), all);
  // The whole number of requests next to the level whose finish is soonest: this worker's k or
  // the others' level for the rest, whichever is later; the smaller k on a tie (the oldest
  // requests, taken here, are then answered first).
  size_t best = 1;
  double best_finish = std::numeric_limits<double>::infinity();
  const size_t lo = std::clamp<size_t>(static_cast<size_t>(std::floor(level + 1e-9)), 1, count);
  const size_t hi = std::clamp<size_t>(static_cast<size_t>(std::ceil(level - 1e-9)), 1, count);
  for (size_t k = lo; k <= hi; ++k) {
    const double finish =
        std::max(static_cast<double>(k), finish_level(static_cast<double>(count - k), others));
    if (finish < best_finish - 1e-9) {
      best = k;
      best_finish = finish;
    }
  }
  return best;
}

BatchDecision decide_batch(const std::vector<Ticket>& tickets, TimePoint now,
                           const BatchingOptions& options, BatchRowsTimeFn expected_ms,
                           const void* context, BatchCapFn cap, size_t idle_workers,
                           BatchTimeFn row_ms, const std::vector<double>& busy_rows,
                           double offered_load) {
  BatchDecision d;
  // Expired first: a deadline that has passed, or that the key's batch time would overrun.
  std::vector<size_t> live;
  live.reserve(tickets.size());
  for (size_t i = 0; i < tickets.size(); ++i) {
    const Ticket& t = tickets[i];
    if (cannot_meet(t, now, expected_ms ? expected_ms(context, t.key, 1) : 0.0)) {
      d.expired.push_back(i);
    } else {
      live.push_back(i);
    }
  }
  // Per key, its tickets in batch order.
  std::map<BatchKey, std::vector<size_t>> by_key;
  for (size_t i : live) by_key[tickets[i].key].push_back(i);
  std::vector<std::vector<size_t>*> keys;
  for (auto& [key, v] : by_key) {
    std::sort(v.begin(), v.end(),
              [&](size_t a, size_t b) { return before(tickets[a], tickets[b]); });
    keys.push_back(&v);
  }
  std::sort(keys.begin(), keys.end(),
            [&](const std::vector<size_t>* a, const std::vector<size_t>* b) {
              return before(tickets[a->front()], tickets[b->front()]);
            });
  std::optional<TimePoint> wake;
  for (auto* v : keys) {
    size_t max_batch = std::max<size_t>(1, options.max_batch);
    if (cap) {
      const size_t c = cap(context, tickets[v->front()].key);
      if (c > 0) max_batch = std::min(max_batch, c);
    }
    TimePoint oldest = tickets[v->front()].enqueued;
    for (size_t i : *v) oldest = std::min(oldest, tickets[i].enqueued);
    const TimePoint due = oldest + options.max_queue_delay;
    const size_t count = v->size();
    const bool delay_spent = options.max_queue_delay.count() == 0 || now >= due;
    size_t take = 0;
    if (count >= max_batch) {
      take = max_batch;
    } else if (delay_spent) {
      // Not full: idle workers share the key's tickets.
      const size_t share = std::max<size_t>(1, idle_workers);
      take = (count + share - 1) / share;
      const double row =
          options.backlog_only && row_ms ? row_ms(context, tickets[v->front()].key) : 0;
      if (row > 0) {
        const double waited = std::max(0.0, partitioner::ms_between(oldest, now));
        const size_t workers = std::max<size_t>(1, options.workers);
        const bool standing = count > options.backlog_per_worker * workers && waited >= row;
        if (offered_load >= 0 && offered_load < options.saturated_load) {
          // Not saturated: this worker's part of the soonest finish of the queue over every
          // worker, idle or busy (a busy one takes over when the work it has left is done).
          take = std::min(take, balanced_share(count, idle_workers, busy_rows));
        } else if (!standing) {
          // A burst that just came, or a few the workers clear soon: one request, and one more
          // per request time the oldest has waited.
          const double allowed = 1.0 + std::floor(waited / row);
          if (allowed < static_cast<double>(take)) take = static_cast<size_t>(allowed);
        }
      }
    } else {
      for (size_t p : options.preferred_batch) {
        if (p <= count && p <= max_batch) take = p;
      }
    }
    if (take > 0) {
      if (options.fit_deadlines && expected_ms) {
        d.batch = fit_to_deadlines(tickets, *v, take, now, expected_ms, context);
        if (idle_workers <= 1) {
          expire_passed_over(tickets, *v, d, now, expected_ms, context, row_ms, busy_rows);
        }
      } else {
        d.batch.assign(v->begin(), v->begin() + static_cast<std::ptrdiff_t>(take));
      }
      d.wake.reset();
      return d;
    }
    if (!wake || due < *wake) wake = due;
  }
  // Nothing ready: wake at the first fill delay or deadline to come.
  for (size_t i : live) {
    const Ticket& t = tickets[i];
    if (!t.deadline) continue;
    const double need_ms = expected_ms ? expected_ms(context, t.key, 1) : 0.0;
    const TimePoint at =
        *t.deadline - std::chrono::microseconds(static_cast<int64_t>(need_ms * 1e3));
    if (!wake || at < *wake) wake = at;
  }
  d.wake = wake;
  return d;
}

std::vector<size_t> batch_caps(const std::vector<float>& tail_ms,
                               const std::map<int, std::vector<float>>& batch_tail_ms,
                               size_t max_batch) {
  std::vector<size_t> caps(tail_ms.size(), 0);
  if (batch_tail_ms.empty()) return caps;
  const int largest = batch_tail_ms.rbegin()->first;
  for (size_t cut = 0; cut < tail_ms.size(); ++cut) {
    if (tail_ms[cut] <= 0) continue;  // not timed: nothing known
    int best = 1;
    double best_per_row = tail_ms[cut];
    for (const auto& [n, per_cut] : batch_tail_ms) {
      if (static_cast<size_t>(n) > max_batch || cut >= per_cut.size() || per_cut[cut] <= 0) {
        continue;
      }
      const double per_row = per_cut[cut] / n;
      if (per_row < best_per_row) {
        best = n;
        best_per_row = per_row;
      }
    }
    if (best != largest && static_cast<size_t>(best) < max_batch) {
      caps[cut] = static_cast<size_t>(best);
    }
  }
  return caps;
}

namespace {

// A profile's time for a batch of `rows`: linear between its sizes, in proportion to the size
// below its smallest and beyond its largest.
double profile_ms(const std::map<size_t, double>& profile, size_t rows) {
  const double n = static_cast<double>(rows);
  auto above = profile.lower_bound(rows);
  if (above != profile.end() && above->first == rows) return above->second;
  if (above == profile.begin()) return above->second * n / static_cast<double>(above->first);
  auto below = std::prev(above);
  if (above == profile.end()) return below->second * n / static_cast<double>(below->first);
  const double a = static_cast<double>(below->first), b = static_cast<double>(above->first);
  return below->second + (above->second - below->second) * (n - a) / (b - a);
}

}  // namespace

double batch_estimate_ms(const std::map<size_t, double>& measured,
                         const std::map<size_t, double>& profile, size_t rows, double row_ms) {
  auto it = measured.find(rows);
  if (it != measured.end()) return it->second;
  bool shaped = !measured.empty();
  for (const auto& [size, ms] : profile) shaped = shaped && size > 0 && ms > 0;
  if (!shaped || profile.empty()) return static_cast<double>(rows) * row_ms;
  // The measured size nearest to `rows`, the larger on a tie.
  auto near = measured.lower_bound(rows);
  if (near == measured.end() ||
      (near != measured.begin() && rows - std::prev(near)->first < near->first - rows)) {
    near = std::prev(near);
  }
  return near->second * profile_ms(profile, rows) / profile_ms(profile, near->first);
}

int warm_up_cut(const std::vector<bool>& batchable, const std::vector<size_t>& caps, size_t batch) {
  if (batch <= 1) return 0;
  for (size_t cut = 0; cut < batchable.size(); ++cut) {
    if (!batchable[cut]) continue;
    const size_t cap = cut < caps.size() ? caps[cut] : 0;
    if (cap == 0 || cap >= batch) return static_cast<int>(cut);
  }
  return -1;
}

std::optional<size_t> shed_victim(const std::vector<Ticket>& tickets, int priority) {
  std::optional<size_t> victim;
  for (size_t i = 0; i < tickets.size(); ++i) {
    const Ticket& t = tickets[i];
    if (t.priority >= priority) continue;
    if (!victim || t.priority < tickets[*victim].priority ||
        (t.priority == tickets[*victim].priority && t.seq > tickets[*victim].seq)) {
      victim = i;
    }
  }
  return victim;
}

}  // namespace edgesplit::server
