// edgesplit-device: runs the head of a CNN on this device and the tail on an edgesplit server.
#include <cxxopts.hpp>
#include <iostream>
#include <string>

#include "device/agent.h"

namespace {

int usage_error(const std::string& message) {
  std::cerr << "edgesplit-device: " << message << " (see edgesplit-device --help)\n";
  return 2;
}

// "1".."16" quantized, "fp16", "fp32"; false when it is none of those.
bool parse_bits(const std::string& s, edgesplit::packing::EncodeOptions& eo) {
  using edgesplit::packing::Format;
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
    ("cut", "cut point id (edgesplit-inspect lists them), 'input' (send the input) or 'device' (all local)",
     cxxopts::value<std::string>()->default_value("device"))
    ("bits", "precision of the tensor sent: 1..16 (quantized), fp16 or fp32", cxxopts::value<std::string>()->default_value("8"))
    ("lossless", "lossless stage: none, blosc-lz4, blosc-zstd or zstd", cxxopts::value<std::string>()->default_value("none"))
    ("clip-percentile", "clip the quantization range to this percentile (0: min/max)",
     cxxopts::value<double>()->default_value("0"))
    ("per-channel", "one scale per channel instead of per tensor")
    ("top-k", "classes reported per frame", cxxopts::value<int>()->default_value("5"))
    ("in-flight", "frames sent and not yet answered at once", cxxopts::value<int>()->default_value("1"))
    ("timeout-ms", "a frame not answered by then is finished on the device", cxxopts::value<int>()->default_value("1000"))
    ("threads", "LibTorch intra-op threads (0: LibTorch's default)", cxxopts::value<int>()->default_value("0"))
    ("output", "write JSON lines to this file instead of stdout", cxxopts::value<std::string>()->default_value(""))
    ("name", "device name sent in the handshake", cxxopts::value<std::string>()->default_value("edgesplit-device"))
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
  if (!parse_bits(args["bits"].as<std::string>(), o.encode)) {
    return usage_error("--bits " + args["bits"].as<std::string>() +
                       " is not a precision: use 1..16, fp16 or fp32");
  }
  auto lossless = edgesplit::packing::parse_lossless(args["lossless"].as<std::string>());
  if (!lossless.ok()) return usage_error(lossless.status().message());
  o.encode.lossless = *lossless;
  o.encode.range.clip_percentile = args["clip-percentile"].as<double>();
  if (o.encode.range.clip_percentile != 0 &&
      (o.encode.range.clip_percentile < 50 || o.encode.range.clip_percentile > 100)) {
    return usage_error("--clip-percentile must be 0 (off) or between 50 and 100, e.g. 99.99");
  }
  o.encode.per_channel = args.count("per-channel") > 0;
  o.top_k = args["top-k"].as<int>();
  o.in_flight = args["in-flight"].as<int>();
  o.timeout_ms = args["timeout-ms"].as<int>();
  o.threads = args["threads"].as<int>();
  o.output = args["output"].as<std::string>();
  o.device_name = args["name"].as<std::string>();
  o.quiet = args.count("quiet") > 0;
  if (o.max_frames < 0) return usage_error("--max-frames must be 0 or more");
  if (o.loop < 0) return usage_error("--loop must be 0 (forever) or more");
  if (o.top_k < 1 || o.top_k > 100) return usage_error("--top-k must be between 1 and 100");
  if (o.in_flight < 1 || o.in_flight > 64)
    return usage_error("--in-flight must be between 1 and 64");
  if (o.timeout_ms < 1) return usage_error("--timeout-ms must be at least 1");
  if (o.threads < 0) return usage_error("--threads must be 0 (default) or more");
  return edgesplit::device::run_agent(o);
}
