// Checks edgesplit-profile end to end on the default model and its sample images: complete and
// consistent tables (every cut, bytes rising with bits, JPEG at cut 0 only), fp32 accuracy equal to
// a reference computed here with the whole model, a profile of another model refused, server
// timings merged into a profile (and checked against the device's), user errors exiting with 2,
// and an interrupted run leaving the previous file intact.
#include <doctest/doctest.h>
#include <signal.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include "imaging/input_source.h"
#include "imaging/preprocess.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "profiles/profile.h"
#include "tests/integration/child_process.h"
#include "tests/test_paths.h"

namespace fs = std::filesystem;
using namespace edgesplit;
using namespace edgesplit::testing;

namespace {

constexpr int kCalibration = 8;

fs::path model_path() { return source_dir() / "models/default/fashion_mnist_cnn.pt"; }
fs::path samples() { return source_dir() / "models/default/samples"; }
fs::path profiler() { return bin_dir() / "edgesplit-profile"; }

std::vector<std::string> base_args(const fs::path& out) {
  return {profiler().string(),
          "--model",
          model_path().string(),
          "--images",
          samples().string(),
          "--labels",
          (samples() / "labels.tsv").string(),
          "--calibration",
          std::to_string(kCalibration),
          "--bits",
          "1-8,12,16,fp16,fp32",
          "--runs",
          "3",
          "--quiet",
          "--out",
          out.string()};
}

// One profile of the default model, made once for the test cases that read it.
const fs::path& shared_profile() {
  static const fs::path path = [] {
    const fs::path dir = scratch_dir("profile-tool");
    const fs::path out = dir / "default.profile.json";
    const int rc = run_to_end(base_args(out), dir / "out.txt", dir / "err.txt");
    INFO(read_file(dir / "err.txt"));
    REQUIRE(rc == 0);
    return out;
  }();
  return path;
}

const profiles::EncodingProfile* find(const profiles::CutProfile& c, const std::string& name) {
  for (const auto& e : c.encodings) {
    if (e.encoding.name() == name) return &e;
  }
  return nullptr;
}

}  // namespace

TEST_CASE("the profile lists every cut with a complete - consistent table") {
  auto graph = partitioner::ModelGraph::load(model_path().string(), {{1, 1, 28, 28}});
  REQUIRE(graph.ok());
  auto p = profiles::load_profile(shared_profile().string(), (*graph)->digest());
  REQUIRE(p.ok());
  REQUIRE(p->cuts.size() == (*graph)->cuts().size());
  CHECK(p->calibration_images.size() == kCalibration);
  CHECK(p->scored_images == 24 - kCalibration);
  CHECK(p->device_machine.threads > 0);
  const std::vector<std::string> quantized = {"q1", "q2", "q3", "q4",  "q5",
                                              "q6", "q7", "q8", "q12", "q16"};
  for (const auto& c : p->cuts) {
    CAPTURE(c.id);
    CHECK(c.name == (*graph)->cut(c.id).name);
    CHECK(c.elements == (*graph)->cut(c.id).elements);
    CHECK(c.head.runs == 3);
    CHECK(c.tail.runs == 3);
    if (c.id == (*graph)->device_cut()) {
      CHECK(c.encodings.empty());
      continue;
    }
    // Every precision with both lossless stages, JPEG at cut 0 only.
    CHECK(c.encodings.size() == (quantized.size() + 2) * 2 + (c.id == 0 ? 3 : 0));
    CHECK((find(c, "jpeg75") != nullptr) == (c.id == 0));
    double previous = 0;
    for (const auto& name : quantized) {
      const auto* e = find(c, name);
      REQUIRE(e != nullptr);
      CHECK(e->bytes_mean > previous);  // without a lossless stage: strictly more with more bits
      previous = e->bytes_mean;
      CHECK(e->bytes_p95 >= e->bytes_mean);
      CHECK(e->pack.runs == kCalibration);
      CHECK(e->unpack.runs == kCalibration);
      // The lossless variant decodes to the same values: same accuracy, never more bytes than
      // the raw packing (the codec keeps the raw bits when compression does not pay).
      const auto* z = find(c, name + "+zstd");
      REQUIRE(z != nullptr);
      CHECK(z->top1 == e->top1);
      CHECK(z->agreement == e->agreement);
      CHECK(z->bytes_mean <= e->bytes_mean);
    }
    const auto* fp32 = find(c, "fp32");
    REQUIRE(fp32 != nullptr);
    CHECK(fp32->bytes_mean > static_cast<double>(c.fp32_bytes));  // + the header
    CHECK(fp32->top1 == p->fp32_top1);
    CHECK(fp32->agreement == 1.0);
    CHECK(find(c, "q16")->agreement == 1.0);
  }
}

TEST_CASE("fp32 accuracy equals a reference computed with the whole model") {
  auto graph = partitioner::ModelGraph::load(model_path().string(), {{1, 1, 28, 28}});
  REQUIRE(graph.ok());
  auto info = partitioner::load_model_info(model_path().string());
  REQUIRE(info.ok());
  std::map<std::string, int> labels;
  std::ifstream in(samples() / "labels.tsv");
  std::string name;
  int label;
  while (in >> name >> label) labels[name] = label;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(samples())) {
    if (imaging::is_image_file(entry.path())) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() == 24);
  int correct = 0, scored = 0;
  for (size_t i = kCalibration; i < files.size(); ++i) {
    cv::Mat image = cv::imread(files[i].string(), cv::IMREAD_ANYCOLOR);
    auto x = imaging::preprocess(image, *info);
    REQUIRE(x.ok());
    at::Tensor input = torch::from_blob(x->data(), {1, 1, 28, 28}, torch::kFloat32).clone();
    torch::NoGradGuard no_grad;
    const int predicted = static_cast<int>((*graph)->run(input).argmax(1).item<int64_t>());
    ++scored;
    if (predicted == labels.at(files[i].filename().string())) ++correct;
  }
  auto p = profiles::load_profile(shared_profile().string());
  REQUIRE(p.ok());
  CHECK(p->scored_images == scored);
  CHECK(p->fp32_top1 == doctest::Approx(static_cast<double>(correct) / scored).epsilon(1e-12));
}

TEST_CASE("a profile made for another model is refused: server timings merge in") {
  const fs::path dir = scratch_dir("profile-merge");
  auto p = profiles::load_profile(shared_profile().string());
  REQUIRE(p.ok());

  profiles::Profile other = *p;
  other.model_digest = "sha256:0000";
  const fs::path wrong = dir / "wrong.profile.json";
  REQUIRE(profiles::save_profile(wrong.string(), other).ok());
  const std::string before = read_file(wrong);
  const int rc = run_to_end({profiler().string(), "--model", model_path().string(), "--side",
                             "server", "--merge-into", wrong.string(), "--runs", "2", "--quiet"},
                            dir / "out.txt", dir / "err.txt");
  CHECK(rc == 2);
  const std::string err = read_file(dir / "err.txt");
  CHECK(err.find("sha256:0000") != std::string::npos);
  CHECK(err.find(p->model_digest) != std::string::npos);
  CHECK(read_file(wrong) == before);
  auto loaded = profiles::load_profile(wrong.string(), p->model_digest);
  CHECK(loaded.status().code() == StatusCode::kInvalidArgument);

  // The server re-times its side (tails and unpacking) and the rest is kept.
  profiles::Profile stale = *p;
  stale.server_machine.hostname = "elsewhere";
  for (auto& c : stale.cuts) c.tail.runs = 1;
  const fs::path good = dir / "good.profile.json";
  REQUIRE(profiles::save_profile(good.string(), stale).ok());
  const int ok = run_to_end({profiler().string(), "--model", model_path().string(), "--side",
                             "server", "--merge-into", good.string(), "--runs", "2", "--quiet"},
                            dir / "out2.txt", dir / "err2.txt");
  INFO(read_file(dir / "err2.txt"));
  REQUIRE(ok == 0);
  auto merged = profiles::load_profile(good.string(), p->model_digest);
  REQUIRE(merged.ok());
  CHECK(merged->server_machine.hostname != "elsewhere");
  CHECK(merged->device_machine.hostname == p->device_machine.hostname);
  for (size_t i = 0; i < merged->cuts.size(); ++i) {
    CHECK(merged->cuts[i].tail.runs == 2);
    CHECK(merged->cuts[i].head.runs == p->cuts[i].head.runs);
    REQUIRE(merged->cuts[i].encodings.size() == p->cuts[i].encodings.size());
    for (size_t k = 0; k < merged->cuts[i].encodings.size(); ++k) {
      CHECK(merged->cuts[i].encodings[k].top1 == p->cuts[i].encodings[k].top1);
      CHECK(merged->cuts[i].encodings[k].bytes_mean == p->cuts[i].encodings[k].bytes_mean);
    }
  }
}

TEST_CASE("merged tails that do not add up with the heads to the whole model are warned about") {
  const fs::path dir = scratch_dir("profile-merge-check");
  auto p = profiles::load_profile(shared_profile().string());
  REQUIRE(p.ok());
  // The whole model (the device cut's head) three times as slow as measured: every head + tail
  // falls far short of it. Same machine on both sides, so the sums are compared.
  profiles::Profile doctored = *p;
  doctored.cuts.back().head.median_ms *= 3;
  const fs::path path = dir / "doctored.profile.json";
  REQUIRE(profiles::save_profile(path.string(), doctored).ok());
  const int rc = run_to_end({profiler().string(), "--model", model_path().string(), "--side",
                             "server", "--merge-into", path.string(), "--runs", "2", "--quiet"},
                            dir / "out.txt", dir / "err.txt");
  const std::string err = read_file(dir / "err.txt");
  INFO(err);
  REQUIRE(rc == 0);
  CHECK(err.find("edgesplit-profile: warning: head + tail differs from the whole model") !=
        std::string::npos);
  auto merged = profiles::load_profile(path.string(), p->model_digest);
  REQUIRE(merged.ok());
  REQUIRE(!merged->timing_warnings.empty());
  CHECK(merged->timing_warnings[0].find("cuts 0 (-") != std::string::npos);
}

TEST_CASE("user errors exit with 2 - nothing is written") {
  const fs::path dir = scratch_dir("profile-usage");
  const fs::path out = dir / "never.profile.json";
  // base_args with `flag` set to `value` (replaced when present, else added).
  auto with = [&](const std::string& flag, const std::string& value) {
    std::vector<std::string> args = base_args(out);
    auto it = std::find(args.begin(), args.end(), flag);
    if (it == args.end()) {
      args.push_back(flag);
      args.push_back(value);
    } else {
      *(it + 1) = value;
    }
    return args;
  };
  std::vector<std::string> unknown = base_args(out);
  unknown.push_back("--no-such-flag");
  const std::vector<std::pair<const char*, std::vector<std::string>>> cases = {
      {"unknown flag", unknown},
      {"bad value", with("--bits", "99")},
      {"bad cut list", with("--cuts", "7-2")},
      {"missing image folder", with("--images", (dir / "absent").string())},
      {"missing model", with("--model", (dir / "absent.pt").string())},
  };
  for (const auto& [what, args] : cases) {
    CAPTURE(what);
    const int rc = run_to_end(args, dir / "out.txt", dir / "err.txt");
    INFO(read_file(dir / "err.txt"));
    CHECK(rc == 2);
    CHECK(!fs::exists(out));
  }
}

TEST_CASE("an interrupted run leaves the previous profile intact") {
  const fs::path dir = scratch_dir("profile-interrupt");
  const fs::path out = dir / "kept.profile.json";
  fs::copy_file(shared_profile(), out);
  const std::string before = read_file(out);
  for (int sig : {SIGKILL, SIGINT}) {
    CAPTURE(sig);
    // Many timing runs: the process is surely still working when the signal arrives.
    std::vector<std::string> args = base_args(out);
    args.push_back("--warmup");
    args.push_back("1000000");
    ChildProcess child;
    REQUIRE(child.start(args, dir / "out.txt", dir / "err.txt"));
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    REQUIRE(child.running());
    child.signal(sig);
    auto rc = child.wait(std::chrono::seconds(30));
    REQUIRE(rc.has_value());
    if (sig == SIGINT) {
      CHECK(*rc == 130);
      CHECK(read_file(dir / "err.txt").find("was not written") != std::string::npos);
    } else {
      CHECK(*rc == 128 + SIGKILL);
    }
    CHECK(read_file(out) == before);
    CHECK(profiles::load_profile(out.string()).ok());
  }
}
