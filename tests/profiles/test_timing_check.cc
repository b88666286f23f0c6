// Checks check_timings on doctored profiles (head + tail against the whole model, wide spreads,
// which cuts a warning names) and that timing warnings survive save/load and follow a merge.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "profiles/profile.h"

using namespace edgesplit::profiles;

namespace {

Timing timing(double median, double spread = 0.1) {
  Timing t;
  t.median_ms = median;
  t.p10_ms = median * (1 - spread / 2);
  t.p90_ms = median * (1 + spread / 2);
  t.runs = 10;
  t.threads = 2;
  return t;
}

// A model of `n` + 1 cuts whose whole run takes 4 ms, every cut splitting it exactly, timed on
// one machine.
Profile consistent(int n = 8) {
  Profile p;
  p.model_digest = "sha256:00";
  p.fp32_top1 = 0.5;
  p.device_machine.hostname = "box";
  p.device_machine.cpu = "cpu";
  p.device_machine.threads = 2;
  p.server_machine = p.device_machine;
  for (int i = 0; i <= n; ++i) {
    CutProfile c;
    c.id = i;
    c.name = "c" + std::to_string(i);
    const double head = 4.0 * i / n;
    c.head = timing(head);
    c.tail = timing(4.0 - head);
    if (i == n) c.tail = Timing();  // nothing runs after the device cut
    p.cuts.push_back(c);
  }
  return p;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("check_timings: a consistent profile gives no warning") {
  CHECK(check_timings(consistent()).empty());
  // Within the tolerance either way.
  Profile p = consistent();
  p.cuts[2].tail.median_ms *= 1.1;
  p.cuts[5].head.median_ms *= 0.9;
  CHECK(check_timings(p).empty());
  // Nothing timed: nothing to say.
  Profile untimed = consistent();
  for (auto& c : untimed.cuts) c.head = c.tail = Timing();
  CHECK(check_timings(untimed).empty());
}

TEST_CASE("check_timings: head + tail off the whole model names the cuts and their deviation") {
  Profile p = consistent();
  p.cuts[2].tail.median_ms += 0.4 * 4;  // +40%
  p.cuts[3].tail.median_ms += 0.1 * 4;  // +10%: within 15%
  p.cuts[6].head.median_ms -= 0.2 * 4;  // -20%
  const auto warnings = check_timings(p);
  REQUIRE(warnings.size() == 1);
  const std::string& w = warnings[0];
  INFO(w);
  CHECK(contains(w, "whole model (4 ms)"));
  CHECK(contains(w, "more than 15%"));
  CHECK(contains(w, "cuts 2 (+40%), 6 (-20%);"));
  CHECK(!contains(w, " 3 ("));
  CHECK(contains(w, "--runs"));

  // A stricter tolerance catches cut 3 as well.
  const auto strict = check_timings(p, 0.05);
  REQUIRE(strict.size() == 1);
  CHECK(contains(strict[0], "cuts 2 (+40%), 3 (+10%), 6 (-20%);"));
}

TEST_CASE("check_timings: heads and tails timed on different machines are not added up") {
  Profile p = consistent();
  p.cuts[2].tail.median_ms *= 3;
  REQUIRE(check_timings(p).size() == 1);
  p.server_machine.hostname = "server";
  CHECK(check_timings(p).empty());
  p.server_machine = p.device_machine;
  p.server_machine.threads = 4;
  CHECK(check_timings(p).empty());
  // Only one side timed (a device-side profile): nothing to compare.
  Profile device_only = consistent();
  for (auto& c : device_only.cuts) c.tail = Timing();
  device_only.cuts[2].head.median_ms *= 3;
  CHECK(check_timings(device_only).empty());
}

TEST_CASE("check_timings: a wide p10-p90 spread names the timing - tiny timings are left out") {
  Profile p = consistent();
  p.cuts[3].tail = timing(p.cuts[3].tail.median_ms, 0.8);
  // 0.1 ms is under 5% of the whole model's 4 ms: its spread does not count.
  p.cuts[0].head = timing(0.1, 3.0);
  p.cuts[0].tail = timing(3.9);
  const auto warnings = check_timings(p);
  REQUIRE(warnings.size() == 1);
  INFO(warnings[0]);
  CHECK(contains(warnings[0], "spread exceeds 0.5 x the median at cut 3 tail (2.5 ms"));
  CHECK(!contains(warnings[0], "0 head"));
  CHECK(check_timings(p, 0.15, 1.0).empty());
}

TEST_CASE("check_timings: a long list of cuts is cut short") {
  Profile p = consistent(40);
  for (int i = 0; i < 40; ++i) p.cuts[i].head.median_ms += 2;  // +50% but at the device cut
  const auto warnings = check_timings(p);
  REQUIRE(warnings.size() == 1);
  INFO(warnings[0]);
  CHECK(contains(warnings[0], "cuts 0 (+"));
  CHECK(contains(warnings[0], " and 28 more;"));  // 40 cuts off, 12 listed
}

TEST_CASE("timing warnings survive save/load and follow a merge") {
  Profile p = consistent();
  CHECK(to_json_text(p).find("timing_warnings") == std::string::npos);  // absent when none
  p.timing_warnings = {"a warning", std::string(80, 'x')};
  auto back = parse_profile(to_json_text(p));
  REQUIRE(back.ok());
  CHECK(back->timing_warnings == p.timing_warnings);

  std::string text = to_json_text(consistent());
  text.replace(text.find("\"cuts\""), 6, "\"timing_warnings\": 3, \"cuts\"");
  auto wrong = parse_profile(text);
  CHECK(!wrong.ok());
  CHECK(contains(wrong.status().message(), "timing_warnings"));

  // Server timings that do not add up with the device's (same machine) are warned about in the
  // merged profile; timings that do clear the warning.
  Profile into = consistent();
  Profile server = consistent();
  server.cuts[4].tail.median_ms *= 2;
  REQUIRE(merge_timings(into, server, false).ok());
  REQUIRE(into.timing_warnings.size() == 1);
  CHECK(contains(into.timing_warnings[0], "cut 4 (+50%)"));
  REQUIRE(merge_timings(into, consistent(), false).ok());
  CHECK(into.timing_warnings.empty());
}
