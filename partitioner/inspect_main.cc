// edgesplit-inspect MODEL.pt: loads a TorchScript model and lists its cut points (table or JSON).
#include <chrono>
#include <cstdio>
#include <cxxopts.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"

namespace {

using edgesplit::partitioner::CutPoint;
using edgesplit::partitioner::LoadOptions;
using edgesplit::partitioner::ModelGraph;

constexpr int kUserError = 2;

int user_error(const std::string& sentence) {
  std::fprintf(stderr, "edgesplit-inspect: %s\n", sentence.c_str());
  return kUserError;
}

// "1,3,224,224" -> {1, 3, 224, 224}; empty on a malformed list.
std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      return {};
    }
    if (used != item.size() || v <= 0) return {};
    shape.push_back(v);
  }
  return shape;
}

std::string join_shape(const std::vector<int64_t>& shape, const char* sep) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? sep : "") + std::to_string(shape[i]);
  return s;
}

std::string shapes_of(const CutPoint& cut) {
  std::string s;
  for (const auto& t : cut.tensors) s += (s.empty() ? "" : " + ") + join_shape(t.shape, "x");
  return s;
}

nlohmann::json to_json(const ModelGraph& graph, const std::vector<int64_t>& input_shape,
                       double seconds) {
  nlohmann::json cuts = nlohmann::json::array();
  for (const CutPoint& cut : graph.cuts()) {
    nlohmann::json tensors = nlohmann::json::array();
    for (const auto& t : cut.tensors) {
      tensors.push_back(
          {{"shape", t.shape}, {"elements", t.elements}, {"non_negative", t.non_negative}});
    }
    cuts.push_back({{"id", cut.id},
                    {"name", cut.name},
                    {"tensors", tensors},
                    {"elements", cut.elements},
                    {"fp32_bytes", cut.fp32_bytes},
                    {"non_negative", cut.non_negative()},
                    {"head_weight_bytes", cut.head_weight_bytes},
                    {"tail_weight_bytes", cut.tail_weight_bytes}});
  }
  return {{"model", graph.path()},      {"digest", graph.digest()},
          {"input_shape", input_shape}, {"total_weight_bytes", graph.total_weight_bytes()},
          {"load_seconds", seconds},    {"cuts", cuts}};
}

void print_table(const ModelGraph& graph, const std::vector<int64_t>& input_shape, double seconds) {
  std::printf(
      "model   %s\ndigest  %s\ninput   %s\nweights %.2f MB\nloaded and partitioned in %.3f s: "
      "%zu cut points\n\n",
      graph.path().c_str(), graph.digest().c_str(), join_shape(input_shape, "x").c_str(),
      static_cast<double>(graph.total_weight_bytes()) / 1e6, seconds, graph.cuts().size());
  std::printf("%4s  %-32s %-24s %10s %11s %7s %12s %12s\n", "id", "name", "shape", "elements",
              "fp32 bytes", "non-neg", "head MB", "tail MB");
  for (const CutPoint& cut : graph.cuts()) {
    std::printf("%4d  %-32s %-24s %10lld %11lld %7s %12.3f %12.3f\n", cut.id, cut.name.c_str(),
                shapes_of(cut).c_str(), static_cast<long long>(cut.elements),
                static_cast<long long>(cut.fp32_bytes), cut.non_negative() ? "yes" : "no",
                static_cast<double>(cut.head_weight_bytes) / 1e6,
                static_cast<double>(cut.tail_weight_bytes) / 1e6);
  }
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options options("edgesplit-inspect", "Lists the cut points of a TorchScript model.");
  options.positional_help("MODEL.pt");
  options.add_options()("model", "TorchScript model file", cxxopts::value<std::string>())(
      "json", "print JSON instead of a table")(
      "input-shape", "input shape N,C,H,W (default: from the model's metadata, else 1,3,224,224)",
      cxxopts::value<std::string>())("meta", "model metadata JSON (default: MODEL.json beside it)",
                                     cxxopts::value<std::string>())(
      "max-crossing", "also offer cuts where up to N tensors cross",
      cxxopts::value<int>()->default_value("1"))(
      "prepare", "also build the head and tail of every cut and report how long that took")(
      "h,help", "print this help");
  options.parse_positional({"model"});

  std::string model_path, shape_text, meta_path;
  bool json = false;
  bool prepare = false;
  int max_crossing = 1;
  try {
    auto args = options.parse(argc, argv);
    if (args.count("help")) {
      std::cout << options.help() << "\n";
      return 0;
    }
    if (!args.count("model"))
      return user_error("no model given; usage: edgesplit-inspect MODEL.pt");
    model_path = args["model"].as<std::string>();
    if (args.count("input-shape")) shape_text = args["input-shape"].as<std::string>();
    if (args.count("meta")) meta_path = args["meta"].as<std::string>();
    json = args.count("json") > 0;
    prepare = args.count("prepare") > 0;
    max_crossing = args["max-crossing"].as<int>();
  } catch (const std::exception& e) {
    return user_error(std::string("bad command line (") + e.what() + "); see --help");
  }
  if (max_crossing < 1) return user_error("--max-crossing must be at least 1");

  LoadOptions load_options;
  load_options.max_crossing_tensors = max_crossing;
  // Listing cuts runs nothing: the cuts do not depend on the engine, so skip its passes.
  load_options.engine = edgesplit::partitioner::Engine::kPlain;
  if (!shape_text.empty()) {
    load_options.input_shape = parse_shape(shape_text);
    if (load_options.input_shape.empty()) {
      return user_error("--input-shape '" + shape_text +
                        "' is not a list of positive integers such as 1,3,224,224");
    }
  } else {
    auto info = edgesplit::partitioner::load_model_info(model_path, meta_path);
    if (info.ok()) {
      load_options.input_shape = info->input_shape;
    } else if (!meta_path.empty() || info.status().code() != edgesplit::StatusCode::kNotFound) {
      return user_error(info.status().message());
    }
  }

  auto start = std::chrono::steady_clock::now();
  auto graph = edgesplit::partitioner::ModelGraph::load(model_path, load_options);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!graph.ok()) return user_error(graph.status().message());

  double prepare_seconds = 0;
  if (prepare) {
    auto prepare_start = std::chrono::steady_clock::now();
    for (const CutPoint& cut : graph.value()->cuts()) graph.value()->prepare(cut.id);
    prepare_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - prepare_start).count();
  }
  if (json) {
    auto j = to_json(*graph.value(), load_options.input_shape, seconds);
    if (prepare) j["prepare_seconds"] = prepare_seconds;
    std::cout << j.dump(2) << "\n";
  } else {
    print_table(*graph.value(), load_options.input_shape, seconds);
    if (prepare) {
      std::printf("\nbuilt the head and tail of all %zu cuts in %.3f s\n",
                  graph.value()->cuts().size(), prepare_seconds);
    }
  }
  return 0;
}
