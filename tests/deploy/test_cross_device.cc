// The aarch64 edgesplit-device (scripts/cross-aarch64.sh), run under qemu against the native
// x86-64 edgesplit-server, gives the same top-1 class on every default sample as the native
// device, for split plans (quantized and fp32) and for the whole model on the device.
#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/integration/child_process.h"
#include "tests/test_paths.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace edgesplit::testing;

namespace {

constexpr uint16_t kElfMachineX86_64 = 62;
constexpr uint16_t kElfMachineAarch64 = 183;

fs::path default_model() { return source_dir() / "models" / "default" / "fashion_mnist_cnn.pt"; }
fs::path default_samples() { return source_dir() / "models" / "default" / "samples"; }
size_t sample_count() {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(default_samples()))
    n += e.path().extension() == ".png";
  return n;
}
fs::path cross_device() { return fs::path(EDGESPLIT_CROSS_BUILD) / "bin" / "edgesplit-device"; }
fs::path sysroot() { return EDGESPLIT_CROSS_SYSROOT; }

// e_machine of an ELF file; 0 when it is not one.
uint16_t elf_machine(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  unsigned char h[20] = {};
  if (!f.read(reinterpret_cast<char*>(h), sizeof h)) return 0;
  if (h[0] != 0x7f || h[1] != 'E' || h[2] != 'L' || h[3] != 'F' || h[5] != 1) return 0;
  return static_cast<uint16_t>(h[18] | (h[19] << 8));  // little-endian e_machine
}

struct Run {
  int rc = -1;
  std::vector<json> frames;
  std::string err;
};

Run run(const std::vector<std::string>& argv, const fs::path& dir, const std::string& tag) {
  fs::path out = dir / (tag + ".jsonl"), err = dir / (tag + ".err");
  Run r;
  r.rc = run_to_end(argv, out, err, std::chrono::seconds(600));
  r.err = read_file(err);
  std::istringstream lines(read_file(out));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.value("type", "") == "frame") r.frames.push_back(j);
  }
  return r;
}

std::vector<std::string> device_args(const std::vector<std::string>& plan) {
  // One frame in flight: frames complete in input order on both devices.
  std::vector<std::string> a = {"--model", default_model().string(), "--input",
                                default_samples().string()};
  for (const char* flag : {"--top-k", "3", "--timeout-ms", "20000", "--in-flight", "1", "--quiet"})
    a.push_back(flag);
  a.insert(a.end(), plan.begin(), plan.end());
  return a;
}

}  // namespace

TEST_CASE("arm64 edgesplit-device under qemu gets the native device's top-1 classes") {
  REQUIRE_MESSAGE(fs::exists(cross_device()), "no arm64 edgesplit-device at "
                                                  << cross_device().string()
                                                  << ": run scripts/cross-aarch64.sh first");
  REQUIRE_MESSAGE(fs::exists(sysroot() / "usr/lib/aarch64-linux-gnu"),
                  "no arm64 sysroot at " << sysroot().string());
  REQUIRE_MESSAGE(fs::exists(EDGESPLIT_QEMU_AARCH64), "qemu-aarch64-static is not installed");
  const fs::path native_device = bin_dir() / "edgesplit-device";
  REQUIRE(elf_machine(cross_device()) == kElfMachineAarch64);
  REQUIRE(elf_machine(native_device) == kElfMachineX86_64);
  REQUIRE(elf_machine(bin_dir() / "edgesplit-server") == kElfMachineX86_64);

  auto dir = scratch_dir("cross-device");
  ServerProcess server;
  REQUIRE(server.start(dir, {"--model", default_model().string()}));

  const std::string lib = (sysroot() / "usr/lib/aarch64-linux-gnu").string();
  const std::vector<std::string> qemu = {EDGESPLIT_QEMU_AARCH64,
                                         "-L",
                                         sysroot().string(),
                                         "-E",
                                         "LD_LIBRARY_PATH=" + lib + "/lapack:" + lib + "/blas",
                                         cross_device().string()};
  struct Plan {
    std::string name;
    std::vector<std::string> args;
    const char* completed;
  };
  const std::vector<Plan> plans = {
      {"q4-zstd-cut8",
       {"--server", server.endpoint(), "--cut", "8", "--bits", "4", "--lossless", "zstd"},
       "server"},
      {"fp32-cut3", {"--server", server.endpoint(), "--cut", "3", "--bits", "fp32"}, "server"},
      {"input-q8", {"--server", server.endpoint(), "--cut", "input", "--bits", "8"}, "server"},
      {"device", {"--cut", "device"}, "local"},
  };
  for (const auto& plan : plans) {
    CAPTURE(plan.name);
    std::vector<std::string> native_argv = {native_device.string()};
    for (const auto& a : device_args(plan.args)) native_argv.push_back(a);
    std::vector<std::string> arm_argv = qemu;
    for (const auto& a : device_args(plan.args)) arm_argv.push_back(a);

    auto start = std::chrono::steady_clock::now();
    Run native = run(native_argv, dir, "native-" + plan.name);
    auto mid = std::chrono::steady_clock::now();
    Run arm = run(arm_argv, dir, "arm64-" + plan.name);
    auto end = std::chrono::steady_clock::now();
    MESSAGE(plan.name << ": native " << std::chrono::duration<double>(mid - start).count()
                      << " s, arm64 under qemu " << std::chrono::duration<double>(end - mid).count()
                      << " s");
    REQUIRE_MESSAGE(native.rc == 0, native.err);
    REQUIRE_MESSAGE(arm.rc == 0, arm.err);
    REQUIRE(native.frames.size() == sample_count());
    REQUIRE(arm.frames.size() == native.frames.size());
    double max_score_diff = 0;
    for (size_t i = 0; i < native.frames.size(); ++i) {
      CAPTURE(i);
      const json& n = native.frames[i];
      const json& a = arm.frames[i];
      CHECK(a["source"] == n["source"]);
      CHECK(n["completed"] == plan.completed);
      CHECK(a["completed"] == plan.completed);
      REQUIRE(!n["top"].empty());
      REQUIRE(!a["top"].empty());
      CHECK(a["top"][0]["index"] == n["top"][0]["index"]);
      max_score_diff = std::max(max_score_diff, std::abs(a["top"][0]["score"].get<double>() -
                                                         n["top"][0]["score"].get<double>()));
    }
    MESSAGE(plan.name << ": largest top-1 score difference arm64 vs x86-64: " << max_score_diff);
  }
}
