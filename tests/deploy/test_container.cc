// The server image (docker/Dockerfile, built by docker/build.sh with podman): it builds, refuses
// to start without a CURVE key unless told to serve plaintext, runs as a non-root user on a
// read-only root file system with its key mounted, reports healthy through its HEALTHCHECK and
// /healthz, /readyz, serves a device on the host (with the server's public key) with the native
// device's top-1 classes, and exits cleanly on SIGTERM. Then the Kubernetes Deployment of
// docker/k8s run by `podman kube play`: both replicas come up, each on its own ports, answer
// /readyz, pass their liveness probe, serve a device each with the key they share, and a Prometheus
// server scrapes both. Skipped with a message where podman is not installed.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/integration/child_process.h"
#include "tests/integration/http_client.h"
#include "tests/integration/prometheus_server.h"
#include "tests/test_paths.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace edgesplit::testing;

namespace {

const char* kImage = "localhost/edgesplit-server:latest";

fs::path default_model() { return source_dir() / "models" / "default" / "fashion_mnist_cnn.pt"; }
fs::path default_samples() { return source_dir() / "models" / "default" / "samples"; }

size_t sample_count() {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(default_samples()))
    n += e.path().extension() == ".png";
  return n;
}
std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

struct Output {
  int rc = -1;
  std::string out, err;
};

// Runs argv to the end; its exit code and output.
Output capture(const std::vector<std::string>& argv, const fs::path& dir, const std::string& tag,
               std::chrono::seconds timeout = std::chrono::seconds(120)) {
  Output o;
  o.rc = run_to_end(argv, dir / (tag + ".out"), dir / (tag + ".err"), timeout);
  o.out = read_file(dir / (tag + ".out"));
  o.err = read_file(dir / (tag + ".err"));
  return o;
}

std::vector<json> frames(const std::string& jsonl) {
  std::vector<json> out;
  std::istringstream lines(jsonl);
  std::string line;
  while (std::getline(lines, line)) {
    json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.value("type", "") == "frame") out.push_back(j);
  }
  return out;
}

// The status code of GET path on 127.0.0.1:port, or 0 when there is no answer.
int http_status(int port, const std::string& path) {
  return http_get("127.0.0.1", port, path, 2).status;
}

// Removes the container when the test ends, whatever happened.
struct ContainerGuard {
  std::string podman, name;
  fs::path dir;
  ~ContainerGuard() { capture({podman, "rm", "-f", "-t", "2", name}, dir, "rm"); }
};

// Takes the pods of a `podman kube play` down when the test ends, whatever happened.
struct KubeGuard {
  std::string podman;
  fs::path manifest, dir;
  ~KubeGuard() { capture({podman, "kube", "down", manifest.string()}, dir, "kube-down"); }
};

// Server and device CURVE keys in dir/keys (edgesplit-keygen), the server's secret key readable
// by the container's user (uid 10001).
fs::path make_keys(const fs::path& dir) {
  const fs::path keys = dir / "keys";
  fs::create_directories(keys);
  for (const char* who : {"server", "device"}) {
    Output made = capture({(bin_dir() / "edgesplit-keygen").string(), (keys / who).string()}, dir,
                          std::string("keygen-") + who);
    REQUIRE_MESSAGE(made.rc == 0, made.err);
  }
  fs::permissions(keys / "server.key",
                  fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  return keys;
}

// Runs a device on the host against `endpoint` (with the server's public key and its own key)
// and the whole model locally: every frame completed by the server, with the local top-1.
void check_device_served(const fs::path& dir, const std::string& tag, const std::string& endpoint,
                         const fs::path& keys) {
  const std::string device = (bin_dir() / "edgesplit-device").string();
  std::vector<std::string> common = {device, "--model", default_model().string(), "--input",
                                     default_samples().string()};
  for (const char* flag : {"--in-flight", "1", "--quiet"}) common.push_back(flag);
  auto with = [&](std::vector<std::string> extra) {
    auto a = common;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  Output local = capture(with({"--cut", "device"}), dir, tag + "-local");
  Output split =
      capture(with({"--server", endpoint, "--cut", "8", "--bits", "4", "--lossless", "zstd",
                    "--timeout-ms", "5000", "--server-key", (keys / "server.pub").string(), "--key",
                    (keys / "device.key").string()}),
              dir, tag + "-split");
  REQUIRE_MESSAGE(local.rc == 0, local.err);
  REQUIRE_MESSAGE(split.rc == 0, split.err);
  auto lf = frames(local.out), sf = frames(split.out);
  REQUIRE(lf.size() == sample_count());
  REQUIRE(sf.size() == lf.size());
  for (size_t i = 0; i < sf.size(); ++i) {
    CAPTURE(i);
    CHECK(sf[i]["completed"] == "server");
    CHECK(sf[i]["top"][0]["index"] == lf[i]["top"][0]["index"]);
  }
}

}  // namespace

TEST_CASE("server container: build - health - a host device against it - clean stop") {
  const std::string podman = EDGESPLIT_PODMAN;
  if (podman.empty() || !fs::exists(podman)) {
    MESSAGE("skipped: podman is not installed (apt-get install podman runc debootstrap)");
    return;
  }
  ::setenv("CONTAINERS_CONF", (source_dir() / "docker" / "containers.conf").c_str(), 0);
  auto dir = scratch_dir("container");

  auto t0 = std::chrono::steady_clock::now();
  Output build =
      capture({"/bin/bash", (source_dir() / "docker" / "build.sh").string(), "--server-only"}, dir,
              "build", std::chrono::seconds(5400));
  auto t1 = std::chrono::steady_clock::now();
  REQUIRE_MESSAGE(build.rc == 0, build.err);
  MESSAGE("docker/build.sh --server-only: " << std::chrono::duration<double>(t1 - t0).count()
                                            << " s");

  // CURVE is the image's default: without a key (and without EDGESPLIT_PLAINTEXT=1) the server
  // does not start, and says why in one sentence.
  Output keyless = capture({podman, "run", "--rm", kImage}, dir, "keyless");
  CHECK(keyless.rc == 2);
  CHECK(keyless.err.find("no CURVE secret key") != std::string::npos);
  CHECK(keyless.err.find("EDGESPLIT_PLAINTEXT=1") != std::string::npos);

  // Keys for the server (mounted where the image's entrypoint reads them) and the device.
  const fs::path keys = make_keys(dir);

  const std::string name = "edgesplit-test-" + std::to_string(::getpid());
  ContainerGuard guard{podman, name, dir};
  // The same restrictions as docker/k8s/deployment.yaml: read-only root, a writable /tmp, the
  // key mounted read-only.
  Output started = capture({podman, "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
                            "--cap-drop", "ALL", "-v", keys.string() + ":/run/secrets/edgesplit:ro",
                            "-p", "127.0.0.1::5555", "-p", "127.0.0.1::8080", kImage},
                           dir, "run");
  REQUIRE_MESSAGE(started.rc == 0, started.err);

  auto host_port = [&](const std::string& port) {
    Output o = capture({podman, "port", name, port + "/tcp"}, dir, "port-" + port);
    REQUIRE_MESSAGE(o.rc == 0, o.err);
    std::string s = trim(o.out);
    return std::stoi(s.substr(s.rfind(':') + 1));
  };
  const int zmq_port = host_port("5555");
  const int http_port = host_port("8080");

  // The image's HEALTHCHECK command (curl on /healthz inside the container) turns healthy.
  bool healthy = false;
  for (int i = 0; i < 120 && !healthy; ++i) {
    healthy = capture({podman, "healthcheck", "run", name}, dir, "health").rc == 0;
    if (!healthy) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  if (!healthy) MESSAGE(capture({podman, "logs", name}, dir, "logs").err);
  REQUIRE(healthy);

  CHECK(http_status(http_port, "/healthz") == 200);
  // Ready once its workers have warmed up (--warmup-runs).
  int ready = 0;
  for (int i = 0; i < 100 && ready != 200; ++i) {
    ready = http_status(http_port, "/readyz");
    if (ready != 200) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(ready == 200);

  Output uid = capture({podman, "exec", name, "id", "-u"}, dir, "uid");
  REQUIRE(uid.rc == 0);
  CHECK(trim(uid.out) == "10001");

  // A device on the host against the container, and the whole model on the host for reference.
  check_device_served(dir, "device", "tcp://127.0.0.1:" + std::to_string(zmq_port), keys);

  // SIGTERM (podman stop) ends the server by itself, with exit code 0, before the kill timeout.
  Output stopped = capture({podman, "stop", "-t", "20", name}, dir, "stop");
  REQUIRE_MESSAGE(stopped.rc == 0, stopped.err);
  Output code = capture({podman, "inspect", name, "--format", "{{.State.ExitCode}}"}, dir, "code");
  REQUIRE(code.rc == 0);
  CHECK(trim(code.out) == "0");
  Output log = capture({podman, "logs", name}, dir, "logs-after");
  CHECK((log.out + log.err).find("CURVE on") != std::string::npos);
}

TEST_CASE("kubernetes manifests under podman kube play: two replicas ready, each serves a device") {
  const std::string podman = EDGESPLIT_PODMAN;
  if (podman.empty() || !fs::exists(podman)) {
    MESSAGE("skipped: podman is not installed (apt-get install podman runc debootstrap catatonit)");
    return;
  }
  ::setenv("CONTAINERS_CONF", (source_dir() / "docker" / "containers.conf").c_str(), 0);
  auto dir = scratch_dir("kube-play");

  // The image the Deployment names (built by the test above when run first; else built here).
  if (capture({podman, "image", "exists", kImage}, dir, "image-exists").rc != 0) {
    Output build =
        capture({"/bin/bash", (source_dir() / "docker" / "build.sh").string(), "--server-only"},
                dir, "build", std::chrono::seconds(5400));
    REQUIRE_MESSAGE(build.rc == 0, build.err);
  }

  // docker/k8s/deployment.yaml as podman 4.3 can run it (tests/deploy/kube_play_manifest.py says
  // what it changes: one Deployment per replica on its own loopback ports, secret volumes as host
  // folders, probe ports by number), with the server's key where the kustomization's Secret
  // would put it.
  const fs::path keys = make_keys(dir);
  const fs::path manifest = dir / "edgesplit-server.yaml";
  const fs::path listing = dir / "replicas.json";
  Output rendered = capture({EDGESPLIT_SYSTEM_PYTHON_PATH,
                             (source_dir() / "tests" / "deploy" / "kube_play_manifest.py").string(),
                             (source_dir() / "docker" / "k8s").string(), keys.string(),
                             manifest.string(), listing.string()},
                            dir, "render");
  if (rendered.rc == 77) {
    MESSAGE(trim(rendered.out));
    return;
  }
  REQUIRE_MESSAGE(rendered.rc == 0, rendered.err);
  MESSAGE(rendered.err);
  const json replicas = json::parse(read_file(listing))["replicas"];
  REQUIRE(replicas.size() == 2);  // the Deployment's replicas

  KubeGuard guard{podman, manifest, dir};
  capture({podman, "kube", "down", manifest.string()}, dir, "kube-down-before");
  Output played = capture({podman, "kube", "play", manifest.string()}, dir, "kube-play",
                          std::chrono::seconds(300));
  REQUIRE_MESSAGE(played.rc == 0, played.out << played.err);

  // A running pod per replica.
  for (const auto& r : replicas) {
    const std::string pod = r["pod"];
    Output state =
        capture({podman, "pod", "inspect", pod, "--format", "{{.State}}"}, dir, "pod-" + pod);
    CHECK_MESSAGE(trim(state.out) == "Running", pod << ": " << state.out << state.err);
  }

  // Every replica turns ready (/readyz, the readiness probe's path, on its http port).
  for (const auto& r : replicas) {
    const std::string container = r["containers"]["server"];
    const int http = r["ports"]["http"];
    CAPTURE(container);
    bool ready = false;
    for (int i = 0; i < 240 && !ready; ++i) {
      ready = http_get("127.0.0.1", http, "/readyz", 2).status == 200;
      if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    if (!ready) MESSAGE(capture({podman, "logs", container}, dir, "logs").err);
    REQUIRE(ready);
    CHECK(http_get(http, "/healthz").status == 200);
  }

  // Each replica serves a device with the key every replica shares, as a device landing on either
  // one through the Service would be.
  int index = 0;
  for (const auto& r : replicas) {
    const int zmq = r["ports"]["zmq"], http = r["ports"]["http"];
    CAPTURE(index);
    check_device_served(dir, "device-" + std::to_string(index++),
                        "tcp://127.0.0.1:" + std::to_string(zmq), keys);
    HttpResponse metrics = http_get(http, "/metrics");
    REQUIRE(metrics.status == 200);
    CHECK(metrics.body.find("edgesplit_curve_enabled 1\n") != std::string::npos);
  }

  // A Prometheus server scrapes every replica's /metrics (what the pods' prometheus.io
  // annotations ask of one in a cluster): every target up.
  const fs::path prometheus = find_program("prometheus");
  if (prometheus.empty()) {
    MESSAGE("not checked here: scraping by Prometheus (Debian's prometheus package is absent)");
  } else {
    std::vector<std::string> targets;
    for (const auto& r : replicas) {
      targets.push_back("127.0.0.1:" + std::to_string(r["ports"]["http"].get<int>()));
    }
    const fs::path prom_dir = dir / "prometheus";
    fs::create_directories(prom_dir);
    PrometheusServer prom;
    REQUIRE(prom.start(prometheus, prom_dir, targets));
    auto scraped = prom.scraped_targets(targets.size(), std::chrono::seconds(60));
    REQUIRE_MESSAGE(scraped.size() == targets.size(), prom.log());
    for (const auto& t : scraped) {
      INFO("target: " << t.dump());
      CHECK(t.value("health", "") == "up");
    }
    json ready = prom.query("edgesplit_ready");
    REQUIRE(ready.is_array());
    CHECK(ready.size() == targets.size());
    CHECK(prom.stop());
  }

  // The liveness probe (podman's healthcheck, run here by hand: podman schedules it with systemd
  // timers) passes; the server runs as uid 10001 and was never restarted.
  for (const auto& r : replicas) {
    const std::string container = r["containers"]["server"];
    CAPTURE(container);
    CHECK(capture({podman, "healthcheck", "run", container}, dir, "health-" + container).rc == 0);
    Output uid = capture({podman, "exec", container, "id", "-u"}, dir, "uid-" + container);
    CHECK(trim(uid.out) == "10001");
    Output restarts = capture({podman, "inspect", container, "--format", "{{.RestartCount}}"}, dir,
                              "restarts-" + container);
    CHECK(trim(restarts.out) == "0");
  }
}
