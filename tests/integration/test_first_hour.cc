// The first hour with a model edgesplit never shipped, as a user following the README would
// spend it: inspect the shared MobileNetV1 0.5, profile it (small), plot the profile, serve it and
// let the scheduler run it with the defaults. And the defaults that keep that user safe, on the
// default model (no ../shared needed): the accuracy bound is on unless lifted and is said in the
// ready line and the first stderr line, encoding flags without a cut are refused,
// --require-server fails without a server, a profile whose head and tail times do not add up is
// warned about.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/integration/child_process.h"
#include "tests/integration/default_model.h"
#include "tests/test_paths.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace edgesplit::testing;

namespace {

// What one process run left: its exit status, its output, and the device's lines by type.
struct Outcome {
  std::string out, err;
  int rc = -1;
  std::vector<json> frames;
  json ready, summary;
};

Outcome run(const fs::path& dir, const std::string& tag, const std::vector<std::string>& argv,
            std::chrono::milliseconds timeout = std::chrono::seconds(300)) {
  const fs::path out = dir / (tag + ".out"), err = dir / (tag + ".err");
  Outcome r;
  r.rc = run_to_end(argv, out, err, timeout);
  r.out = read_file(out);
  r.err = read_file(err);
  std::istringstream lines(r.out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] != '{') continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    const std::string type = j.value("type", "");
    if (type == "frame") r.frames.push_back(j);
    if (type == "ready") r.ready = j;
    if (type == "summary") r.summary = j;
  }
  return r;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

size_t lines_in(const std::string& text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

std::vector<std::string> device(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {bin("edgesplit-device"), "--json"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

}  // namespace

TEST_CASE(
    "safe defaults: a 1-point accuracy bound unless lifted, said in the ready line and first") {
  auto dir = scratch_dir("first-hour-defaults");
  const std::vector<std::string> model = {"--model",      default_model().string(),
                                          "--input",      default_samples().string(),
                                          "--max-frames", "4"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = model;
    a.insert(a.end(), extra.begin(), extra.end());
    return device(a);
  };

  Outcome plain = run(dir, "plain", with({}));
  REQUIRE_MESSAGE(plain.rc == 0, plain.err);
  CHECK(plain.ready["constraints"]["max_accuracy_drop"] == 1.0);
  CHECK(plain.ready["default_accuracy_bound"] == true);
  CHECK(plain.ready.contains("initial_plan"));
  CHECK(plain.ready["goal"].get<std::string>().find("top-1 drop <= 1 point") != std::string::npos);
  // The first thing said on stderr is the objective and the bound.
  CHECK(first_line(plain.err).find("objective latency; bounds: top-1 drop <= 1 point") !=
        std::string::npos);
  for (const json& f : plain.frames) {
    CHECK(f["predicted"]["accuracy_drop_pp"].get<double>() <= 1.0);
  }
  // Every frame ran locally (no server), and the summary says why.
  CHECK(plain.summary["local_reasons"]["plan"] == 4);
  CHECK(plain.summary["plan_changes"] == 0);

  Outcome lifted = run(dir, "lifted", with({"--max-accuracy-drop", "none"}));
  REQUIRE_MESSAGE(lifted.rc == 0, lifted.err);
  CHECK_FALSE(lifted.ready["constraints"].contains("max_accuracy_drop"));
  CHECK(lifted.ready["default_accuracy_bound"] == false);
  CHECK(first_line(lifted.err).find("accuracy bound is lifted") != std::string::npos);

  Outcome set = run(dir, "set", with({"--max-accuracy-drop", "0.5", "--objective", "data"}));
  REQUIRE_MESSAGE(set.rc == 0, set.err);
  CHECK(set.ready["constraints"]["max_accuracy_drop"] == 0.5);
  CHECK(first_line(set.err).find("data objective runs frames on the device") != std::string::npos);

  // A fixed plan is not the scheduler's: no objective, no plan changes.
  Outcome fixed = run(dir, "fixed", with({"--cut", "device"}));
  REQUIRE_MESSAGE(fixed.rc == 0, fixed.err);
  CHECK(first_line(fixed.err).find("fixed plan") != std::string::npos);
  CHECK(fixed.summary["plan_changes"] == 0);
  for (const json& f : fixed.frames) {
    CHECK(f["plan"]["by"] == "fixed");
    if (f.contains("decision")) CHECK_FALSE(f["decision"].contains("objective"));
  }

  // User errors: one sentence, exit 2.
  for (const auto& bad : std::vector<std::vector<std::string>>{
           {"--bits", "4"}, {"--lossless", "zstd"}, {"--max-accuracy-drop", "lots"}}) {
    CAPTURE(bad[0]);
    Outcome r = run(dir, "bad", with(bad));
    CHECK(r.rc == 2);
    CHECK(lines_in(r.err) == 1);
    CHECK(r.frames.empty());
  }
}

TEST_CASE(
    "--require-server fails with the reason when no server answers - without it frames go on") {
  auto dir = scratch_dir("first-hour-require");
  // A port nothing listens on: bind one, note it, close it.
  ServerProcess probe;
  REQUIRE(probe.start(dir, {"--model", default_model().string()}));
  const std::string endpoint = probe.endpoint();
  probe.process().signal(SIGTERM);
  REQUIRE(probe.process().wait(std::chrono::seconds(10)).has_value());
  const std::vector<std::string> args = {"--model",      default_model().string(),
                                         "--input",      default_samples().string(),
                                         "--max-frames", "3",
                                         "--server",     endpoint,
                                         "--cut",        "input",
                                         "--bits",       "8"};
  std::vector<std::string> required = args;
  required.push_back("--require-server");
  Outcome r = run(dir, "required", device(required));
  CHECK(r.rc == 3);
  CHECK(r.err.find("--require-server") != std::string::npos);
  CHECK(r.err.find("unreachable") != std::string::npos);

  Outcome lenient = run(dir, "lenient", device(args));
  REQUIRE_MESSAGE(lenient.rc == 0, lenient.err);
  CHECK(lenient.summary["local"] == 3);
  CHECK(lenient.summary["local_reasons"]["server unreachable"] == 3);

  // With a server serving the model, --require-server is satisfied.
  ServerProcess server;
  REQUIRE(server.start(dir, {"--model", default_model().string()}));
  std::vector<std::string> served = required;
  served[served.size() - 6] = server.endpoint();  // --server's value
  served.insert(served.end(), kServerIsUp.begin(), kServerIsUp.end());
  Outcome ok = run(dir, "served", device(served));
  REQUIRE_MESSAGE(ok.rc == 0, ok.err);
  CHECK(ok.summary["on_server"] == 3);
}

TEST_CASE("a profile whose head and tail times do not add up to the whole model is warned about") {
  auto dir = scratch_dir("first-hour-doctored");
  json p = json::parse(
      read_file(source_dir() / "models" / "default" / "fashion_mnist_cnn.profile.json"));
  // The whole model three times slower than any head + tail: every inner cut is off.
  json& whole = p["cuts"].back()["head"];
  for (const char* k : {"median_ms", "p10_ms", "p90_ms"}) whole[k] = whole[k].get<double>() * 3 + 1;
  const fs::path doctored = dir / "doctored.profile.json";
  std::ofstream(doctored) << p.dump();
  Outcome r =
      run(dir, "doctored",
          device({"--model", default_model().string(), "--input", default_samples().string(),
                  "--max-frames", "2", "--profile", doctored.string()}));
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(r.err.find("warning: profile " + doctored.string() +
                   ": head + tail differs from the whole model") != std::string::npos);
  // The shipped profile raises no such warning.
  Outcome shipped = run(dir, "shipped",
                        device({"--model", default_model().string(), "--input",
                                default_samples().string(), "--max-frames", "2"}));
  REQUIRE_MESSAGE(shipped.rc == 0, shipped.err);
  CHECK(shipped.err.find("head + tail differs") == std::string::npos);
}

TEST_CASE(
    "the first hour with the shared MobileNetV1 0.5: inspect, profile, plot, serve, schedule") {
  const fs::path shared = shared_dir();
  const fs::path model = shared / "models/mobilenet_v1_imagenet/mobilenet_v1_0.5_160.pt";
  const fs::path images = shared / "data/imagenet-val-1300/images";
  const fs::path labels = shared / "data/imagenet-val-1300/labels.tsv";
  if (shared.empty() || !fs::exists(model) || !fs::exists(images)) {
    MESSAGE("skipped: ../shared (MobileNetV1 0.5 and imagenet-val-1300) is absent");
    return;
  }
  if (std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1") != 0) {
    MESSAGE("skipped: /usr/bin/python3 has no matplotlib (python3-matplotlib) for the plots");
    return;
  }
  auto dir = scratch_dir("first-hour-mnv1");
  // 60 images: 20 for calibration, 40 scored.
  const fs::path subset = dir / "images";
  fs::create_directories(subset);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(images)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (size_t i = 0; i < 60 && i < files.size(); ++i) {
    fs::copy_file(files[i], subset / files[i].filename());
  }

  // 1. Inspect: the cuts, with the names --cut accepts.
  Outcome inspect = run(dir, "inspect", {bin("edgesplit-inspect"), model.string()});
  REQUIRE_MESSAGE(inspect.rc == 0, inspect.err);
  CHECK(inspect.out.find("features.13.1") != std::string::npos);

  // 2. Profile, small: the kept cuts and the estimate are said before the long phases.
  const fs::path profile = dir / "mnv1.profile.json";
  Outcome prof = run(dir, "profile",
                     {bin("edgesplit-profile"),
                      "--model",
                      model.string(),
                      "--images",
                      subset.string(),
                      "--labels",
                      labels.string(),
                      "--calibration",
                      "20",
                      "--cuts",
                      "auto",
                      "--bits",
                      "2,4,8",
                      "--lossless",
                      "none,zstd",
                      "--jpeg",
                      "none",
                      "--runs",
                      "5",
                      "--threads",
                      "1",
                      "--out",
                      profile.string()});
  REQUIRE_MESSAGE(prof.rc == 0, prof.err);
  CHECK(prof.err.find("profiling ") != std::string::npos);
  CHECK(prof.err.find("estimated") != std::string::npos);
  const json p = json::parse(read_file(profile));
  CHECK(p["scored_images"] == 40);

  // 3. Plot it.
  Outcome plot = run(dir, "plot",
                     {"/usr/bin/python3", (source_dir() / "profiles" / "plot.py").string(),
                      profile.string(), "--out-prefix", (dir / "mnv1").string()});
  REQUIRE_MESSAGE(plot.rc == 0, plot.err);
  CHECK(fs::file_size(dir / "mnv1-accuracy.png") > 10000);
  CHECK(fs::file_size(dir / "mnv1-latency.png") > 10000);

  // 4. Serve it and let the scheduler run it with the defaults: within the 1-point bound.
  ServerProcess server;
  REQUIRE(server.start(dir, {"--model", model.string(), "--profile", profile.string()}));
  Outcome dev = run(dir, "device",
                    device({"--model", model.string(), "--profile", profile.string(), "--input",
                            subset.string(), "--max-frames", "20", "--server", server.endpoint(),
                            "--require-server", kServerIsUp[0], kServerIsUp[1]}));
  REQUIRE_MESSAGE(dev.rc == 0, dev.err);
  CHECK(dev.ready["constraints"]["max_accuracy_drop"] == 1.0);
  CHECK(first_line(dev.err).find("top-1 drop <= 1 point") != std::string::npos);
  REQUIRE(dev.frames.size() == 20);
  for (const json& f : dev.frames) {
    CHECK(f["completed"] != "failed");
    CHECK(f["predicted"]["accuracy_drop_pp"].get<double>() <= 1.0);
  }
  // Fixed plans by cut name, as edgesplit-inspect prints them.
  Outcome named =
      run(dir, "named",
          device({"--model", model.string(), "--profile", profile.string(), "--input",
                  subset.string(), "--max-frames", "3", "--server", server.endpoint(),
                  kServerIsUp[0], kServerIsUp[1], "--cut", "features.13.1", "--bits", "8"}));
  REQUIRE_MESSAGE(named.rc == 0, named.err);
  for (const json& f : named.frames) CHECK(f["plan"]["cut_name"] == "features.13.1");
}

TEST_CASE("--realtime runs the device at real-time priority, or says once why not and goes on") {
  auto dir = scratch_dir("first-hour-realtime");
  Outcome r = run(dir, "rt",
                  device({"--model", default_model().string(), "--input",
                          default_samples().string(), "--max-frames", "3", "--realtime", "1"}));
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(r.frames.size() == 3);
  const bool set = r.err.find("threads at real-time priority 1 (SCHED_FIFO)") != std::string::npos;
  const bool refused = r.err.find("real-time priority 1 was refused") != std::string::npos;
  CHECK(set != refused);
  if (::geteuid() == 0) CHECK(set);
  if (refused) {
    CHECK(r.err.find("running at normal priority") != std::string::npos);
    MESSAGE("skipped: no right to real-time priority here; checked the sentence only");
  }
}
