// Checks edgesplit-profile end to end on the default model and its sample images: complete and
// consistent tables (every cut, bytes rising with bits, JPEG at cut 0 only), fp32 accuracy equal to
// a reference computed here with the whole model, paired counts (lost, gained) that add up to each
// encoding's top-1, a profile of another model refused, server timings merged into a profile (and
// checked against the device's), --verify re-scoring every plan on images the profile was not
// made from (and flagging a doctored one), user errors exiting with 2, and an interrupted run
// leaving the previous file intact.
#include <doctest/doctest.h>
#include <signal.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
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

// The line of --verify's table for `encoding` at cut `cut` ("<id> <name>  <encoding>  ..."); ""
// when there is none.
std::string verify_line(const std::string& table, int cut, const std::string& encoding) {
  std::istringstream lines(table);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string id, name, enc;
    words >> id >> name >> enc;
    if (id == std::to_string(cut) && enc == encoding) return line;
  }
  return "";
}

// Checks an encoding's paired counts against its top-1 on the profile's `n` scored images.
void check_counts(const profiles::Profile& p, const profiles::EncodingProfile& e) {
  const int64_t n = p.scored_images;
  CAPTURE(e.encoding.name());
  REQUIRE(e.paired());
  CHECK(e.lost + e.gained <= n);
  const int64_t right = std::llround(e.top1 * static_cast<double>(n));
  const int64_t fp32_right = std::llround(p.fp32_top1 * static_cast<double>(n));
  CHECK(right == doctest::Approx(e.top1 * static_cast<double>(n)).epsilon(1e-9));
  CHECK(right - fp32_right == e.gained - e.lost);
  CHECK(static_cast<double>(e.gained - e.lost) / static_cast<double>(n) ==
        doctest::Approx(e.top1 - p.fp32_top1).epsilon(1e-12));
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
    // Every precision with both lossless stages, JPEG at cut 0 only, and the entropy-coded
    // encodings (--entropy-bits 1,0.8 by default) at the other cuts whose tensor is large enough
    // for their target (64 values at 1 bit per element cannot carry a rANS state).
    const auto* ecsq1 = find(c, "ecsq1");
    const auto* ecsq08 = find(c, "ecsq0.8");
    const size_t entropy = (ecsq1 != nullptr) + (ecsq08 != nullptr);
    CHECK(c.encodings.size() == (quantized.size() + 2) * 2 + (c.id == 0 ? 3 : 0) + entropy);
    if (c.id == 0) CHECK(entropy == 0);
    if (c.id > 0 && c.elements >= 1000) {
      REQUIRE(entropy == 2);
      REQUIRE(ecsq1->encoding.entropy_table != nullptr);
      CHECK(ecsq1->encoding.entropy_table->elements() == c.elements);
      // Fitted for a mean payload of 1 and 0.8 bits per element on the calibration images.
      CHECK(ecsq1->bytes_mean <= 44 + c.elements / 8.0 + 0.5);
      CHECK(ecsq1->bytes_mean >= 44 + c.elements / 8.0 * 0.9);
      CHECK(ecsq08->bytes_mean < ecsq1->bytes_mean);
      CHECK(ecsq1->pack.runs == kCalibration);
      check_counts(*p, *ecsq1);
    }
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

TEST_CASE("paired counts add up to each encoding's top-1, with labels and without") {
  auto p = profiles::load_profile(shared_profile().string());
  REQUIRE(p.ok());
  bool some_loss = false;
  for (const auto& c : p->cuts) {
    CAPTURE(c.id);
    for (const auto& e : c.encodings) {
      check_counts(*p, e);
      some_loss = some_loss || e.lost > 0;
      if (e.encoding.format == packing::Format::kFloat32) {
        CHECK(e.lost == 0);
        CHECK(e.gained == 0);
      }
      // Lossless variants share the counts of their quantization setting.
      if (e.encoding.lossless != packing::Lossless::kNone) {
        const auto* raw = find(c, e.encoding.name().substr(0, e.encoding.name().find('+')));
        REQUIRE(raw != nullptr);
        CHECK(raw->lost == e.lost);
        CHECK(raw->gained == e.gained);
      }
    }
  }
  CHECK(some_loss);

  // Without labels the truth is fp32's own top-1: nothing is gained, and what is lost is what
  // disagrees with it.
  const fs::path dir = scratch_dir("profile-unlabelled");
  const fs::path out = dir / "unlabelled.profile.json";
  const int rc =
      run_to_end({profiler().string(), "--model", model_path().string(), "--images",
                  samples().string(), "--calibration", std::to_string(kCalibration), "--cuts",
                  "0,4", "--bits", "1,2,8", "--runs", "1", "--quiet", "--out", out.string()},
                 dir / "out.txt", dir / "err.txt");
  INFO(read_file(dir / "err.txt"));
  REQUIRE(rc == 0);
  auto u = profiles::load_profile(out.string());
  REQUIRE(u.ok());
  CHECK(u->labels.empty());
  CHECK(u->fp32_top1 == 1.0);
  int encodings = 0;
  for (const auto& c : u->cuts) {
    for (const auto& e : c.encodings) {
      ++encodings;
      check_counts(*u, e);
      CHECK(e.gained == 0);
      CHECK(e.lost == u->scored_images - std::llround(e.agreement * u->scored_images));
    }
  }
  CHECK(encodings > 0);
}

// `p` saved in `dir` as if made for another model (digest "sha256:0000"); its path.
fs::path profile_of_another_model(const profiles::Profile& p, const fs::path& dir) {
  profiles::Profile other = p;
  other.model_digest = "sha256:0000";
  const fs::path wrong = dir / "wrong.profile.json";
  REQUIRE(profiles::save_profile(wrong.string(), other).ok());
  return wrong;
}

TEST_CASE("a profile made for another model is refused: server timings merge in") {
  const fs::path dir = scratch_dir("profile-merge");
  auto p = profiles::load_profile(shared_profile().string());
  REQUIRE(p.ok());
  const fs::path wrong = profile_of_another_model(*p, dir);
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

// From a --verify row ("0 input  q1  100.00 [ 63.06, 100.00]   50.00 [ 10.66,  70.61]"): the
// measured point less the predicted interval's upper end.
double measured_over_predicted_high(const std::string& line) {
  const size_t comma = line.find(',');
  const size_t close = line.find(']', comma);
  if (comma == std::string::npos || close == std::string::npos) return 1e9;
  const double high = std::stod(line.substr(comma + 1, close - comma - 1));
  const double measured = std::stod(line.substr(close + 1));
  return measured - high;
}

TEST_CASE("--verify re-scores every plan on other images and flags a doctored one") {
  const fs::path dir = scratch_dir("profile-verify");
  // A profile of 8 calibration and 8 scored sample images: the 8 left are the new images.
  const fs::path profile = dir / "half.profile.json";
  std::vector<std::string> args = base_args(profile);
  *(std::find(args.begin(), args.end(), "--bits") + 1) = "1,2,8,fp32";
  args.insert(args.end() - 2, {"--scored", "8"});
  int rc = run_to_end(args, dir / "out.txt", dir / "err.txt");
  INFO(read_file(dir / "err.txt"));
  REQUIRE(rc == 0);
  auto p = profiles::load_profile(profile.string());
  REQUIRE(p.ok());
  REQUIRE(p->scored_images == 8);

  // q1 at the input loses on the scored images (as q1 at stem.0 does): the doctored profile
  // claims it loses nothing.
  const auto* q1 = find(p->cuts[0], "q1");
  REQUIRE(q1 != nullptr);
  REQUIRE(q1->lost > q1->gained);
  REQUIRE(q1->top1 < p->fp32_top1);
  const auto* honest = find(p->cuts[1], "q1");
  REQUIRE(honest != nullptr);
  REQUIRE(honest->lost > honest->gained);
  profiles::Profile doctored = *p;
  for (auto& e : doctored.cuts[0].encodings) {
    if (e.encoding.name() == "q1" || e.encoding.name() == "q1+zstd") {
      e.lost = 0;
      e.gained = 0;
      e.top1 = p->fp32_top1;
      e.agreement = 1;
    }
  }
  const fs::path doctored_path = dir / "doctored.profile.json";
  REQUIRE(profiles::save_profile(doctored_path.string(), doctored).ok());

  const fs::path report = dir / "report.json";
  rc = run_to_end({profiler().string(), "--model", model_path().string(), "--verify",
                   doctored_path.string(), "--images", samples().string(), "--labels",
                   (samples() / "labels.tsv").string(), "--quiet", "--out", report.string()},
                  dir / "verify.txt", dir / "verify-err.txt");
  const std::string table = read_file(dir / "verify.txt");
  INFO(table);
  INFO(read_file(dir / "verify-err.txt"));
  REQUIRE(rc == 0);
  // Every plan, one line each (a header first, the summary last).
  int plans = 0;
  for (const auto& c : p->cuts) {
    for (const auto& e : c.encodings) {
      ++plans;
      CAPTURE(c.id);
      CAPTURE(e.encoding.name());
      CHECK(!verify_line(table, c.id, e.encoding.name()).empty());
    }
  }
  CHECK(std::count(table.begin(), table.end(), '\n') == plans + 2);
  const std::string doctored_line = verify_line(table, 0, "q1");
  CHECK(doctored_line.find("OUTSIDE") != std::string::npos);
  CHECK(verify_line(table, 0, "q1+zstd").find("OUTSIDE") != std::string::npos);
  // Plans that lose nothing lose nothing on the new images either (8 images are too few for an
  // honest lossy plan's interval to be sure to hold its new measurement).
  CHECK(verify_line(table, 1, "q8").find("OUTSIDE") == std::string::npos);
  CHECK(verify_line(table, 0, "fp32").find("OUTSIDE") == std::string::npos);
  // The summary: plans checked, images used (the 16 the profile was made from skipped).
  CHECK(table.find("edgesplit-profile: verified " + std::to_string(plans) + " plans: ") !=
        std::string::npos);
  CHECK(table.find("on 8 images of " + samples().string() + " (16 more there made the profile") !=
        std::string::npos);
  const std::string json = read_file(report);
  CHECK(json.find("\"images_used\": 8,") != std::string::npos);
  CHECK(json.find("\"images_skipped\": 16,") != std::string::npos);
  CHECK(json.find("\"plans_checked\": " + std::to_string(plans) + ",") != std::string::npos);

  // The honest profile: its q1 at the input is not flagged.
  rc = run_to_end(
      {profiler().string(), "--model", model_path().string(), "--verify", profile.string(),
       "--images", samples().string(), "--labels", (samples() / "labels.tsv").string(), "--quiet"},
      dir / "honest.txt", dir / "honest-err.txt");
  REQUIRE(rc == 0);
  // On 8 images either way a measurement can fall outside an honest interval; what a user must be
  // able to trust is the direction that hurts: the honest row does not lose more than its upper
  // end, the doctored one does.
  CHECK(measured_over_predicted_high(verify_line(read_file(dir / "honest.txt"), 0, "q1")) <= 0);
  CHECK(measured_over_predicted_high(doctored_line) > 0);
}

TEST_CASE("--verify refuses another model's profile - and a folder with nothing new: exit 2") {
  const fs::path dir = scratch_dir("profile-verify-errors");
  auto p = profiles::load_profile(shared_profile().string());
  REQUIRE(p.ok());
  const fs::path wrong = profile_of_another_model(*p, dir);
  int rc = run_to_end({profiler().string(), "--model", model_path().string(), "--verify",
                       wrong.string(), "--images", samples().string(), "--quiet"},
                      dir / "out.txt", dir / "err.txt");
  std::string err = read_file(dir / "err.txt");
  INFO(err);
  CHECK(rc == 2);
  CHECK(err.find("sha256:0000") != std::string::npos);
  CHECK(err.find(p->model_digest) != std::string::npos);
  CHECK(std::count(err.begin(), err.end(), '\n') == 1);
  CHECK(read_file(dir / "out.txt").empty());

  // The shared profile used all 24 samples: none is left to verify it on.
  rc = run_to_end({profiler().string(), "--model", model_path().string(), "--verify",
                   shared_profile().string(), "--images", samples().string(), "--quiet"},
                  dir / "out2.txt", dir / "err2.txt");
  err = read_file(dir / "err2.txt");
  INFO(err);
  CHECK(rc == 2);
  CHECK(err.find("besides the 24 the profile was made from") != std::string::npos);
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
