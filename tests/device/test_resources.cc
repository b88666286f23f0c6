// Checks the resource manager: allocate_memory against exhaustive search on random synthetic
// instances (same value, never over budget), refusal order and notes, its speed at the size the
// runtime needs, split_link's shares, and the process's resident memory readings.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "device/resources.h"

using edgesplit::device::allocate_memory;
using edgesplit::device::allocate_memory_brute_force;
using edgesplit::device::Allocation;
using edgesplit::device::MemoryOption;
using edgesplit::device::peak_resident_bytes;
using edgesplit::device::resident_bytes;
using edgesplit::device::split_link;
using edgesplit::device::StreamDemand;

namespace {

constexpr int64_t kMiB = 1 << 20;

// The header's order as a tuple compared with <: running streams per priority level (highest
// level first), streams meeting their bounds per level, then -cost, then -bytes.
using Value = std::tuple<std::vector<int>, std::vector<int>, double, int64_t>;

Value value_of(const std::vector<StreamDemand>& demands, const Allocation& a) {
  std::vector<int> levels;
  for (const StreamDemand& d : demands) levels.push_back(d.priority);
  std::sort(levels.rbegin(), levels.rend());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  std::vector<int> running(levels.size()), meeting(levels.size());
  double cost = 0;
  int64_t bytes = 0;
  for (size_t s = 0; s < demands.size(); ++s) {
    const int o = a.streams[s].option;
    if (o < 0) continue;
    const MemoryOption& m = demands[s].options[o];
    const size_t l = std::find(levels.begin(), levels.end(), demands[s].priority) - levels.begin();
    ++running[l];
    if (m.meets_bounds) ++meeting[l];
    cost += m.cost;
    bytes += m.bytes;
  }
  return {running, meeting, -cost, -bytes};
}

// Checks an allocation's shape: one budget per stream, valid options, bytes that add up and fit.
void check_allocation(const std::vector<StreamDemand>& demands, const Allocation& a,
                      int64_t budget) {
  REQUIRE(a.streams.size() == demands.size());
  int64_t sum = 0;
  for (size_t s = 0; s < demands.size(); ++s) {
    const int o = a.streams[s].option;
    REQUIRE(o >= -1);
    REQUIRE(o < static_cast<int>(demands[s].options.size()));
    CHECK(a.streams[s].bytes == (o < 0 ? 0 : demands[s].options[o].bytes));
    CHECK(a.streams[s].threads == 1);
    CHECK(a.streams[s].link_share == 1.0);
    sum += a.streams[s].bytes;
  }
  CHECK(a.bytes == sum);
  CHECK(a.bytes <= budget);
}

std::vector<StreamDemand> random_instance(std::mt19937_64& rng, int max_streams = 5,
                                          int max_options = 6) {
  std::uniform_int_distribution<int> streams(1, max_streams), options(1, max_options),
      priority(-1, 2), coin(0, 1);
  std::uniform_int_distribution<int64_t> bytes(0, 100);
  std::uniform_int_distribution<int> quarter(0, 40);
  const int64_t unit = coin(rng) ? kMiB : 1;
  std::vector<StreamDemand> demands(streams(rng));
  for (size_t s = 0; s < demands.size(); ++s) {
    StreamDemand& d = demands[s];
    d.name = "s" + std::to_string(s);
    d.priority = priority(rng);
    const int n = options(rng);
    for (int i = 0; i < n; ++i) {
      MemoryOption o;
      o.retain_cut = i;
      o.bytes = (coin(rng) && i == 0) ? 0 : bytes(rng) * unit;
      o.meets_bounds = coin(rng);
      o.cost = quarter(rng) * 0.25;  // exact in binary: sums in any order agree
      d.options.push_back(o);
    }
  }
  return demands;
}

}  // namespace

TEST_CASE("allocate_memory finds what exhaustive search finds") {
  std::mt19937_64 rng(20240611);
  int compared = 0, with_refusals = 0;
  for (int trial = 0; trial < 4300; ++trial) {
    // The last 300: up to 7 streams, where the frontier's pruning has more to do.
    const std::vector<StreamDemand> demands =
        trial < 4000 ? random_instance(rng) : random_instance(rng, 7, 4);
    int64_t total = 0, largest = 0;
    for (const StreamDemand& d : demands) {
      for (const MemoryOption& o : d.options) largest = std::max(largest, o.bytes);
      total += largest;
    }
    const int64_t budgets[] = {0, 1, largest / 3, total / 4, total / 2, total, int64_t{1} << 50};
    const int64_t budget = budgets[trial % 7];
    CAPTURE(trial);
    CAPTURE(budget);
    auto fast = allocate_memory(demands, budget);
    auto slow = allocate_memory_brute_force(demands, budget);
    REQUIRE_MESSAGE(fast.ok(), fast.status().to_string());
    REQUIRE_MESSAGE(slow.ok(), slow.status().to_string());
    check_allocation(demands, *fast, budget);
    check_allocation(demands, *slow, budget);
    CHECK(value_of(demands, *fast) == value_of(demands, *slow));
    // Deterministic.
    auto again = allocate_memory(demands, budget);
    REQUIRE(again.ok());
    for (size_t s = 0; s < demands.size(); ++s) {
      CHECK(again->streams[s].option == fast->streams[s].option);
    }
    for (const auto& b : fast->streams) with_refusals += b.option < 0;
    ++compared;
  }
  CHECK(compared == 4300);
  CHECK(with_refusals > 0);  // the budgets reach the refusal path
}

TEST_CASE("a stream meeting its bounds outranks lower priorities, then count, cost, bytes") {
  // High (priority 1) meets only with its big option; two low streams meet only with theirs.
  std::vector<StreamDemand> d(3);
  d[0] = {"high", 1, {{0, 0, false, 5}, {9, 80 * kMiB, true, 1}}};
  d[1] = {"low1", 0, {{0, 0, false, 5}, {4, 40 * kMiB, true, 1}}};
  d[2] = {"low2", 0, {{0, 0, false, 5}, {4, 40 * kMiB, true, 1}}};
  auto a = allocate_memory(d, 100 * kMiB);
  REQUIRE(a.ok());
  CHECK(a->streams[0].option == 1);  // one high stream beats two low ones
  CHECK(a->streams[1].option + a->streams[2].option == 0);
  REQUIRE(a->notes.size() == 2);
  CHECK(a->notes[0].find("\"low") != std::string::npos);

  // Among equals, the cheaper total wins; at equal cost, the fewer bytes.
  std::vector<StreamDemand> e(1);
  e[0] = {"x", 0, {{0, 0, true, 3}, {2, 10 * kMiB, true, 2}, {3, 20 * kMiB, true, 2}}};
  auto b = allocate_memory(e, 100 * kMiB);
  REQUIRE(b.ok());
  CHECK(b->streams[0].option == 1);
  CHECK(b->notes.empty());
}

TEST_CASE("the lowest priority is refused first when even the smallest options do not fit") {
  std::vector<StreamDemand> d(3);
  d[0] = {"mid", 1, {{3, 10 * kMiB, true, 1}}};
  d[1] = {"top", 2, {{3, 10 * kMiB, true, 1}}};
  d[2] = {"bottom", 0, {{3, 10 * kMiB, true, 1}}};
  auto a = allocate_memory(d, 25 * kMiB);
  REQUIRE(a.ok());
  CHECK(a->streams[0].option == 0);
  CHECK(a->streams[1].option == 0);
  CHECK(a->streams[2].option == -1);
  CHECK(a->bytes == 20 * kMiB);
  REQUIRE(a->notes.size() == 1);
  CHECK(a->notes[0] ==
        "stream \"bottom\" is refused: the memory bound leaves it 5.0 MiB and its smallest "
        "option needs 10.0 MiB");

  auto b = allocate_memory(d, 15 * kMiB);
  REQUIRE(b.ok());
  CHECK(b->streams[0].option == -1);
  CHECK(b->streams[1].option == 0);
  CHECK(b->streams[2].option == -1);

  auto none = allocate_memory(d, 0);
  REQUIRE(none.ok());
  for (const auto& s : none->streams) CHECK(s.option == -1);
  CHECK(none->notes.size() == 3);

  // Every stream fits at its smallest option: nobody is refused, even if that means no stream
  // gets its best.
  std::vector<StreamDemand> e(2);
  e[0] = {"a", 5, {{0, 1 * kMiB, false, 9}, {9, 50 * kMiB, true, 1}}};
  e[1] = {"b", 0, {{0, 1 * kMiB, false, 9}}};
  auto c = allocate_memory(e, 50 * kMiB);
  REQUIRE(c.ok());
  CHECK(c->streams[0].option == 0);
  CHECK(c->streams[1].option == 0);
}

TEST_CASE("notes name the stream and what the bound left it") {
  std::vector<StreamDemand> d(2);
  d[0] = {"scene", 1, {{0, 0, false, 4}, {12, 30 * kMiB, true, 1}}};
  d[1] = {
      "ocr", 0, {{0, 0, true, 3}, {5, 40 * kMiB + 300 * 1024, true, 1}, {9, 90 * kMiB, true, 0.5}}};
  auto a = allocate_memory(d, 42 * kMiB);
  REQUIRE(a.ok());
  CHECK(a->streams[0].option == 1);
  CHECK(a->streams[1].option == 0);
  REQUIRE(a->notes.size() == 1);
  CHECK(a->notes[0] ==
        "stream \"ocr\" runs server-only: the memory bound leaves it 12.0 MiB, its smallest local "
        "option needs 40.3 MiB");

  auto b = allocate_memory(d, 80 * kMiB);
  REQUIRE(b.ok());
  CHECK(b->streams[1].option == 1);
  REQUIRE(b->notes.size() == 1);
  CHECK(b->notes[0].rfind("stream \"ocr\" holds the heads up to cut 5 (40.3 MiB), not cut 9", 0) ==
        0);

  auto all = allocate_memory(d, 200 * kMiB);
  REQUIRE(all.ok());
  CHECK(all->notes.empty());
}

TEST_CASE("allocate_memory refuses bad input with a sentence") {
  std::vector<StreamDemand> d(1);
  d[0].name = "empty";
  auto a = allocate_memory(d, kMiB);
  REQUIRE_FALSE(a.ok());
  CHECK(a.status().message().find("\"empty\"") != std::string::npos);
  d[0].options.push_back({0, -5, true, 0});
  CHECK_FALSE(allocate_memory(d, kMiB).ok());
  d[0].options[0].bytes = 0;
  CHECK_FALSE(allocate_memory(d, -1).ok());
  auto ok = allocate_memory({}, 0);
  REQUIRE(ok.ok());
  CHECK(ok->streams.empty());
}

TEST_CASE("allocate_memory takes well under 10 ms for 8 streams x 60 options at 4 GiB") {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(0, 1);
  const int64_t budget = int64_t{4} << 30;
  double worst_ms = 0;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<StreamDemand> demands(8);
    for (int s = 0; s < 8; ++s) {
      StreamDemand& d = demands[s];
      d.name = "s" + std::to_string(s);
      d.priority = s % 3;
      const bool monotone = trial % 2 == 0;  // the realistic shape: more held, lower cost
      int64_t bytes = 0;
      double cost = 100;
      for (int i = 0; i < 60; ++i) {
        MemoryOption o;
        o.retain_cut = i;
        if (monotone) {
          bytes += static_cast<int64_t>(u(rng) * 30 * kMiB);
          cost -= u(rng);
          o.meets_bounds = i > 20 + s;
        } else {
          bytes = static_cast<int64_t>(u(rng) * 2048 * kMiB);
          cost = u(rng) * 100;
          o.meets_bounds = u(rng) < 0.3;
        }
        o.bytes = i == 0 ? 0 : bytes;
        o.cost = cost;
        d.options.push_back(o);
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto a = allocate_memory(demands, budget);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    REQUIRE(a.ok());
    CHECK(a->bytes <= budget);
    worst_ms = std::max(worst_ms, ms);
  }
  MESSAGE("allocate_memory, 8 streams x 60 options: worst " << worst_ms << " ms");
  // Generous for sanitizer builds on a shared machine; a release build takes a few ms at most.
  CHECK(worst_ms < 250);
}

TEST_CASE("split_link leaves each stream what the others do not use, water-filled by priority") {
  auto near = [](double a, double b) { return std::abs(a - b) < 1e-12; };
  // Demands fit: each plans with what the others leave.
  auto fit = split_link({20, 30}, {0, 5}, 100);
  REQUIRE(fit.size() == 2);
  CHECK(near(fit[0], 0.7));
  CHECK(near(fit[1], 0.8));
  // One stream alone plans with the whole link, and so does every stream while none sends.
  auto alone = split_link({20}, {0}, 100);
  CHECK(near(alone[0], 1.0));
  auto quiet = split_link({0, 0, 0}, {0, 1, 2}, 100);
  CHECK(quiet == std::vector<double>{1.0, 1.0, 1.0});
  // Too much: weights 1 + priority.
  auto over = split_link({100, 100}, {0, 1}, 100);
  CHECK(near(over[0], 1.0 / 3));
  CHECK(near(over[1], 2.0 / 3));
  // A small demand is met; the rest is shared.
  auto water = split_link({10, 200, 200}, {0, 0, 0}, 100);
  CHECK(near(water[0], 0.1));
  CHECK(near(water[1], 0.45));
  CHECK(near(water[2], 0.45));
  // Negative priorities count as 0.
  auto negative = split_link({100, 100}, {-5, 0}, 100);
  CHECK(near(negative[0], 0.5));
  CHECK(near(negative[1], 0.5));
  // A stream that sends nothing keeps 1 / n.
  auto idle = split_link({0, 500}, {0, 0}, 100);
  CHECK(near(idle[0], 0.5));
  CHECK(near(idle[1], 1.0));
  // No measured link: by weight.
  auto unknown = split_link({10, 10}, {0, 2}, 0);
  CHECK(near(unknown[0], 0.25));
  CHECK(near(unknown[1], 0.75));
  CHECK(split_link({}, {}, 100).empty());
  // Always in (0, 1].
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(0, 1000);
  for (int t = 0; t < 500; ++t) {
    std::vector<double> demand(1 + t % 6);
    std::vector<int> priority(demand.size());
    for (size_t i = 0; i < demand.size(); ++i) {
      demand[i] = (t + i) % 4 == 0 ? 0 : u(rng);
      priority[i] = static_cast<int>(i % 4) - 1;
    }
    for (double s : split_link(demand, priority, u(rng))) {
      CHECK(s > 0);
      CHECK(s <= 1);
    }
  }
}

TEST_CASE("resident memory is read from /proc/self/status") {
#ifdef __linux__
  const int64_t now = resident_bytes();
  const int64_t peak = peak_resident_bytes();
  CHECK(now > 0);
  CHECK(peak >= now);
#else
  MESSAGE("skipped: /proc/self/status is Linux's");
#endif
}
