// edgesplit-server: serves the tails of one or more models to devices over ZeroMQ.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>

#include "server/server.h"
#include "transport/curve.h"

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
  cxxopts::Options cli("edgesplit-server",
                       "Serves the tails of split CNNs: devices send the tensor at a cut, the "
                       "server runs the rest of the model and replies with the top classes.");
  // clang-format off
  cli.add_options()
    ("bind", "ZeroMQ endpoint to listen on", cxxopts::value<std::string>()->default_value("tcp://*:5555"))
    ("model", "TorchScript model to serve (repeat for several)", cxxopts::value<std::vector<std::string>>())
    ("profile", "profile of the --model at the same position, whose tail times devices get in the "
     "handshake (default: MODEL.profile.json beside the model, when present)",
     cxxopts::value<std::vector<std::string>>())
    ("meta", "metadata JSON for the --model at the same position (default: beside the model)",
     cxxopts::value<std::vector<std::string>>())
    ("workers", "threads running tails", cxxopts::value<int>()->default_value("1"))
    ("threads", "LibTorch intra-op threads per tail (0: LibTorch's default)", cxxopts::value<int>()->default_value("0"))
    ("engine", "how tails run: optimized (LibTorch's inference passes with the best backend it "
     "has: oneDNN, else XNNPACK), onednn, xnnpack, or plain (the frozen graph as it is)", cxxopts::value<std::string>()->default_value("optimized"))
    ("queue", "queued requests before the server answers BUSY", cxxopts::value<int>()->default_value("64"))
    ("max-message-mb", "largest request accepted, in MiB", cxxopts::value<int>()->default_value("64"))
    ("name", "server name reported in the handshake", cxxopts::value<std::string>()->default_value("edgesplit-server"))
    ("endpoint-file", "write the bound endpoint (port resolved) to this file once listening",
     cxxopts::value<std::string>())
    ("max-in-flight-per-client", "inference requests one device may have queued or running at once",
     cxxopts::value<int>()->default_value("32"))
    ("max-tensor-elements", "largest tensor accepted, in values", cxxopts::value<int64_t>()->default_value("67108864"))
    ("curve-secret", "CURVE secret key file of this server (edgesplit-keygen): encrypts every connection",
     cxxopts::value<std::string>())
    ("allow-keys", "file of device public keys (one Z85 key per line) allowed to connect; needs --curve-secret",
     cxxopts::value<std::string>())
    ("http-port", "serve /healthz, /readyz and /metrics on this port (0: any free port; default: off)",
     cxxopts::value<int>())
    ("http-bind", "address the HTTP endpoint listens on", cxxopts::value<std::string>()->default_value("0.0.0.0"))
    ("http-port-file", "write the HTTP port to this file once listening", cxxopts::value<std::string>())
    ("shutdown-timeout-ms", "on SIGTERM/SIGINT, how long to wait for running tails",
     cxxopts::value<int>()->default_value("10000"))
    ("slow-tail-ms", "testing aid: delay every tail by this much (a slow model)",
     cxxopts::value<int>()->default_value("0"))
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
  if (args.count("profile")) {
    options.profile_paths = args["profile"].as<std::vector<std::string>>();
  }
  options.workers = args["workers"].as<int>();
  options.compute_threads = args["threads"].as<int>();
  auto engine = edgesplit::partitioner::parse_engine(args["engine"].as<std::string>());
  if (!engine) return usage_error("--engine must be optimized, onednn, xnnpack or plain");
  options.engine = *engine;
  int queue = args["queue"].as<int>();
  if (queue < 1) return usage_error("--queue must be at least 1");
  options.queue_capacity = static_cast<size_t>(queue);
  int max_mb = args["max-message-mb"].as<int>();
  if (max_mb < 1 || max_mb > 4096)
    return usage_error("--max-message-mb must be between 1 and 4096");
  options.router.limits.max_message_bytes = static_cast<size_t>(max_mb) << 20;
  options.name = args["name"].as<std::string>();
  int per_client = args["max-in-flight-per-client"].as<int>();
  if (per_client < 1) return usage_error("--max-in-flight-per-client must be at least 1");
  options.max_in_flight_per_client = static_cast<size_t>(per_client);
  int64_t max_elements = args["max-tensor-elements"].as<int64_t>();
  if (max_elements < 1) return usage_error("--max-tensor-elements must be at least 1");
  options.decode_limits.max_elements = static_cast<uint64_t>(max_elements);
  if (args.count("curve-secret")) {
    auto key = edgesplit::transport::read_key_file(args["curve-secret"].as<std::string>());
    if (!key.ok()) return usage_error("--curve-secret: " + key.status().message());
    options.router.curve_secret_key = *key;
  }
  if (args.count("allow-keys")) {
    if (!args.count("curve-secret")) {
      return usage_error(
          "--allow-keys needs --curve-secret: device keys are checked in the CURVE "
          "handshake");
    }
    auto keys = edgesplit::transport::read_allow_list(args["allow-keys"].as<std::string>());
    if (!keys.ok()) return usage_error("--allow-keys: " + keys.status().message());
    options.use_allow_list = true;
    options.allowed_keys = std::move(keys).value();
  }
  if (args.count("http-port")) {
    options.http_port = args["http-port"].as<int>();
    if (options.http_port < 0 || options.http_port > 65535) {
      return usage_error("--http-port must be 0..65535");
    }
  }
  options.http_host = args["http-bind"].as<std::string>();
  int shutdown_ms = args["shutdown-timeout-ms"].as<int>();
  if (shutdown_ms < 0) return usage_error("--shutdown-timeout-ms must be 0 or more");
  options.shutdown_timeout = std::chrono::milliseconds(shutdown_ms);
  int slow_ms = args["slow-tail-ms"].as<int>();
  if (slow_ms < 0) return usage_error("--slow-tail-ms must be 0 or more");
  options.slow_tail = std::chrono::milliseconds(slow_ms);

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
  if (args.count("endpoint-file"))
    write_atomically(args["endpoint-file"].as<std::string>(), endpoint);
  if (args.count("http-port-file")) {
    if ((*server)->http_port() < 0) return usage_error("--http-port-file needs --http-port");
    write_atomically(args["http-port-file"].as<std::string>(),
                     std::to_string((*server)->http_port()));
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
