// edgesplit-device: runs the head of a CNN on this device and the tail on an edgesplit server.
#include <cxxopts.hpp>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>

#include "device/agent.h"
#include "transport/curve.h"

namespace {

int usage_error(const std::string& message) {
  std::cerr << "edgesplit-device: " << message << " (see edgesplit-device --help)\n";
  return 2;
}

// "1".."16" quantized, "fp16", "fp32", or "jpegQ" (Q = 1..100, the input as JPEG); false when
// it is none of those.
bool parse_bits(const std::string& s, edgesplit::packing::EncodeOptions& eo, int& jpeg_quality) {
  using edgesplit::packing::Format;
  jpeg_quality = 0;
  if (s.rfind("jpeg", 0) == 0) {
    try {
      size_t used = 0;
      int q = std::stoi(s.substr(4), &used);
      if (used != s.size() - 4 || q < 1 || q > 100) return false;
      jpeg_quality = q;
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }
  if (s == "fp32" || s == "32") {
    eo.format = Format::kFloat32;
    eo.bits = 32;
    return true;
  }
  if (s == "fp16") {
    eo.format = Format::kFloat16;
    eo.bits = 16;
    return true;
  }
  try {
    size_t used = 0;
    int b = std::stoi(s, &used);
    if (used != s.size() || b < 1 || b > 16) return false;
    eo.format = Format::kQuantized;
    eo.bits = b;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-device",
                       "Runs a CNN split between this device and an edgesplit server: the head "
                       "up to --cut here, the crossing tensor packed to --bits, the tail on the "
                       "server. Prints one JSON line per frame.");
  // clang-format off
  cli.add_options()
    ("server", "server endpoint, e.g. tcp://10.0.0.2:5555 (empty: everything on the device)",
     cxxopts::value<std::string>()->default_value(""))
    ("model", "TorchScript model file (the same file the server serves)", cxxopts::value<std::string>())
    ("meta", "model metadata JSON (default: beside the model)", cxxopts::value<std::string>()->default_value(""))
    ("input", "image file, folder of images, video file, or camera:N", cxxopts::value<std::string>())
    ("max-frames", "stop after this many frames (0: the whole input)", cxxopts::value<int64_t>()->default_value("0"))
    ("loop", "passes over a file or folder input (0: forever)", cxxopts::value<int>()->default_value("1"))
    ("cut", "fix the plan's cut: an id (edgesplit-inspect lists them), 'input' or 'device' "
     "(default: the scheduler chooses every frame)", cxxopts::value<std::string>()->default_value(""))
    ("bits", "with --cut: precision sent, 1..16 (quantized), fp16, fp32, or jpegQ at the input",
     cxxopts::value<std::string>()->default_value("8"))
    ("plan", "fix the plan as cut=ID,bits=B[,lossless=L] (same as --cut/--bits/--lossless)",
     cxxopts::value<std::string>()->default_value(""))
    ("profile", "the model's profile (default: MODEL.profile.json beside the model)",
     cxxopts::value<std::string>()->default_value(""))
    ("objective", "what the scheduler optimises: latency, throughput, energy, data or cost",
     cxxopts::value<std::string>()->default_value("latency"))
    ("max-accuracy-drop", "constraint: top-1 points lost vs fp32, from the profile", cxxopts::value<double>())
    ("max-latency-ms", "constraint: predicted end-to-end latency per frame", cxxopts::value<double>())
    ("min-fps", "constraint: pipelined frames per second", cxxopts::value<double>())
    ("max-bytes-per-frame", "constraint: bytes sent per frame", cxxopts::value<double>())
    ("max-device-memory-mb", "constraint: head weights + activations on the device (MiB); the "
     "device does not load what it cannot hold", cxxopts::value<double>())
    ("max-server-ms", "constraint: server compute per frame", cxxopts::value<double>())
    ("device-power", "device description JSON: compute_watts, radio_watts, idle_watts",
     cxxopts::value<std::string>()->default_value(""))
    ("server-price", "price of one second of server compute, for --objective cost",
     cxxopts::value<double>()->default_value("1"))
    ("lossless", "lossless stage: none, blosc-lz4, blosc-zstd or zstd", cxxopts::value<std::string>()->default_value("none"))
    ("clip-percentile", "clip the quantization range to this percentile (0: min/max)",
     cxxopts::value<double>()->default_value("0"))
    ("per-channel", "one scale per channel instead of per tensor")
    ("top-k", "classes reported per frame", cxxopts::value<int>()->default_value("5"))
    ("in-flight", "frames sent and not yet answered at once (0: 1, or 4 with --objective throughput)",
     cxxopts::value<int>()->default_value("0"))
    ("local-lane", "run whole frames on the device on a second thread: auto (frames planned on "
     "the device, frames while a lost server is away, and with --objective throughput frames "
     "beside the full --in-flight window when the device would otherwise wait), on (also beside "
     "any full window) or off",
     cxxopts::value<std::string>()->default_value("auto"))
    ("timeout-ms", "a frame not answered by then is finished on the device", cxxopts::value<int>()->default_value("1000"))
    ("threads", "LibTorch intra-op threads (0: LibTorch's default); the agent's loop and its local "
     "lane run one network at a time, each with all of them", cxxopts::value<int>()->default_value("0"))
    ("engine", "how networks run: optimized (LibTorch's inference passes with the best backend it "
     "has: oneDNN, else XNNPACK), onednn, xnnpack, or plain (the frozen graph as it is)", cxxopts::value<std::string>()->default_value("optimized"))
    ("output", "write JSON lines to this file instead of stdout", cxxopts::value<std::string>()->default_value(""))
    ("name", "device name sent in the handshake", cxxopts::value<std::string>()->default_value("edgesplit-device"))
    ("server-key", "the server's CURVE public key file (.pub from edgesplit-keygen): encrypts the link",
     cxxopts::value<std::string>())
    ("key", "this device's CURVE secret key file (.key; default with --server-key: a fresh key per run)",
     cxxopts::value<std::string>())
    ("quiet", "no log lines or summary on stderr")
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
  if (!args.count("input")) {
    return usage_error("no input given: pass --input with an image, a folder, a video or camera:0");
  }

  edgesplit::device::AgentOptions o;
  o.server = args["server"].as<std::string>();
  o.model_path = args["model"].as<std::string>();
  o.meta_path = args["meta"].as<std::string>();
  o.input = args["input"].as<std::string>();
  o.max_frames = args["max-frames"].as<int64_t>();
  o.loop = args["loop"].as<int>();
  o.cut = args["cut"].as<std::string>();
  std::string bits = args["bits"].as<std::string>();
  std::string lossless_name = args["lossless"].as<std::string>();
  if (const std::string plan = args["plan"].as<std::string>(); !plan.empty()) {
    // cut=ID,bits=B[,lossless=L]
    std::stringstream ss(plan);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const auto eq = item.find('=');
      const std::string key = item.substr(0, eq);
      const std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
      if (key == "cut" && !value.empty()) {
        o.cut = value;
      } else if (key == "bits" && !value.empty()) {
        bits = value;
      } else if (key == "lossless" && !value.empty()) {
        lossless_name = value;
      } else {
        return usage_error("--plan " + plan + " is not cut=ID,bits=B[,lossless=L]");
      }
    }
    if (o.cut.empty()) return usage_error("--plan " + plan + " names no cut: use cut=ID,bits=B");
  }
  if (!parse_bits(bits, o.encode, o.jpeg_quality)) {
    return usage_error("--bits " + bits + " is not a precision: use 1..16, fp16, fp32 or jpegQ");
  }
  if (o.jpeg_quality > 0 && o.cut.empty()) o.cut = "input";
  auto lossless = edgesplit::packing::parse_lossless(lossless_name);
  if (!lossless.ok()) return usage_error(lossless.status().message());
  o.encode.lossless = *lossless;
  o.profile_path = args["profile"].as<std::string>();
  o.device_power_path = args["device-power"].as<std::string>();
  auto objective = edgesplit::partitioner::parse_objective(args["objective"].as<std::string>());
  if (!objective.ok()) return usage_error(objective.status().message());
  o.scheduler.objective = *objective;
  auto& c = o.scheduler.constraints;
  struct Bound {
    const char* flag;
    std::optional<double>* slot;
  };
  for (Bound b : {Bound{"max-accuracy-drop", &c.max_accuracy_drop_pp},
                  Bound{"max-latency-ms", &c.max_latency_ms}, Bound{"min-fps", &c.min_fps},
                  Bound{"max-bytes-per-frame", &c.max_bytes},
                  Bound{"max-device-memory-mb", &c.max_device_memory_mb},
                  Bound{"max-server-ms", &c.max_server_ms}}) {
    if (!args.count(b.flag)) continue;
    double v = args[b.flag].as<double>();
    if (!(v >= 0)) return usage_error(std::string("--") + b.flag + " must be 0 or more");
    *b.slot = v;
  }
  o.scheduler.server_price_per_s = args["server-price"].as<double>();
  if (o.scheduler.server_price_per_s < 0) return usage_error("--server-price must be 0 or more");
  o.encode.range.clip_percentile = args["clip-percentile"].as<double>();
  if (o.encode.range.clip_percentile != 0 &&
      (o.encode.range.clip_percentile < 50 || o.encode.range.clip_percentile > 100)) {
    return usage_error("--clip-percentile must be 0 (off) or between 50 and 100, e.g. 99.99");
  }
  o.encode.per_channel = args.count("per-channel") > 0;
  o.top_k = args["top-k"].as<int>();
  o.in_flight = args["in-flight"].as<int>();
  const std::string lane = args["local-lane"].as<std::string>();
  if (lane == "auto") {
    o.local_lane = edgesplit::device::LocalLane::kAuto;
  } else if (lane == "on") {
    o.local_lane = edgesplit::device::LocalLane::kOn;
  } else if (lane == "off") {
    o.local_lane = edgesplit::device::LocalLane::kOff;
  } else {
    return usage_error("--local-lane must be auto, on or off, not \"" + lane + "\"");
  }
  o.timeout_ms = args["timeout-ms"].as<int>();
  o.threads = args["threads"].as<int>();
  auto engine = edgesplit::partitioner::parse_engine(args["engine"].as<std::string>());
  if (!engine) return usage_error("--engine must be optimized, onednn, xnnpack or plain");
  o.engine = *engine;
  o.output = args["output"].as<std::string>();
  o.device_name = args["name"].as<std::string>();
  if (args.count("server-key")) {
    auto key = edgesplit::transport::read_key_file(args["server-key"].as<std::string>());
    if (!key.ok()) return usage_error("--server-key: " + key.status().message());
    o.server_public_key = *key;
  }
  if (args.count("key")) {
    if (!args.count("server-key")) {
      return usage_error("--key needs --server-key: the device key is only used with CURVE");
    }
    auto key = edgesplit::transport::read_key_file(args["key"].as<std::string>());
    if (!key.ok()) return usage_error("--key: " + key.status().message());
    o.device_secret_key = *key;
  }
  o.quiet = args.count("quiet") > 0;
  if (o.max_frames < 0) return usage_error("--max-frames must be 0 or more");
  if (o.loop < 0) return usage_error("--loop must be 0 (forever) or more");
  if (o.top_k < 1 || o.top_k > 100) return usage_error("--top-k must be between 1 and 100");
  if (o.in_flight < 0 || o.in_flight > 64) {
    return usage_error("--in-flight must be between 0 (automatic) and 64");
  }
  if (o.timeout_ms < 1) return usage_error("--timeout-ms must be at least 1");
  if (o.threads < 0) return usage_error("--threads must be 0 (default) or more");
  return edgesplit::device::run_agent(o);
}
