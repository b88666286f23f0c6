// Checks the device's power control over fake trees: the cpufreq knob driven by the outer loop
// (the level it writes to scaling_setspeed, lowered only after two regular turns ask for it,
// raised at once), the baselines, the frame fields (levels, joules so far, modeled), the summary,
// the GPU executor left out without CUDA, a knob that cannot be opened said once with the device
// running without it, and the governor restored when the control goes.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "device/power_control.h"
#include "tests/device/fake_tree.h"

using namespace edgesplit::device;
using edgesplit::testing::put;
using edgesplit::testing::TempDir;

namespace {

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::string s;
  std::getline(in, s);
  return s;
}

const char* kBoard = R"({"name": "board", "radio_watts": 1,
  "executors": [
    {"name": "big", "cores": "0", "levels": [
      {"freq_mhz": 500, "active_watts": 2, "idle_watts": 1},
      {"freq_mhz": 1000, "active_watts": 4, "idle_watts": 1}]},
    {"name": "gpu", "kind": "gpu", "levels": [
      {"freq_mhz": 300, "active_watts": 3, "idle_watts": 0.5},
      {"freq_mhz": 600, "active_watts": 5, "idle_watts": 0.6}]}]})";

struct Board {
  TempDir dir;
  EnergyConfig config;
  std::vector<std::string> logs;
  Board() {
    const auto p = dir.path / "cpu/cpufreq/policy0";
    put(p / "affected_cpus", "0");
    put(p / "scaling_governor", "schedutil");
    put(p / "scaling_available_governors", "userspace schedutil performance");
    put(p / "scaling_available_frequencies", "500000 1000000");
    put(p / "scaling_max_freq", "1000000");
    put(p / "scaling_cur_freq", "1000000");
    put(p / "scaling_setspeed", "<unsupported>");
    put(dir.path / "board.json", kBoard);
    config.knobs = KnobKind::kCpufreq;
    config.description_path = (dir.path / "board.json").string();
    config.cpufreq_root = (dir.path / "cpu").string();
    config.sys_root = (dir.path / "sys").string();  // no counter: modeled
  }
  std::unique_ptr<PowerControl> open(std::optional<Governor> g) {
    config.governor = g;
    PowerControlEnv env;
    env.set_affinity = false;
    auto pc = PowerControl::open(config, env, [this](const std::string& m) { logs.push_back(m); });
    REQUIRE_MESSAGE(pc.ok(), pc.status().message());
    return std::move(pc).value();
  }
  std::string setspeed() const { return slurp(dir.path / "cpu/cpufreq/policy0/scaling_setspeed"); }
};

// A stream at 10 fps whose one device-only plan takes `head_ms` at the current level.
StreamEnergyView stream(double head_ms, std::optional<double> bound) {
  StreamEnergyView v;
  v.name = "s";
  v.running = true;
  v.fps = 10;
  v.max_latency_ms = bound;
  v.threads = 1;
  edgesplit::partitioner::PlanMetrics m;
  m.head_ms = head_ms;
  m.latency_ms = head_ms + 1;
  v.plans.push_back(m);
  return v;
}

}  // namespace

TEST_CASE("the outer loop drives cpufreq: down after two turns, up at once, restored at the end") {
  Board b;
  {
    auto pc = b.open(Governor::kManager);
    REQUIRE(pc->has_knob());
    CHECK(b.setspeed() == "1000000");  // the top level at start
    CHECK(slurp(b.dir.path / "cpu/cpufreq/policy0/scaling_governor") == "userspace");
    // The GPU executor is left out (no CUDA here), said in the notes.
    bool said_gpu = false;
    for (const auto& n : pc->notes())
      said_gpu |= n.find("\"gpu\" (gpu) left out") != std::string::npos;
    CHECK(said_gpu);
    CHECK(pc->frame_fields()["levels"].size() == 1);
    // 10 ms at 1000 MHz under a 30 ms bound: 20 ms at 500 MHz fits.
    auto e1 = pc->tick(0.0, {stream(10, 30.0)}, "tick");
    CHECK(e1.is_null());
    auto e2 = pc->tick(1.0, {stream(10, 30.0)}, "tick");
    REQUIRE_FALSE(e2.is_null());
    CHECK(e2["freq_mhz"] == 500.0);
    CHECK(b.setspeed() == "500000");
    CHECK(pc->level_mhz() == 500);
    // At 500 MHz the head measures 20 ms (10 at the top); a 15 ms bound needs the top at once.
    auto up = pc->tick(2.0, {stream(20, 15.0)}, "stream \"s\" missed its bound");
    REQUIRE_FALSE(up.is_null());
    CHECK(up["freq_mhz"] == 1000.0);
    CHECK(b.setspeed() == "1000000");
    // A bound no level meets: the top level, said in the event's note when it changes.
    (void)pc->tick(3.0, {stream(10, 5.0)}, "tick");
    CHECK(pc->level_mhz() == 1000);
    const auto& f = pc->frame_fields();
    CHECK(f["energy"] == "modeled");
    CHECK(f["energy_j"].get<double>() > 0);
    CHECK(f["levels"]["big"] == 1000.0);
    auto s = pc->summary(4.0, 40);
    CHECK(s["source"] == "modeled");
    CHECK(s["governor"] == "manager");
    CHECK(s["knob"] == "cpufreq");
    CHECK(s["level_changes"] == 2);
    CHECK(s["joules_per_frame"].get<double>() > 0);
    // The idle watt of the big executor at least, over 4 s.
    CHECK(s["joules"].get<double>() >= 4.0);
    CHECK(pc->device_power().compute_watts == doctest::Approx(3.0));
  }
  CHECK(slurp(b.dir.path / "cpu/cpufreq/policy0/scaling_governor") == "schedutil");
}

TEST_CASE("baselines: performance holds the top, schedutil follows utilization") {
  Board b;
  auto perf = b.open(Governor::kPerformance);
  for (int i = 0; i < 3; ++i) (void)perf->tick(i, {stream(1, 100.0)}, "tick");
  CHECK(perf->level_mhz() == 1000);
  perf.reset();
  auto su = b.open(Governor::kSchedutil);
  // This test process is nearly idle between turns: schedutil goes to the bottom level.
  for (int i = 0; i < 3; ++i) (void)su->tick(i * 10.0, {}, "tick");
  CHECK(su->level_mhz() == 500);
}

TEST_CASE("a knob that cannot be opened: one note, and the device runs without it") {
  Board b;
  b.config.cpufreq_root = (b.dir.path / "nothing").string();
  auto pc = b.open(Governor::kManager);
  CHECK_FALSE(pc->has_knob());
  bool said = false;
  for (const auto& n : pc->notes()) {
    said |= n.find("the device runs without a frequency knob") != std::string::npos;
  }
  CHECK(said);
  // Levels are still picked and reported, energy still modeled.
  (void)pc->tick(0, {stream(10, 30.0)}, "tick");
  (void)pc->tick(1, {stream(10, 30.0)}, "tick");
  CHECK(pc->frame_fields()["energy"] == "modeled");

  EnergyConfig bad = b.config;
  bad.executor = "npu";
  auto refused = PowerControl::open(bad, PowerControlEnv{}, [](const std::string&) {});
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message() ==
        "--executor npu: board has no such cpu executor (it has big)");
  bad.description_path = "/nonexistent.json";
  bad.executor.clear();
  CHECK_FALSE(PowerControl::open(bad, PowerControlEnv{}, [](const std::string&) {}).ok());
}
