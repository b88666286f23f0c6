// Checks placement over executors with frames pipelined through them: edgesplit-device on this
// VM's big and little cores (device/descriptions/vm_big_little.json, the little core's stage
// under a CPU quota on its thread) places MobileNetV2's unit blocks on both, its measured period
// is within 15% of the cost model's, and every frame's result equals the unpipelined run's (the
// whole model on one executor). Needs root, cgroup v1's cpu controller and ../shared; skipped
// without.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/integration/child_process.h"
#include "tests/integration/default_model.h"
#include "tests/test_paths.h"

using namespace edgesplit::testing;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::vector<json> lines_of(const fs::path& path) {
  std::vector<json> out;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(json::parse(line));
  }
  return out;
}

std::vector<json> of_type(const std::vector<json>& lines, const std::string& type) {
  std::vector<json> out;
  for (const auto& j : lines) {
    if (j.value("type", "") == type) out.push_back(j);
  }
  return out;
}

}  // namespace

TEST_CASE(
    "placement: MobileNetV2 pipelined over big and little, period as predicted, results "
    "as unpipelined") {
  if (::geteuid() != 0 || !fs::exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")) {
    MESSAGE("skipped: needs root and cgroup v1's cpu controller (a quota on one thread)");
    return;
  }
  const fs::path model = shared_mobilenet();
  const fs::path images =
      shared_dir().empty() ? fs::path() : shared_dir() / "data" / "imagenet-val-1300" / "images";
  if (model.empty() || !fs::exists(images)) {
    MESSAGE("skipped: ../shared's MobileNetV2 or ImageNet images are absent");
    return;
  }
  const fs::path dir = scratch_dir("placement");
  const std::string description =
      (source_dir() / "device" / "descriptions" / "vm_big_little.json").string();
  const std::vector<std::string> common = {bin("edgesplit-device"),
                                           "--model",
                                           model.string(),
                                           "--input",
                                           images.string(),
                                           "--max-frames",
                                           "240",
                                           "--knobs",
                                           "quota",
                                           "--device-description",
                                           description,
                                           "--objective",
                                           "throughput",
                                           "--quiet"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = common;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const fs::path table = dir / "segments.json";
  const fs::path piped = dir / "pipelined.jsonl";
  REQUIRE(run_to_end(with({"--placement", "auto", "--placement-executors", "big,little",
                           "--placement-block-ms", "50", "--placement-profile-out", table.string(),
                           "--output", piped.string()}),
                     dir / "p.out", dir / "p.err", std::chrono::seconds(300)) == 0);
  const auto lines = lines_of(piped);
  const auto placement = of_type(lines, "placement");
  REQUIRE(placement.size() == 1);
  INFO(placement[0].dump());
  REQUIRE(placement[0]["stages"].size() == 2);
  CHECK(placement[0]["stages"][0]["executor"] != placement[0]["stages"][1]["executor"]);
  const auto summary = of_type(lines, "placement_summary");
  REQUIRE(summary.size() == 1);
  INFO(summary[0].dump());
  CHECK(summary[0]["frames"] == 240);
  CHECK(summary[0]["failed"] == 0);
  // The cost model against the measured pipelined period.
  CHECK(std::abs(summary[0]["period_error"].get<double>()) <= 0.15);
  // Pipelining pays: faster than the whole model on the faster executor alone, as predicted.
  const double alone = std::min(placement[0]["single_executor_period_ms"]["big"].get<double>(),
                                placement[0]["single_executor_period_ms"]["little"].get<double>());
  CHECK(summary[0]["predicted_period_ms"].get<double>() < alone);

  // The same frames unpipelined (the whole model as one stage on big), from the same table.
  const fs::path whole = dir / "whole.jsonl";
  REQUIRE(run_to_end(with({"--placement", "big", "--placement-profile", table.string(), "--output",
                           whole.string()}),
                     dir / "w.out", dir / "w.err", std::chrono::seconds(300)) == 0);
  const auto a = of_type(lines, "frame");
  const auto b = of_type(lines_of(whole), "frame");
  REQUIRE(a.size() == 240);
  REQUIRE(b.size() == 240);
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i]["frame"] == static_cast<int>(i));  // in order
    REQUIRE(b[i]["frame"] == static_cast<int>(i));
    CHECK(a[i]["source"] == b[i]["source"]);
    REQUIRE(a[i]["top"].size() == b[i]["top"].size());
    CHECK(a[i]["top"][0]["index"] == b[i]["top"][0]["index"]);
    for (size_t c = 0; c < a[i]["top"].size(); ++c) {
      CHECK(a[i]["top"][c]["score"].get<double>() ==
            doctest::Approx(b[i]["top"][c]["score"].get<double>()).epsilon(1e-3));
    }
  }
  // Nothing is left of the stage's cgroup.
  for (const auto& e : fs::directory_iterator("/sys/fs/cgroup/cpu")) {
    CHECK(e.path().filename().string().rfind("edgesplit-stage-", 0) != 0);
  }
}
