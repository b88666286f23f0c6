// The server's /metrics read by Prometheus's own tools, with real processes on loopback: after
// devices at two cuts, a malformed message and a model name that needs escaping (with a byte that
// is not UTF-8), the text passes `promtool check metrics` (no error, no lint warning), and a
// Prometheus server scraping it finds the target up and stores the labelled series with the
// values the server reported. Skipped with a message where Debian's prometheus package
// (promtool, prometheus) is not installed.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/integration/child_process.h"
#include "tests/integration/default_model.h"
#include "tests/integration/prometheus_server.h"
#include "tests/integration/reliability_util.h"
#include "tests/test_paths.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace edgesplit;
using namespace edgesplit::testing;
using Clock = std::chrono::steady_clock;

namespace {

fs::path default_meta() { return source_dir() / "models" / "default" / "fashion_mnist_cnn.json"; }

// The model's name as the server takes it from its file name (no "name" in its metadata): quotes,
// a backslash, a newline, non-ASCII text and a byte that is not UTF-8 (a file named in another
// encoding), which the exposition format must escape, carry as UTF-8 or replace.
const std::string kOddFile = "fashion \"mnist\" \\cnn\nv2 \xc3\xbc \xff.pt";
// The name as it is written inside a label value in the exposition text, and as Prometheus
// stores it (0xFF replaced by U+FFFD).
const std::string kOddNameEscaped = "fashion \\\"mnist\\\" \\\\cnn\\nv2 \xc3\xbc \xef\xbf\xbd.pt";
const std::string kOddNameStored = "fashion \"mnist\" \\cnn\nv2 \xc3\xbc \xef\xbf\xbd.pt";

// A server with an HTTP endpoint on an ephemeral port, serving the default model under kOddFile's
// name, after traffic that fills its histograms and labelled counters.
struct PopulatedServer {
  ServerProcess process;
  int http_port = -1;

  void start(const fs::path& dir) {
    json meta = json::parse(read_file(default_meta()));
    meta.erase("name");
    const fs::path meta_path = dir / "no-name.json";
    std::ofstream(meta_path) << meta.dump(2) << "\n";
    const fs::path model = dir / kOddFile;
    fs::create_symlink(default_model(), model);
    const fs::path port_file = dir / "http-port.txt";
    REQUIRE(process.start(dir, {"--model", model.string(), "--meta", meta_path.string(),
                                "--http-port", "0", "--http-bind", "127.0.0.1", "--http-port-file",
                                port_file.string(), "--max-batch", "4"}));
    auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline && http_port < 0) {
      std::string text = read_file(port_file);
      if (!text.empty() && text.back() == '\n') http_port = std::stoi(text);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE(http_port > 0);

    // Devices at two cuts (8-bit, and 4-bit with zstd), several frames in flight.
    int run = 0;
    for (const auto& extra : std::vector<std::vector<std::string>>{
             {"--cut", "2"}, {"--cut", "8", "--bits", "4", "--lossless", "zstd"}}) {
      std::vector<std::string> argv = {bin("edgesplit-device"),
                                       "--model",
                                       default_model().string(),
                                       "--input",
                                       default_samples().string(),
                                       "--server",
                                       process.endpoint(),
                                       "--in-flight",
                                       "4",
                                       "--timeout-ms",
                                       "10000",
                                       "--quiet"};
      argv.insert(argv.end(), extra.begin(), extra.end());
      const std::string tag = "device-" + std::to_string(run++);
      const int rc = run_to_end(argv, dir / (tag + ".jsonl"), dir / (tag + ".err"));
      REQUIRE_MESSAGE(rc == 0, read_file(dir / (tag + ".err")));
    }
    // A message that is not a request: the malformed counter and a reply with that status.
    WireClient garbage(process.endpoint());
    garbage.send_frames({"\xff\xfe not a protobuf \x01\x02"});
    CHECK(garbage.receive(std::chrono::seconds(5)).has_value());
  }

  std::string metrics() {
    HttpResponse r = http_get(http_port, "/metrics");
    REQUIRE(r.status == 200);
    return r.body;
  }
};

struct Output {
  int rc = -1;
  std::string text;  // stdout and stderr together
};

// `promtool check metrics` on the exposition text in `file`.
Output promtool_check(const fs::path& promtool, const fs::path& file, const fs::path& dir,
                      const std::string& tag) {
  Output o;
  o.rc = run_to_end(
      {"/bin/sh", "-c", "exec \"$0\" check metrics < \"$1\"", promtool.string(), file.string()},
      dir / (tag + ".out"), dir / (tag + ".err"), std::chrono::seconds(60));
  o.text = read_file(dir / (tag + ".out")) + read_file(dir / (tag + ".err"));
  return o;
}

}  // namespace

TEST_CASE("promtool check metrics passes the server's /metrics after traffic, without warnings") {
  const fs::path promtool = find_program("promtool");
  if (promtool.empty()) {
    MESSAGE("skipped: promtool (Debian's prometheus package) is not installed");
    return;
  }
  auto dir = scratch_dir("metrics-promtool");

  // promtool is live here: a counter without _total and a reserved suffix are reported.
  const fs::path bad = dir / "bad.txt";
  std::ofstream(bad) << "# HELP x_count A counter.\n# TYPE x_count counter\nx_count 1\n";
  Output rejected = promtool_check(promtool, bad, dir, "promtool-bad");
  CHECK(rejected.rc != 0);
  CHECK(rejected.text.find("_total") != std::string::npos);

  PopulatedServer server;
  server.start(dir);
  const std::string text = server.metrics();
  const fs::path file = dir / "metrics.txt";
  std::ofstream(file) << text;

  // The traffic is there: both cuts under the escaped name, histograms with observations, the
  // malformed message.
  CHECK(metric_value(text, "edgesplit_model_requests_total{model=\"" + kOddNameEscaped +
                               "\",cut=\"2\"}") > 0);
  CHECK(metric_value(text, "edgesplit_model_requests_total{model=\"" + kOddNameEscaped +
                               "\",cut=\"8\"}") > 0);
  CHECK(metric_value(text, "edgesplit_compute_seconds_count") > 0);
  CHECK(metric_value(text, "edgesplit_queue_seconds_count") > 0);
  CHECK(metric_value(text, "edgesplit_batch_size_count") > 0);
  CHECK(metric_value(text, "edgesplit_malformed_total") >= 1);
  CHECK(metric_value(text, "edgesplit_replies_total{status=\"malformed\"}") >= 1);

  Output checked = promtool_check(promtool, file, dir, "promtool");
  INFO("promtool check metrics:\n" << checked.text);
  CHECK(checked.rc == 0);
  CHECK(checked.text.empty());  // promtool prints nothing for text it accepts
}

TEST_CASE("a Prometheus server scrapes /metrics: target up, labelled series stored as served") {
  const fs::path prometheus = find_program("prometheus");
  if (prometheus.empty()) {
    MESSAGE("skipped: prometheus (Debian's prometheus package) is not installed");
    return;
  }
  auto dir = scratch_dir("metrics-prometheus");
  PopulatedServer server;
  server.start(dir);

  PrometheusServer prom;
  REQUIRE(prom.start(prometheus, dir, {"127.0.0.1:" + std::to_string(server.http_port)}));
  // The target's state once it has been scraped (health "up" or "down" with Prometheus's error).
  auto targets = prom.scraped_targets(1, std::chrono::seconds(60));
  REQUIRE_MESSAGE(targets.size() == 1, prom.log());
  INFO("target: " << targets[0].dump());
  CHECK(targets[0].value("health", "") == "up");
  CHECK(targets[0].value("lastError", "?").empty());

  // The series Prometheus stored hold the label values and counts the server reported.
  const std::string text = server.metrics();
  json series;
  auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline) {
    series = prom.query("edgesplit_model_requests_total");
    if (series.is_array() && series.size() >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  REQUIRE(series.is_array());
  REQUIRE(series.size() == 2);
  for (const auto& s : series) {
    CAPTURE(s.dump());
    CHECK(s["metric"]["model"] == kOddNameStored);
    const std::string cut = s["metric"]["cut"];
    CHECK((cut == "2" || cut == "8"));
    const double served = metric_value(text, "edgesplit_model_requests_total{model=\"" +
                                                 kOddNameEscaped + "\",cut=\"" + cut + "\"}");
    CHECK(std::stod(s["value"][1].get<std::string>()) == served);
  }
  json buckets = prom.query("edgesplit_compute_seconds_bucket");
  REQUIRE(buckets.is_array());
  CHECK(buckets.size() == 17);  // 16 bounds and +Inf
  json samples = prom.query("scrape_samples_scraped");
  REQUIRE(samples.is_array());
  REQUIRE(samples.size() == 1);
  CHECK(std::stod(samples[0]["value"][1].get<std::string>()) > 50);

  CHECK(prom.stop());
  server.process.process().signal(SIGTERM);
  CHECK(server.process.process().wait(std::chrono::seconds(10)) == 0);
}
