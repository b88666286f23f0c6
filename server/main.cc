// edgesplit-server: serves the tails of one or more models to devices over ZeroMQ.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "server/flags.h"
#include "server/server.h"

namespace {

edgesplit::server::InferenceServer* g_server = nullptr;

void on_signal(int) {
  if (g_server) g_server->stop();
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
  g_server = server->get();
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const std::string endpoint = (*server)->endpoint();
  spdlog::info("listening on {}", endpoint);
  if (!command->endpoint_file.empty()) write_atomically(command->endpoint_file, endpoint);
  if (!command->http_port_file.empty()) {
    write_atomically(command->http_port_file, std::to_string((*server)->http_port()));
  }
  (*server)->run();
  g_server = nullptr;
  if (!(*server)->idle()) {
    // A tail is stuck: destroying the server would wait for it. Exit now; the OS frees the rest.
    spdlog::shutdown();
    std::_Exit(1);
  }
  return 0;
}
