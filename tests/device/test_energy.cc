// Checks device descriptions (the shipped Raspberry Pi 4 and Jetson Xavier NX files parse and
// cite their sources; bad descriptions are refused with one sentence), the modeled energy (idle x
// time + (active - idle) x busy time, a quota's CPU time scaled to the slower clock, executors on
// the same cores counted once), and the measured energy from fake powercap and INA3221 trees.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "device/energy.h"
#include "tests/device/fake_tree.h"
#include "tests/test_paths.h"

namespace fs = std::filesystem;
using namespace edgesplit::device;
using edgesplit::testing::put;
using edgesplit::testing::TempDir;

namespace {

const char* kTwoExecutors = R"({
  "name": "test", "radio_watts": 1.0,
  "executors": [
    {"name": "big", "cores": "0-1", "levels": [
      {"freq_mhz": 1000, "active_watts": 4, "idle_watts": 2},
      {"freq_mhz": 500, "active_watts": 2.5, "idle_watts": 1.5}]},
    {"name": "little", "cores": "1", "levels": [
      {"freq_mhz": 500, "active_watts": 1, "idle_watts": 0.5}]},
    {"name": "other", "cores": "2", "levels": [
      {"freq_mhz": 800, "active_watts": 1, "idle_watts": 0.25}]}]})";

}  // namespace

TEST_CASE("the shipped device descriptions parse and cite their sources") {
  for (const char* name :
       {"raspberry_pi_4.json", "jetson_xavier_nx.json", "vm_2core.json", "vm_big_little.json"}) {
    const fs::path p = edgesplit::testing::source_dir() / "device" / "descriptions" / name;
    auto d = load_device_description(p.string());
    REQUIRE_MESSAGE(d.ok(), name << ": " << d.status().message());
    CHECK_FALSE(d->sources.empty());
    REQUIRE_FALSE(d->executors.empty());
    for (const auto& x : d->executors) {
      REQUIRE(x.levels.size() >= 2);
      for (size_t i = 1; i < x.levels.size(); ++i) {
        CHECK(x.levels[i].freq_mhz > x.levels[i - 1].freq_mhz);
        CHECK(x.levels[i].active_watts >= x.levels[i - 1].active_watts);
      }
    }
  }
}

TEST_CASE("device descriptions: levels sorted, mistakes refused with one sentence") {
  auto d = parse_device_description(kTwoExecutors);
  REQUIRE(d.ok());
  CHECK(d->executors[0].levels.front().freq_mhz == 500);
  CHECK(d->executors[0].top_mhz() == 1000);
  CHECK(d->executor("little") == 1);
  CHECK(d->executor("gpu") == -1);
  auto err = [](const std::string& text) {
    auto r = parse_device_description(text);
    return r.ok() ? std::string() : r.status().message();
  };
  CHECK(err("{}").find("\"executors\"") != std::string::npos);
  CHECK(err(R"({"executors":[{"name":"a","cores":"0","levels":[]}]})") ==
        "executor \"a\" needs \"levels\": a list of at least one");
  CHECK(
      err(R"({"executors":[{"name":"a","cores":"0","levels":[{"freq_mhz":1,"active_watts":1,"idle_watts":2}]}]})") ==
      "executor \"a\": at 1 MHz idle_watts is above active_watts");
  CHECK(
      err(R"({"executors":[{"name":"a","levels":[{"freq_mhz":1,"active_watts":1,"idle_watts":0}]}]})") ==
      "executor \"a\": a cpu executor needs \"cores\"");
  CHECK(
      err(R"({"executors":[{"name":"a","cores":"0","levels":[{"freq_mhz":1,"active_watts":-1,"idle_watts":0}]}]})")
          .find("\"active_watts\" must be a finite number >= 0") != std::string::npos);
  CHECK(err(R"({"executor":[]})").find("unknown key \"executor\"") != std::string::npos);
  CHECK(err("not json").find("not JSON") != std::string::npos);
  CHECK_FALSE(load_device_description("/nonexistent/x.json").ok());
}

TEST_CASE("modeled energy: idle x time + (active - idle) x busy time") {
  auto d = parse_device_description(kTwoExecutors);
  REQUIRE(d.ok());
  EnergyMeter m(*d, 0, std::nullopt);
  CHECK_FALSE(m.measured());
  CHECK(std::string(m.source()) == "modeled");
  // 2 s at the top level (index 1), 1 CPU-s on 2 cores: utilization 0.25. "little" shares core 1
  // with "big" and is not counted; "other" idles at 0.25 W.
  const double j = m.advance(2.0, 1.0, {1, 0, 0}, 1.0, 2.0);
  CHECK(m.last_utilization() == doctest::Approx(0.25));
  CHECK(j == doctest::Approx((2 + 2 * 0.25) * 2 + 0.25 * 2));
  // Under a quota at half the clock, the same CPU time stands for twice the busy time.
  const double q = m.advance(2.0, 1.0, {0, 0, 0}, 2.0, 4.0);
  CHECK(m.last_utilization() == doctest::Approx(0.5));
  CHECK(q == doctest::Approx((1.5 + 1.0 * 0.5) * 2 + 0.25 * 2));
  CHECK(m.joules() == doctest::Approx(j + q));
  // Busier than the cores can be: clamped.
  (void)m.advance(1.0, 10.0, {1, 0, 0}, 1.0, 5.0);
  CHECK(m.last_utilization() == doctest::Approx(1.0));
  CHECK(m.describe().find("modeled") != std::string::npos);
  CHECK(process_cpu_seconds() > 0);
}

TEST_CASE("measured energy from a fake powercap tree, wrapping counter") {
  TempDir t;
  put(t.path / "class/powercap/intel-rapl:0/energy_uj", "999000000");
  put(t.path / "class/powercap/intel-rapl:0/max_energy_range_uj", "1000000000");
  put(t.path / "class/powercap/intel-rapl:0:0/energy_uj", "5");  // a sub-zone: not counted
  auto c = EnergyCounter::find(t.path.string());
  REQUIRE(c.has_value());
  auto d = parse_device_description(kTwoExecutors);
  EnergyMeter m(*d, 0, c);
  CHECK(m.measured());
  CHECK(std::string(m.source()) == "measured");
  put(t.path / "class/powercap/intel-rapl:0/energy_uj", "999500000");
  CHECK(m.advance(1.0, 0.1, {1, 0, 0}, 1.0, 1.0) == doctest::Approx(0.5));
  put(t.path / "class/powercap/intel-rapl:0/energy_uj", "1500000");  // wrapped
  CHECK(m.advance(1.0, 0.1, {1, 0, 0}, 1.0, 2.0) == doctest::Approx(2.0));
  CHECK(m.joules() == doctest::Approx(2.5));
}

TEST_CASE("measured energy from a fake INA3221 (Jetson) rail") {
  TempDir t;
  const fs::path h = t.path / "class/hwmon/hwmon3";
  put(h / "name", "ina3221");
  put(h / "in1_label", "VDD_IN");
  put(h / "in1_input", "5000");    // mV
  put(h / "curr1_input", "1000");  // mA: 5 W
  put(h / "in2_label", "VDD_CPU_GPU_CV");
  put(h / "in2_input", "5000");
  put(h / "curr2_input", "400");
  auto c = EnergyCounter::find(t.path.string());
  REQUIRE(c.has_value());
  CHECK(c->describe().find("INA3221") != std::string::npos);
  CHECK(c->joules_since_last(10.0) == 0);
  put(h / "curr1_input", "1400");                              // 7 W
  CHECK(c->joules_since_last(12.0) == doctest::Approx(12.0));  // (5 + 7) / 2 x 2 s

  TempDir none;
  CHECK_FALSE(EnergyCounter::find(none.path.string()).has_value());
}
