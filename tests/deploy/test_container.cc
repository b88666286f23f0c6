// The server image (docker/Dockerfile, built by docker/build.sh with podman): it builds, refuses
// to start without a CURVE key unless told to serve plaintext, runs as a non-root user on a
// read-only root file system with its key mounted, reports healthy through its HEALTHCHECK and
// /healthz, /readyz, serves a device on the host (with the server's public key) with the native
// device's top-1 classes, and exits cleanly on SIGTERM. Skipped with a message where podman is
// not installed.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "tests/integration/child_process.h"
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

// The status code of GET path on 127.0.0.1:port (HTTP/1.0), or -1 when there is no answer.
int http_status(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int status = -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size())) {
      char buf[64] = {};
      ssize_t n = ::recv(fd, buf, sizeof buf - 1, 0);
      std::string line(buf, n > 0 ? static_cast<size_t>(n) : 0);  // "HTTP/1.1 200 OK"
      if (line.rfind("HTTP/", 0) == 0 && line.size() >= 12) status = std::stoi(line.substr(9, 3));
    }
  }
  ::close(fd);
  return status;
}

// Removes the container when the test ends, whatever happened.
struct ContainerGuard {
  std::string podman, name;
  fs::path dir;
  ~ContainerGuard() { capture({podman, "rm", "-f", "-t", "2", name}, dir, "rm"); }
};

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

  // Keys for the server (mounted where the image's entrypoint reads them) and the device. The
  // container's user (uid 10001) must be able to read the mounted secret key.
  const fs::path keys = dir / "keys";
  fs::create_directories(keys);
  for (const char* who : {"server", "device"}) {
    Output made = capture({(bin_dir() / "edgesplit-keygen").string(), (keys / who).string()}, dir,
                          std::string("keygen-") + who);
    REQUIRE_MESSAGE(made.rc == 0, made.err);
  }
  fs::permissions(keys / "server.key",
                  fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);

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
  CHECK(http_status(http_port, "/readyz") == 200);

  Output uid = capture({podman, "exec", name, "id", "-u"}, dir, "uid");
  REQUIRE(uid.rc == 0);
  CHECK(trim(uid.out) == "10001");

  // A device on the host against the container, and the whole model on the host for reference.
  const std::string device = (bin_dir() / "edgesplit-device").string();
  std::vector<std::string> common = {device, "--model", default_model().string(), "--input",
                                     default_samples().string()};
  for (const char* flag : {"--in-flight", "1", "--quiet"}) common.push_back(flag);
  auto with = [&](std::vector<std::string> extra) {
    auto a = common;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  Output local = capture(with({"--cut", "device"}), dir, "local");
  Output split =
      capture(with({"--server", "tcp://127.0.0.1:" + std::to_string(zmq_port), "--cut", "8",
                    "--bits", "4", "--lossless", "zstd", "--timeout-ms", "5000", "--server-key",
                    (keys / "server.pub").string(), "--key", (keys / "device.key").string()}),
              dir, "split");
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

  // SIGTERM (podman stop) ends the server by itself, with exit code 0, before the kill timeout.
  Output stopped = capture({podman, "stop", "-t", "20", name}, dir, "stop");
  REQUIRE_MESSAGE(stopped.rc == 0, stopped.err);
  Output code = capture({podman, "inspect", name, "--format", "{{.State.ExitCode}}"}, dir, "code");
  REQUIRE(code.rc == 0);
  CHECK(trim(code.out) == "0");
  Output log = capture({podman, "logs", name}, dir, "logs-after");
  CHECK((log.out + log.err).find("CURVE on") != std::string::npos);
}
