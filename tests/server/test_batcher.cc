// The dynamic batcher's policy (decide_batch, shed_victim) on a ManualClock, and BatchQueue across
// threads.
#include "server/batcher.h"

#include <doctest/doctest.h>

#include <atomic>
#include <set>
#include <thread>

namespace edgesplit::server {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

struct Tickets {
  partitioner::ManualClock clock;
  std::vector<Ticket> list;
  uint64_t seq = 0;

  size_t add(const std::string& model, int cut, int priority = 0,
             std::optional<double> deadline_ms = std::nullopt) {
    Ticket t;
    t.key = {model, cut};
    t.priority = priority;
    t.enqueued = clock.now();
    if (deadline_ms)
      t.deadline = clock.now() + microseconds(static_cast<int64_t>(*deadline_ms * 1e3));
    t.seq = seq++;
    list.push_back(t);
    return list.size() - 1;
  }
  BatchDecision decide(const BatchingOptions& o, BatchRowsTimeFn f = nullptr,
                       const void* c = nullptr) {
    return decide_batch(list, clock.now(), o, f, c);
  }
};

// A ticket for the BatchQueue tests (steady clock): key ("m", cut), enqueued now.
Ticket now_ticket(int cut = 0, int priority = 0) {
  Ticket t;
  t.key = {"m", cut};
  t.priority = priority;
  t.enqueued = std::chrono::steady_clock::now();
  return t;
}

BatchingOptions batching(size_t max_batch, int64_t delay_us = 0,
                         std::vector<size_t> preferred = {}) {
  BatchingOptions o;
  o.max_batch = max_batch;
  o.max_queue_delay = microseconds(delay_us);
  o.preferred_batch = std::move(preferred);
  REQUIRE(check_batching(o).ok());
  return o;
}

// --batch-from backlog with `workers` workers.
BatchingOptions backlog(size_t max_batch, size_t workers) {
  BatchingOptions o = batching(max_batch);
  o.backlog_only = true;
  o.workers = workers;
  return o;
}

// Pushes n tickets of key ("m", 0) into q, one every `every_ms` on clock (0: all at once).
void push_every(BatchQueue<int>& q, partitioner::ManualClock& clock, int n, double every_ms = 0) {
  int unused = 0;
  for (int i = 0; i < n; ++i) {
    Ticket t;
    t.key = {"m", 0};
    t.enqueued = clock.now();
    q.push(t, i, &unused);
    if (every_ms > 0) clock.advance_ms(every_ms);
  }
}

// Pushes n tickets of key ("m", 0) into q, each with `left_ms` to its deadline on clock.
void push_with_deadline(BatchQueue<int>& q, partitioner::ManualClock& clock, int n,
                        double left_ms) {
  int held = -1;
  for (int i = 0; i < n; ++i) {
    Ticket t;
    t.key = {"m", 0};
    t.enqueued = clock.now();
    t.deadline = clock.now() + microseconds(static_cast<int64_t>(left_ms * 1e3));
    REQUIRE(q.push(t, i, &held) == BatchQueue<int>::Pushed::kQueued);
  }
}

TEST_CASE("only requests for the same model and cut share a batch") {
  Tickets t;
  t.add("a", 3);
  t.add("b", 3);
  t.add("a", 4);
  t.add("a", 3);
  t.add("b", 3);
  auto d = t.decide(batching(8));
  // The oldest request's key goes first, with every request of that key, in arrival order.
  CHECK(d.batch == std::vector<size_t>{0, 3});
  for (size_t i : d.batch) CHECK(t.list[i].key == BatchKey{"a", 3});
  CHECK(d.expired.empty());
}

TEST_CASE("a batch holds at most max_batch requests, oldest first") {
  Tickets t;
  for (int i = 0; i < 7; ++i) t.add("m", 1);
  auto d = t.decide(batching(4));
  CHECK(d.batch == std::vector<size_t>{0, 1, 2, 3});
  // max_batch 1: one at a time, in arrival order.
  CHECK(t.decide(batching(1)).batch == std::vector<size_t>{0});
}

TEST_CASE("with no queue delay the batcher takes what is there at once") {
  Tickets t;
  t.add("m", 1);
  t.add("m", 1);
  auto d = t.decide(batching(8, 0));
  CHECK(d.batch.size() == 2);
}

TEST_CASE("a batch never waits longer than the queue delay") {
  Tickets t;
  const auto o = batching(8, 5000);  // 5 ms
  t.add("m", 1);
  t.clock.advance_ms(2);
  t.add("m", 1);
  auto d = t.decide(o);
  CHECK(d.batch.empty());
  REQUIRE(d.wake.has_value());
  // Wake exactly when the oldest request has waited the delay.
  CHECK(partitioner::ms_between(t.list[0].enqueued, *d.wake) == doctest::Approx(5.0));
  t.clock.advance_ms(2.999);
  CHECK(t.decide(o).batch.empty());
  t.clock.advance_ms(0.001);
  auto ready = t.decide(o);
  CHECK(ready.batch == std::vector<size_t>{0, 1});
  // A full batch does not wait at all.
  Tickets full;
  for (int i = 0; i < 8; ++i) full.add("m", 1);
  CHECK(full.decide(o).batch.size() == 8);
}

TEST_CASE("idle workers share a batch that is not full - a full one goes to one worker") {
  Tickets t;
  for (int i = 0; i < 5; ++i) t.add("m", 1);
  const auto o = batching(8);
  auto share = [&](size_t idle) {
    return decide_batch(t.list, t.clock.now(), o, nullptr, nullptr, nullptr, idle).batch.size();
  };
  CHECK(share(1) == 5);
  CHECK(share(2) == 3);  // 5 over two free workers: 3 now, 2 for the other
  CHECK(share(8) == 1);
  for (int i = 0; i < 20; ++i) t.add("m", 1);
  CHECK(share(2) == 8);  // a full batch is formed whatever the other workers do
}

TEST_CASE("backlog_only: a batch takes one request, and one more per request time waited") {
  Tickets t;
  for (int i = 0; i < 5; ++i) t.add("m", 1);
  auto o = batching(8);
  o.backlog_only = true;
  o.workers = 8;  // never a backlog by count here: the wait sets the batch
  auto ten_ms = [](const void*, const BatchKey&) { return 10.0; };
  auto take = [&](BatchTimeFn row) {
    return decide_batch(t.list, t.clock.now(), o, nullptr, nullptr, nullptr, 1, row).batch.size();
  };
  CHECK(take(ten_ms) == 1);   // nothing has waited: one at a time, as at batch 1
  CHECK(take(nullptr) == 5);  // no request time known yet: no limit
  t.clock.advance_ms(10);
  CHECK(take(ten_ms) == 2);
  t.clock.advance_ms(25);
  CHECK(take(ten_ms) == 4);  // the oldest waited 35 ms: 1 + 3
  t.clock.advance_ms(100);
  CHECK(take(ten_ms) == 5);  // never more than there is
  for (int i = 0; i < 10; ++i) t.add("m", 1);
  CHECK(take(ten_ms) == 8);  // max_batch
  Tickets fresh;
  for (int i = 0; i < 9; ++i) fresh.add("m", 1);
  auto f = decide_batch(fresh.list, fresh.clock.now(), o, nullptr, nullptr, nullptr, 1, ten_ms);
  CHECK(f.batch.size() == 8);  // a full batch is a backlog whatever its age
  o.backlog_only = false;
  CHECK(take(ten_ms) == 8);
}

TEST_CASE("backlog_only: a queue that has waited a tail and outnumbers the workers is a backlog") {
  Tickets t;
  auto o = backlog(8, 2);
  o.backlog_per_worker = 1;  // more than 2 queued
  auto ten_ms = [](const void*, const BatchKey&) { return 10.0; };
  auto take = [&](size_t idle) {
    return decide_batch(t.list, t.clock.now(), o, nullptr, nullptr, nullptr, idle, ten_ms)
        .batch.size();
  };
  for (int i = 0; i < 5; ++i) t.add("m", 1);
  t.add("other", 1);
  CHECK(take(1) == 1);  // a burst that just arrived: one at a time, as at batch 1
  t.clock.advance_ms(12);
  CHECK(take(1) == 5);  // it has waited a whole tail: all of it
  CHECK(take(2) == 3);  // two idle workers share it
  t.list.erase(t.list.begin() + 2, t.list.begin() + 5);
  CHECK(take(1) == 2);  // two of the key: the wait decides (1 + 12 / 10)
  t.add("m", 1);
  CHECK(take(1) == 3);       // three (the other key does not count)
  o.backlog_per_worker = 2;  // the default: more than 4
  CHECK(take(1) == 2);
  t.add("m", 1);
  t.add("m", 1);
  CHECK(take(1) == 5);
}

TEST_CASE("balanced_share: the part of a queue that finishes it soonest over every worker") {
  CHECK(balanced_share(0, 1, {}) == 0);
  CHECK(balanced_share(5, 1, {}) == 5);
  CHECK(balanced_share(5, 2, {}) == 2);     // two idle: 2 and 3 both finish at 3; the oldest first
  CHECK(balanced_share(5, 1, {0.0}) == 2);  // a busy worker about to be free counts as idle
  CHECK(balanced_share(5, 1, {0.5}) == 3);  // level 2.75: 3 here, 2 there after its half row
  CHECK(balanced_share(5, 1, {4.0}) == 4);  // 4 here, the other takes the fifth at 4: done at 5
  CHECK(balanced_share(5, 1, {9.0}) == 5);  // the other is busy past the whole queue's time
  CHECK(balanced_share(2, 1, {0.1}) == 1);  // not 2: the other is free almost at once
  CHECK(balanced_share(3, 1, {2.5}) == 3);
  CHECK(balanced_share(8, 1, {1.0, 1.0}) == 3);  // 3 here; the other two finish 5 at 3.5
  CHECK(balanced_share(8, 1, {1.0, 9.0}) == 4);  // 4 and 4 more from 1: the one 9 rows away none
  CHECK(balanced_share(2, 4, {}) == 1);
}

TEST_CASE("backlog_only below the saturated load: a batch is this worker's balanced share") {
  Tickets t;
  auto o = backlog(16, 2);
  auto ten_ms = [](const void*, const BatchKey&) { return 10.0; };
  for (int i = 0; i < 9; ++i) t.add("m", 1);
  t.clock.advance_ms(30);  // a standing queue: 9 > 4, waited 3 tails
  auto take = [&](double load, std::vector<double> busy) {
    return decide_batch(t.list, t.clock.now(), o, nullptr, nullptr, nullptr, 1, ten_ms, busy, load)
        .batch.size();
  };
  CHECK(take(-1, {0.5}) == 9);   // load not known: the backlog rule, all of it
  CHECK(take(1.3, {0.5}) == 9);  // saturated (above 1.2): all of it, the largest batch
  CHECK(take(0.9, {0.5}) == 5);  // at 90% batch 1 keeps up: the balanced share
  CHECK(take(0.5, {0.5}) == 5);  // not: level (9 + 0.5) / 2 = 4.75
  CHECK(take(0.5, {20}) == 9);   // the other worker will not be free before this one is done
  Tickets burst;  // not a standing queue: the wait allowance gives 1, the share 3 (level 3)
  for (int i = 0; i < 5; ++i) burst.add("m", 1);
  CHECK(decide_batch(burst.list, burst.clock.now(), o, nullptr, nullptr, nullptr, 1, ten_ms, {1.0},
                     0.5)
            .batch.size() == 3);
  CHECK(decide_batch(burst.list, burst.clock.now(), o, nullptr, nullptr, nullptr, 1, ten_ms, {1.0},
                     1.3)
            .batch.size() == 1);
}

TEST_CASE("BatchQueue measures the offered load over its window") {
  partitioner::ManualClock clock;
  auto o = backlog(32, 2);
  o.load_window = std::chrono::milliseconds(100);
  o.saturated_load = 1.0;  // below the default 1.2, to keep the arithmetic small
  BatchQueue<int> q(o, clock);
  auto push = [&](int n, double every_ms) { push_every(q, clock, n, every_ms); };
  q.record_batch_time({"m", 0}, 10.0, 1);  // 10 ms alone
  push(5, 10);                             // load 50 ms / (100 ms x 2 workers) = 0.25
  BatchQueue<int>::Batch b, other;
  REQUIRE(q.next(b));
  CHECK(b.items.size() == 5);  // the only worker: all of it, due in 50 ms
  push(6, 5);                  // load 0.55 at t = 80 ms
  REQUIRE(q.next(other));      // the first has 2 requests' worth left: level (6 + 2) / 2
  CHECK(other.items.size() == 4);
  // Three times faster: 21 requests in the window, 1.05 of the capacity at batch 1, saturated:
  // the backlog rule takes the whole standing queue (balanced, 9 of the 17).
  push(15, 4);
  REQUIRE(q.next(b));
  CHECK(b.items.size() == 17);
}

TEST_CASE("BatchQueue with backlog_only leaves a busy worker the part it will be free for") {
  partitioner::ManualClock clock;
  auto o = backlog(16, 2);
  o.backlog_per_worker = 1;  // more than 2 queued
  BatchQueue<int> q(o, clock);
  auto push = [&](int n) { push_every(q, clock, n); };
  q.record_batch_time({"m", 0}, 10.0, 1);  // 10 ms per request
  push(4);
  clock.advance_ms(10);
  BatchQueue<int>::Batch first, second;
  REQUIRE(q.next(first));
  CHECK(first.items.size() == 4);  // a standing queue, the only worker: all of it (40 ms)
  push(6);
  clock.advance_ms(12);
  // The first worker has 28 of its 40 ms left (2.8 requests' worth): 4 here (done at 4), 2 there
  // (done at 4.8); 5 here would finish at 5.
  REQUIRE(q.next(second));
  CHECK(second.items.size() == 4);
  REQUIRE(q.next(first));  // its batch is done: it no longer counts as busy; the second's 4 are
  CHECK(first.items.size() == 2);  // still to run, so both queued come here
  push(6);
  clock.advance_ms(60);  // both are overdue: as good as free
  REQUIRE(q.next(second));
  CHECK(second.items.size() == 3);
}

TEST_CASE("BatchQueue with backlog_only learns a key's time per request from its batches") {
  partitioner::ManualClock clock;
  auto o = backlog(8, 4);
  BatchQueue<int> q(o, clock);
  int unused = 0;
  auto ticket = [&] {
    Ticket t;
    t.key = {"m", 0};
    t.enqueued = clock.now();
    return t;
  };
  for (int i = 0; i < 4; ++i) q.push(ticket(), i, &unused);
  BatchQueue<int>::Batch b;
  REQUIRE(q.next(b));
  CHECK(b.items.size() == 4);              // nothing measured yet
  q.record_batch_time({"m", 0}, 40.0, 4);  // 10 ms per request
  for (int i = 0; i < 4; ++i) q.push(ticket(), i, &unused);
  REQUIRE(q.next(b));
  CHECK(b.items.size() == 1);
  clock.advance_ms(20);
  REQUIRE(q.next(b));
  CHECK(b.items.size() == 3);
  // Once batches of one are measured, their time sets the allowance (a larger batch's time per
  // request is shorter).
  q.record_batch_time({"m", 0}, 20.0, 1);
  q.record_batch_time({"m", 0}, 80.0, 16);  // 5 ms per request: does not count
  for (int i = 0; i < 4; ++i) q.push(ticket(), i, &unused);
  clock.advance_ms(20);
  REQUIRE(q.next(b));
  CHECK(b.items.size() == 2);  // 1 + 20 ms / 20 ms
}

TEST_CASE("a key's cap limits its batches, other keys keep max_batch") {
  Tickets t;
  for (int i = 0; i < 6; ++i) t.add("big", 0);
  for (int i = 0; i < 6; ++i) t.add("small", 9);
  auto cap = [](const void*, const BatchKey& k) -> size_t { return k.model == "big" ? 2 : 0; };
  auto d = decide_batch(t.list, t.clock.now(), batching(16), nullptr, nullptr, cap);
  CHECK(d.batch == std::vector<size_t>{0, 1});
  t.list.erase(t.list.begin(), t.list.begin() + 6);
  CHECK(decide_batch(t.list, t.clock.now(), batching(16), nullptr, nullptr, cap).batch.size() == 6);
}

TEST_CASE("a preferred batch size is formed as soon as there are that many requests") {
  Tickets t;
  const auto o = batching(16, 100000, {4, 8});
  for (int i = 0; i < 3; ++i) t.add("m", 1);
  CHECK(t.decide(o).batch.empty());
  for (int i = 0; i < 3; ++i) t.add("m", 1);
  // Six waiting: the largest preferred size that fits (4) goes now; the rest waits.
  CHECK(t.decide(o).batch.size() == 4);
  // Once the delay is spent, everything there goes (up to max_batch).
  t.clock.advance_ms(100);
  CHECK(t.decide(o).batch.size() == 6);
}

TEST_CASE("expired requests are never batched, and those that cannot make it are expired early") {
  Tickets t;
  const auto o = batching(8);
  t.add("m", 1, 0, 10.0);
  t.add("m", 1, 0, 50.0);
  t.add("m", 1);  // no deadline
  t.clock.advance_ms(10);
  auto d = t.decide(o);
  CHECK(d.expired == std::vector<size_t>{0});
  CHECK(d.batch == std::vector<size_t>{1, 2});
  // A batch of this key takes 45 ms: the 50 ms deadline (40 ms left) cannot be met either.
  static const double kBatchMs = 45;
  auto expected = [](const void*, const BatchKey&, size_t) { return kBatchMs; };
  auto d2 = t.decide(o, expected);
  CHECK(d2.expired == std::vector<size_t>{0, 1});
  CHECK(d2.batch == std::vector<size_t>{2});
}

TEST_CASE("fit_deadlines: a batch takes only requests with time left for a batch of its size") {
  Tickets t;
  BatchingOptions o = batching(8);  // fit_deadlines by default
  // A batch of this key takes 10 ms per request.
  auto expected = [](const void*, const BatchKey&, size_t rows) { return 10.0 * rows; };
  t.add("m", 0, 0, 25.0);  // in time for a batch of 2 at most
  t.add("m", 0, 0, 100.0);
  t.add("m", 0, 0, 100.0);
  t.add("m", 0, 0, 100.0);
  t.add("m", 0, 0, 15.0);   // of 1
  t.add("m", 0, 0, 100.0);  // another key's request does not count for this key's batch
  t.list.back().key.cut = 1;
  // Five requests of key ("m", 0) would take 50 ms; of them, only three have that long, or 40 ms,
  // or 30 ms: the three run now, and 0 and 4 stay for a smaller batch, on another worker idle now.
  auto d = decide_batch(t.list, t.clock.now(), o, expected, nullptr, nullptr, 2);
  CHECK(d.expired.empty());
  CHECK(d.batch == std::vector<size_t>{1, 2, 3});
  // With no other worker idle, the next is this one in 30 ms: 0 (25 ms left) cannot make it, and
  // is told now. 4 came after the batch's last: it was not passed over, and waits.
  d = t.decide(o, expected);
  CHECK(d.batch == std::vector<size_t>{1, 2, 3});
  CHECK(d.expired == std::vector<size_t>{0});
  // A busy worker with one request's work left (10 ms) is free soon enough for it.
  auto ten = [](const void*, const BatchKey&) { return 10.0; };
  d = decide_batch(t.list, t.clock.now(), o, expected, nullptr, nullptr, 1, ten, {1.0});
  CHECK(d.batch == std::vector<size_t>{1, 2, 3});
  CHECK(d.expired.empty());
  // Without them, 0 and 4 cannot share a batch of 20 ms: the older runs alone.
  t.list.erase(t.list.begin() + 1, t.list.begin() + 4);
  CHECK(t.decide(o, expected).batch == std::vector<size_t>{0});
  // Without fit_deadlines the batch takes every request of the key whatever its deadline.
  BatchingOptions average = o;
  average.fit_deadlines = false;
  CHECK(t.decide(average, expected).batch == std::vector<size_t>{0, 1});
  // After 6 ms, request 4 (9 ms left) cannot make even a batch of one: it expires.
  t.clock.advance_ms(6);
  auto later = t.decide(o, expected);
  CHECK(later.expired == std::vector<size_t>{1});
  CHECK(later.batch == std::vector<size_t>{0});
}

TEST_CASE("BatchQueue: deadlines against a batch of one with fit_deadlines, the average without") {
  partitioner::ManualClock clock;
  BatchingOptions average;
  average.fit_deadlines = false;
  for (const BatchingOptions& o : {BatchingOptions{}, average}) {
    CAPTURE(o.fit_deadlines);
    BatchQueue<int> q(o, clock);
    q.record_batch_time({"m", 0}, 10.0, 1);
    q.record_batch_time({"m", 0}, 80.0, 8);  // 10 ms per request; the average batch: 24 ms
    int held = -1;
    Ticket t;
    t.key = {"m", 0};
    t.enqueued = clock.now();
    t.deadline = clock.now() + milliseconds(40);
    REQUIRE(q.push(t, 1, &held) == BatchQueue<int>::Pushed::kQueued);
    clock.advance_ms(20);  // 20 ms left: a request alone takes 10
    CHECK(q.take_expired().size() == (o.fit_deadlines ? 0u : 1u));
  }
}

TEST_CASE("batch_estimate_ms: measured sizes, else the nearest scaled by the profile") {
  const std::map<size_t, double> measured{{1, 5.0}, {4, 8.0}};
  // A GPU-like profile: a batch of 16 takes 1.4x a batch of one.
  const std::map<size_t, double> gpu{{1, 10.0}, {8, 12.0}, {16, 14.0}};
  CHECK(batch_estimate_ms(measured, gpu, 4, 3.0) == doctest::Approx(8.0));  // measured
  // 16 from 4, the nearest: 8 ms x 14 / (10 + 2 x 3/7) (4 lies between the profile's 1 and 8).
  CHECK(batch_estimate_ms(measured, gpu, 16, 3.0) ==
        doctest::Approx(8.0 * 14.0 / (10.0 + 2.0 * 3.0 / 7.0)));
  // 2 is nearer to 1 than to 4: from 1.
  CHECK(batch_estimate_ms(measured, gpu, 2, 3.0) ==
        doctest::Approx(5.0 * (10.0 + 2.0 / 7.0) / 10.0));
  // Beyond the profile's largest size, in proportion to the size.
  CHECK(batch_estimate_ms(measured, gpu, 32, 3.0) ==
        doctest::Approx(8.0 * 28.0 / (10.0 + 2.0 * 3.0 / 7.0)));
  // Without a profile: rows x the time per request.
  CHECK(batch_estimate_ms(measured, {}, 16, 3.0) == doctest::Approx(48.0));
}

TEST_CASE("BatchQueue: with a profile's batch times a size not run yet is not 16 tails") {
  partitioner::ManualClock clock;
  BatchingOptions o = batching(16);
  o.expire_at_arrival = false;
  BatchQueue<int> q(o, clock);
  const BatchKey key{"m", 0};
  q.record_batch_time(key, 5.0, 1);
  CHECK(q.expected_batch_ms(key, 16) == doctest::Approx(80.0));  // 16 x 5 ms
  q.set_key_profile(key, {{1, 10.0}, {16, 14.0}});
  CHECK(q.expected_batch_ms(key, 16) == doctest::Approx(7.0));  // 5 ms x 14 / 10
  // 16 requests with 20 ms left: one batch of 16 (7 ms) makes them all (without the profile, 3).
  push_with_deadline(q, clock, 16, 20.0);
  BatchQueue<int>::Batch b;
  REQUIRE(q.next(b));
  CHECK(b.items.size() == 16);
  CHECK(b.expired.empty());
}

TEST_CASE("the batcher wakes for a deadline while a batch fills") {
  Tickets t;
  const auto o = batching(8, 20000);  // 20 ms delay
  t.add("m", 1, 0, 5.0);
  auto d = t.decide(o);
  CHECK(d.batch.empty());
  REQUIRE(d.wake.has_value());
  CHECK(partitioner::ms_between(t.clock.now(), *d.wake) == doctest::Approx(5.0));
  t.clock.advance_ms(5);
  CHECK(t.decide(o).expired == std::vector<size_t>{0});
}

TEST_CASE("higher priority classes are batched first") {
  Tickets t;
  t.add("a", 1, 0);
  t.add("b", 1, 2);
  t.add("a", 1, 5);
  t.add("b", 1, 2);
  auto d = t.decide(batching(8));
  // Key a holds the highest class (5): its batch runs first, the priority-5 request leading.
  CHECK(d.batch == std::vector<size_t>{2, 0});
  // Batch of one: strictly by class, then arrival.
  auto one = t.decide(batching(1));
  CHECK(one.batch == std::vector<size_t>{2});
  t.list.erase(t.list.begin() + 2);
  CHECK(t.decide(batching(1)).batch == std::vector<size_t>{1});
}

TEST_CASE(
    "batch caps from a profile: the size with the lowest time per request, where larger costs "
    "more") {
  // Per cut, batch 1's tail time and whole-batch times at 4 and 16.
  const std::vector<float> one = {10, 10, 10};
  const std::map<int, std::vector<float>> batches = {
      {4, {30, 20, 30}},      // per request: 7.5, 5, 7.5
      {16, {160, 100, 80}}};  // per request: 10, 6.25, 5
  // Cut 0: best at 4, 16 costs more per request: capped at 4. Cut 1: the same. Cut 2: best at the
  // largest measured size, nothing known beyond it: no cap.
  CHECK(batch_caps(one, batches, 32) == std::vector<size_t>{4, 4, 0});
  // Sizes over max_batch are not considered, and a cap at max_batch is no cap.
  CHECK(batch_caps(one, batches, 4) == std::vector<size_t>{0, 0, 0});
  // Batch 1 cheapest per request: capped at 1.
  CHECK(batch_caps({1, 1, 1}, batches, 32) == std::vector<size_t>{1, 1, 1});
  CHECK(batch_caps(one, {}, 32) == std::vector<size_t>{0, 0, 0});
  // A cut the profile did not time (0 ms) is not capped, and an untimed size is not its best.
  CHECK(batch_caps({10, 0, 10}, {{4, {30, 0, 0}}, {16, {160, 0, 80}}}, 32) ==
        std::vector<size_t>{4, 0, 0});
}

TEST_CASE("a worker warms each batch size at the shallowest cut that forms it") {
  const std::vector<bool> batchable = {true, false, true, true};
  // No caps: cut 0 takes every size.
  CHECK(warm_up_cut(batchable, {}, 1) == 0);
  CHECK(warm_up_cut(batchable, {}, 8) == 0);
  // Cut 0 capped at 4 and cut 2 at 2: 4 at cut 0, 8 past both caps and the cut that does not batch.
  const std::vector<size_t> caps = {4, 0, 2, 0};
  CHECK(warm_up_cut(batchable, caps, 4) == 0);
  CHECK(warm_up_cut(batchable, caps, 8) == 3);
  // One row is always warmed whole; a size no cut forms is not warmed.
  CHECK(warm_up_cut({false, false}, {}, 1) == 0);
  CHECK(warm_up_cut({false, true}, {0, 2}, 4) == -1);
}

TEST_CASE("a full queue sheds the newest request of the lowest class below the new one") {
  Tickets t;
  t.add("m", 1, 1);
  t.add("m", 1, 0);
  t.add("m", 1, 0);
  t.add("m", 1, 2);
  CHECK(shed_victim(t.list, 2) == std::optional<size_t>(2));
  CHECK(shed_victim(t.list, 1) == std::optional<size_t>(2));
  CHECK_FALSE(shed_victim(t.list, 0).has_value());
}

TEST_CASE("BatchQueue: fit_margin adds the times' mean deviation to the batches fitted") {
  partitioner::ManualClock clock;
  for (double margin : {0.0, 2.0}) {
    CAPTURE(margin);
    BatchingOptions o = batching(8);
    o.expire_at_arrival = false;
    o.fit_margin = margin;
    BatchQueue<int> q(o, clock);
    const BatchKey key{"m", 0};
    q.record_batch_time(key, 5.0, 1);
    q.record_batch_time(key, 10.0, 4);
    q.record_batch_time(key, 20.0, 4);  // average 0.8 x 10 + 0.2 x 20 = 12, deviation 0.2 x 10
    CHECK(q.expected_batch_ms(key, 4) == doctest::Approx(12.0 + margin * 2.0));
    CHECK(q.expected_batch_ms(key, 1) == doctest::Approx(5.0));  // one time: no deviation yet
    // Four requests with 14 ms left: a batch of 4 at 12 ms without the margin; with it (16 ms)
    // a batch of 3 (3 x the 4.6 ms per request), and the fourth stays queued.
    push_with_deadline(q, clock, 4, 14.0);
    BatchQueue<int>::Batch b;
    REQUIRE(q.next(b));
    CHECK(b.items.size() == (margin > 0 ? 3u : 4u));
    CHECK(b.expired.empty());
    CHECK(q.size() == (margin > 0 ? 1u : 0u));
  }
}

TEST_CASE("batching settings are checked with one sentence") {
  BatchingOptions o;
  o.max_batch = 0;
  CHECK(check_batching(o).message().find("--max-batch") != std::string::npos);
  o.max_batch = 4;
  o.preferred_batch = {8};
  CHECK(check_batching(o).message().find("--preferred-batch") != std::string::npos);
  o.preferred_batch = {4, 2, 2};
  CHECK(check_batching(o).ok());
  CHECK(o.preferred_batch == std::vector<size_t>{2, 4});
  o.max_queue_delay = microseconds(-1);
  CHECK(check_batching(o).message().find("--max-queue-delay-us") != std::string::npos);
  o.max_queue_delay = microseconds(0);
  o.fit_margin = -1;
  CHECK(check_batching(o).message().find("--fit-margin") != std::string::npos);
}

TEST_CASE("BatchQueue: pushes refuse or shed when full, workers get whole batches") {
  BatchingOptions o;
  o.max_batch = 4;
  o.capacity = 3;
  REQUIRE(check_batching(o).ok());
  BatchQueue<int> q(o);
  const auto ticket = now_ticket;
  int shed = -1;
  CHECK(q.push(ticket(1, 0), 10, &shed) == BatchQueue<int>::Pushed::kQueued);
  CHECK(q.push(ticket(2, 0), 11, &shed) == BatchQueue<int>::Pushed::kQueued);
  CHECK(q.push(ticket(1, 0), 12, &shed) == BatchQueue<int>::Pushed::kQueued);
  CHECK(q.push(ticket(1, 0), 13, &shed) == BatchQueue<int>::Pushed::kRefused);
  CHECK(shed == 13);
  CHECK(q.push(ticket(1, 1), 14, &shed) == BatchQueue<int>::Pushed::kQueuedShedding);
  CHECK(shed == 12);  // the newest of class 0
  BatchQueue<int>::Batch b;
  REQUIRE(q.next(b));
  CHECK(b.key == BatchKey{"m", 1});
  CHECK(b.items == std::vector<int>{14, 10});
  REQUIRE(q.next(b));
  CHECK(b.items == std::vector<int>{11});
  CHECK(q.size() == 0);
}

TEST_CASE(
    "BatchQueue: a waiting worker gets the batch when the delay is spent, and stop() ends it") {
  BatchingOptions o;
  o.max_batch = 8;
  o.max_queue_delay = milliseconds(30);
  REQUIRE(check_batching(o).ok());
  BatchQueue<int> q(o);
  std::atomic<int> got{0};
  std::atomic<bool> ended{false};
  std::chrono::steady_clock::time_point first_push, taken;
  std::thread worker([&] {
    BatchQueue<int>::Batch b;
    while (q.next(b)) {
      taken = std::chrono::steady_clock::now();
      got += static_cast<int>(b.items.size());
    }
    ended = true;
  });
  int unused = 0;
  first_push = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) q.push(now_ticket(), i, &unused);
  for (int i = 0; i < 200 && got.load() < 3; ++i) std::this_thread::sleep_for(milliseconds(5));
  CHECK(got.load() == 3);
  const double waited = partitioner::ms_between(first_push, taken);
  CHECK(waited >= 29.0);   // held for the delay...
  CHECK(waited < 1000.0);  // ...and not much longer (generous: a loaded machine)
  q.stop();
  worker.join();
  CHECK(ended.load());
}

TEST_CASE("BatchQueue: take_expired hands back what cannot make its deadline") {
  BatchingOptions o;
  o.max_batch = 8;
  o.max_queue_delay = milliseconds(1000);
  REQUIRE(check_batching(o).ok());
  BatchQueue<int> q(o);
  int unused = 0;
  Ticket soon = now_ticket();
  soon.deadline = soon.enqueued + milliseconds(1);
  Ticket later = soon;
  later.deadline = soon.enqueued + std::chrono::seconds(100);
  q.push(soon, 1, &unused);
  q.push(later, 2, &unused);
  CHECK(q.has_deadlines());
  std::this_thread::sleep_for(milliseconds(3));
  CHECK(q.take_expired() == std::vector<int>{1});
  CHECK(q.size() == 1);
  // Once a batch of this key is known to take longer than what is left, it expires too.
  q.record_batch_time({"m", 0}, 200000.0);
  CHECK(q.take_expired() == std::vector<int>{2});
}

TEST_CASE("BatchQueue::expected_wait_ms: the work queued and left running, over the workers") {
  partitioner::ManualClock clock;
  BatchingOptions o;
  o.workers = 2;
  BatchQueue<int> q(o, clock);
  int unused = 0;
  auto push = [&](int cut) {
    Ticket t;
    t.key = {"m", cut};
    t.enqueued = clock.now();
    q.push(t, cut, &unused);
  };
  CHECK(q.expected_wait_ms() == 0);  // nothing queued, nothing running
  push(0);
  CHECK(q.expected_wait_ms() == 0);        // a key never run: its time is not known yet
  q.record_batch_time({"m", 0}, 10.0, 1);  // 10 ms per request
  q.record_batch_time({"m", 1}, 8.0, 2);   // 4 ms per request
  push(0);
  push(0);
  push(1);
  CHECK(q.expected_wait_ms() == doctest::Approx((3 * 10.0 + 4.0) / 2));
  BatchQueue<int>::Batch b;
  REQUIRE(q.next(b));  // one request of cut 0, expected to take 10 ms
  REQUIRE(b.items.size() == 1);
  CHECK(q.expected_wait_ms() == doctest::Approx((2 * 10.0 + 4.0 + 10.0) / 2));
  clock.advance_ms(4);  // 6 ms of it left
  CHECK(q.expected_wait_ms() == doctest::Approx((2 * 10.0 + 4.0 + 6.0) / 2));
  clock.advance_ms(20);  // overdue: nothing left of it
  CHECK(q.expected_wait_ms() == doctest::Approx((2 * 10.0 + 4.0) / 2));
}
TEST_CASE("BatchQueue: a request whose deadline the queue ahead rules out is refused on arrival") {
  partitioner::ManualClock clock;
  BatchingOptions o;
  o.workers = 2;
  BatchQueue<int> q(o, clock);
  int held = -1;
  BatchQueue<int>::Need need;
  auto ticket = [&](int cut, int deadline_ms, int priority = 0) {
    Ticket t;
    t.key = {"m", cut};
    t.priority = priority;
    t.enqueued = clock.now();
    if (deadline_ms > 0) t.deadline = clock.now() + milliseconds(deadline_ms);
    return t;
  };
  using Pushed = BatchQueue<int>::Pushed;
  q.record_batch_time({"m", 0}, 10.0, 1);  // 10 ms per request
  for (int i = 0; i < 4; ++i) CHECK(q.push(ticket(0, 0), i, &held) == Pushed::kQueued);
  // Ahead of a new request: 4 x 10 ms over 2 workers, then its own 10 ms.
  CHECK(q.expected_wait_ms() == doctest::Approx(20.0));
  CHECK(q.push(ticket(0, 29), 10, &held, &need) == Pushed::kUnmeetable);
  CHECK(held == 10);
  CHECK(need.wait_ms == doctest::Approx(20.0));
  CHECK(need.own_ms == doctest::Approx(10.0));
  CHECK(q.size() == 4);
  CHECK(q.push(ticket(0, 31), 11, &held) == Pushed::kQueued);
  // A higher class waits only for its own class and above: 10 ms of its own.
  CHECK(q.push(ticket(0, 12, 1), 12, &held) == Pushed::kQueued);
  CHECK(q.push(ticket(0, 9, 1), 13, &held) == Pushed::kUnmeetable);
  // A key whose time is not known yet is never refused for it.
  CHECK(q.push(ticket(1, 1), 14, &held) == Pushed::kQueued);
  CHECK(q.size() == 7);
  // Off: queued, and it expires when its turn can no longer meet it.
  o.expire_at_arrival = false;
  BatchQueue<int> off(o, clock);
  off.record_batch_time({"m", 0}, 10.0, 1);
  for (int i = 0; i < 4; ++i) off.push(ticket(0, 0), i, &held);
  CHECK(off.push(ticket(0, 29), 10, &held) == Pushed::kQueued);
}
TEST_CASE("BatchQueue: a key's times over a second old are forgotten for its deadlines") {
  partitioner::ManualClock clock;
  BatchQueue<int> q(BatchingOptions{}, clock);
  int held = -1;
  auto push = [&](int id, int deadline_ms) {
    Ticket t;
    t.key = {"m", 0};
    t.enqueued = clock.now();
    t.deadline = clock.now() + milliseconds(deadline_ms);
    return q.push(t, id, &held);
  };
  q.record_batch_time({"m", 0}, 20.0, 1);
  REQUIRE(push(1, 30) == BatchQueue<int>::Pushed::kQueued);
  REQUIRE(push(2, 15) == BatchQueue<int>::Pushed::kUnmeetable);
  CHECK(q.take_expired().empty());
  clock.advance_ms(12);  // 18 ms left: less than its batch
  CHECK(q.take_expired() == std::vector<int>{1});
  // Over a second without a batch of the key (every request expired in a slow spell, say): its
  // times are not trusted; only a passed deadline expires until a batch measures it again.
  clock.advance_ms(1500);
  REQUIRE(push(3, 15) == BatchQueue<int>::Pushed::kQueued);
  CHECK(q.take_expired().empty());
  clock.advance_ms(16);
  CHECK(q.take_expired() == std::vector<int>{3});
  q.record_batch_time({"m", 0}, 20.0, 1);
  CHECK(push(4, 15) == BatchQueue<int>::Pushed::kUnmeetable);
}
}  // namespace
}  // namespace edgesplit::server
