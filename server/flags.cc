// edgesplit-server's flags (server/flags.h): cxxopts, then one check per flag.
#include "server/flags.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cxxopts.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "packing/int_list.h"
#include "partitioner/model_graph.h"
#include "profiles/family.h"
#include "server/batcher.h"
#include "transport/curve.h"

namespace edgesplit::server {

std::optional<size_t> parse_byte_size(const std::string& text) {
  if (text.empty() || text.size() > 24) return std::nullopt;
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) return std::nullopt;
  unsigned shift = 0;
  if (digits < text.size()) {
    const std::string unit = text.substr(digits);
    if (unit == "K" || unit == "k" || unit == "KiB") {
      shift = 10;
    } else if (unit == "M" || unit == "m" || unit == "MiB") {
      shift = 20;
    } else if (unit == "G" || unit == "g" || unit == "GiB") {
      shift = 30;
    } else {
      return std::nullopt;
    }
  }
  uint64_t value = 0;
  for (size_t i = 0; i < digits; ++i) {
    const uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (value > (UINT64_MAX - d) / 10) return std::nullopt;
    value = value * 10 + d;
  }
  if (value > (UINT64_MAX >> shift) || (value << shift) > SIZE_MAX) return std::nullopt;
  return static_cast<size_t>(value << shift);
}

Result<ServerCommand> parse_server_flags(int argc, const char* const* argv) {
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
    ("exits", "early-exit heads to run on the server (NAME_exits.json from models/train_exits.py; "
     "repeat for several models): each applies to the served model its heads were trained on",
     cxxopts::value<std::vector<std::string>>())
    ("family", "serve every member of this model family (a manifest, models/families/; repeat for "
     "several), each under its own digest", cxxopts::value<std::vector<std::string>>())
    ("workers", "threads running tails", cxxopts::value<int>()->default_value("1"))
    ("warmup-runs", "before it takes work, each worker runs every served model whole this many "
     "times on zeros, and with batching a batch of each size it may form, so that the first "
     "request, at any cut, does not pay for the thread's first tail; /readyz waits for it (0: "
     "none)", cxxopts::value<int>()->default_value("2"))
    ("heartbeat-timeout-s", "drop a device's connection about this many seconds after its host "
     "stops answering (TCP keepalive; default 30; a testbed that dilates time by K multiplies it by K)",
     cxxopts::value<int>()->default_value("30"))
    ("threads", "LibTorch intra-op threads per tail (0: LibTorch's default)", cxxopts::value<int>()->default_value("0"))
    ("engine", "how tails run: optimized (LibTorch's inference passes with the best backend it "
     "has: oneDNN, else XNNPACK), onednn, xnnpack, or plain (the frozen graph as it is)", cxxopts::value<std::string>()->default_value("optimized"))
    ("device", "where tails run: cpu, or cuda:N with a LibTorch built with CUDA (payloads are "
     "unpacked on the CPU into pinned memory and copied asynchronously)", cxxopts::value<std::string>()->default_value("cpu"))
    ("queue", "queued requests before the server answers BUSY (or sheds one of a lower priority class)", cxxopts::value<int>()->default_value("64"))
    ("max-batch", "most requests for the same model and cut run as one tail (1: one at a time)",
     cxxopts::value<int>()->default_value("1"))
    ("preferred-batch", "batch sizes to form as soon as that many requests wait, comma-separated "
     "(each <= --max-batch; default: none)", cxxopts::value<std::string>()->default_value(""))
    ("max-queue-delay-us", "longest the oldest request waits for its batch to fill (0: run what is "
     "there at once)", cxxopts::value<int64_t>()->default_value("0"))
    ("batch-from", "ready: a worker takes every compatible request queued (up to --max-batch); "
     "backlog (for CPUs, where a batch of n costs nearly n tails): below --saturated-load, its "
     "part of the queue that the workers, busy ones included, finish soonest; above it, all of "
     "them when more than two per worker have queued for a single tail's time, else one, plus "
     "one per single tail's time the oldest has waited",
     cxxopts::value<std::string>()->default_value("ready"))
    ("saturated-load", "with --batch-from backlog: the offered load (the work that arrived over "
     "the last 0.5 s, as a share of what the workers clear at batch 1) from which a worker "
     "batches a standing queue instead of taking its balanced part of it",
     cxxopts::value<double>()->default_value("1.2"))
    ("expire-at-arrival", "on: a request whose deadline the requests queued ahead of it (at "
     "their measured tail times, over the workers) and its own tail would pass is answered "
     "DEADLINE_EXCEEDED on arrival, so that its device finishes the frame at once; off: it waits "
     "in the queue and expires when its own tail no longer fits",
     cxxopts::value<std::string>()->default_value("on"))
    ("fit-deadlines", "on: a batch takes only requests whose deadlines leave time for a batch of "
     "its size (its rows at the measured time per request), and a queued request expires once not "
     "even a batch of one would make it; off: a batch takes the compatible requests whatever "
     "their deadlines, and a queued request expires once the average batch time no longer fits",
     cxxopts::value<std::string>()->default_value("on"))
    ("fit-margin", "with --fit-deadlines on, a batch's expected time is its size's recent "
     "average plus this many mean absolute deviations of its recent times (0: the average)",
     cxxopts::value<double>()->default_value("0"))
    ("max-message-mb", "largest request accepted, in MiB", cxxopts::value<int>()->default_value("64"))
    ("name", "server name reported in the handshake", cxxopts::value<std::string>()->default_value("edgesplit-server"))
    ("endpoint-file", "write the bound endpoint (port resolved) to this file once listening",
     cxxopts::value<std::string>())
    ("max-in-flight-per-client", "inference requests one device may have queued or running at once",
     cxxopts::value<int>()->default_value("32"))
    ("max-queued-bytes", "most bytes of inference requests held at once, queued or running, over "
     "all devices (a number of bytes, or with K, M or G): a request that does not fit gets BUSY; "
     "it also bounds what ZeroMQ buffers for each connection (at least --max-message-mb; default: "
     "256M or --max-message-mb when larger)",
     cxxopts::value<std::string>()->default_value("256M"))
    ("tensor-cache", "most bytes of freed large tensors (32 MiB and up: a batch's early "
     "activations) kept for the next batch instead of mapped afresh, a number of bytes or with "
     "K, M or G (0: none)", cxxopts::value<std::string>()->default_value("1G"))
    ("max-tensor-elements", "largest tensor accepted, in values", cxxopts::value<int64_t>()->default_value("67108864"))
    ("curve-secret", "CURVE secret key file of this server (edgesplit-keygen): encrypts every connection",
     cxxopts::value<std::string>())
    ("allow-keys", "file of device public keys (one Z85 key per line) allowed to connect; needs --curve-secret",
     cxxopts::value<std::string>())
    ("http-port", "serve /healthz, /readyz and /metrics on this port (0: any free port; default: off)",
     cxxopts::value<int>())
    ("http-bind", "address the HTTP endpoint listens on (default loopback: /metrics is for this "
     "host; a container publishing it passes 0.0.0.0)",
     cxxopts::value<std::string>()->default_value("127.0.0.1"))
    ("http-port-file", "write the HTTP port to this file once listening", cxxopts::value<std::string>())
    ("shutdown-timeout-ms", "on SIGTERM/SIGINT, how long to wait for running tails (a second "
     "signal stops waiting)",
     cxxopts::value<int>()->default_value("10000"))
    ("slow-tail-ms", "testing aid: delay every tail by this much (a slow model)",
     cxxopts::value<int>()->default_value("0"))
    ("slow-io-us", "testing aid: the I/O thread reads one message per turn and waits this long "
     "after it (a host too busy to keep up)", cxxopts::value<int>()->default_value("0"))
    ("log-level", "trace, debug, info, warn, error", cxxopts::value<std::string>()->default_value("info"))
    ("h,help", "show this help");
  // clang-format on
  cxxopts::ParseResult args;
  try {
    args = cli.parse(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    return invalid_argument(e.what());
  }
  ServerCommand command;
  if (args.count("help")) {
    command.help = true;
    command.help_text = cli.help();
    return command;
  }
  if (!args.count("model") && !args.count("family")) {
    return invalid_argument("no model given: pass --model FILE.pt or --family FAMILY.json");
  }
  const std::string level_name = args["log-level"].as<std::string>();
  command.log_level = spdlog::level::from_str(level_name);
  if (command.log_level == spdlog::level::off && level_name != "off") {
    return invalid_argument("--log-level must be one of trace, debug, info, warn, error");
  }

  ServerOptions& options = command.options;
  options.router.endpoint = args["bind"].as<std::string>();
  // The kernel drops a connection whose peer stops answering (TCP keepalive and
  // TCP_USER_TIMEOUT: transport::RouterOptions says why not ZeroMQ's heartbeats). Keepalive
  // probes go only on an idle connection and any segment answers them, so a request that takes
  // seconds to arrive on a slow uplink keeps its connection. 30 s by default (a device that is gone
  // costs nothing meanwhile: its requests have deadlines).
  const int heartbeat_s = args["heartbeat-timeout-s"].as<int>();
  if (heartbeat_s < 1 || heartbeat_s > 3000) {
    return invalid_argument("--heartbeat-timeout-s must be between 1 and 3000 seconds");
  }
  options.router.dead_peer_timeout = std::chrono::seconds(heartbeat_s);
  if (args.count("model")) options.model_paths = args["model"].as<std::vector<std::string>>();
  if (args.count("meta")) options.meta_paths = args["meta"].as<std::vector<std::string>>();
  if (args.count("exits")) options.exits_paths = args["exits"].as<std::vector<std::string>>();
  if (args.count("profile")) {
    options.profile_paths = args["profile"].as<std::vector<std::string>>();
  }
  if (args.count("family")) {
    // Members go after the --model files; the per-position lists are padded to line up.
    const size_t n = options.model_paths.size();
    options.meta_paths.resize(std::max(options.meta_paths.size(), n));
    options.profile_paths.resize(std::max(options.profile_paths.size(), n));
    options.variants.resize(n);
    for (const std::string& path : args["family"].as<std::vector<std::string>>()) {
      auto family = profiles::load_family(path);
      if (!family.ok()) return invalid_argument("--family: " + family.status().message());
      for (const profiles::FamilyMember& m : family->members) {
        options.model_paths.push_back(m.model);
        options.meta_paths.resize(options.model_paths.size() - 1);
        options.meta_paths.push_back(m.meta);
        options.profile_paths.resize(options.model_paths.size() - 1);
        options.profile_paths.push_back(m.profile);
        options.variants.push_back(m.variant);
      }
    }
  }
  options.workers = args["workers"].as<int>();
  options.warmup_runs = args["warmup-runs"].as<int>();
  if (options.warmup_runs < 0 || options.warmup_runs > 100) {
    return invalid_argument("--warmup-runs must be 0 to 100 (runs of each model per worker)");
  }
  options.compute_threads = args["threads"].as<int>();
  auto engine = partitioner::parse_engine(args["engine"].as<std::string>());
  if (!engine) return invalid_argument("--engine must be optimized, onednn, xnnpack or plain");
  options.engine = *engine;
  options.device = args["device"].as<std::string>();
  if (options.device != "cpu" && options.device.rfind("cuda", 0) != 0) {
    return invalid_argument("--device must be cpu or cuda:N, not '" + options.device + "'");
  }
  int queue = args["queue"].as<int>();
  if (queue < 1) return invalid_argument("--queue must be at least 1");
  options.queue_capacity = static_cast<size_t>(queue);
  const int max_batch = args["max-batch"].as<int>();
  if (max_batch < 1) return invalid_argument("--max-batch must be at least 1");
  options.max_batch = static_cast<size_t>(max_batch);
  auto preferred = parse_int_list(args["preferred-batch"].as<std::string>(), 1);
  if (!preferred) {
    return invalid_argument("--preferred-batch takes batch sizes separated by commas, as 4,8");
  }
  for (int p : *preferred) options.preferred_batch.push_back(static_cast<size_t>(p));
  options.max_queue_delay = std::chrono::microseconds(args["max-queue-delay-us"].as<int64_t>());
  const std::string batch_from = args["batch-from"].as<std::string>();
  if (batch_from != "ready" && batch_from != "backlog") {
    return invalid_argument("--batch-from must be ready or backlog, not '" + batch_from + "'");
  }
  options.batch_backlog_only = batch_from == "backlog";
  options.batch_saturated_load = args["saturated-load"].as<double>();
  if (!(options.batch_saturated_load > 0 && options.batch_saturated_load <= 10)) {
    return invalid_argument(
        "--saturated-load must be above 0 (1 = the workers' capacity at batch 1), "
        "at most 10");
  }
  const std::string at_arrival = args["expire-at-arrival"].as<std::string>();
  if (at_arrival != "on" && at_arrival != "off") {
    return invalid_argument("--expire-at-arrival must be on or off, not '" + at_arrival + "'");
  }
  options.expire_at_arrival = at_arrival == "on";
  const std::string fit = args["fit-deadlines"].as<std::string>();
  if (fit != "on" && fit != "off") {
    return invalid_argument("--fit-deadlines must be on or off, not '" + fit + "'");
  }
  options.fit_deadlines = fit == "on";
  options.fit_margin = args["fit-margin"].as<double>();
  {
    BatchingOptions check = batching_options(options);
    EDGESPLIT_RETURN_IF_ERROR(check_batching(check));
  }
  int max_mb = args["max-message-mb"].as<int>();
  if (max_mb < 1 || max_mb > 4096) {
    return invalid_argument("--max-message-mb must be between 1 and 4096");
  }
  options.router.limits.max_message_bytes = static_cast<size_t>(max_mb) << 20;
  options.name = args["name"].as<std::string>();
  int per_client = args["max-in-flight-per-client"].as<int>();
  if (per_client < 1) return invalid_argument("--max-in-flight-per-client must be at least 1");
  options.max_in_flight_per_client = static_cast<size_t>(per_client);
  // Unset, the budget grows to hold one request of the largest size accepted.
  auto queued = parse_byte_size(args["max-queued-bytes"].as<std::string>());
  if (!args.count("max-queued-bytes") && queued) {
    queued = std::max(*queued, options.router.limits.max_message_bytes);
  }
  if (!queued || *queued < options.router.limits.max_message_bytes) {
    return invalid_argument(
        "--max-queued-bytes takes a size of at least --max-message-mb, in bytes or with K, M or G "
        "(as 256M)");
  }
  options.max_queued_bytes = *queued;
  auto tensor_cache = parse_byte_size(args["tensor-cache"].as<std::string>());
  if (!tensor_cache) {
    return invalid_argument("--tensor-cache takes a size in bytes or with K, M or G (as 1G), or 0");
  }
  options.tensor_cache_bytes = *tensor_cache;
  int64_t max_elements = args["max-tensor-elements"].as<int64_t>();
  if (max_elements < 1) return invalid_argument("--max-tensor-elements must be at least 1");
  options.decode_limits.max_elements = static_cast<uint64_t>(max_elements);
  if (args.count("curve-secret")) {
    auto key = transport::read_key_file(args["curve-secret"].as<std::string>());
    if (!key.ok()) return invalid_argument("--curve-secret: " + key.status().message());
    options.router.curve_secret_key = *key;
  }
  if (args.count("allow-keys")) {
    if (!args.count("curve-secret")) {
      return invalid_argument(
          "--allow-keys needs --curve-secret: device keys are checked in the CURVE "
          "handshake");
    }
    auto keys = transport::read_allow_list(args["allow-keys"].as<std::string>());
    if (!keys.ok()) return invalid_argument("--allow-keys: " + keys.status().message());
    options.use_allow_list = true;
    options.allowed_keys = std::move(keys).value();
  }
  if (args.count("http-port")) {
    options.http_port = args["http-port"].as<int>();
    if (options.http_port < 0 || options.http_port > 65535) {
      return invalid_argument("--http-port must be 0..65535");
    }
  }
  options.http_host = args["http-bind"].as<std::string>();
  int shutdown_ms = args["shutdown-timeout-ms"].as<int>();
  if (shutdown_ms < 0) return invalid_argument("--shutdown-timeout-ms must be 0 or more");
  options.shutdown_timeout = std::chrono::milliseconds(shutdown_ms);
  int slow_ms = args["slow-tail-ms"].as<int>();
  if (slow_ms < 0) return invalid_argument("--slow-tail-ms must be 0 or more");
  options.slow_tail = std::chrono::milliseconds(slow_ms);
  int slow_io_us = args["slow-io-us"].as<int>();
  if (slow_io_us < 0) return invalid_argument("--slow-io-us must be 0 or more");
  options.slow_io = std::chrono::microseconds(slow_io_us);

  if (args.count("endpoint-file")) command.endpoint_file = args["endpoint-file"].as<std::string>();
  if (args.count("http-port-file")) {
    if (!args.count("http-port")) return invalid_argument("--http-port-file needs --http-port");
    command.http_port_file = args["http-port-file"].as<std::string>();
  }
  return command;
}

}  // namespace edgesplit::server
