// edgesplit-server: serves the tails of one or more models to devices over ZeroMQ.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>

#include "server/server.h"

namespace {

edgesplit::server::InferenceServer* g_server = nullptr;

void on_signal(int) {
  if (g_server) g_server->stop();
}

int usage_error(const std::string& message) {
  std::cerr << "edgesplit-server: " << message << " (see edgesplit-server --help)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-server",
                       "Serves the tails of split CNNs: devices send the tensor at a cut, the "
                       "server runs the rest of the model and replies with the top classes.");
  // clang-format off
  cli.add_options()
    ("bind", "ZeroMQ endpoint to listen on", cxxopts::value<std::string>()->default_value("tcp://*:5555"))
    ("model", "TorchScript model to serve (repeat for several)", cxxopts::value<std::vector<std::string>>())
    ("meta", "metadata JSON for the --model at the same position (default: beside the model)",
     cxxopts::value<std::vector<std::string>>())
    ("workers", "threads running tails", cxxopts::value<int>()->default_value("1"))
    ("threads", "LibTorch intra-op threads per tail (0: LibTorch's default)", cxxopts::value<int>()->default_value("0"))
    ("queue", "queued requests before the server answers BUSY", cxxopts::value<int>()->default_value("64"))
    ("max-message-mb", "largest request accepted, in MiB", cxxopts::value<int>()->default_value("64"))
    ("name", "server name reported in the handshake", cxxopts::value<std::string>()->default_value("edgesplit-server"))
    ("endpoint-file", "write the bound endpoint (port resolved) to this file once listening",
     cxxopts::value<std::string>())
    ("log-level", "trace, debug, info, warn, error", cxxopts::value<std::string>()->default_value("info"))
    ("h,help", "show this help");
  // clang-format on
  cxxopts::ParseResult args;
  try {
    args = cli.parse(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    return usage_error(e.what());
  }
  if (args.count("help")) {
    std::cout << cli.help() << '\n';
    return 0;
  }
  if (!args.count("model")) return usage_error("no model given: pass --model FILE.pt");
  spdlog::set_default_logger(spdlog::stderr_color_mt("edgesplit-server"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ edgesplit-server: %v");
  auto level = spdlog::level::from_str(args["log-level"].as<std::string>());
  if (level == spdlog::level::off && args["log-level"].as<std::string>() != "off") {
    return usage_error("--log-level must be one of trace, debug, info, warn, error");
  }
  spdlog::set_level(level);

  edgesplit::server::ServerOptions options;
  options.router.endpoint = args["bind"].as<std::string>();
  options.model_paths = args["model"].as<std::vector<std::string>>();
  if (args.count("meta")) options.meta_paths = args["meta"].as<std::vector<std::string>>();
  options.workers = args["workers"].as<int>();
  options.compute_threads = args["threads"].as<int>();
  int queue = args["queue"].as<int>();
  if (queue < 1) return usage_error("--queue must be at least 1");
  options.queue_capacity = static_cast<size_t>(queue);
  int max_mb = args["max-message-mb"].as<int>();
  if (max_mb < 1 || max_mb > 4096) return usage_error("--max-message-mb must be between 1 and 4096");
  options.router.limits.max_message_bytes = static_cast<size_t>(max_mb) << 20;
  options.name = args["name"].as<std::string>();

  auto server = edgesplit::server::InferenceServer::create(options);
  if (!server.ok()) {
    std::cerr << "edgesplit-server: " << server.status().message() << '\n';
    return 2;
  }
  g_server = server->get();
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const std::string endpoint = (*server)->endpoint();
  spdlog::info("listening on {}", endpoint);
  if (args.count("endpoint-file")) {
    const std::string path = args["endpoint-file"].as<std::string>();
    const std::string tmp = path + ".tmp";
    {
      std::ofstream f(tmp);
      f << endpoint << '\n';
    }
    std::rename(tmp.c_str(), path.c_str());  // readers never see a half-written file
  }
  (*server)->run();
  g_server = nullptr;
  return 0;
}
