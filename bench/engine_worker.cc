// edgesplit-bench-engine: times edgesplit's engine on one model, driven line by line on stdin so
// that bench/engine/engine_bench.py can interleave it with other contenders (the plain engine,
// PyTorch's optimize_for_inference in another process) in rounds on the same machine.
//
// Start: edgesplit-bench-engine --model M.pt --input-shape 1,3,224,224 [--cuts 3,10,20]
//                               [--engines plain,optimized,xnnpack]
//   prints one JSON line: load time of each engine, the optimized engine's report (and each
//   engine's in "engines"), the cuts (id, name).
// Then, per line on stdin (one JSON line back for each):
//   threads N                 intra-op threads for what follows
//   time CONTENDER RUNS       RUNS timed runs (after one untimed warm-up run) of CONTENDER:
//                               plain          the whole processed graph, plain engine
//                               optimized      the whole model, optimized engine
//                               onednn|xnnpack the whole model with that engine (--engines)
//                               split:C        head then tail of cut C, optimized engine
//                               split-plain:C  head then tail of cut C, plain engine
//                               head:C, tail:C head (tail) of cut C alone, optimized engine
//                             answer: {"contender":..,"ms":[...]} (each run's milliseconds)
//   check                     max |difference| and top-1 agreement of optimized (whole and
//                             every --cuts split) against plain, on a fixed random input
//   quit
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cxxopts.hpp>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "partitioner/model_graph.h"

namespace {

using edgesplit::partitioner::Engine;
using edgesplit::partitioner::LoadOptions;
using edgesplit::partitioner::ModelGraph;
using json = nlohmann::json;

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(std::stoll(item));
  }
  return out;
}

at::Tensor run_split(const ModelGraph& g, int cut, const at::Tensor& input) {
  return g.run_tail(cut, g.run_head(cut, input));
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-bench-engine",
                       "Times edgesplit's engine on one model, driven on stdin (see the source).");
  cli.add_options()("model", "TorchScript model file", cxxopts::value<std::string>())(
      "input-shape", "input shape, e.g. 1,3,224,224",
      cxxopts::value<std::string>()->default_value("1,3,224,224"))(
      "cuts", "cut ids for split:C (comma-separated); empty: none",
      cxxopts::value<std::string>()->default_value(""))(
      "engines", "engines to load (plain and optimized always are)",
      cxxopts::value<std::string>()->default_value("plain,optimized"))("h,help", "this help");
  json hello;
  std::shared_ptr<ModelGraph> plain, optimized;
  std::map<std::string, std::shared_ptr<ModelGraph>> graphs;
  at::Tensor input;
  std::vector<int64_t> cuts;
  try {
    auto args = cli.parse(argc, argv);
    if (args.count("help") || !args.count("model")) {
      std::cout << cli.help() << "\n";
      return args.count("help") ? 0 : 2;
    }
    edgesplit::partitioner::set_compute_threads(1);
    LoadOptions lo;
    lo.input_shape = parse_list(args["input-shape"].as<std::string>());
    cuts = parse_list(args["cuts"].as<std::string>());
    const std::string path = args["model"].as<std::string>();
    std::vector<Engine> engines = {Engine::kPlain, Engine::kOptimized};
    {
      std::stringstream ss(args["engines"].as<std::string>());
      std::string name;
      while (std::getline(ss, name, ',')) {
        auto e = edgesplit::partitioner::parse_engine(name);
        if (!e) {
          std::cerr << "edgesplit-bench-engine: unknown engine '" << name << "'\n";
          return 2;
        }
        if (std::find(engines.begin(), engines.end(), *e) == engines.end()) engines.push_back(*e);
      }
    }
    hello["engines"] = json::object();
    for (Engine e : engines) {
      lo.engine = e;
      const double t0 = now_ms();
      auto g = ModelGraph::load(path, lo);
      if (!g.ok() && e != Engine::kPlain && e != Engine::kOptimized) {
        // A backend this LibTorch lacks: said in the hello line, not timed.
        hello["engines"][edgesplit::partitioner::engine_name(e)] =
            "unavailable: " + g.status().message();
        continue;
      }
      if (!g.ok()) {
        std::cerr << "edgesplit-bench-engine: " << g.status().to_string() << "\n";
        return 1;
      }
      for (int64_t c : cuts) {
        if (!g.value()->has_cut(static_cast<int>(c))) {
          std::cerr << "edgesplit-bench-engine: " << c << " is not a cut of " << path << "\n";
          return 2;
        }
        g.value()->prepare(static_cast<int>(c));
      }
      hello[std::string("load_ms_") + edgesplit::partitioner::engine_name(e)] = now_ms() - t0;
      hello["engines"][edgesplit::partitioner::engine_name(e)] =
          g.value()->engine_report().summary();
      graphs[edgesplit::partitioner::engine_name(e)] = g.value();
      if (e == Engine::kPlain) plain = g.value();
      if (e == Engine::kOptimized) optimized = g.value();
    }
    hello["engine"] = optimized->engine_report().summary();
    hello["cuts"] = json::array();
    for (int64_t c : cuts) {
      hello["cuts"].push_back({{"id", c}, {"name", optimized->cut(static_cast<int>(c)).name}});
    }
    hello["num_cuts"] = optimized->cuts().size();
    torch::manual_seed(0);
    input = torch::rand(lo.input_shape);
  } catch (const std::exception& e) {
    std::cerr << "edgesplit-bench-engine: " << e.what() << "\n";
    return 2;
  }
  std::cout << hello.dump() << std::endl;

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    json reply;
    try {
      if (cmd == "quit") break;
      if (cmd == "threads") {
        int n = 1;
        in >> n;
        edgesplit::partitioner::set_compute_threads(n);
        reply["threads"] = n;
      } else if (cmd == "time") {
        std::string contender;
        int runs = 1;
        in >> contender >> runs;
        std::function<void()> f;
        if (graphs.count(contender)) {
          auto g = graphs.at(contender);
          f = [g, &input] { (void)g->run(input); };
        } else if (contender.rfind("split:", 0) == 0) {
          int cut = std::stoi(contender.substr(6));
          f = [&, cut] { (void)run_split(*optimized, cut, input); };
        } else if (contender.rfind("head:", 0) == 0) {
          int cut = std::stoi(contender.substr(5));
          f = [&, cut] { (void)optimized->run_head(cut, input); };
        } else if (contender.rfind("tail:", 0) == 0) {
          int cut = std::stoi(contender.substr(5));
          auto crossing =
              std::make_shared<std::vector<at::Tensor>>(optimized->run_head(cut, input));
          f = [&, cut, crossing] { (void)optimized->run_tail(cut, *crossing); };
        } else if (contender.rfind("split-plain:", 0) == 0) {
          int cut = std::stoi(contender.substr(12));
          f = [&, cut] { (void)run_split(*plain, cut, input); };
        } else {
          throw std::invalid_argument("unknown contender '" + contender + "'");
        }
        f();
        std::vector<double> ms;
        for (int i = 0; i < runs; ++i) {
          const double t0 = now_ms();
          f();
          ms.push_back(now_ms() - t0);
        }
        reply = {{"contender", contender}, {"ms", ms}};
      } else if (cmd == "check") {
        at::Tensor reference = plain->run(input);
        auto compare = [&](const at::Tensor& out) {
          return json{{"max_abs_diff", (out - reference).abs().max().item<double>()},
                      {"top1_equal", out.argmax(1).equal(reference.argmax(1))}};
        };
        for (const auto& [name, g] : graphs) {
          if (name != "plain") reply[name] = compare(g->run(input));
        }
        for (int64_t c : cuts) {
          reply["split:" + std::to_string(c)] =
              compare(run_split(*optimized, static_cast<int>(c), input));
        }
      } else {
        throw std::invalid_argument("unknown command '" + cmd + "'");
      }
    } catch (const std::exception& e) {
      reply = {{"error", e.what()}};
    }
    std::cout << reply.dump() << std::endl;
  }
  return 0;
}
