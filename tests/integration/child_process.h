// ChildProcess: starts one of edgesplit's binaries as a real process for integration tests, with
// stdout and stderr sent to files, and stops it (signal, wait with a deadline, kill -9).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace edgesplit::testing {

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A fresh, empty folder under the build tree for one test's files.
inline std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = std::filesystem::path(EDGESPLIT_BINARY_DIR) / "test-scratch" /
             (name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { kill_now(); }

  // Starts argv[0] (a path) with stdout/stderr redirected to the given files. False on failure.
  bool start(const std::vector<std::string>& argv, const std::filesystem::path& out,
             const std::filesystem::path& err) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int rc = posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) pid_ = -1;
    return pid_ > 0;
  }

  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      record(status);
      return false;
    }
    return true;
  }

  // Waits for the process to end; its exit code, or nullopt on timeout (the process keeps running).
  std::optional<int> wait(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pid_ > 0) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        record(status);
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return exit_code_;
  }

  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  void kill_now() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
  }

  pid_t pid() const { return pid_; }

 private:
  void record(int status) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    pid_ = -1;
  }
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

// Appended to a device's arguments when its server is already up: the first handshake may take
// up to 20 s. The device's 2 s default suits a real link, but under ThreadSanitizer, beside other
// tests on 2 cores, a device and a server can take longer to shake hands, and a short run would
// then finish every frame on the device. (The longer timeout also stretches the link's heartbeat
// and reconnect timings, device/runtime.cc, which a test of a lost server must not use.)
inline const std::vector<std::string> kServerIsUp = {"--handshake-timeout-ms", "20000"};

// Runs a binary to completion; its exit code (or -1 on timeout, after killing it).
inline int run_to_end(const std::vector<std::string>& argv, const std::filesystem::path& out,
                      const std::filesystem::path& err,
                      std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
  ChildProcess p;
  if (!p.start(argv, out, err)) return -1;
  auto rc = p.wait(timeout);
  if (!rc) {
    p.kill_now();
    return -1;
  }
  return *rc;
}

// A running edgesplit-server, bound to an ephemeral loopback port unless told otherwise.
class ServerProcess {
 public:
  // Starts the server with `extra` arguments and waits until it reports its endpoint (bound to
  // `bind`: an ephemeral loopback port unless given).
  bool start(const std::filesystem::path& dir, const std::vector<std::string>& extra,
             std::chrono::milliseconds timeout = std::chrono::seconds(60),
             const std::string& bind = "tcp://127.0.0.1:*") {
    endpoint_file_ = dir / "endpoint.txt";
    std::filesystem::remove(endpoint_file_);
    std::vector<std::string> argv = {
        (std::filesystem::path(EDGESPLIT_BINARY_DIR) / "bin" / "edgesplit-server").string(),
        "--bind", bind, "--endpoint-file", endpoint_file_.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    log_ = dir / "server.err";
    if (!process_.start(argv, dir / "server.out", log_)) return false;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (std::filesystem::exists(endpoint_file_)) {
        std::string e = read_file(endpoint_file_);
        while (!e.empty() && (e.back() == '\n' || e.back() == ' ')) e.pop_back();
        if (!e.empty()) {
          endpoint_ = e;
          return true;
        }
      }
      if (!process_.running()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  const std::string& endpoint() const { return endpoint_; }
  ChildProcess& process() { return process_; }
  std::string log() const { return read_file(log_); }

 private:
  ChildProcess process_;
  std::filesystem::path endpoint_file_, log_;
  std::string endpoint_;
};

}  // namespace edgesplit::testing
