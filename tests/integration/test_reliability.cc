// The server under hostile, heavy and failing conditions, with real processes on loopback: health,
// readiness and metrics over HTTP; graceful shutdown under load (every request answered or
// refused, bounded exit); the per-device in-flight limit; a departed device's queued work dropped;
// hostile clients (garbage, oversize, wrong versions and digests, truncated payloads, a device that
// never reads) not slowing a good client; a short load run with no lost replies and bounded RSS;
// kill -9 and restart on the same port while a device runs; CURVE with an allow-list.
#include <doctest/doctest.h>

#include <atomic>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>

#include "partitioner/model_graph.h"
#include "tests/integration/child_process.h"
#include "tests/integration/raw_zmtp_peer.h"
#include "tests/integration/reliability_util.h"
#include "tests/sanitizers.h"
#include "tests/test_paths.h"
#include "transport/protocol.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace edgesplit;
using namespace edgesplit::testing;
using Clock = std::chrono::steady_clock;

namespace {

fs::path default_model() { return source_dir() / "models" / "default" / "fashion_mnist_cnn.pt"; }
fs::path default_samples() { return source_dir() / "models" / "default" / "samples"; }
std::string bin(const std::string& name) { return (bin_dir() / name).string(); }
constexpr int kCut = 2;

struct ModelFacts {
  std::string digest;
  std::string payload;  // a valid 8-bit packed tensor for kCut
  std::vector<int64_t> shape;
};

const ModelFacts& facts() {
  static const ModelFacts f = [] {
    partitioner::LoadOptions lo;
    lo.input_shape = {1, 1, 28, 28};
    auto g = partitioner::ModelGraph::load(default_model().string(), lo);
    REQUIRE_MESSAGE(g.ok(), g.status().to_string());
    ModelFacts out;
    out.digest = (*g)->digest();
    out.shape = (*g)->cut(kCut).tensors.at(0).shape;
    out.payload = packed_tensor(out.shape, 8);
    return out;
  }();
  return f;
}

// A server with an HTTP endpoint on an ephemeral port.
struct ObservedServer {
  ServerProcess process;
  int http_port = -1;

  bool start(const fs::path& dir, std::vector<std::string> extra) {
    const fs::path port_file = dir / "http-port.txt";
    fs::remove(port_file);
    extra.insert(extra.end(), {"--model", default_model().string(), "--http-port", "0",
                               "--http-bind", "127.0.0.1", "--http-port-file", port_file.string()});
    if (!process.start(dir, extra)) return false;
    auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline) {
      std::string text = read_file(port_file);
      if (!text.empty() && text.back() == '\n') {
        http_port = std::stoi(text);
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  double metric(const std::string& name) {
    return metric_value(http_get(http_port, "/metrics").body, name);
  }
};

// Sends `n` inference requests with ids first..first+n-1 on `c`.
void send_burst(WireClient& c, uint64_t first, int n) {
  for (int i = 0; i < n; ++i) {
    c.send(infer_request(first + static_cast<uint64_t>(i), facts().digest, kCut, {facts().payload}),
           {facts().payload});
  }
}

// Collects replies until `count` arrived or `timeout` passed.
std::vector<wire::Reply> collect(WireClient& c, size_t count, std::chrono::milliseconds timeout) {
  std::vector<wire::Reply> out;
  auto deadline = Clock::now() + timeout;
  while (out.size() < count && Clock::now() < deadline) {
    auto r = c.receive(std::chrono::milliseconds(50));
    if (r) out.push_back(*r);
  }
  return out;
}

}  // namespace

TEST_CASE("healthz readyz and metrics with readyz 503 while shutting down") {
  auto dir = scratch_dir("rel-http");
  ObservedServer server;
  REQUIRE(server.start(dir, {"--slow-tail-ms", "1500"}));
  CHECK(http_get(server.http_port, "/healthz").status == 200);
  // Ready once every worker has warmed up (--warmup-runs): polled, as an orchestrator does.
  int ready = 0;
  for (auto until = Clock::now() + std::chrono::seconds(10); Clock::now() < until;) {
    ready = http_get(server.http_port, "/readyz").status;
    if (ready == 200) break;
    CHECK(ready == 503);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(ready == 200);
  CHECK(http_get(server.http_port, "/nothing").status == 404);

  WireClient client(server.process.endpoint());
  send_burst(client, 1, 1);
  auto deadline = Clock::now() + std::chrono::seconds(5);
  while (server.metric("edgesplit_running_jobs") < 1 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE(server.metric("edgesplit_running_jobs") == 1);
  const std::string text = http_get(server.http_port, "/metrics").body;
  CHECK(metric_value(text,
                     "edgesplit_model_requests_total{model=\"fashion_mnist_cnn\",cut=\"2\"}") == 1);
  CHECK(metric_value(text, "edgesplit_ready") == 1);

  // SIGTERM while a (slow) tail runs: not ready any more, still live, the reply still comes.
  server.process.process().signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(http_get(server.http_port, "/readyz").status == 503);
  CHECK(http_get(server.http_port, "/healthz").status == 200);
  auto reply = client.receive(std::chrono::seconds(5));
  REQUIRE(reply);
  CHECK(reply->status() == wire::STATUS_OK);
  CHECK(server.process.process().wait(std::chrono::seconds(5)) == 0);
}

TEST_CASE("SIGTERM under load answers or refuses every request and exits in bounded time") {
  auto dir = scratch_dir("rel-sigterm");
  ServerProcess server;
  REQUIRE(
      server.start(dir, {"--model", default_model().string(), "--workers", "1", "--slow-tail-ms",
                         "50", "--queue", "64", "--max-in-flight-per-client", "64"}));
  constexpr int kClients = 8, kEach = 8;
  std::vector<std::unique_ptr<WireClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<WireClient>(server.endpoint()));
    send_burst(*clients.back(), 1, kEach);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto t0 = Clock::now();
  server.process().signal(SIGTERM);
  auto rc = server.process().wait(std::chrono::seconds(10));
  const double exit_s = std::chrono::duration<double>(Clock::now() - t0).count();
  REQUIRE(rc == 0);
  MESSAGE("server exited " << exit_s << " s after SIGTERM");
  CHECK(exit_s < 5.0);
  size_t ok = 0, refused = 0, other = 0;
  for (auto& c : clients) {
    auto replies = collect(*c, kEach, std::chrono::seconds(2));
    CHECK(replies.size() == kEach);
    std::set<uint64_t> ids;
    for (const auto& r : replies) {
      ids.insert(r.request_id());
      if (r.status() == wire::STATUS_OK)
        ++ok;
      else if (r.status() == wire::STATUS_SHUTTING_DOWN)
        ++refused;
      else
        ++other;
    }
    CHECK(ids.size() == replies.size());
  }
  MESSAGE(ok << " answered, " << refused << " refused as shutting down");
  CHECK(ok + refused == kClients * kEach);
  CHECK(other == 0);
  CHECK(ok >= 1);
  CHECK(refused >= 1);
  CHECK(server.log().find("stopped after") != std::string::npos);
}

TEST_CASE("a second SIGTERM while a shutdown waits for a tail shortens it - without an abort") {
  auto dir = scratch_dir("rel-sigterm-twice");
  ServerProcess server;
  // A tail that takes 3 s and a shutdown willing to wait 20 s for it.
  REQUIRE(server.start(dir, {"--model", default_model().string(), "--workers", "1",
                             "--slow-tail-ms", "3000", "--shutdown-timeout-ms", "20000"}));
  WireClient client(server.endpoint());
  send_burst(client, 1, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the tail is running
  server.process().signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto t0 = Clock::now();
  server.process().signal(SIGTERM);
  auto rc = server.process().wait(std::chrono::seconds(10));
  const double exit_s = std::chrono::duration<double>(Clock::now() - t0).count();
  REQUIRE(rc.has_value());
  MESSAGE("exit status " << *rc << ", " << exit_s << " s after the second SIGTERM");
  // Ended at once, without waiting for the tail (it ends the process with status 1: a tail was
  // still running), and not by an abort.
  CHECK(exit_s < 1.5);
  CHECK((*rc == 0 || *rc == 1));
  CHECK(server.log().find("still running") != std::string::npos);
}

TEST_CASE("a device over its in-flight limit gets BUSY at once and others are not affected") {
  auto dir = scratch_dir("rel-per-client");
  ObservedServer server;
  REQUIRE(server.start(
      dir, {"--workers", "1", "--slow-tail-ms", "100", "--max-in-flight-per-client", "3"}));
  WireClient greedy(server.process.endpoint());
  WireClient polite(server.process.endpoint());
  send_burst(greedy, 1, 10);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  send_burst(polite, 1000, 1);
  auto greedy_replies = collect(greedy, 10, std::chrono::seconds(10));
  REQUIRE(greedy_replies.size() == 10);
  size_t ok = 0, busy = 0;
  for (const auto& r : greedy_replies) {
    if (r.status() == wire::STATUS_OK) ++ok;
    if (r.status() == wire::STATUS_BUSY) {
      ++busy;
      CHECK(r.message().find("per-device limit") != std::string::npos);
    }
  }
  CHECK(ok == 3);
  CHECK(busy == 7);
  auto polite_reply = polite.receive(std::chrono::seconds(5));
  REQUIRE(polite_reply);
  CHECK(polite_reply->status() == wire::STATUS_OK);
  CHECK(server.metric("edgesplit_rejected_total{reason=\"client_in_flight_limit\"}") == 7);
}

TEST_CASE("a departed device's queued requests are dropped and not computed") {
  auto dir = scratch_dir("rel-gone");
  ObservedServer server;
  REQUIRE(server.start(
      dir, {"--workers", "1", "--slow-tail-ms", "100", "--max-in-flight-per-client", "64"}));
  {
    WireClient leaver(server.process.endpoint());
    send_burst(leaver, 1, 20);
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (server.metric("edgesplit_queue_length") < 15 && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE(server.metric("edgesplit_queue_length") >= 15);
    leaver.close();  // the TCP connection goes; nobody will read those 20 replies
  }
  // Were the queued jobs computed, the next device would wait ~2 s behind them.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  WireClient next(server.process.endpoint());
  const auto t0 = Clock::now();
  send_burst(next, 1, 1);
  auto r = next.receive(std::chrono::seconds(10));
  const double waited_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  REQUIRE(r);
  CHECK(r->status() == wire::STATUS_OK);
  MESSAGE("the next device waited " << waited_ms << " ms");
  CHECK(waited_ms < 1000);
  const double dropped = server.metric("edgesplit_dropped_disconnected_total");
  MESSAGE(dropped << " queued requests dropped");
  CHECK(dropped >= 15);
  CHECK(server.metric("edgesplit_clients_gone_total") >= 1);
}

TEST_CASE("hostile clients do not slow a good client down") {
  auto dir = scratch_dir("rel-hostile");
  ObservedServer server;
  REQUIRE(server.start(dir, {"--workers", "2", "--max-message-mb", "1"}));
  const std::string endpoint = server.process.endpoint();

  auto measure = [&](uint64_t first_id) {
    WireClient good(endpoint);
    std::vector<double> ms;
    for (int i = 0; i < 60; ++i) {
      const auto t0 = Clock::now();
      send_burst(good, first_id + static_cast<uint64_t>(i), 1);
      auto r = good.receive(std::chrono::seconds(5));
      REQUIRE(r);
      REQUIRE(r->status() == wire::STATUS_OK);
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    return percentile(ms, 50);
  };
  const double alone = measure(1);

  std::atomic<bool> stop{false};
  std::vector<std::thread> hostile;
  auto paced = [&](auto body) {
    hostile.emplace_back([&, body] {
      WireClient c(endpoint, 10);
      for (uint64_t i = 1; !stop.load(); ++i) {
        body(c, i);
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
  };
  const auto& f = facts();
  paced([](WireClient& c, uint64_t) { c.send_frames({"\xff\xfe garbage", "more garbage"}); });
  paced([&](WireClient& c, uint64_t i) {
    wire::Request req;
    req.set_request_id(i);
    req.mutable_hello()->set_version_major(transport::kProtocolMajor + 7);
    c.send(req);
  });
  paced([&](WireClient& c, uint64_t i) {
    c.send(infer_request(i, "sha256:not-this-model", kCut, {f.payload}), {f.payload});
  });
  paced([&](WireClient& c, uint64_t i) {
    std::string half = f.payload.substr(0, f.payload.size() / 2);
    c.send(infer_request(i, f.digest, kCut, {half}), {half});
  });
  paced([&](WireClient& c, uint64_t i) {
    std::string wrong = f.payload;
    wrong[wrong.size() / 2] ^= 0x55;  // a flipped payload byte: decodes, or fails, never crashes
    c.send(infer_request(i, f.digest, kCut, {wrong, wrong}), {wrong});  // and one frame short
  });
  // Oversize: ZeroMQ drops the connection (ZMQ_MAXMSGSIZE) before the message is buffered.
  hostile.emplace_back([&] {
    const std::string big(2 << 20, 'x');
    while (!stop.load()) {
      WireClient c(endpoint);
      c.send_frames({big});
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  // Never reads: sends valid requests as fast as the socket takes them, with a tiny receive queue.
  hostile.emplace_back([&] {
    WireClient c(endpoint, 1);
    for (uint64_t i = 1; !stop.load() && i <= 5000; ++i) {
      send_burst(c, i, 1);
      if (i % 100 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    while (!stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const double attacked = measure(100000);
  stop.store(true);
  for (auto& t : hostile) t.join();
  MESSAGE("good client p50: alone " << alone << " ms, with hostile clients " << attacked << " ms");
  CHECK(attacked < std::max(10 * alone, alone + 50.0));
  CHECK(server.process.process().running());
  const std::string text = http_get(server.http_port, "/metrics").body;
  CHECK(metric_value(text, "edgesplit_malformed_total") > 100);
  CHECK(metric_value(text, "edgesplit_replies_total{status=\"version_mismatch\"}") > 10);
  CHECK(metric_value(text, "edgesplit_replies_total{status=\"unknown_model\"}") > 10);
  CHECK(metric_value(text, "edgesplit_rejected_total{reason=\"client_in_flight_limit\"}") > 0);
  MESSAGE("unroutable replies (the device that never reads): " << metric_value(
              text, "edgesplit_unroutable_replies_total"));
}

TEST_CASE("load of 16 simulated devices for 3 s loses no reply and keeps memory bounded") {
  auto dir = scratch_dir("rel-load");
  ServerProcess server;
  REQUIRE(server.start(dir, {"--model", default_model().string(), "--workers", "2"}));
  const fs::path out = dir / "load.json";
  int rc =
      run_to_end({bin("edgesplit-load"), "--server", server.endpoint(), "--model",
                  default_model().string(), "--clients", "16", "--seconds", "3", "--in-flight", "2",
                  "--server-pid", std::to_string(server.process().pid()), "--output", out.string()},
                 dir / "load.out", dir / "load.err", std::chrono::seconds(60));
  INFO(read_file(dir / "load.err"));
  REQUIRE(rc == 0);
  json j = json::parse(read_file(out));
  MESSAGE(j.dump());
  CHECK(j["lost"] == 0);
  CHECK(j["sent"].get<uint64_t>() > 100);
  CHECK(j["answered"] == j["sent"]);
  CHECK(j["unknown_replies"] == 0);
  CHECK(j["replies"]["STATUS_OK"].get<uint64_t>() > 0);
  CHECK(j["server_rss_kb"]["max"].get<int64_t>() < 2 * 1024 * 1024);
}

TEST_CASE("kill -9 and restart on the same port answers every frame once and offloading resumes") {
  auto dir = scratch_dir("rel-restart");
  ServerProcess first;
  REQUIRE(first.start(dir, {"--model", default_model().string()}));
  const std::string endpoint = first.endpoint();
  const int loops = 400;  // long enough to outlast the outage and the device's retry backoff
  ChildProcess device;
  REQUIRE(device.start(
      {bin("edgesplit-device"), "--model", default_model().string(), "--input",
       default_samples().string(), "--server", endpoint, "--cut", std::to_string(kCut), "--bits",
       "8", "--loop", std::to_string(loops), "--in-flight", "2", "--timeout-ms", "300"},
      dir / "run.jsonl", dir / "run.err"));
  auto count_lines = [&](const std::string& needle) {
    std::string text = read_file(dir / "run.jsonl");
    size_t n = 0, pos = 0;
    while ((pos = text.find(needle, pos)) != std::string::npos) ++n, ++pos;
    return n;
  };
  auto deadline = Clock::now() + std::chrono::seconds(60);
  while (count_lines("\"completed\":\"server\"") < 30 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(count_lines("\"completed\":\"server\"") >= 30);
  first.process().signal(SIGKILL);
  REQUIRE(first.process().wait(std::chrono::seconds(5)).has_value());
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const size_t before = count_lines("\"completed\":\"server\"");

  ChildProcess second;
  const fs::path ep2 = dir / "endpoint2.txt";
  REQUIRE(second.start({bin("edgesplit-server"), "--model", default_model().string(), "--bind",
                        endpoint, "--endpoint-file", ep2.string()},
                       dir / "server2.out", dir / "server2.err"));
  deadline = Clock::now() + std::chrono::seconds(30);
  while (!fs::exists(ep2) && Clock::now() < deadline && second.running()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  INFO(read_file(dir / "server2.err"));
  REQUIRE(fs::exists(ep2));
  const auto restarted = Clock::now();
  std::optional<double> back_after_s;
  while (device.running() && Clock::now() < restarted + std::chrono::seconds(60)) {
    if (count_lines("\"completed\":\"server\"") > before) {
      back_after_s = std::chrono::duration<double>(Clock::now() - restarted).count();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto rc = device.wait(std::chrono::seconds(300));
  REQUIRE(rc == 0);
  second.signal(SIGTERM);
  CHECK(second.wait(std::chrono::seconds(15)) == 0);

  std::istringstream lines(read_file(dir / "run.jsonl"));
  std::string line;
  std::set<int64_t> ids;
  size_t frames = 0, on_server = 0, local = 0;
  json summary;
  while (std::getline(lines, line)) {
    json j = json::parse(line);
    if (j["type"] == "summary") summary = j;
    if (j["type"] != "frame") continue;
    ++frames;
    ids.insert(j["frame"].get<int64_t>());
    (j["completed"] == "server" ? on_server : local) += 1;
  }
  size_t samples = 0;
  for (const auto& e : fs::directory_iterator(default_samples())) {
    samples += e.path().extension() == ".png";
  }
  const size_t expected = static_cast<size_t>(loops) * samples;
  CHECK(frames == expected);
  CHECK(ids.size() == frames);
  CHECK(local >= 1);
  CHECK(summary["frames"] == frames);
  CHECK(summary["on_server"] == on_server);
  CHECK(summary["local"] == local);
  REQUIRE_MESSAGE(back_after_s.has_value(),
                  "the device did not offload again within 60 s of the restart; its log:\n"
                      << read_file(dir / "run.err"));
  MESSAGE("offloading resumed " << *back_after_s << " s after the restarted server listened; "
                                << on_server << " frames on the server, " << local << " local");
  CHECK(on_server > before);
}

TEST_CASE("CURVE with an allow-list serves only a listed device key") {
  auto dir = scratch_dir("rel-curve");
  for (const char* who : {"server", "allowed", "stranger"}) {
    REQUIRE(run_to_end({bin("edgesplit-keygen"), (dir / who).string()}, dir / "keygen.out",
                       dir / "keygen.err") == 0);
  }
  {
    std::ofstream allow(dir / "allow.txt");
    allow << "# devices allowed\n" << read_file(dir / "allowed.pub");
  }
  ObservedServer server;
  REQUIRE(server.start(dir, {"--curve-secret", (dir / "server.key").string(), "--allow-keys",
                             (dir / "allow.txt").string()}));
  auto run = [&](const std::string& tag, std::vector<std::string> extra) {
    std::vector<std::string> argv = {bin("edgesplit-device"),
                                     "--model",
                                     default_model().string(),
                                     "--input",
                                     default_samples().string(),
                                     "--server",
                                     server.process.endpoint(),
                                     "--cut",
                                     std::to_string(kCut),
                                     "--max-frames",
                                     "5",
                                     "--timeout-ms",
                                     "300",
                                     "--in-flight",
                                     "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    int rc = run_to_end(argv, dir / (tag + ".jsonl"), dir / (tag + ".err"));
    REQUIRE(rc == 0);
    std::istringstream lines(read_file(dir / (tag + ".jsonl")));
    std::string line;
    json summary;
    while (std::getline(lines, line)) {
      json j = json::parse(line);
      if (j["type"] == "summary") summary = j;
    }
    return summary;
  };
  const std::string server_pub = (dir / "server.pub").string();
  auto allowed =
      run("allowed", {"--server-key", server_pub, "--key", (dir / "allowed.key").string()});
  CHECK(allowed["on_server"] == 5);
  // The server drops a handshake it denies without a word: the unlisted devices below wait out
  // their handshake timeout (short here, on loopback) and run every frame themselves.
  auto stranger =
      run("stranger", {"--server-key", server_pub, "--key", (dir / "stranger.key").string(),
                       "--handshake-timeout-ms", "500"});
  CHECK(stranger["on_server"] == 0);
  CHECK(stranger["local"] == 5);
  auto plain = run("plain", {"--handshake-timeout-ms", "500"});
  CHECK(plain["on_server"] == 0);
  CHECK(plain["local"] == 5);
  auto ephemeral = run("ephemeral", {"--server-key", server_pub, "--handshake-timeout-ms",
                                     "500"});  // a fresh, unlisted key
  CHECK(ephemeral["on_server"] == 0);
  CHECK(server.metric("edgesplit_zap_total{outcome=\"denied\"}") >= 2);
  CHECK(server.metric("edgesplit_zap_total{outcome=\"accepted\"}") >= 1);
  CHECK(server.metric("edgesplit_curve_enabled") == 1);
}

// --- Dynamic batching, deadlines and priorities (server/batcher.h) ---

namespace {

// Runs edgesplit-load against `server` with `args` and returns its JSON result.
json run_load(const fs::path& dir, const std::string& endpoint, std::vector<std::string> args) {
  const fs::path out = dir / "load.json";
  std::vector<std::string> argv = {bin("edgesplit-load"),    "--server", endpoint,    "--model",
                                   default_model().string(), "--output", out.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  const int rc = run_to_end(argv, dir / "load.out", dir / "load.err", std::chrono::seconds(90));
  INFO(read_file(dir / "load.err"));
  REQUIRE(rc == 0);
  json j = json::parse(read_file(out));
  MESSAGE(j.dump());
  return j;
}

uint64_t count_of(const json& j, const std::string& status) {
  return j["replies"].contains(status) ? j["replies"][status].get<uint64_t>() : 0;
}

}  // namespace

TEST_CASE("a batching server answers devices at two cuts once each, in batches") {
  auto dir = scratch_dir("rel-batching");
  ObservedServer server;
  // Room for every request: a slow spell of the host must not turn them into BUSY replies.
  REQUIRE(server.start(dir, {"--max-batch", "8", "--max-queue-delay-us", "5000", "--queue", "4096",
                             "--max-in-flight-per-client", "1024"}));
  json j = run_load(dir, server.process.endpoint(),
                    {"--clients", "8", "--cut", "1,2", "--rate", "600", "--seconds", "3"});
  CHECK(j["lost"] == 0);
  CHECK(j["answered"] == j["sent"]);
  CHECK(j["unknown_replies"] == 0);
  CHECK(count_of(j, "STATUS_OK") == j["sent"].get<uint64_t>());
  CHECK(j["mean_batch_size"].get<double>() > 1.5);
  const double runs = server.metric("edgesplit_batch_size_count");
  const double alone = server.metric("edgesplit_batch_size_bucket{le=\"1\"}");
  CHECK(runs > 0);
  CHECK(alone < runs);  // some tails ran more than one request
  CHECK(server.metric("edgesplit_batch_size_sum") == doctest::Approx(count_of(j, "STATUS_OK")));
  // The server's compute time by cut and batch size: both cuts, every OK reply once, the same
  // replies per size as batch_size_replies, and the time per request is the batch's over its size.
  const json& compute = j["compute_by_batch"];
  CHECK(compute.contains("1"));
  CHECK(compute.contains("2"));
  std::map<std::string, uint64_t> per_size;
  uint64_t counted = 0;
  for (const auto& [cut, sizes] : compute.items()) {
    for (const auto& [size, c] : sizes.items()) {
      const uint64_t n = c["replies"].get<uint64_t>();
      per_size[size] += n;
      counted += n;
      CHECK(c["batch_ms"].get<double>() > 0);
      CHECK(c["row_ms"].get<double>() ==
            doctest::Approx(c["batch_ms"].get<double>() / std::stod(size)));
    }
  }
  CHECK(counted == count_of(j, "STATUS_OK"));
  for (const auto& [size, n] : j["batch_size_replies"].items()) {
    CHECK(per_size[size] == n.get<uint64_t>());
  }
}

TEST_CASE("a batching server keeps a batch's large tensors for the next one, unless told not to") {
  const fs::path mobilenet = shared_mobilenet();
  if (mobilenet.empty()) {
    MESSAGE("skipped: ../shared/models/mobilenet_v2_imagenet is absent");
    return;
  }
  // Warm-up runs MobileNetV2 whole at batch 8 twice: its early activations (8 x 96 x 112 x 112
  // floats, 38.5 MiB) are large tensors; the second run reuses the first's.
  for (const std::string limit : {"", "0"}) {
    CAPTURE(limit);
    auto dir = scratch_dir("rel-tensor-cache" + limit);
    ObservedServer server;
    std::vector<std::string> extra = {"--model", mobilenet.string(), "--max-batch", "8"};
    if (!limit.empty()) extra.insert(extra.end(), {"--tensor-cache", limit});
    REQUIRE(server.start(dir, extra));
    auto deadline = Clock::now() + std::chrono::seconds(120);
    while (server.metric("edgesplit_ready") != 1 && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    REQUIRE(server.metric("edgesplit_ready") == 1);
    const double hits = server.metric("edgesplit_tensor_cache_requests_total{result=\"hit\"}");
    const double misses = server.metric("edgesplit_tensor_cache_requests_total{result=\"miss\"}");
    const double kept = server.metric("edgesplit_tensor_cache_bytes");
    const double most = server.metric("edgesplit_tensor_cache_limit_bytes");
    CHECK(misses > 0);
    if (limit.empty()) {
      CHECK(most == 1024.0 * 1024 * 1024);
      CHECK(hits > 0);
      CHECK(kept > 0);
      CHECK(kept <= most);
    } else {
      CHECK(most == 0);
      CHECK(hits == 0);
      CHECK(kept == 0);
    }
  }
}

TEST_CASE("a request whose deadline cannot be met is not computed, and no reply comes after it") {
  auto dir = scratch_dir("rel-deadline");
  ObservedServer server;
  // One worker, 100 ms per tail, 4 devices at 20 requests/s each: the queue grows past what a
  // 250 ms deadline allows.
  REQUIRE(server.start(dir, {"--slow-tail-ms", "100", "--workers", "1"}));
  json j = run_load(dir, server.process.endpoint(),
                    {"--clients", "4", "--rate", "80", "--seconds", "3", "--deadline-ms", "250",
                     "--deadline-margin-ms", "25"});
  CHECK(j["lost"] == 0);
  CHECK(j["late_ok"] == 0);  // no result after its deadline
  const uint64_t ok = count_of(j, "STATUS_OK");
  const uint64_t expired = count_of(j, "STATUS_DEADLINE_EXCEEDED");
  CHECK(ok > 5);
  CHECK(expired > 20);
  // Every tail that ran was answered OK or dropped as late: expired requests never ran.
  const double late = server.metric("edgesplit_late_dropped_total");
  CHECK(server.metric("edgesplit_batches_total") ==
        doctest::Approx(static_cast<double>(ok) + late));
  CHECK(server.metric("edgesplit_expired_total") >= static_cast<double>(expired));
  CHECK(j["answered"].get<uint64_t>() + j["unanswered_by_deadline"].get<uint64_t>() ==
        j["sent"].get<uint64_t>());
  // Once a tail's time is known, a request arriving behind more than a tail's worth of queue
  // (225 ms - 100 ms) is refused on arrival: most expired replies come at once, not after waiting
  // in the queue until only a tail's time was left.
  const double at_arrival = server.metric("edgesplit_expired_at_arrival_total");
  CHECK(at_arrival >= 0.8 * static_cast<double>(expired));
  CHECK(j["expired_reply_ms"]["p50"].get<double>() < 25.0);
  // With --expire-at-arrival off they wait: about 225 - 100 ms each.
  fs::create_directories(dir / "off");
  ObservedServer off;
  REQUIRE(off.start(dir / "off",
                    {"--slow-tail-ms", "100", "--workers", "1", "--expire-at-arrival", "off"}));
  json k = run_load(dir / "off", off.process.endpoint(),
                    {"--clients", "4", "--rate", "80", "--seconds", "3", "--deadline-ms", "250",
                     "--deadline-margin-ms", "25"});
  CHECK(k["late_ok"] == 0);
  CHECK(count_of(k, "STATUS_DEADLINE_EXCEEDED") > 20);
  CHECK(off.metric("edgesplit_expired_at_arrival_total") == 0);
  CHECK(k["expired_reply_ms"]["p50"].get<double>() > 80.0);
}

TEST_CASE("a higher priority class is served first and a lower one shed under overload") {
  auto dir = scratch_dir("rel-priority");
  ObservedServer server;
  // 20 ms per tail (50/s); class 1 offers 40/s, class 0 another 40/s; a short queue.
  REQUIRE(server.start(dir, {"--slow-tail-ms", "20", "--workers", "1", "--queue", "4"}));
  json j = run_load(dir, server.process.endpoint(),
                    {"--clients", "8", "--priority", "0,1", "--rate", "80", "--seconds", "4"});
  CHECK(j["lost"] == 0);
  const auto ok_of = [&](const char* p) {
    const json& r = j["by_priority"][p]["replies"];
    return r.contains("STATUS_OK") ? r["STATUS_OK"].get<double>() : 0.0;
  };
  const double high = ok_of("1"), low = ok_of("0");
  CHECK(high > 1.5 * low);
  CHECK(server.metric("edgesplit_rejected_total{reason=\"shed_for_priority\"}") > 0);
}

TEST_CASE(
    "a device told its deadline cannot be met finishes the frame at once, not at its timeout") {
  auto dir = scratch_dir("rel-device-deadline");
  ServerProcess server;
  // Every tail takes 400 ms; the device gives the server 300 ms. Once the server has seen one
  // tail take that long, it answers DEADLINE_EXCEEDED at once instead of computing.
  REQUIRE(server.start(
      dir, {"--model", default_model().string(), "--slow-tail-ms", "400", "--workers", "1"}));
  ChildProcess device;
  REQUIRE(device.start(
      {bin("edgesplit-device"), "--model", default_model().string(), "--input",
       default_samples().string(), "--server", server.endpoint(), "--cut", std::to_string(kCut),
       "--bits", "8", "--loop", "2", "--in-flight", "1", "--timeout-ms", "300"},
      dir / "run.jsonl", dir / "run.err"));
  REQUIRE(device.wait(std::chrono::seconds(120)) == 0);
  std::istringstream lines(read_file(dir / "run.jsonl"));
  std::string line;
  std::set<int64_t> ids;
  size_t frames = 0, told = 0;
  std::vector<double> told_latency;
  while (std::getline(lines, line)) {
    json j = json::parse(line);
    if (j["type"] != "frame") continue;
    ++frames;
    ids.insert(j["frame"].get<int64_t>());
    if (j.value("reason", "") == "server deadline exceeded") {
      ++told;
      told_latency.push_back(j["latency_ms"].get<double>());
    }
  }
  INFO(read_file(dir / "run.err"));
  CHECK(frames == ids.size());
  size_t samples = 0;
  for (const auto& e : fs::directory_iterator(default_samples())) {
    samples += e.path().extension() == ".png";
  }
  CHECK(frames == 2 * samples);
  CHECK(told + 3 >= frames);  // all but the first few, which time out while the server learns
  // Told at once: well before the 300 ms timeout (the local tail of this model takes a few ms).
  REQUIRE_FALSE(told_latency.empty());
  CHECK(percentile(told_latency, 50) < 150);
  server.process().signal(SIGTERM);
  CHECK(server.process().wait(std::chrono::seconds(15)) == 0);
}

TEST_CASE("a device refused on arrival plans with the queue wait the refusal carries") {
  auto dir = scratch_dir("rel-device-wait");
  ServerProcess server;
  REQUIRE(server.start(
      dir, {"--model", default_model().string(), "--slow-tail-ms", "100", "--workers", "1"}));
  // The energy objective with a device whose compute costs far more than waiting: every plan the
  // scheduler picks sends the frame, whatever the server's queue.
  std::ofstream(dir / "power.json")
      << R"({"compute_watts": 1000, "radio_watts": 0.001, "idle_watts": 0.001})";
  const std::string power = (dir / "power.json").string();
  std::vector<std::string> argv = {
      bin("edgesplit-device"),    "--model",  default_model().string(), "--input",
      default_samples().string(), "--server", server.endpoint()};
  for (const char* a : {"--objective", "energy", "--max-accuracy-drop", "none", "--loop", "0",
                        "--fps", "5", "--max-frames", "40", "--timeout-ms", "250"}) {
    argv.push_back(a);
  }
  argv.insert(argv.end(), {"--device-power", power});
  ChildProcess device;
  REQUIRE(device.start(argv, dir / "run.jsonl", dir / "run.err"));
  // After the device's first five frames, 8 simulated devices keep about 8 requests queued ahead of
  // its own (800 ms at 100 ms a tail) for 3 s: each of its requests is refused on arrival, and only
  // the refusal tells it how long the queue is (its own requests are never answered OK meanwhile,
  // and a stream whose plan sends does not ping for the wait).
  const auto frames_so_far = [&] {
    const std::string text = read_file(dir / "run.jsonl");
    size_t n = 0;
    for (size_t at = text.find("\"type\":\"frame\""); at != std::string::npos;
         at = text.find("\"type\":\"frame\"", at + 1)) {
      ++n;
    }
    return n;
  };
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (frames_so_far() < 5 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  run_load(dir, server.endpoint(), {"--clients", "8", "--rate", "0", "--seconds", "3"});
  REQUIRE(device.wait(std::chrono::seconds(120)) == 0);
  INFO(read_file(dir / "run.err"));
  std::istringstream lines(read_file(dir / "run.jsonl"));
  std::string line;
  size_t refused = 0, remote = 0;
  double queue_after_refusal = 0;
  while (std::getline(lines, line)) {
    json j = json::parse(line);
    if (j["type"] != "frame") continue;
    remote += j["plan"]["encoding"] != "local";
    if (refused > 0 && j.contains("conditions")) {
      queue_after_refusal =
          std::max(queue_after_refusal, j["conditions"]["server_queue_ms"].get<double>());
    }
    refused += j.value("reason", "") == "server deadline exceeded";
  }
  CHECK(remote >= 35);
  REQUIRE(refused >= 3);
  // The wait the refusals carried (about 800 ms) is the queue the next plans are made with.
  CHECK(queue_after_refusal > 300);
  server.process().signal(SIGTERM);
  CHECK(server.process().wait(std::chrono::seconds(15)) == 0);
}

TEST_CASE("with CURVE the in-flight limit counts per device key, not per connection") {
  auto dir = scratch_dir("rel-curve-key-limit");
  for (const char* who : {"server", "device"}) {
    REQUIRE(run_to_end({bin("edgesplit-keygen"), (dir / who).string()}, dir / "keygen.out",
                       dir / "keygen.err") == 0);
  }
  ObservedServer server;
  // 300 ms per tail and one worker: requests stay in flight; each device may hold 2.
  REQUIRE(server.start(dir, {"--curve-secret", (dir / "server.key").string(), "--slow-tail-ms",
                             "300", "--workers", "1", "--max-in-flight-per-client", "2"}));
  const std::string server_pub = (dir / "server.pub").string();
  // Four connections with four keys, 2 in flight each: within every device's limit.
  json distinct = run_load(
      dir, server.process.endpoint(),
      {"--clients", "4", "--in-flight", "2", "--seconds", "2", "--server-key", server_pub});
  CHECK(count_of(distinct, "STATUS_BUSY") == 0);
  const double refused_before =
      server.metric("edgesplit_rejected_total{reason=\"client_in_flight_limit\"}");
  // The same four connections under one device key: 2 in flight for all of them together.
  json shared = run_load(dir, server.process.endpoint(),
                         {"--clients", "4", "--in-flight", "2", "--seconds", "2", "--server-key",
                          server_pub, "--key", (dir / "device.key").string()});
  CHECK(count_of(shared, "STATUS_BUSY") > 0);
  CHECK(count_of(shared, "STATUS_OK") > 0);
  CHECK(shared["lost"] == 0);
  CHECK(server.metric("edgesplit_rejected_total{reason=\"client_in_flight_limit\"}") >
        refused_before);
  CHECK(server.metric("edgesplit_zap_total{outcome=\"accepted\"}") >= 8);
}

// --- Memory under peers that send large messages as fast as they can ---

namespace {

// A field of /proc/PID/status in KiB (VmRSS, VmHWM); -1 when the process or the field is gone.
int64_t proc_status_kb(pid_t pid, const std::string& field) {
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return -1;
}

}  // namespace

TEST_CASE("peers flooding large messages leave the server's memory within its byte budget") {
  if (kResidentMemorySkip != nullptr) {
    MESSAGE(std::string(kResidentMemorySkip));
    return;
  }
  auto dir = scratch_dir("rel-memory");
  ObservedServer server;
  // Slow tails fill the queue; a slow I/O thread lets ZeroMQ's per-connection queues fill too.
  constexpr int64_t kBudgetMiB = 64, kMessageMiB = 8;
  constexpr size_t kPayload = size_t{4} << 20;  // each flood message: 4 MiB
  constexpr int kPeers = 4;
  REQUIRE(
      server.start(dir, {"--workers", "1", "--slow-tail-ms", "100", "--slow-io-us", "5000",
                         "--max-message-mb", std::to_string(kMessageMiB), "--max-queued-bytes",
                         std::to_string(kBudgetMiB) + "M", "--max-in-flight-per-client", "64"}));
  const pid_t pid = server.process.process().pid();
  const std::string endpoint = server.process.endpoint();
  const auto& f = facts();

  // The good device: one request at a time in a higher priority class, so it does not wait
  // behind the flood's tails.
  WireClient good(endpoint);
  uint64_t good_id = 1;
  size_t good_ok = 0, good_other = 0;
  std::vector<Clock::time_point> good_ok_at;
  auto good_round = [&] {
    wire::Request req = infer_request(good_id++, f.digest, kCut, {f.payload});
    req.mutable_infer()->set_priority(1);
    good.send(req, {f.payload});
    auto r = good.receive(std::chrono::seconds(5));
    if (r && r->status() == wire::STATUS_OK) {
      ++good_ok;
      good_ok_at.push_back(Clock::now());
    } else {
      ++good_other;
      MESSAGE("good device: " << (r ? wire::Status_Name(r->status()) + " " + r->message()
                                    : std::string("no reply within 5 s")));
    }
  };
  good_round();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int64_t base_kb = proc_status_kb(pid, "VmRSS");
  const int64_t hwm_before_kb = proc_status_kb(pid, "VmHWM");
  REQUIRE(base_kb > 0);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> sent{0}, busy{0}, replies{0};
  std::vector<std::thread> peers;
  for (int p = 0; p < kPeers; ++p) {
    peers.emplace_back([&] {
      zmq::context_t ctx;
      zmq::socket_t s(ctx, zmq::socket_type::dealer);
      s.set(zmq::sockopt::linger, 0);
      s.set(zmq::sockopt::sndhwm, 2);  // the flood waits in the server, not in this process
      s.connect(endpoint);
      const std::string payload(kPayload, '\x5a');
      for (uint64_t i = 1; !stop.load(); ++i) {
        const std::string header = infer_request(i, f.digest, kCut, {payload}).SerializeAsString();
        bool queued = false;
        while (!queued && !stop.load()) {
          zmq::message_t h(header.data(), header.size()), body(payload.data(), payload.size());
          queued = s.send(h, zmq::send_flags::sndmore | zmq::send_flags::dontwait).has_value();
          if (queued) {
            (void)s.send(body, zmq::send_flags::none);
          } else {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
          zmq::message_t m;
          while (s.recv(m, zmq::recv_flags::dontwait)) {
            wire::Reply r;
            if (r.ParseFromArray(m.data(), static_cast<int>(m.size()))) {
              ++replies;
              if (r.status() == wire::STATUS_BUSY) ++busy;
            }
          }
        }
        if (queued) ++sent;
      }
    });
  }
  // The flood runs for 5 s; the RSS is sampled every 20 ms meanwhile and the good device keeps
  // asking.
  std::atomic<int64_t> sampled_peak_kb{base_kb};
  std::thread sampler([&] {
    while (!stop.load()) {
      const int64_t kb = proc_status_kb(pid, "VmRSS");
      if (kb > sampled_peak_kb.load()) sampled_peak_kb.store(kb);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  const auto t0 = Clock::now();
  const size_t ok_before = good_ok_at.size();
  double queued_bytes_max = 0;
  while (Clock::now() - t0 < std::chrono::seconds(5)) {
    good_round();
    queued_bytes_max = std::max(queued_bytes_max, server.metric("edgesplit_queued_bytes"));
  }
  const auto t1 = Clock::now();
  // The longest the good device went without an OK reply during the flood.
  double longest_gap_s = 0;
  Clock::time_point last = t0;
  for (size_t i = ok_before; i < good_ok_at.size(); ++i) {
    longest_gap_s =
        std::max(longest_gap_s, std::chrono::duration<double>(good_ok_at[i] - last).count());
    last = good_ok_at[i];
  }
  longest_gap_s = std::max(longest_gap_s, std::chrono::duration<double>(t1 - last).count());
  stop.store(true);
  for (auto& t : peers) t.join();
  sampler.join();
  const int64_t hwm_kb = proc_status_kb(pid, "VmHWM");
  std::this_thread::sleep_for(std::chrono::seconds(2));  // the queue drains, the peers are gone
  const int64_t after_kb = proc_status_kb(pid, "VmRSS");
  good_round();  // still served once the flood is over
  const std::string text = http_get(server.http_port, "/metrics").body;
  const double refused_memory = metric_value(text, "edgesplit_rejected_total{reason=\"memory\"}");

  // What ZeroMQ may hold per connection before it stops reading it: as many whole messages as
  // the budget has room for at the largest size (receive_hwm), and the one being read.
  const int64_t hwm_messages = std::max<int64_t>(1, kBudgetMiB / kMessageMiB);
  const int64_t zmq_allowance_kb =
      kPeers * (hwm_messages + 1) * static_cast<int64_t>(kPayload >> 10);
  const int64_t slack_kb = 64 * 1024;  // decode buffers, the message in hand, allocator slack
  const int64_t bound_kb = base_kb + kBudgetMiB * 1024 + zmq_allowance_kb + slack_kb;
  MESSAGE("server RSS: before " << base_kb / 1024 << " MiB (peak so far " << hwm_before_kb / 1024
                                << " MiB), peak during the flood " << hwm_kb / 1024
                                << " MiB (sampled " << sampled_peak_kb.load() / 1024
                                << " MiB), after " << after_kb / 1024 << " MiB; budget "
                                << kBudgetMiB << " MiB, bound " << bound_kb / 1024
                                << " MiB (before + budget + ZeroMQ's " << zmq_allowance_kb / 1024
                                << " MiB + " << slack_kb / 1024 << " MiB slack)");
  MESSAGE(kPeers << " peers sent " << sent.load() << " messages of " << (kPayload >> 20) << " MiB ("
                 << (sent.load() * kPayload >> 20) << " MiB), " << busy.load() << " answered BUSY, "
                 << refused_memory << " refused for memory; queued bytes at "
                 << "most " << static_cast<int64_t>(queued_bytes_max) / 1024
                 << " KiB seen; the good device had " << good_ok << " OK replies, " << good_other
                 << " others, at most " << longest_gap_s << " s apart");
  CHECK(hwm_before_kb < bound_kb);  // the bound says something: startup stayed below it
  CHECK(hwm_kb <= bound_kb);
  CHECK(sampled_peak_kb.load() <= bound_kb);
  CHECK(queued_bytes_max <= static_cast<double>(kBudgetMiB << 20));
  CHECK(sent.load() * kPayload > (size_t{4} * kBudgetMiB << 20));  // the flood was a flood
  CHECK(refused_memory > 0);
  CHECK(good_other == 0);
  CHECK(good_ok >= 5);
  CHECK(longest_gap_s < 2.5);  // served throughout the flood
  CHECK(server.process.process().running());
  CHECK(metric_value(text, "edgesplit_queued_bytes_limit") ==
        static_cast<double>(kBudgetMiB << 20));
}

// --- A peer that resets its connection while ZeroMQ has stopped reading it ---

namespace {

// Peers that each send `message_bytes` messages until the
// kernel refuses more (the server's ZeroMQ has stopped reading them), then reset their
// connections, `rounds` times, against a server whose I/O thread is slow and whose receive
// high-water mark is 2 messages. The server must survive every round and still answer a device.
void flood_and_reset(const std::string& name, size_t message_bytes) {
  auto dir = scratch_dir(name);
  ObservedServer server;
  // --max-queued-bytes 16M over --max-message-mb 8: a receive high-water mark of 2 messages.
  REQUIRE(server.start(dir, {"--workers", "1", "--slow-io-us", "500000", "--max-message-mb", "8",
                             "--max-queued-bytes", "16M", "--log-level", "debug"}));
  const std::string endpoint = server.process.endpoint();
  const int port = std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
  const auto& f = facts();
  WireClient good(endpoint);
  uint64_t good_id = 1;
  auto good_ok = [&] {
    const uint64_t id = good_id++;
    good.send(infer_request(id, f.digest, kCut, {f.payload}), {f.payload});
    for (auto deadline = Clock::now() + std::chrono::seconds(20); Clock::now() < deadline;) {
      auto r = good.receive(std::chrono::seconds(1));
      if (r && r->request_id() == id) return r->status() == wire::STATUS_OK;
    }
    return false;
  };
  REQUIRE(good_ok());

  constexpr int kPeers = 4, kRounds = 3;
  int refused = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::unique_ptr<RawZmtpPeer>> peers;
    for (int p = 0; p < kPeers; ++p) peers.push_back(std::make_unique<RawZmtpPeer>(port));
    for (auto& peer : peers) {
      for (auto give_up = Clock::now() + std::chrono::seconds(5); Clock::now() < give_up;) {
        peer->drain();
        if (!peer->try_send_message(message_bytes)) {
          ++refused;
          break;
        }
      }
    }
    for (auto& peer : peers) peer->reset();
    // The I/O thread reads one message every 0.5 s, from each connection in turn, so ZeroMQ
    // goes on holding most of these connections for over a second after their reset: long enough
    // for a 1 s heartbeat timer to fire on them.
    std::this_thread::sleep_for(std::chrono::milliseconds(3000));
    INFO("round " << round << ", server log (tail):\n"
                  << [&] {
                       const std::string log = server.process.log();
                       return log.substr(log.size() > 3000 ? log.size() - 3000 : 0);
                     }());
    REQUIRE(server.process.process().running());
  }
  MESSAGE(refused << " of " << kPeers * kRounds
                  << " peers were refused by the kernel before they reset");
  CHECK(refused > 0);  // the case did what it says: some connection's input was stopped
  CHECK(good_ok());
  CHECK(server.process.process().running());
  // The good device's connection alone: the peers' close once ZeroMQ reads their resets, which
  // this I/O thread (one message per 0.5 s) may reach after the last round's wait, later still
  // under a sanitizer.
  double connections = -1;
  for (auto deadline = Clock::now() + std::chrono::seconds(30); Clock::now() < deadline;) {
    connections = server.metric("edgesplit_connections");
    if (connections == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  CHECK(connections == 1);
}

}  // namespace

TEST_CASE(
    "peers that flood until ZeroMQ stops reading them and then reset do not stop the server") {
  flood_and_reset("rel-flood-reset", size_t{1} << 20);
}
