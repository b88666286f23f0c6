// The CPU quota knob on the real cgroup tree (root only; skipped otherwise): fixed CPU work takes
// longer at a lower level in the expected proportion, the process is back in its own cgroup and
// the child cgroup gone afterwards; and edgesplit-device under --knobs quota --governor manager
// reports levels and modeled joules on every frame line and leaves no cgroup behind; a family
// stream under the manager goes below the top level (its members are offered to the loop).
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "device/knobs.h"
#include "tests/test_paths.h"

namespace fs = std::filesystem;
using namespace edgesplit::device;
using namespace edgesplit::testing;

namespace {

bool usable() {
  if (::geteuid() != 0) {
    MESSAGE("skipped: the quota knob needs root (cgroups)");
    return false;
  }
  if (!fs::exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") &&
      !fs::exists("/sys/fs/cgroup/cgroup.controllers")) {
    MESSAGE("skipped: no cgroup cpu controller here");
    return false;
  }
  return true;
}

// Wall milliseconds of a fixed amount of arithmetic on this thread.
double busy_ms(long iterations) {
  const auto t0 = std::chrono::steady_clock::now();
  volatile double x = 1.0;
  for (long i = 0; i < iterations; ++i) x = x * 1.0000001 + 1e-9;
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

double median_busy_ms(long iterations) {
  std::vector<double> v;
  for (int i = 0; i < 5; ++i) v.push_back(busy_ms(iterations));
  std::sort(v.begin(), v.end());
  return v[2];
}

std::vector<std::string> edgesplit_cgroups() {
  std::vector<std::string> out;
  for (const char* dir : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup"}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("edgesplit-device-", 0) == 0) out.push_back(e.path().string());
    }
  }
  return out;
}

// edgesplit-device with `args` on one thread under the manager, on the quota knob as the little
// executor of device/descriptions/vm_2core.json, JSON lines to `out`; its exit status.
int run_under_manager(const std::string& args, const std::string& out) {
  const std::string cmd = (bin_dir() / "edgesplit-device").string() + " " + args +
                          " --threads 1 --knobs quota --device-description " +
                          (source_dir() / "device/descriptions/vm_2core.json").string() +
                          " --executor little --governor manager --json --quiet --output " + out;
  return std::system(cmd.c_str());
}

}  // namespace

TEST_CASE("a lower quota level slows fixed CPU work in proportion, and is undone") {
  if (!usable()) return;
  const auto before = edgesplit_cgroups();
  // Pinned to one core so that one thread's work is what the quota of one core slices.
  const auto cores = process_affinity();
  REQUIRE(set_process_affinity({cores.front()}).ok());
  auto knob = open_quota_knob("/sys/fs/cgroup", 1, 1000, static_cast<int>(::getpid()));
  REQUIRE_MESSAGE(knob.ok(), knob.status().message());
  // About 60 ms of work at full speed: several CFS periods, so the slicing averages out.
  long n = 1000000;
  while (busy_ms(n) < 60) n *= 2;
  REQUIRE((*knob)->set_mhz(1000).ok());
  const double top = median_busy_ms(n);
  REQUIRE((*knob)->set_mhz(250).ok());
  CHECK(*(*knob)->current_mhz() == doctest::Approx(250));
  const double quarter = median_busy_ms(n);
  REQUIRE((*knob)->set_mhz(500).ok());
  const double half = median_busy_ms(n);
  MESSAGE("fixed work: " << top << " ms at the top, " << half << " ms at 1/2, " << quarter
                         << " ms at 1/4");
  // 4x and 2x in theory; the first period's leftover quota and other load blur it a little.
  CHECK(quarter / top > 3.0);
  CHECK(half / top > 1.6);
  CHECK(quarter > half);
  (*knob)->restore();
  REQUIRE(set_process_affinity(cores).ok());
  CHECK(edgesplit_cgroups() == before);
  const double after = median_busy_ms(n);
  CHECK(after / top < 1.5);
}

TEST_CASE("edgesplit-device under the manager: levels and joules on every line, nothing left") {
  if (!usable()) return;
  const fs::path bin = bin_dir() / "edgesplit-device";
  const fs::path model = source_dir() / "models/default/fashion_mnist_cnn.pt";
  if (!fs::exists(bin)) {
    MESSAGE("skipped: no edgesplit-device binary at " << bin.string());
    return;
  }
  const auto before = edgesplit_cgroups();
  const std::string out = (binary_dir() / "quota_knob_test.jsonl").string();
  REQUIRE(run_under_manager("--model " + model.string() + " --input " +
                                (source_dir() / "models/default/samples").string() +
                                " --loop 0 --max-frames 60 --fps 20 --max-latency-ms 50",
                            out) == 0);
  std::ifstream in(out);
  std::string line;
  int frames = 0;
  bool device_line = false;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "frame") {
      ++frames;
      CHECK(j["energy"] == "modeled");
      CHECK(j.contains("energy_j"));
      CHECK(j["levels"].contains("little"));
    }
    if (j["type"] == "device") {
      device_line = true;
      CHECK(j["energy"]["source"] == "modeled");
      CHECK(j["energy"]["knob"] == "quota");
      CHECK(j["energy"]["joules"].get<double>() > 0);
    }
  }
  CHECK(frames == 60);
  CHECK(device_line);
  CHECK(edgesplit_cgroups() == before);
}

TEST_CASE("under the manager a family stream offers its members: a level below the top is chosen") {
  if (!usable()) return;
  const fs::path bin = bin_dir() / "edgesplit-device";
  const fs::path family = source_dir() / "models/families/cifar10.json";
  const fs::path images =
      shared_dir().empty() ? fs::path() : shared_dir() / "data/cifar10-test/images";
  if (!fs::exists(bin) || images.empty() ||
      !fs::exists(shared_dir() / "models/resnet_cifar10/resnet20_cifar10.pt")) {
    MESSAGE("skipped: no edgesplit-device binary, or ../shared's CIFAR-10 ResNets are absent");
    return;
  }
  const std::string out = (binary_dir() / "quota_knob_family_test.jsonl").string();
  // ResNet-56 at 28 px takes 2-5 ms a frame on one core here: at 30 fps and a 12 ms bound it has
  // room at a lower level.
  REQUIRE(run_under_manager("--family " + family.string() + " --input " + images.string() +
                                " --max-frames 200 --fps 30 --max-latency-ms 12"
                                " --max-accuracy-drop 2 --objective energy",
                            out) == 0);
  std::ifstream in(out);
  std::string line;
  double top = 0, lowest = 1e9;
  int frames = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] != "frame") continue;
    ++frames;
    CHECK(j["plan"].contains("member"));
    const double mhz = j["levels"]["little"].get<double>();
    top = std::max(top, mhz);
    lowest = std::min(lowest, mhz);
  }
  CHECK(frames == 200);
  // Not kept at the top level as a stream with a fixed plan is.
  CHECK(lowest < top);
  CHECK(lowest < 1000);
}
