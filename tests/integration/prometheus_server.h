// A real Prometheus server (Debian's prometheus package) for the process-level tests: scrapes
// given targets every second into a scratch folder and answers queries on a loopback port.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/child_process.h"
#include "tests/integration/http_client.h"

namespace edgesplit::testing {

// A program on PATH (then /usr/bin, /usr/sbin), or empty.
inline std::filesystem::path find_program(const std::string& name) {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::string p = path;
    size_t start = 0;
    while (start <= p.size()) {
      size_t end = p.find(':', start);
      if (end == std::string::npos) end = p.size();
      if (end > start) dirs.push_back(p.substr(start, end - start));
      start = end + 1;
    }
  }
  dirs.push_back("/usr/bin");
  dirs.push_back("/usr/sbin");
  for (const auto& d : dirs) {
    std::filesystem::path candidate = std::filesystem::path(d) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

// A free TCP port on 127.0.0.1 (bound, read back, released), or -1.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int port = -1;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

// prometheus scraping `targets` ("127.0.0.1:PORT", job "edgesplit") every second. Stopped (SIGTERM,
// then SIGKILL) when destroyed. Not thread-safe.
class PrometheusServer {
 public:
  // Starts it with its files in `dir`; false when it could not be started.
  bool start(const std::filesystem::path& binary, const std::filesystem::path& dir,
             const std::vector<std::string>& targets) {
    dir_ = dir;
    port_ = free_port();
    if (port_ <= 0) return false;
    const auto config = dir / "prometheus.yml";
    std::ofstream f(config);
    f << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
      << "scrape_configs:\n  - job_name: edgesplit\n    static_configs:\n      - targets: [";
    for (size_t i = 0; i < targets.size(); ++i) f << (i ? ", " : "") << "'" << targets[i] << "'";
    f << "]\n";
    f.close();
    return process_.start({binary.string(), "--config.file=" + config.string(),
                           "--storage.tsdb.path=" + (dir / "tsdb").string(),
                           "--web.listen-address=127.0.0.1:" + std::to_string(port_)},
                          dir / "prometheus.out", dir / "prometheus.err");
  }
  ~PrometheusServer() { stop(); }

  // Waits until every target has been scraped once; their states from /api/v1/targets (each
  // with "health" "up" or "down" and "lastError"), or fewer when `timeout` passed first.
  std::vector<nlohmann::json> scraped_targets(size_t count, std::chrono::seconds timeout) {
    std::vector<nlohmann::json> out;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline && process_.running()) {
      out.clear();
      HttpResponse r = http_get(port_, "/api/v1/targets");
      nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
      if (r.status == 200 && j.is_object() && j["data"]["activeTargets"].is_array()) {
        for (const auto& t : j["data"]["activeTargets"]) {
          if (t.value("health", "unknown") != "unknown") out.push_back(t);
        }
        if (out.size() >= count) return out;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return out;
  }

  // The result array of an instant query (PromQL without characters that need URL escaping);
  // null when the query failed.
  nlohmann::json query(const std::string& promql) {
    HttpResponse r = http_get(port_, "/api/v1/query?query=" + promql);
    nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
    if (r.status != 200 || !j.is_object() || j.value("status", "") != "success") return nullptr;
    return j["data"]["result"];
  }

  // Stops it; true when it exited by itself after SIGTERM.
  bool stop() {
    if (!process_.running()) return false;
    process_.signal(SIGTERM);
    const bool exited = process_.wait(std::chrono::seconds(20)).has_value();
    process_.kill_now();
    return exited;
  }

  bool running() { return process_.running(); }
  std::string log() const { return read_file(dir_ / "prometheus.err"); }

 private:
  ChildProcess process_;
  std::filesystem::path dir_;
  int port_ = -1;
};

}  // namespace edgesplit::testing
