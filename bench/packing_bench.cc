// edgesplit-bench-packing: throughput, size and entropy of the packing codec on real MobileNetV2
// activations (../shared; synthetic data with the same statistics when it is absent, and the
// output says so), with memcpy of the same buffer and LibTorch's quantize_per_tensor +
// pickle_save as baselines measured in the same run. Prints a table and writes JSON.
#include <torch/script.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxopts.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "packing/codec.h"
#include "packing/entropy_codec.h"

namespace fs = std::filesystem;
using edgesplit::packing::CodecTable;
using edgesplit::packing::CodecTableSet;
using edgesplit::packing::CodecTableSpec;
using edgesplit::packing::DecodeLimits;
using edgesplit::packing::EncodeOptions;
using edgesplit::packing::Format;
using edgesplit::packing::Lossless;
using edgesplit::packing::SymbolLayout;
using json = nlohmann::json;

namespace {

struct Activation {
  std::string name;  // "features.3.conv.0 (post-ReLU6)"
  std::string kind;  // "non-negative" or "signed"
  std::vector<int64_t> shape;
  std::vector<float> values;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median seconds of `runs` calls after `warmup` calls.
double median_time(int warmup, int runs, const std::function<void()>& f) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t(runs);
  for (int i = 0; i < runs; ++i) {
    const double a = now_s();
    f();
    t[i] = now_s() - a;
  }
  std::nth_element(t.begin(), t.begin() + runs / 2, t.end());
  return t[runs / 2];
}

fs::path default_shared() {
  if (const char* env = std::getenv("EDGESPLIT_SHARED_DIR")) return env;
  return fs::path(EDGESPLIT_SOURCE_DIR).parent_path() / "shared";
}

// The README's preprocessing: RGB, short side 256, center crop 224, /255, (x - m) / m, m = 128/255.
torch::Tensor preprocess(const fs::path& file) {
  cv::Mat bgr = cv::imread(file.string(), cv::IMREAD_COLOR);
  if (bgr.empty()) throw std::runtime_error("cannot read image " + file.string());
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  const double s = 256.0 / std::min(rgb.cols, rgb.rows);
  cv::Mat resized;
  cv::resize(rgb, resized,
             cv::Size(std::max(224, static_cast<int>(std::lround(rgb.cols * s))),
                      std::max(224, static_cast<int>(std::lround(rgb.rows * s)))),
             0, 0, cv::INTER_LINEAR);
  const cv::Rect crop((resized.cols - 224) / 2, (resized.rows - 224) / 2, 224, 224);
  cv::Mat f;
  resized(crop).convertTo(f, CV_32FC3, 1.0 / 255.0);
  const float m = 128.0f / 255.0f;
  auto t = torch::from_blob(f.data, {224, 224, 3}, torch::kFloat32).clone();
  return ((t - m) / m).permute({2, 0, 1}).unsqueeze(0).contiguous();
}

Activation to_activation(const std::string& name, const torch::Tensor& t) {
  Activation a;
  a.name = name;
  auto c = t.detach().contiguous().to(torch::kFloat32);
  a.shape.assign(c.sizes().begin(), c.sizes().end());
  a.values.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  a.kind = *std::min_element(a.values.begin(), a.values.end()) >= 0.0f ? "non-negative" : "signed";
  return a;
}

// Runs model.features child by child on each image and keeps every child's output, plus the
// first (post-ReLU6 expansion) layer inside each inverted-residual block.
std::vector<std::vector<Activation>> capture(const fs::path& model_path,
                                             const std::vector<fs::path>& images) {
  torch::NoGradGuard no_grad;
  torch::jit::Module model = torch::jit::load(model_path.string());
  model.eval();
  torch::jit::Module features = model.attr("features").toModule();
  std::vector<std::vector<Activation>> per_image;
  for (const auto& img : images) {
    std::vector<Activation> acts;
    torch::Tensor x = preprocess(img);
    for (const auto& child : features.named_children()) {
      torch::jit::Module m = child.value;
      if (m.hasattr("conv")) {
        torch::jit::Module conv = m.attr("conv").toModule();
        for (const auto& sub : conv.named_children()) {
          torch::jit::Module first = sub.value;
          torch::Tensor inner = first.forward({x}).toTensor();
          acts.push_back(to_activation("features." + child.name + ".conv." + sub.name, inner));
          break;
        }
      }
      x = m.forward({x}).toTensor();
      acts.push_back(to_activation("features." + child.name, x));
    }
    per_image.push_back(std::move(acts));
  }
  return per_image;
}

// Synthetic stand-ins with the statistics of MobileNetV2 activations: post-ReLU6 tensors with
// ~55% exact zeros and a half-normal body clipped at 6; block outputs Laplacian-like and signed.
std::vector<Activation> synthetic(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::exponential_distribution<float> e(1.5f);
  auto relu6 = [&](const std::string& name, std::vector<int64_t> shape) {
    Activation a{name + " (synthetic)", "non-negative", shape, {}};
    int64_t n = 1;
    for (auto d : shape) n *= d;
    a.values.resize(n);
    for (auto& v : a.values) v = std::clamp(1.2f * g(rng) - 0.15f, 0.0f, 6.0f);
    return a;
  };
  auto block = [&](const std::string& name, std::vector<int64_t> shape) {
    Activation a{name + " (synthetic)", "signed", shape, {}};
    int64_t n = 1;
    for (auto d : shape) n *= d;
    a.values.resize(n);
    for (auto& v : a.values) v = (rng() & 1 ? 1.0f : -1.0f) * e(rng);
    return a;
  };
  return {relu6("features.0", {1, 32, 112, 112}),        block("features.1", {1, 16, 112, 112}),
          relu6("features.2.conv.0", {1, 96, 112, 112}), block("features.3", {1, 24, 56, 56}),
          relu6("features.4.conv.0", {1, 144, 56, 56}),  block("features.6", {1, 32, 28, 28}),
          relu6("features.7.conv.0", {1, 192, 28, 28}),  block("features.13", {1, 96, 14, 14}),
          relu6("features.14.conv.0", {1, 576, 14, 14}), block("features.16", {1, 160, 7, 7}),
          relu6("features.18", {1, 1280, 7, 7})};
}

// Order-0 entropy (bits per value) of the quantization codes of a packed tensor, from its
// decoded values and header.
double code_entropy(const std::vector<uint8_t>& packed, const std::vector<float>& decoded) {
  auto h = edgesplit::packing::parse_header(packed.data(), packed.size());
  if (!h.ok() || h->format != Format::kQuantized || h->per_channel) return 0.0;
  std::vector<uint64_t> hist(size_t{1} << h->bits, 0);
  const float scale = h->scale[0], offset = h->offset[0];
  for (float v : decoded) {
    const long code = scale > 0.0f ? std::lround((v - offset) / scale) : 0;
    hist[std::clamp<long>(code, 0, static_cast<long>(hist.size()) - 1)]++;
  }
  double e = 0.0;
  const double n = static_cast<double>(decoded.size());
  for (uint64_t c : hist) {
    if (c) e -= (c / n) * std::log2(c / n);
  }
  return e;
}

struct Config {
  int bits;
  Lossless lossless;
  SymbolLayout layout;
};

std::string config_name(const Config& c) {
  std::string s = "q" + std::to_string(c.bits);
  if (c.lossless != Lossless::kNone) {
    s += "+" + edgesplit::packing::lossless_name(c.lossless);
    s += c.layout == SymbolLayout::kPacked ? "/packed" : "/bytes";
  }
  return s;
}

struct Measure {
  double enc_s = 0, dec_s = 0;
  size_t bytes = 0;
  double bits_per_elem = 0, entropy = 0;
  Lossless stored = Lossless::kNone;
};

Measure measure(const Activation& a, const Config& c, int runs) {
  EncodeOptions o;
  o.format = Format::kQuantized;
  o.bits = c.bits;
  o.lossless = c.lossless;
  o.symbol_layout = c.layout;
  const size_t n = a.values.size();
  std::vector<uint8_t> buf(*edgesplit::packing::max_encoded_size(a.shape, o));
  size_t written = 0;
  Measure m;
  m.enc_s = median_time(2, runs, [&] {
    written =
        *edgesplit::packing::encode_into(a.values.data(), n, a.shape, o, buf.data(), buf.size());
  });
  buf.resize(written);
  std::vector<float> out(n);
  m.dec_s = median_time(2, runs, [&] {
    auto st = edgesplit::packing::decode_into(buf.data(), buf.size(), out.data(), n);
    if (!st.ok()) throw std::runtime_error(st.to_string());
  });
  m.bytes = written;
  m.bits_per_elem = 8.0 * static_cast<double>(written) / static_cast<double>(n);
  m.entropy = code_entropy(buf, out);
  m.stored = edgesplit::packing::parse_header(buf.data(), buf.size())->lossless;
  return m;
}

double memcpy_time(const std::vector<float>& v, int runs) {
  std::vector<float> dst(v.size());
  return median_time(3, runs, [&] {
    std::memcpy(dst.data(), v.data(), v.size() * sizeof(float));
    asm volatile("" : : "r"(dst.data()) : "memory");
  });
}

// 256 x 56 x 56 from real post-ReLU6 activations: the 56x56 expansion outputs of the captured
// images' blocks, channels concatenated and cropped to 256.
Activation layer1_sized(const std::vector<std::vector<Activation>>& per_image) {
  Activation out{"256x56x56 from", "non-negative", {1, 256, 56, 56}, {}};
  const size_t plane = 56 * 56;
  std::vector<std::string> sources;
  for (const auto& acts : per_image) {
    for (const auto& a : acts) {
      if (a.shape.size() == 4 && a.shape[2] == 56 && a.shape[3] == 56 && a.kind == "non-negative") {
        const size_t take = std::min<size_t>(a.shape[1], 256 - out.values.size() / plane);
        out.values.insert(out.values.end(), a.values.begin(), a.values.begin() + take * plane);
        sources.push_back(a.name + "[:" + std::to_string(take) + "]");
        if (out.values.size() == 256 * plane) break;
      }
    }
    if (out.values.size() == 256 * plane) break;
  }
  if (out.values.size() != 256 * plane) throw std::runtime_error("no 56x56 post-ReLU6 tensors");
  for (const auto& s : sources) out.name += " " + s;
  return out;
}

// FW-ECSQ (wire format v2) timing data: channel maps with neighbour correlation 0.7, means and
// spreads per channel, and steps spread like features.16's Fisher steps (3.7x over channels, 25x
// over positions).
struct EcsqCase {
  std::vector<int64_t> shape;
  CodecTableSpec spec;
  std::vector<std::vector<float>> frames;  // the last one is timed, the others calibrate
};

EcsqCase ecsq_case(std::vector<int64_t> shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int64_t C = shape[1], H = shape[2], W = shape[3];
  EcsqCase k;
  k.shape = shape;
  k.spec.shape = shape;
  for (int64_t c = 0; c < C; ++c) {
    k.spec.mu.push_back(0.2f * g(rng));
    k.spec.step_c.push_back(std::exp(0.65f * (static_cast<float>(c % 11) / 10.0f - 0.5f)));
  }
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      const float r = std::hypot(static_cast<float>(h) - (H - 1) / 2.0f,
                                 static_cast<float>(w) - (W - 1) / 2.0f) /
                      std::hypot((H - 1) / 2.0f, (W - 1) / 2.0f);
      k.spec.step_p.push_back(std::exp(3.2f * (r - 0.5f)));
    }
  }
  for (int f = 0; f < 17; ++f) {
    std::vector<float> v(static_cast<size_t>(C * H * W));
    for (int64_t c = 0; c < C; ++c) {
      const float sd = 3.5f + 0.5f * static_cast<float>(c % 5);
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t w = 0; w < W; ++w) {
          const size_t e = static_cast<size_t>((c * H + h) * W + w);
          float x = g(rng);
          if (w > 0) x = 0.7f * (v[e - 1] - k.spec.mu[c]) / sd + 0.71f * x;
          v[e] = k.spec.mu[c] + sd * x;
        }
      }
    }
    k.frames.push_back(std::move(v));
  }
  return k;
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-bench-packing",
                       "Codec throughput, size and entropy on MobileNetV2 activations");
  cli.add_options()("json", "write results as JSON to FILE", cxxopts::value<std::string>())(
      "model", "TorchScript MobileNetV2 (default: ../shared)", cxxopts::value<std::string>())(
      "images", "folder of JPEG images (default: ../shared imagenet-val-1300/images)",
      cxxopts::value<std::string>())("image-count", "images to capture activations from",
                                     cxxopts::value<int>()->default_value("2"))(
      "runs", "timed runs per measurement (median reported)",
      cxxopts::value<int>()->default_value("15"))(
      "check", "exit 1 when a target is missed (bench/run.sh's contract)")("h,help",
                                                                           "show this help");
  cxxopts::ParseResult args;
  try {
    args = cli.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "edgesplit-bench-packing: " << e.what() << " (see --help)\n";
    return 2;
  }
  if (args.count("help")) {
    std::cout << cli.help() << "\n";
    return 0;
  }
  const int runs = std::max(1, args["runs"].as<int>());
  const fs::path shared = default_shared();
  const fs::path model = args.count("model")
                             ? fs::path(args["model"].as<std::string>())
                             : shared / "models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt";
  const fs::path image_dir = args.count("images") ? fs::path(args["images"].as<std::string>())
                                                  : shared / "data/imagenet-val-1300/images";
  if (args.count("model") && !fs::exists(model)) {
    std::cerr << "edgesplit-bench-packing: model " << model << " does not exist\n";
    return 2;
  }

  std::vector<std::vector<Activation>> per_image;
  std::string source;
  if (fs::exists(model) && fs::is_directory(image_dir)) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(image_dir)) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    files.resize(std::min<size_t>(files.size(), std::max(1, args["image-count"].as<int>())));
    try {
      per_image = capture(model, files);
    } catch (const std::exception& e) {
      std::cerr << "edgesplit-bench-packing: capturing activations failed: " << e.what() << "\n";
      return 1;
    }
    source = "real MobileNetV2 activations from " + std::to_string(files.size()) + " images of " +
             image_dir.string();
  } else {
    per_image = {synthetic(1), synthetic(2)};
    source = "SYNTHETIC data (no ../shared model/images found): MobileNetV2-like statistics";
  }
  std::printf("edgesplit-bench-packing: %s; %d runs per measurement, medians\n\n", source.c_str(),
              runs);
  json out;
  out["source"] = source;
  out["runs"] = runs;

  // 1. The 256x56x56 tensor: every bits x lossless x layout, against memcpy.
  const Activation big = layer1_sized(per_image);
  const std::vector<Config> configs = [] {
    std::vector<Config> c;
    for (int bits : {2, 3, 4, 8}) {
      c.push_back({bits, Lossless::kNone, SymbolLayout::kAuto});
      for (Lossless l : {Lossless::kBloscLz4, Lossless::kBloscZstd, Lossless::kZstd}) {
        for (SymbolLayout s : {SymbolLayout::kPacked, SymbolLayout::kBytes})
          c.push_back({bits, l, s});
      }
    }
    return c;
  }();
  const double gb = static_cast<double>(big.values.size() * sizeof(float)) / 1e9;
  std::printf("[1] %s\n    shape 1x256x56x56, %s, %.1f MB fp32\n", big.name.c_str(),
              big.kind.c_str(), gb * 1e3);
  std::printf("%-24s %9s %9s %9s %8s %8s %8s %8s %7s %s\n", "config", "enc GB/s", "dec GB/s",
              "memcpy", "enc/mcp", "dec/mcp", "bits/el", "entropy", "bits/H", "stored");
  json big_rows = json::array();
  double enc4 = 0, dec4 = 0, mcp4 = 0;
  for (const Config& c : configs) {
    const double mcp = memcpy_time(big.values, runs);
    const Measure m = measure(big, c, runs);
    const double enc_gbs = gb / m.enc_s, dec_gbs = gb / m.dec_s, mcp_gbs = gb / mcp;
    std::printf("%-24s %9.2f %9.2f %9.2f %8.2f %8.2f %8.3f %8.3f %7.3f %s\n",
                config_name(c).c_str(), enc_gbs, dec_gbs, mcp_gbs, mcp / m.enc_s, mcp / m.dec_s,
                m.bits_per_elem, m.entropy, m.bits_per_elem / m.entropy,
                edgesplit::packing::lossless_name(m.stored).c_str());
    big_rows.push_back({{"config", config_name(c)},
                        {"bits", c.bits},
                        {"lossless", edgesplit::packing::lossless_name(c.lossless)},
                        {"layout", c.layout == SymbolLayout::kPacked ? "packed" : "bytes"},
                        {"stored_lossless", edgesplit::packing::lossless_name(m.stored)},
                        {"encode_gbps", enc_gbs},
                        {"decode_gbps", dec_gbs},
                        {"memcpy_gbps", mcp_gbs},
                        {"encode_vs_memcpy", mcp / m.enc_s},
                        {"decode_vs_memcpy", mcp / m.dec_s},
                        {"bytes", m.bytes},
                        {"bits_per_element", m.bits_per_elem},
                        {"entropy_bits", m.entropy}});
    if (c.bits == 4 && c.lossless == Lossless::kNone) {
      enc4 = m.enc_s;
      dec4 = m.dec_s;
      mcp4 = mcp;
    }
  }
  out["tensor_256x56x56"] = {{"name", big.name}, {"kind", big.kind}, {"rows", big_rows}};

  // 2. Every captured activation at 4 bits: entropy and each lossless codec (byte symbols and
  // packed), to check the lossless stage against the order-0 entropy.
  std::printf("\n[2] 4-bit codes of each captured activation (image 1 of %zu): bits/element\n",
              per_image.size());
  std::printf("%-28s %-13s %-16s %7s", "activation", "kind", "shape", "entropy");
  const std::vector<Config> lossless_configs = {{4, Lossless::kBloscLz4, SymbolLayout::kPacked},
                                                {4, Lossless::kBloscLz4, SymbolLayout::kBytes},
                                                {4, Lossless::kBloscZstd, SymbolLayout::kPacked},
                                                {4, Lossless::kBloscZstd, SymbolLayout::kBytes},
                                                {4, Lossless::kZstd, SymbolLayout::kPacked},
                                                {4, Lossless::kZstd, SymbolLayout::kBytes}};
  for (const auto& c : lossless_configs) {
    std::printf(" %15s", config_name(c).substr(3).c_str());
  }
  std::printf("\n");
  std::map<std::string, double> total_bits;
  double total_entropy_bits = 0;
  json act_rows = json::array();
  const int act_runs = std::max(1, runs / 5);
  for (const auto& acts : per_image) {
    for (const Activation& a : acts) {
      const bool show = &acts == &per_image.front();
      std::string shape;
      for (auto d : a.shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
      json row = {{"name", a.name}, {"kind", a.kind}, {"shape", a.shape}};
      double entropy = 0;
      std::vector<double> bpe;
      for (const auto& c : lossless_configs) {
        const Measure m = measure(a, c, act_runs);
        entropy = m.entropy;
        bpe.push_back(m.bits_per_elem);
        total_bits[config_name(c)] += m.bits_per_elem * a.values.size();
        row[config_name(c)] = m.bits_per_elem;
      }
      total_entropy_bits += entropy * a.values.size();
      row["entropy_bits"] = entropy;
      act_rows.push_back(row);
      if (show) {
        std::printf("%-28s %-13s %-16s %7.3f", a.name.c_str(), a.kind.c_str(), shape.c_str(),
                    entropy);
        for (double b : bpe) std::printf(" %15.3f", b);
        std::printf("\n");
      }
    }
  }
  std::printf("%-28s %-13s %-16s %7s", "all images, bits/H", "", "", "1.000");
  std::string best_codec;
  double best_ratio = 1e9;
  json totals;
  for (const auto& c : lossless_configs) {
    const double r = total_bits[config_name(c)] / total_entropy_bits;
    std::printf(" %15.3f", r);
    totals[config_name(c)] = r;
    if (r < best_ratio) {
      best_ratio = r;
      best_codec = config_name(c);
    }
  }
  std::printf("\n");
  out["activations_q4"] = {{"rows", act_rows}, {"bits_over_entropy", totals}};

  // 3. Small tensor: 16K elements, lossless encode + decode.
  const Activation& src = per_image.front().front();
  Activation small{src.name + "[:16384]", src.kind, {1, 16384}, {}};
  small.values.assign(src.values.begin(), src.values.begin() + 16384);
  std::printf("\n[3] 16384 values of %s, q4: encode + decode\n", src.name.c_str());
  json small_rows = json::array();
  double slowest_small = 0.0;  // the slowest lossless codec
  for (Lossless l : {Lossless::kNone, Lossless::kBloscLz4, Lossless::kBloscZstd, Lossless::kZstd}) {
    const Measure m = measure(small, {4, l, SymbolLayout::kAuto}, runs * 4);
    const double ms = (m.enc_s + m.dec_s) * 1e3;
    std::printf("  %-12s encode %.4f ms  decode %.4f ms  total %.4f ms  %.3f bits/element\n",
                edgesplit::packing::lossless_name(l).c_str(), m.enc_s * 1e3, m.dec_s * 1e3, ms,
                m.bits_per_elem);
    small_rows.push_back({{"lossless", edgesplit::packing::lossless_name(l)},
                          {"encode_ms", m.enc_s * 1e3},
                          {"decode_ms", m.dec_s * 1e3},
                          {"bits_per_element", m.bits_per_elem}});
    if (l != Lossless::kNone) slowest_small = std::max(slowest_small, ms);
  }
  out["small_16k"] = small_rows;

  // 4. LibTorch without edgesplit: quantize_per_tensor (quint8) and pickle_save.
  torch::Tensor t =
      torch::from_blob(const_cast<float*>(big.values.data()), {1, 256, 56, 56}, torch::kFloat32);
  const float lo = std::min(0.0f, t.min().item<float>()),
              hi = std::max(0.0f, t.max().item<float>());
  const double scale = (hi - lo) / 255.0;
  const int64_t zp = static_cast<int64_t>(std::lround(-lo / scale));
  torch::Tensor q;
  std::vector<char> pickled;
  const double tq =
      median_time(2, runs, [&] { q = torch::quantize_per_tensor(t, scale, zp, torch::kQUInt8); });
  const double ts = median_time(2, runs, [&] { pickled = torch::pickle_save(q); });
  double td = median_time(2, runs, [&] {
    auto back = torch::pickle_load(pickled).toTensor().dequantize();
    asm volatile("" : : "r"(back.data_ptr()) : "memory");
  });
  std::printf(
      "\n[4] LibTorch on the 256x56x56 tensor: quantize_per_tensor(quint8) %.3f ms + "
      "pickle_save %.3f ms = %zu bytes (%.3f bits/element); pickle_load + dequantize "
      "%.3f ms\n",
      tq * 1e3, ts * 1e3, pickled.size(),
      8.0 * pickled.size() / static_cast<double>(big.values.size()), td * 1e3);
  out["libtorch_quint8_pickle"] = {{"quantize_ms", tq * 1e3},
                                   {"pickle_save_ms", ts * 1e3},
                                   {"load_dequantize_ms", td * 1e3},
                                   {"bytes", pickled.size()}};

  // 5. FW-ECSQ (wire format v2) at about 1 bit per element: a 16K-element tensor and
  // features.16's shape, 1 and 4 rANS lanes, tables fitted on synthetic data.
  std::printf(
      "\n[5] FW-ECSQ entropy-coded (v2), tables fitted to ~1 bit/element on synthetic "
      "correlated maps: encode + decode, microseconds (median)\n");
  std::printf("  %-12s %5s %9s %8s %9s %9s %9s %9s\n", "shape", "lanes", "bits/el", "bytes",
              "encode", "decode", "total", "memcpy");
  json ecsq_rows = json::array();
  double ecsq_16k_ms = 0.0;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{1, 334, 7, 7}, {1, 160, 7, 7}}) {
    EcsqCase k = ecsq_case(shape, 7);
    const size_t n = k.frames.back().size();
    std::vector<const float*> cal;
    for (size_t i = 0; i + 1 < k.frames.size(); ++i) cal.push_back(k.frames[i].data());
    for (int lanes : {1, 4}) {
      k.spec.lanes = lanes;
      auto fitted = edgesplit::packing::fit_codec_table_for_bytes(
          k.spec, cal, static_cast<double>(n) / 8.0 + 44.0);
      if (!fitted.ok()) {
        std::cerr << "edgesplit-bench-packing: " << fitted.status().to_string() << "\n";
        return 1;
      }
      auto table = std::make_shared<const CodecTable>(std::move(fitted).value());
      CodecTableSet set;
      if (!set.add(table).ok()) return 1;
      DecodeLimits limits;
      limits.tables = &set;
      EncodeOptions o;
      o.format = Format::kEntropyCoded;
      o.entropy_table = table;
      const std::vector<float>& x = k.frames.back();
      std::vector<uint8_t> buf(*edgesplit::packing::max_encoded_size(shape, o));
      size_t written = 0;
      const int ecsq_runs = std::max(51, runs * 20);
      const double enc = median_time(5, ecsq_runs, [&] {
        written = *edgesplit::packing::encode_into(x.data(), n, shape, o, buf.data(), buf.size());
      });
      std::vector<float> back(n);
      const double dec = median_time(5, ecsq_runs, [&] {
        auto st = edgesplit::packing::decode_into(buf.data(), written, back.data(), n, limits);
        if (!st.ok()) throw std::runtime_error(st.to_string());
      });
      const double mcp = memcpy_time(x, ecsq_runs);
      const std::string name = std::to_string(shape[1]) + "x7x7";
      std::printf("  %-12s %5d %9.3f %8zu %9.1f %9.1f %9.1f %9.2f\n", name.c_str(), lanes,
                  8.0 * written / static_cast<double>(n), written, enc * 1e6, dec * 1e6,
                  (enc + dec) * 1e6, mcp * 1e6);
      ecsq_rows.push_back({{"shape", shape},
                           {"lanes", lanes},
                           {"bytes", written},
                           {"bits_per_element", 8.0 * written / static_cast<double>(n)},
                           {"encode_us", enc * 1e6},
                           {"decode_us", dec * 1e6},
                           {"memcpy_us", mcp * 1e6},
                           {"step_scale", table->s_ref}});
      if (shape[1] == 334 && lanes == 4) ecsq_16k_ms = (enc + dec) * 1e3;
    }
  }
  out["ecsq"] = ecsq_rows;

  // Targets.
  const double enc_ratio = mcp4 / enc4, dec_ratio = mcp4 / dec4;
  std::printf("\nTargets\n");
  std::printf("  %s  4-bit quantize+pack >= 0.25x memcpy on 256x56x56: %.3fx\n",
              enc_ratio >= 0.25 ? "PASS" : "FAIL", enc_ratio);
  std::printf("  %s  4-bit unpack+dequantize >= 0.25x memcpy on 256x56x56: %.3fx\n",
              dec_ratio >= 0.25 ? "PASS" : "FAIL", dec_ratio);
  std::printf("  %s  lossless within 1.15x of order-0 entropy at 4 bits (best: %s): %.3fx\n",
              best_ratio <= 1.15 ? "PASS" : "FAIL", best_codec.c_str(), best_ratio);
  std::printf("  %s  lossless encode+decode of 16K elements < 0.2 ms (slowest codec): %.4f ms\n",
              slowest_small < 0.2 ? "PASS" : "FAIL", slowest_small);
  std::printf("  %s  FW-ECSQ (4 lanes) encode+decode of 16,366 elements < 0.2 ms: %.4f ms\n",
              ecsq_16k_ms < 0.2 ? "PASS" : "FAIL", ecsq_16k_ms);
  out["targets"] = {
      {"encode_q4_vs_memcpy",
       {{"value", enc_ratio}, {"target", 0.25}, {"pass", enc_ratio >= 0.25}}},
      {"decode_q4_vs_memcpy",
       {{"value", dec_ratio}, {"target", 0.25}, {"pass", dec_ratio >= 0.25}}},
      {"lossless_vs_entropy_q4",
       {{"value", best_ratio},
        {"codec", best_codec},
        {"target", 1.15},
        {"pass", best_ratio <= 1.15}}},
      {"small_16k_lossless_ms",
       {{"value", slowest_small}, {"target", 0.2}, {"pass", slowest_small < 0.2}}},
      {"ecsq_16k_ms", {{"value", ecsq_16k_ms}, {"target", 0.2}, {"pass", ecsq_16k_ms < 0.2}}}};

  if (args.count("json")) {
    std::ofstream f(args["json"].as<std::string>());
    f << out.dump(2) << "\n";
    if (!f) {
      std::cerr << "edgesplit-bench-packing: cannot write " << args["json"].as<std::string>()
                << "\n";
      return 1;
    }
  }
  if (args.count("check")) {
    std::vector<std::string> missed;
    for (const auto& [name, target] : out["targets"].items()) {
      if (!target["pass"].get<bool>()) missed.push_back(name);
    }
    if (!missed.empty()) {
      std::string list;
      for (const auto& m : missed) list += (list.empty() ? "" : ", ") + m;
      std::cerr << "edgesplit-bench-packing: --check: " << missed.size() << " of "
                << out["targets"].size() << " targets missed: " << list << "\n";
      return 1;
    }
  }
  return 0;
}
