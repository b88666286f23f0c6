// Checks the placement cost model (stages over executors, frames pipelined): period, latency and
// the dynamic program's choice against brute force over every split and executor order, on random
// tables with executors that share cores; and that bad tables and placements are refused.
#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <random>

#include "partitioner/stage_placement.h"

using namespace edgesplit::partitioner;

namespace {

SegmentTable two_executors() {
  SegmentTable t;
  t.executors = {{"big", {0}, 1, 1500}, {"little", {1}, 1, 1000}};
  t.cut_ids = {0, 2, 3, 5, 9};
  t.block_ms = {{4, 3, 2, 1}, {6, 4.5, 3, 1.5}};
  t.handoff_ms = 0.1;
  return t;
}

struct Best {
  double period = 1e300;
  double latency = 1e300;
};

// Calls `fn` with every valid placement: every ordered choice of distinct executors and every
// split of the blocks among them.
void for_each_placement(const SegmentTable& t,
                        const std::function<void(const StagePlacement&)>& fn) {
  const int E = static_cast<int>(t.executors.size());
  const int B = t.blocks();
  std::vector<std::pair<int, int>> stages;
  std::vector<char> used(static_cast<size_t>(E), 0);
  std::function<void(int)> walk = [&](int begin) {
    if (begin == B) {
      auto p = evaluate_placement(t, stages);
      if (p.ok()) fn(*p);  // (not ok: executors sharing a core)
      return;
    }
    for (int e = 0; e < E; ++e) {
      if (used[static_cast<size_t>(e)]) continue;
      used[static_cast<size_t>(e)] = 1;
      for (int end = begin + 1; end <= B; ++end) {
        stages.emplace_back(e, end);
        walk(end);
        stages.pop_back();
      }
      used[static_cast<size_t>(e)] = 0;
    }
  };
  walk(0);
}

void consider(Best& best, const StagePlacement& p, PlacementObjective objective,
              std::optional<double> bound) {
  if (bound && p.period_ms > *bound) return;
  if (objective == PlacementObjective::kThroughput) {
    if (p.period_ms < best.period - 1e-9 ||
        (p.period_ms <= best.period + 1e-9 && p.latency_ms < best.latency)) {
      best.period = p.period_ms;
      best.latency = p.latency_ms;
    }
  } else if (p.latency_ms < best.latency) {
    best.latency = p.latency_ms;
    best.period = p.period_ms;
  }
}

Best brute_force(const SegmentTable& t, PlacementObjective objective, std::optional<double> bound) {
  Best best;
  for_each_placement(t, [&](const StagePlacement& p) {
    consider(best, p, objective, objective == PlacementObjective::kLatency ? bound : std::nullopt);
  });
  return best;
}

// A random table: E executors over cores 0..cores-1 (some overlapping: a "both" executor over two
// single cores), B blocks of 0.05..10 ms, and with `ends` what a stage pays at its ends.
SegmentTable random_table(std::mt19937& rng, int E, int B, int cores, bool ends) {
  std::uniform_real_distribution<double> ms(0.05, 10.0);
  SegmentTable t;
  for (int e = 0; e < E; ++e) {
    std::vector<int> on;
    for (int c = 0; c < cores; ++c) {
      if (rng() % 3 == 0) on.push_back(c);
    }
    if (on.empty()) on.push_back(static_cast<int>(rng() % static_cast<unsigned>(cores)));
    t.executors.push_back({"e" + std::to_string(e), on, 1, 1000});
    t.block_ms.emplace_back();
    for (int b = 0; b < B; ++b) t.block_ms.back().push_back(ms(rng));
    if (ends) {
      t.cut_ms.emplace_back();
      for (int b = 0; b <= B; ++b) t.cut_ms.back().push_back(ms(rng) / 5);
    }
  }
  for (int b = 0; b <= B; ++b) t.cut_ids.push_back(b * 2);
  return t;
}

// Checks the placement found against brute force's best; true when there was one to find.
bool matches(const Best& expect, const std::optional<StagePlacement>& got,
             std::optional<double> bound) {
  if (expect.latency == 1e300) {
    CHECK_FALSE(got.has_value());
    return false;
  }
  REQUIRE(got.has_value());
  CHECK(got->period_ms == doctest::Approx(expect.period).epsilon(1e-9));
  CHECK(got->latency_ms == doctest::Approx(expect.latency).epsilon(1e-9));
  if (bound) CHECK(got->period_ms <= *bound + 1e-9);
  return true;
}

}  // namespace

TEST_CASE("stage placement: period is the slowest stage, latency the sum with handoffs") {
  const SegmentTable t = two_executors();
  auto p = evaluate_placement(t, {{0, 2}, {1, 4}});
  REQUIRE(p.ok());
  REQUIRE(p->stages.size() == 2);
  CHECK(p->stages[0].ms == doctest::Approx(7));
  CHECK(p->stages[1].ms == doctest::Approx(4.5));
  CHECK(p->period_ms == doctest::Approx(7));
  CHECK(p->latency_ms == doctest::Approx(11.6));
  CHECK(p->fps() == doctest::Approx(1000.0 / 7));
  auto single = evaluate_placement(t, {{0, 4}});
  REQUIRE(single.ok());
  CHECK(single->period_ms == doctest::Approx(10));
  CHECK(single->latency_ms == doctest::Approx(10));

  // Throughput: little first on block 0 (6 ms), then big on blocks 1-3 (6 ms) beats big first
  // (big 0-1 then little 2-3: 7 ms).
  auto best = best_placement(t, PlacementObjective::kThroughput);
  REQUIRE(best.has_value());
  CHECK(best->period_ms == doctest::Approx(6));
  REQUIRE(best->stages.size() == 2);
  CHECK(best->stages[0].executor == 1);
  CHECK(best->stages[0].end_block == 1);
  // Latency without a bound: one stage on big (no handoff, the fastest blocks).
  auto fast = best_placement(t, PlacementObjective::kLatency);
  REQUIRE(fast.has_value());
  CHECK(fast->stages.size() == 1);
  CHECK(fast->latency_ms == doctest::Approx(10));
  // Latency with the period within 8 ms: a split is needed.
  auto bounded = best_placement(t, PlacementObjective::kLatency, 8.0);
  REQUIRE(bounded.has_value());
  CHECK(bounded->period_ms <= 8);
  // Nothing meets 3 ms.
  CHECK_FALSE(best_placement(t, PlacementObjective::kLatency, 3.0).has_value());
  CHECK_FALSE(best_placement(t, PlacementObjective::kThroughput, 3.0).has_value());
  // Only little allowed.
  auto little = best_placement(t, PlacementObjective::kThroughput, std::nullopt, 0, {1});
  REQUIRE(little.has_value());
  CHECK(little->period_ms == doctest::Approx(15));
}

TEST_CASE("stage placement: a stage pays the cut times at its two ends only") {
  SegmentTable t = two_executors();
  t.cut_ms = {{0.5, 0.25, 0.25, 0.25, 0.5}, {1, 1, 1, 1, 1}};
  auto p = evaluate_placement(t, {{0, 2}, {1, 4}});
  REQUIRE(p.ok());
  CHECK(p->stages[0].ms == doctest::Approx(7 + 0.5 + 0.25));
  CHECK(p->stages[1].ms == doctest::Approx(4.5 + 1 + 1));
  CHECK(p->period_ms == doctest::Approx(7.75));
  auto whole = evaluate_placement(t, {{0, 4}});
  REQUIRE(whole.ok());
  CHECK(whole->period_ms == doctest::Approx(10 + 0.5 + 0.5));
  t.cut_ms[1].pop_back();
  CHECK(validate_segment_table(t).message().find("one cut time per cut") != std::string::npos);
}

TEST_CASE("stage placement: the dynamic program matches brute force on random tables") {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> ms(0.05, 10.0);
  int checked = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    const int E = 1 + static_cast<int>(rng() % 4);
    const int B = 1 + static_cast<int>(rng() % 7);
    SegmentTable t = random_table(rng, E, B, 5, trial % 3 == 0);
    t.handoff_ms = (rng() % 2) ? 0.0 : ms(rng) / 10;
    const auto objective =
        (trial % 2) ? PlacementObjective::kThroughput : PlacementObjective::kLatency;
    std::optional<double> bound;
    if (objective == PlacementObjective::kLatency && trial % 4 == 0) bound = ms(rng) * 2;
    const Best expect = brute_force(t, objective, bound);
    if (matches(expect, best_placement(t, objective, bound), bound)) ++checked;
  }
  CHECK(checked > 1000);
}

TEST_CASE("stage placement: a crossing to a server adds its share of the period and its latency") {
  const SegmentTable t = two_executors();
  ServerCrossing c;
  c.cut_index = 2;  // the device runs blocks 0 and 1 (cut ids 0..3), the server the rest
  c.send_ms = 3;
  c.round_trip_ms = 2;
  c.server_ms = 1;
  auto device = evaluate_placement(leading_blocks(t, 2), {{0, 2}});
  REQUIRE(device.ok());
  CHECK(device->period_ms == doctest::Approx(7));
  const StagePlacement p = with_server(*device, t, c);
  REQUIRE(p.server.has_value());
  CHECK(p.period_ms == doctest::Approx(7));
  CHECK(p.latency_ms == doctest::Approx(7 + 0.1 + 3 + 2 + 1));
  // A slow link sets the period.
  c.send_ms = 9;
  CHECK(with_server(*device, t, c).period_ms == doctest::Approx(9));
  // What a request costs the server beyond its tail counts in its share and in the latency.
  c.send_ms = 3;
  c.overhead_ms = 7.5;
  CHECK(with_server(*device, t, c).period_ms == doctest::Approx(8.5));
  CHECK(with_server(*device, t, c).latency_ms == doctest::Approx(7 + 0.1 + 3 + 2 + 1 + 7.5));
  c.overhead_ms = 0;
  // Throughput: big on block 0 (4 ms) and little on block 1 (4.5 ms), then a crossing whose
  // share is 4.5 ms beats every placement on the device alone (6 ms at best).
  c.cut_index = 2;
  c.send_ms = 4.5;
  auto best = best_placement_with_server(t, {c}, PlacementObjective::kThroughput);
  REQUIRE(best.has_value());
  REQUIRE(best->server.has_value());
  CHECK(best->period_ms == doctest::Approx(4.5));
  CHECK(best->stages.size() == 2);
  // A crossing slower than the device alone is not chosen.
  c.send_ms = 20;
  best = best_placement_with_server(t, {c}, PlacementObjective::kThroughput);
  REQUIRE(best.has_value());
  CHECK_FALSE(best->server.has_value());
  CHECK(best->period_ms == doctest::Approx(6));
  // Crossings at the input or after the last block are not placements with a server.
  c.send_ms = 0.1;
  c.cut_index = 0;
  CHECK_FALSE(best_placement_with_server(t, {c}, PlacementObjective::kLatency)->server);
  c.cut_index = 4;
  CHECK_FALSE(best_placement_with_server(t, {c}, PlacementObjective::kLatency)->server);
}

TEST_CASE("stage placement: placements with a server match brute force on random tables") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> ms(0.05, 10.0);
  int with_crossing = 0;
  for (int trial = 0; trial < 800; ++trial) {
    // One to three executors over four cores, two to six blocks, every table with end costs.
    SegmentTable t = random_table(rng, 1 + static_cast<int>(rng() % 3),
                                  2 + static_cast<int>(rng() % 5), 4, true);
    const int B = t.blocks();
    t.handoff_ms = ms(rng) / 10;
    std::vector<ServerCrossing> crossings;
    for (int i = 0; i <= B; ++i) {
      if (rng() % 4 == 0) continue;
      ServerCrossing c;
      c.cut_index = i;
      c.send_ms = ms(rng);
      c.round_trip_ms = ms(rng) / 2;
      c.server_ms = ms(rng) / 2;
      c.overhead_ms = (i % 2) ? ms(rng) / 4 : 0;
      crossings.push_back(c);
    }
    const auto objective =
        (trial % 2) ? PlacementObjective::kThroughput : PlacementObjective::kLatency;
    std::optional<double> bound;
    if (trial % 3 == 0) bound = ms(rng) * 1.5;
    Best expect;
    for_each_placement(t, [&](const StagePlacement& p) { consider(expect, p, objective, bound); });
    for (const ServerCrossing& c : crossings) {
      if (c.cut_index < 1 || c.cut_index >= B) continue;
      const SegmentTable lead = leading_blocks(t, c.cut_index);
      REQUIRE(lead.blocks() == c.cut_index);
      for_each_placement(lead, [&](const StagePlacement& p) {
        consider(expect, with_server(p, t, c), objective, bound);
      });
    }
    const auto got = best_placement_with_server(t, crossings, objective, bound);
    if (matches(expect, got, bound) && got->server) ++with_crossing;
  }
  CHECK(with_crossing > 100);
}

TEST_CASE("stage placement: bad tables and placements are refused with a sentence") {
  SegmentTable t = two_executors();
  CHECK(validate_segment_table(t).ok());
  SegmentTable short_row = t;
  short_row.block_ms[1].pop_back();
  CHECK(validate_segment_table(short_row).message().find("block times") != std::string::npos);
  SegmentTable negative = t;
  negative.block_ms[0][1] = -1;
  CHECK_FALSE(validate_segment_table(negative).ok());
  SegmentTable order = t;
  order.cut_ids = {0, 3, 2, 5, 9};
  CHECK_FALSE(validate_segment_table(order).ok());
  CHECK_FALSE(best_placement(order, PlacementObjective::kThroughput).has_value());

  CHECK_FALSE(evaluate_placement(t, {{0, 2}, {0, 4}}).ok());  // big twice
  CHECK_FALSE(evaluate_placement(t, {{0, 2}}).ok());          // blocks left over
  CHECK_FALSE(evaluate_placement(t, {{0, 2}, {1, 2}}).ok());  // an empty stage
  SegmentTable shared = t;
  shared.executors[1].cores = {0, 1};
  auto p = evaluate_placement(shared, {{0, 2}, {1, 4}});
  REQUIRE_FALSE(p.ok());
  CHECK(p.status().message().find("shares a core") != std::string::npos);
  // Sharing cores: the best is one executor alone.
  auto best = best_placement(shared, PlacementObjective::kThroughput);
  REQUIRE(best.has_value());
  CHECK(best->stages.size() == 1);
}

TEST_CASE("stage placement: the segment table's JSON round-trips and is validated") {
  const SegmentTable t = two_executors();
  const std::string text = segment_table_json(t, "sha256:ab", "optimized");
  std::string digest, engine;
  auto back = parse_segment_table(text, &digest, &engine);
  REQUIRE(back.ok());
  CHECK(digest == "sha256:ab");
  CHECK(engine == "optimized");
  CHECK(back->cut_ids == t.cut_ids);
  CHECK(back->block_ms == t.block_ms);
  CHECK(back->executors[1].name == "little");
  CHECK(back->executors[1].cores == std::vector<int>{1});
  CHECK(back->handoff_ms == doctest::Approx(0.1));
  CHECK(back->cut_ms.empty());
  SegmentTable with_cuts = t;
  with_cuts.cut_ms = {{0, 0.1, 0.2, 0.3, 0.4}, {0.5, 0.6, 0.7, 0.8, 0.9}};
  auto cuts_back =
      parse_segment_table(segment_table_json(with_cuts, "d", "plain"), nullptr, nullptr);
  REQUIRE(cuts_back.ok());
  CHECK(cuts_back->cut_ms == with_cuts.cut_ms);
  CHECK_FALSE(parse_segment_table("{}", nullptr, nullptr).ok());
  CHECK_FALSE(parse_segment_table("not json", nullptr, nullptr).ok());
  std::string bad = text;
  bad.replace(bad.find("\"handoff_ms\": 0.1"), 17, "\"handoff_ms\": -1 ");
  auto refused = parse_segment_table(bad, nullptr, nullptr);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("handoff") != std::string::npos);
}
