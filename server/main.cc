// edgesplit-server: serves the tails of one or more models to devices over ZeroMQ.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "server/flags.h"
#include "server/server.h"

namespace {

// Read by the signal handler: an atomic pointer (lock-free, so async-signal-safe to load).
std::atomic<edgesplit::server::InferenceServer*> g_server{nullptr};
std::atomic<int> g_signals{0};

// The first SIGINT/SIGTERM stops the server (queued requests refused, running tails awaited); a
// second one shortens the wait for the running tails.
void on_signal(int) {
  edgesplit::server::InferenceServer* server = g_server.load();
  if (!server) return;
  if (g_signals.fetch_add(1) == 0) {
    server->stop();
  } else {
    server->hurry();
  }
}

// Writes one line to `path` through a temporary file, so readers never see a half-written file.
void write_atomically(const std::string& path, const std::string& line) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << line << '\n';
  }
  std::rename(tmp.c_str(), path.c_str());
}

int usage_error(const std::string& message) {
  std::cerr << "edgesplit-server: " << message << " (see edgesplit-server --help)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  auto command = edgesplit::server::parse_server_flags(argc, argv);
  if (!command.ok()) return usage_error(command.status().message());
  if (command->help) {
    std::cout << command->help_text << '\n';
    return 0;
  }
  spdlog::set_default_logger(spdlog::stderr_color_mt("edgesplit-server"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ edgesplit-server: %v");
  spdlog::set_level(command->log_level);

  auto server = edgesplit::server::InferenceServer::create(command->options);
  if (!server.ok()) {
    std::cerr << "edgesplit-server: " << server.status().message() << '\n';
    return 2;
  }
  g_server.store(server->get());
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const std::string endpoint = (*server)->endpoint();
  spdlog::info("listening on {}", endpoint);
  if (!command->endpoint_file.empty()) write_atomically(command->endpoint_file, endpoint);
  if (!command->http_port_file.empty()) {
    write_atomically(command->http_port_file, std::to_string((*server)->http_port()));
  }
  (*server)->run();
  g_server.store(nullptr);
  if (!(*server)->idle()) {
    // A tail is stuck: destroying the server would wait for it. Exit now; the OS frees the rest.
    spdlog::shutdown();
    std::_Exit(1);
  }
  return 0;
}
