// The dynamic batcher: the server's queue, which hands workers batches of requests that can run as
// one tail, as Triton's dynamic batcher does.
//
// Requests share a batch when they ask for the same model (or variant) digest and the same cut:
// the server accepts only the cut's own crossing shapes, so the key fixes the tensor shapes too.
// Settings (BatchingOptions): the largest batch (--max-batch), preferred batch sizes
// (--preferred-batch) and the longest the oldest request of a batch may wait for it to fill
// (--max-queue-delay-us; 0: take what is there). Each request may carry a deadline and a priority
// class: the batcher answers a request whose deadline has passed, or can no longer be met by the
// time its key's batches take, as expired (never computed), and refuses on arrival one whose
// deadline the work already queued ahead of it rules out; higher classes are batched first; when
// the queue is full a request of a higher class takes the place of the newest of the lowest class
// below it, which is shed (BUSY).
//
// decide_batch() is the whole policy as a pure function of the queued tickets and the time, so
// tests drive it with a ManualClock; BatchQueue wraps it with a mutex and a condition variable for
// the server's I/O thread (push) and workers (next). Free of LibTorch.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "packing/status.h"
#include "partitioner/clock.h"

namespace edgesplit::server {

using partitioner::TimePoint;

// What requests must share to run as one batch.
struct BatchKey {
  std::string model;  // digest
  int cut = 0;
  bool operator<(const BatchKey& o) const {
    return model != o.model ? model < o.model : cut < o.cut;
  }
  bool operator==(const BatchKey& o) const { return model == o.model && cut == o.cut; }
};

struct BatchingOptions {
  size_t max_batch = 1;                 // 1: every request runs alone
  std::vector<size_t> preferred_batch;  // sizes to form when possible (each <= max_batch)
  std::chrono::microseconds max_queue_delay{0};
  size_t capacity = 64;  // queued requests; a full queue sheds or refuses (BUSY)
  // Once the delay is spent, a batch that is not full takes only the backlog, so that at light
  // load requests run one by one (on a CPU a batch of n costs nearly n tails, and its first
  // request would wait for the others) and what has piled up is batched. Below `saturated_load`,
  // the backlog is this worker's balanced_share() of the key's tickets. At or above it: every
  // queued request of the key when there are more than `backlog_per_worker` x `workers` of them
  // and the oldest has waited at least one request's time alone (a standing queue the workers
  // could not clear within a tail or two, not a burst that just came); otherwise 1 + (how long
  // the oldest has waited / one request's time alone). false: every compatible request queued
  // (Triton's rule).
  bool backlog_only = false;
  size_t workers = 1;  // the server's workers (for backlog_only)
  size_t backlog_per_worker = 2;
  // The offered load: the work that arrived over the last `load_window` (each request at its key's
  // time alone) per worker and unit of time; 1 is what the workers clear at batch 1. Above 1 with
  // a margin for the window's noise: below it batch 1 keeps up, and a queue is a burst the
  // balanced share spreads as batch 1 would (docs/results/batching/, saturated-1.2/).
  double saturated_load = 1.2;
  std::chrono::milliseconds load_window{500};
  // A request with a deadline that would pass before its turn came and its batch ran (the work
  // queued ahead of it, shared by the workers, each request at its key's measured time, then its
  // own key's batch time) is refused on arrival (Pushed::kUnmeetable), so that its device
  // finishes the frame at once rather than at its deadline. false: it is queued and expires once
  // its own batch time no longer fits.
  bool expire_at_arrival = true;
  // A batch takes only requests whose deadlines leave time for a batch of its size (the key's
  // average batch of that size, or its rows at the key's time per request): of the key's
  // requests in batch order, the largest batch of them that can all still be answered in time
  // (decide_batch), so that a request with little time left waits for a smaller batch instead of
  // joining a large one and being computed too late to be sent. A queued request then expires only
  // once not even a batch of one would make it. false: a batch takes the key's requests whatever
  // their deadlines, and a queued request expires once what it has left is less than the key's
  // average batch time.
  bool fit_deadlines = true;
  // With fit_deadlines, the time a batch of a size is expected to take is its recent batches'
  // average plus `fit_margin` times their mean absolute deviation from it (both moving averages),
  // so that a batch whose time varies is not fitted to deadlines it meets only half the time. A
  // size not run yet is scaled from the nearest size's (margin included) as batch_estimate_ms
  // says; without a profile it is rows x the time per request, with no margin.
  double fit_margin = 0;
};

// Checks the settings: one sentence naming the flag for anything wrong; sorts preferred sizes.
Status check_batching(BatchingOptions& options);

// What the batcher knows of one queued request.
struct Ticket {
  BatchKey key;
  int priority = 0;  // higher first
  TimePoint enqueued;
  std::optional<TimePoint> deadline;
  uint64_t seq = 0;  // arrival order
};

// Whether `t` can no longer be answered in time at `now`: its deadline is not further away than
// `need_ms`, the time a batch of its key takes.
inline bool cannot_meet(const Ticket& t, TimePoint now, double need_ms) {
  return t.deadline && partitioner::ms_between(now, *t.deadline) <= need_ms;
}

// Per cut, the largest batch worth forming (0: no cap) from a profile's tail times: batch 1's
// (`tail_ms`, per cut) and a whole batch's per measured size (`batch_tail_ms`). A cut is capped at
// the measured size with the lowest time per request when a larger measured size costs more per
// request; sizes over `max_batch` are not considered; beyond the largest measured size nothing is
// known, so a cut whose best is that size is not capped, nor is a cut the profile did not time
// (0 ms: a profile may time some cuts only).
std::vector<size_t> batch_caps(const std::vector<float>& tail_ms,
                               const std::map<int, std::vector<float>>& batch_tail_ms,
                               size_t max_batch);

// Where a worker's warm-up runs a batch of `batch` rows: cut 0 for one row; else the shallowest
// cut whose tail runs batches (`batchable`, per cut) of that size (`caps`, from batch_caps; empty
// or 0: no cap), whose activations are usually the largest of the cuts that will; -1: none.
int warm_up_cut(const std::vector<bool>& batchable, const std::vector<size_t>& caps, size_t batch);

// The time a batch of `rows` requests takes, from the batch sizes measured so far (`measured`:
// size -> ms, not empty) and a profile's whole-batch tail times (`profile`: size -> ms, may be
// empty): a measured size's own time; else the measured size nearest to `rows` (the larger on a
// tie) scaled by the profile's ratio of the two sizes (linear between the profile's sizes, in
// proportion to the size beyond them), so that on a GPU, where a batch of 32 takes little more
// than a batch of one, a size not yet run is not taken for `rows` single requests; without a
// profile, `rows` x `row_ms` (a CPU's batch of k costs nearly k tails).
double batch_estimate_ms(const std::map<size_t, double>& measured,
                         const std::map<size_t, double>& profile, size_t rows, double row_ms);

struct BatchDecision {
  std::vector<size_t> batch;      // indices of the tickets to run now, in run order (may be empty)
  std::vector<size_t> expired;    // indices of tickets past (or unable to meet) their deadline
  std::optional<TimePoint> wake;  // nothing ready: decide again then (nullopt: on the next arrival)
};

// A time of a key, in ms (0 when not known yet): a request alone's (the backlog rule).
using BatchTimeFn = double (*)(const void* context, const BatchKey& key);
// The time a batch of `rows` requests of a key takes, in ms (0 when not known yet), which
// deadlines are checked against.
using BatchRowsTimeFn = double (*)(const void* context, const BatchKey& key, size_t rows);
// The largest batch worth forming for a key (0: options.max_batch): on a CPU a large batch of a
// tail with large activations can cost more per request than a smaller one.
using BatchCapFn = size_t (*)(const void* context, const BatchKey& key);

// The policy. Keys are taken in the order of their best ticket (priority, then arrival); the first
// key that is ready forms the batch: it has max_batch tickets, or a preferred size, or its oldest
// ticket has waited max_queue_delay (or the delay is 0). A ready batch takes the key's tickets by
// priority then arrival: max_batch of them, or the largest preferred size there is before the delay
// is spent, or all (up to max_batch) once it is. With `idle_workers` workers free to take a batch
// now (this one included), a batch that is not full takes only its share of the key's tickets
// (count / idle_workers, rounded up), so that idle workers run them side by side rather than one
// worker running them all while the others wait. A ticket whose deadline is before
// now + expected_ms(key, 1) (the time a batch of one takes) is expired instead. With
// options.fit_deadlines, a batch of k takes only tickets whose deadlines are after
// now + expected_ms(key, k): the first k such in batch order, k the largest up to the size the
// rules above chose for which there are k. With no other worker idle, a ticket it passes over
// that could not make its deadline alone on the next worker to be free (this one after its batch,
// or a busy one after its `busy_rows` at the key's `row_ms`) is expired with the batch.
// With options.backlog_only, `row_ms` gives a key's time for one request alone (0: not known yet,
// no limit), `busy_rows` the work the busy workers have left, in requests (a batch's rows times
// the part of its expected time still to run), and `offered_load` the load (see
// BatchingOptions::saturated_load; < 0: not known): below saturated_load a batch that is not full
// takes balanced_share() of the key's tickets; otherwise the backlog rule.
BatchDecision decide_batch(const std::vector<Ticket>& tickets, TimePoint now,
                           const BatchingOptions& options, BatchRowsTimeFn expected_ms = nullptr,
                           const void* context = nullptr, BatchCapFn cap = nullptr,
                           size_t idle_workers = 1, BatchTimeFn row_ms = nullptr,
                           const std::vector<double>& busy_rows = {}, double offered_load = -1);

// This worker's part of `count` requests so that they are all done soonest: `idle_workers` workers
// (this one included) start now, and busy ones once the rows they have left (`busy_rows`) are done;
// every request costs the same. The whole number next to the water level that finishes soonest,
// the smaller on a tie; at least 1 (0 for no requests).
size_t balanced_share(size_t count, size_t idle_workers, const std::vector<double>& busy_rows);

// Index of the ticket a new one of `priority` displaces in a full queue (the newest of the lowest
// class, when that class is below `priority`); nullopt: the new ticket is refused.
std::optional<size_t> shed_victim(const std::vector<Ticket>& tickets, int priority);

// A thread-safe queue of Items (any movable type) around decide_batch.
template <class Item>
class BatchQueue {
 public:
  explicit BatchQueue(BatchingOptions options,
                      const partitioner::Clock& clock = partitioner::SteadyClock::instance())
      : options_(std::move(options)), clock_(clock) {}

  enum class Pushed { kQueued, kQueuedShedding, kRefused, kUnmeetable };
  // Queues `item`. kQueuedShedding: it displaced `*shed` (answer that one BUSY); kRefused: the
  // queue is full of requests of its class or above, `*shed` holds `item` back; kUnmeetable
  // (expire_at_arrival): its deadline is nearer than the wait ahead of it plus its key's batch
  // time (`*need`, when given), `*shed` holds `item` back (answer it DEADLINE_EXCEEDED).
  struct Need {
    double wait_ms = 0;  // the work queued ahead of it and left running, over the workers
    double own_ms = 0;   // its key's average batch time
  };
  Pushed push(Ticket ticket, Item item, Item* shed, Need* need = nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    ticket.seq = next_seq_++;
    if (options_.expire_at_arrival && ticket.deadline) {
      const TimePoint now = clock_.now();
      const Need n{wait_ms(now, ticket.priority), average_batch_ms(ticket.key)};
      if (n.own_ms > 0 && cannot_meet(ticket, now, n.wait_ms + n.own_ms)) {
        if (need) *need = n;
        *shed = std::move(item);
        return Pushed::kUnmeetable;
      }
    }
    Pushed result = Pushed::kQueued;
    if (tickets_.size() >= options_.capacity) {
      auto victim = shed_victim(tickets_, ticket.priority);
      if (!victim) {
        *shed = std::move(item);
        return Pushed::kRefused;
      }
      *shed = std::move(items_[*victim]);
      erase_at(*victim);
      result = Pushed::kQueuedShedding;
    }
    note_arrival(ticket.key, ticket.enqueued);
    tickets_.push_back(std::move(ticket));
    items_.push_back(std::move(item));
    cv_.notify_one();
    return result;
  }

  struct Batch {
    BatchKey key;
    std::vector<Item> items;    // run together
    std::vector<Item> expired;  // answer DEADLINE_EXCEEDED
    uint64_t running = 0;       // the queue's handle on this batch while it runs (0: none)
  };
  // Blocks until a batch (or expired requests) is ready, or stop(): then false.
  bool next(Batch& out) {
    out.items.clear();
    out.expired.clear();
    std::unique_lock<std::mutex> lock(mu_);
    // The batch `out` held (if any) has run: this worker is free until it leaves with a batch.
    if (out.running != 0) running_.erase(out.running);
    out.running = 0;
    ++idle_;
    struct Leave {
      size_t& idle;
      ~Leave() { --idle; }
    } leave{idle_};
    for (;;) {
      if (stopped_) return false;
      if (!tickets_.empty()) {
        const TimePoint now = clock_.now();
        BatchDecision d =
            decide_batch(tickets_, now, options_, &BatchQueue::need_ms, this, &BatchQueue::cap,
                         idle_, &BatchQueue::row, busy_rows(now), offered_load(now));
        if (!d.batch.empty() || !d.expired.empty()) {
          if (!d.batch.empty()) {
            out.key = tickets_[d.batch.front()].key;
            out.running = start_running(out.key, d.batch.size(), now);
          }
          for (size_t i : d.batch) out.items.push_back(std::move(items_[i]));
          for (size_t i : d.expired) out.expired.push_back(std::move(items_[i]));
          std::vector<size_t> gone = d.batch;
          gone.insert(gone.end(), d.expired.begin(), d.expired.end());
          std::sort(gone.rbegin(), gone.rend());
          for (size_t i : gone) erase_at(i);
          if (!tickets_.empty()) cv_.notify_one();  // another worker may find the next batch
          return true;
        }
        if (d.wake) {
          // Real time: the clock is the steady clock here (a ManualClock drives decide_batch).
          cv_.wait_until(lock, std::chrono::steady_clock::now() + (*d.wake - clock_.now()));
          continue;
        }
      }
      cv_.wait(lock);
    }
  }

  // Takes out every item whose deadline has passed or can no longer be met (decide_batch's rule),
  // so that the I/O thread answers them while every worker is busy.
  std::vector<Item> take_expired() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Item> out;
    if (tickets_.empty()) return out;
    const TimePoint now = clock_.now();
    for (size_t i = tickets_.size(); i-- > 0;) {
      if (cannot_meet(tickets_[i], now, need_ms(this, tickets_[i].key, 1))) {
        out.push_back(std::move(items_[i]));
        erase_at(i);
      }
    }
    std::reverse(out.begin(), out.end());
    return out;
  }
  // Whether any queued item has a deadline (the I/O thread then sweeps often).
  bool has_deadlines() const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Ticket& t : tickets_) {
      if (t.deadline) return true;
    }
    return false;
  }

  // The time one batch of `key` took (ms): an average that deadlines are checked against
  // (need_ms). `rows`: the requests it ran (the time per request is tracked too).
  void record_batch_time(const BatchKey& key, double ms, size_t rows = 1) {
    std::lock_guard<std::mutex> lock(mu_);
    const double per_row = ms / static_cast<double>(std::max<size_t>(1, rows));
    auto [it, fresh] = times_.emplace(key, KeyTimes{ms, per_row, {}, {}, clock_.now()});
    if (!fresh) {
      it->second.batch_ms = 0.8 * it->second.batch_ms + 0.2 * ms;
      it->second.row_ms = 0.8 * it->second.row_ms + 0.2 * per_row;
    }
    it->second.last = clock_.now();
    const size_t n = std::max<size_t>(1, rows);
    auto [size, first] = it->second.by_rows.emplace(n, SizeTimes{ms, 0.0});
    SizeTimes& st = size->second;
    if (!first) {
      st.dev_ms = 0.8 * st.dev_ms + 0.2 * std::abs(ms - st.ms);
      st.ms = 0.8 * st.ms + 0.2 * ms;
    }
    it->second.fitted_by_rows[n] = st.ms + options_.fit_margin * st.dev_ms;
  }

  // The largest batch to form for `key` (0: options().max_batch). Set before serving.
  void set_key_cap(const BatchKey& key, size_t cap) {
    std::lock_guard<std::mutex> lock(mu_);
    caps_[key] = cap;
  }
  // A profile's whole-batch tail times of `key` (batch size -> ms), which shape the estimates of
  // sizes not measured yet (batch_estimate_ms). Set before serving.
  void set_key_profile(const BatchKey& key, std::map<size_t, double> profile_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    profiles_[key] = std::move(profile_ms);
  }
  // The time a batch of `rows` of `key` is expected to take, which fit_deadlines checks deadlines
  // against (0: not known).
  double expected_batch_ms(const BatchKey& key, size_t rows) const {
    std::lock_guard<std::mutex> lock(mu_);
    const KeyTimes* t = fresh_times(key);
    return t ? estimate_ms(key, *t, rows) : 0.0;
  }

  // Wakes every waiting worker; next() returns false from now on.
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
    }
    cv_.notify_all();
  }
  // Takes every queued item out (for shutdown), oldest first.
  std::vector<Item> drain() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Item> out(std::make_move_iterator(items_.begin()),
                          std::make_move_iterator(items_.end()));
    items_.clear();
    tickets_.clear();
    return out;
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return tickets_.size();
  }
  // How long a request of the lowest class queued now would wait for a worker, in ms (what a
  // device that runs its frames locally while the server is busy asks with a ping): nothing while
  // a worker is idle and no request waits; otherwise the work ahead of it shared by the workers,
  // each queued request at its key's measured time per request (0 before the key's first batch)
  // plus what the running batches have left. A request of a higher class waits less; one that
  // must wait for its batch to fill (--max-queue-delay-us) waits up to that delay more.
  double expected_wait_ms() const {
    std::lock_guard<std::mutex> lock(mu_);
    return wait_ms(clock_.now(), std::numeric_limits<int>::min());
  }
  const BatchingOptions& options() const { return options_; }

 private:
  // expected_wait_ms() for a request of class `priority` at `now`: the queued requests of its class
  // and above are ahead of it; called with mu_ held.
  double wait_ms(TimePoint now, int priority) const {
    if (tickets_.empty() && idle_ > 0) return 0;
    double ms = 0;
    for (const Ticket& t : tickets_) {
      if (t.priority >= priority) ms += times(t.key).row_ms;
    }
    for (const auto& [id, r] : running_) ms += std::max(0.0, partitioner::ms_between(now, r.due));
    return ms / static_cast<double>(std::max<size_t>(1, options_.workers));
  }
  // The batches of one size: their time and its mean absolute deviation (moving averages).
  struct SizeTimes {
    double ms = 0;
    double dev_ms = 0;
  };
  // A key's measured times (zeros before its first batch); called with mu_ held.
  struct KeyTimes {
    double batch_ms = 0;                  // one batch
    double row_ms = 0;                    // per request
    std::map<size_t, SizeTimes> by_rows;  // per batch size, one batch of that size
    // Per batch size, ms + fit_margin x dev_ms: what deadlines are fitted against, kept beside
    // by_rows in the form batch_estimate_ms takes, since it is read per ticket while fitting.
    std::map<size_t, double> fitted_by_rows;
    TimePoint last;  // when the last batch was recorded
    // A batch of one request (0: none has run alone).
    double single_ms() const {
      auto it = by_rows.find(1);
      return it == by_rows.end() ? 0.0 : it->second.ms;
    }
  };
  const KeyTimes& times(const BatchKey& key) const {
    static const KeyTimes kNone;
    auto it = times_.find(key);
    return it == times_.end() ? kNone : it->second;
  }
  // The time a batch of `rows` requests of `key` needs to run, which deadlines are checked
  // against: estimate_ms() with fit_deadlines; without, the key's average batch time whatever the
  // rows (the batches a request would join). 0 (not known: only a passed deadline expires) before
  // the key's first batch and once its last is more than kStaleTimes old: a key whose every
  // request expired in a slow spell would otherwise never run, nor be measured, again.
  static double need_ms(const void* self, const BatchKey& key, size_t rows) {
    const auto* q = static_cast<const BatchQueue*>(self);
    const KeyTimes* t = q->fresh_times(key);
    if (!t) return 0;
    return q->options_.fit_deadlines ? q->estimate_ms(key, *t, rows) : t->batch_ms;
  }
  // The key's average batch time, which a new request's own time is taken as (0: not known, as
  // need_ms); called with mu_ held.
  double average_batch_ms(const BatchKey& key) const {
    const KeyTimes* t = fresh_times(key);
    return t ? t->batch_ms : 0.0;
  }
  // A key's times when a batch of it was recorded within kStaleTimes (else nullptr).
  const KeyTimes* fresh_times(const BatchKey& key) const {
    auto it = times_.find(key);
    if (it == times_.end() || clock_.now() - it->second.last > kStaleTimes) return nullptr;
    return &it->second;
  }
  // A batch of `rows` at a key's times: the average of the batches of that size when some have
  // run (on a CPU a row of a large batch can cost more than a row of a small one: caches), plus
  // the margin (BatchingOptions::fit_margin), otherwise batch_estimate_ms with the key's profile;
  // called with mu_ held.
  double estimate_ms(const BatchKey& key, const KeyTimes& t, size_t rows) const {
    static const std::map<size_t, double> kNoProfile;
    auto p = profiles_.find(key);
    return batch_estimate_ms(t.fitted_by_rows, p == profiles_.end() ? kNoProfile : p->second, rows,
                             t.row_ms);
  }
  static constexpr std::chrono::seconds kStaleTimes{1};
  static double row(const void* self, const BatchKey& key) {
    // A request alone: batches of one when there have been some (a larger batch's time per
    // request is shorter, and would let the backlog rule batch more the more it batches).
    const KeyTimes& t = static_cast<const BatchQueue*>(self)->times(key);
    return t.single_ms() > 0 ? t.single_ms() : t.row_ms;
  }
  // A batch of `rows` requests of `key` a worker starts at `now`, with the time it is expected to
  // take (rows x the key's time per request, or a single request's time); returns its handle.
  uint64_t start_running(const BatchKey& key, size_t rows, TimePoint now) {
    const KeyTimes& t = times(key);
    const double ms =
        rows == 1 && t.single_ms() > 0 ? t.single_ms() : static_cast<double>(rows) * t.row_ms;
    const uint64_t id = ++next_running_;
    running_[id] = Running{now, now + std::chrono::microseconds(static_cast<int64_t>(ms * 1e3)),
                           static_cast<double>(rows)};
    return id;
  }
  // Per running batch, the requests' worth of work it has left at `now` (0 once it is due).
  std::vector<double> busy_rows(TimePoint now) const {
    std::vector<double> rows;
    for (const auto& [id, r] : running_) {
      const double total = partitioner::ms_between(r.started, r.due);
      const double left = partitioner::ms_between(now, r.due);
      rows.push_back(total > 0 && left > 0 ? r.rows * left / total : 0.0);
    }
    return rows;
  }
  // The work offered: per request that arrived, its key's time alone (backlog_only).
  void note_arrival(const BatchKey& key, TimePoint at) {
    if (!options_.backlog_only) return;
    const double ms = row(this, key);
    arrivals_.push_back({at, ms});
    arrived_ms_ += ms;
    if (ms <= 0) ++unknown_arrivals_;
    forget_arrivals(at);
  }
  void forget_arrivals(TimePoint now) {
    while (!arrivals_.empty() && arrivals_.front().first < now - options_.load_window) {
      arrived_ms_ -= arrivals_.front().second;
      if (arrivals_.front().second <= 0) --unknown_arrivals_;
      arrivals_.pop_front();
    }
    if (arrivals_.empty()) arrived_ms_ = 0;
  }
  // The work that arrived over the last load window, per worker and ms of the window (-1 before a
  // request's time is known, or without backlog_only).
  double offered_load(TimePoint now) {
    if (!options_.backlog_only) return -1;
    forget_arrivals(now);
    if (unknown_arrivals_ > 0) return -1;
    const double window = static_cast<double>(options_.load_window.count());
    return arrived_ms_ / (window * static_cast<double>(std::max<size_t>(1, options_.workers)));
  }
  static size_t cap(const void* self, const BatchKey& key) {
    const auto* q = static_cast<const BatchQueue*>(self);
    auto it = q->caps_.find(key);  // called with mu_ held
    return it == q->caps_.end() ? 0 : it->second;
  }
  void erase_at(size_t i) {
    tickets_.erase(tickets_.begin() + static_cast<std::ptrdiff_t>(i));
    items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
  }

  const BatchingOptions options_;
  const partitioner::Clock& clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Ticket> tickets_;  // parallel to items_, in arrival order
  std::deque<Item> items_;
  std::map<BatchKey, KeyTimes> times_;  // averages over the key's batches
  std::map<BatchKey, size_t> caps_;
  std::map<BatchKey, std::map<size_t, double>> profiles_;  // per key, batch size -> profile ms
  struct Running {
    TimePoint started, due;
    double rows = 0;
  };
  std::map<uint64_t, Running> running_;                // batches workers are running, by handle
  std::deque<std::pair<TimePoint, double>> arrivals_;  // over the load window: when, time alone
  double arrived_ms_ = 0;                              // their sum
  size_t unknown_arrivals_ = 0;                        // of them, before their key's time was known
  uint64_t next_running_ = 0;
  uint64_t next_seq_ = 0;
  size_t idle_ = 0;  // workers inside next(), free to take a batch
  bool stopped_ = false;
};

}  // namespace edgesplit::server
