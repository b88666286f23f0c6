// Checks ModelGraph on small scripted/traced models and the shared MobileNetV2: cut discovery,
// names, shapes, weight accounting, bit-exact head/tail, multi-tensor cuts, errors, threads, CLI.
#include "tests/partitioner/torch_doctest.h"  // first: see there

#include <array>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "tests/partitioner/model_test_util.h"
#include "tests/test_paths.h"

namespace {

namespace fs = std::filesystem;
using edgesplit::StatusCode;
using edgesplit::partitioner::LoadOptions;
using edgesplit::partitioner::ModelGraph;
using namespace edgesplit::testing;

std::shared_ptr<ModelGraph> load_ok(const fs::path& path, const LoadOptions& options) {
  auto graph = ModelGraph::load(path.string(), options);
  INFO(graph.status().to_string());
  REQUIRE(graph.ok());
  return graph.value();
}

// The plain engine: these tests check head then tail bit for bit (engine_test.cc checks the
// optimized engine).
LoadOptions shape(std::vector<int64_t> s, int max_crossing = 1) {
  LoadOptions o;
  o.input_shape = std::move(s);
  o.max_crossing_tensors = max_crossing;
  o.engine = edgesplit::partitioner::Engine::kPlain;
  return o;
}

std::set<std::string> names_of(const ModelGraph& g) {
  std::set<std::string> names;
  for (const auto& c : g.cuts()) names.insert(c.name);
  return names;
}

void check_all_cuts_exact(const ModelGraph& g, const at::Tensor& input) {
  at::Tensor whole = g.run(input);
  for (const auto& c : g.cuts()) check_cut_exact(g, c.id, input, whole);
}

// Writes `text` to a file in the build tree and returns its path.
fs::path write_file(const std::string& name, const std::string& text) {
  auto path = models_cache() / name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// Runs a command, returning its exit code and what it printed on stdout.
std::pair<int, std::string> run_command(const std::string& cmd) {
  std::string out;
  FILE* pipe = popen(cmd.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace

TEST_CASE("tiny scripted CNN: cuts - names - shapes - weights and exact head/tail") {
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  auto g = load_ok(path, shape({1, 3, 32, 32}));
  const auto& cuts = g->cuts();
  REQUIRE(cuts.size() >= 8);
  CHECK(g->device_cut() == static_cast<int>(cuts.size()) - 1);
  CHECK(g->input_cut() == 0);
  CHECK(cuts.front().name == "input");
  CHECK(cuts.front().tensors.at(0).shape == std::vector<int64_t>({1, 3, 32, 32}));
  CHECK(cuts.back().tensors.at(0).shape == std::vector<int64_t>({1, 10}));
  CHECK(cuts.back().name == "fc");
  auto names = names_of(*g);
  CHECK(names.size() == cuts.size());
  for (const char* expected : {"stem.0", "stem.2", "block", "block.relu", "down.1", "pool"}) {
    CHECK_MESSAGE(names.count(expected), expected);
  }
  for (const auto& c : cuts) {
    CHECK(c.id == static_cast<int>(&c - cuts.data()));
    CHECK(c.tensors.size() == 1);  // max_crossing_tensors = 1
    CHECK(c.elements == c.tensors[0].elements);
    CHECK(c.fp32_bytes == 4 * c.elements);
    if (c.name == "stem.2" || c.name == "block.relu" || c.name == "down.1") CHECK(c.non_negative());
    if (c.name == "input" || c.name == "block" || c.name == "fc") CHECK_FALSE(c.non_negative());
  }
  // Inside the residual block the skip also crosses, so with one tensor there is no cut there.
  CHECK_FALSE(names.count("block.conv1"));
  // Weight accounting: the head grows and the tail shrinks along the cuts.
  CHECK(cuts.front().head_weight_bytes == 0);
  CHECK(cuts.front().tail_weight_bytes == g->total_weight_bytes());
  CHECK(cuts.back().head_weight_bytes == g->total_weight_bytes());
  CHECK(cuts.back().tail_weight_bytes == 0);
  for (size_t i = 1; i < cuts.size(); ++i) {
    CHECK(cuts[i].head_weight_bytes >= cuts[i - 1].head_weight_bytes);
    CHECK(cuts[i].tail_weight_bytes <= cuts[i - 1].tail_weight_bytes);
  }
  // 8->8 3x3 convs, stem, down and fc, all fp32 (batch norm folded into the convs).
  const int64_t params = (3 * 8 * 9 + 8) + 2 * (8 * 8 * 9 + 8) + (8 * 16 * 9 + 16) + (16 * 10 + 10);
  CHECK(g->total_weight_bytes() == 4 * params);

  torch::manual_seed(1);
  at::Tensor input = torch::randn({1, 3, 32, 32});
  check_all_cuts_exact(*g, input);
  // The processed graph (batch norm folded) stays close to the original module.
  auto module = torch::jit::load(path.string());
  module.eval();
  at::Tensor reference = module.forward({input}).toTensor();
  CHECK(torch::allclose(g->run(input), reference, 1e-4, 1e-5));
  // Batch of 2 works too (shapes were recorded for batch 1).
  at::Tensor batch = torch::randn({2, 3, 32, 32});
  check_cut_exact(*g, 3, batch, g->run(batch));

  // Digest: sha256 of the file; stable across loads.
  CHECK(g->digest().rfind("sha256:", 0) == 0);
  CHECK(g->digest().size() == 7 + 64);
  CHECK(load_ok(path, shape({1, 3, 32, 32}))->digest() == g->digest());
  CHECK(g->path() == path.string());
  CHECK(g->has_cut(g->device_cut()));
  CHECK_FALSE(g->has_cut(-1));
  CHECK_FALSE(g->has_cut(static_cast<int>(cuts.size())));
}

TEST_CASE("traced CNN gives the same cut points as the scripted one") {
  auto scripted = test_model("tiny_cnn.pt");
  if (scripted.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  auto traced = test_model("tiny_cnn_traced.pt");
  auto a = load_ok(scripted, shape({1, 3, 32, 32}));
  auto b = load_ok(traced, shape({1, 3, 32, 32}));
  REQUIRE(a->cuts().size() == b->cuts().size());
  CHECK(a->digest() != b->digest());
  for (size_t i = 0; i < a->cuts().size(); ++i) {
    CAPTURE(i);
    CHECK(a->cuts()[i].tensors[0].shape == b->cuts()[i].tensors[0].shape);
    CHECK(a->cuts()[i].head_weight_bytes == b->cuts()[i].head_weight_bytes);
    if (a->cuts()[i].name.find('_') == std::string::npos) {
      CHECK(a->cuts()[i].name == b->cuts()[i].name);  // op-kind names carry node indices
    }
  }
  torch::manual_seed(2);
  check_all_cuts_exact(*b, torch::rand({1, 3, 32, 32}));
}

TEST_CASE("multi-branch block: cuts inside it only with several crossing tensors") {
  auto path = test_model("branchy.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  torch::manual_seed(3);
  at::Tensor input = torch::randn({1, 3, 16, 16});
  auto one = load_ok(path, shape({1, 3, 16, 16}, 1));
  auto names = names_of(*one);
  CHECK(names.count("stem.1"));
  CHECK(names.count("cat_" + std::string()) == 0);
  // With one tensor, the cut after the stem is followed directly by the concatenation.
  size_t stem = 0;
  for (const auto& c : one->cuts()) {
    CHECK(c.tensors.size() == 1);
    if (c.name == "stem.1") stem = static_cast<size_t>(c.id);
  }
  REQUIRE(stem + 1 < one->cuts().size());
  CHECK(one->cuts()[stem + 1].name.rfind("cat", 0) == 0);
  check_all_cuts_exact(*one, input);

  for (int max_crossing : {2, 3}) {
    CAPTURE(max_crossing);
    auto many = load_ok(path, shape({1, 3, 16, 16}, max_crossing));
    CHECK(many->cuts().size() > one->cuts().size());
    size_t widest = 0;
    for (const auto& c : many->cuts()) {
      CHECK(c.tensors.size() <= static_cast<size_t>(max_crossing));
      widest = std::max(widest, c.tensors.size());
      int64_t sum = 0;
      for (const auto& t : c.tensors) sum += t.elements;
      CHECK(c.elements == sum);
    }
    CHECK(widest == static_cast<size_t>(max_crossing));
    check_all_cuts_exact(*many, input);
  }
}

TEST_CASE("bad model files and unusable models give one clear error") {
  auto missing = ModelGraph::load("/nonexistent/model.pt");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(missing.status().message().find("/nonexistent/model.pt") != std::string::npos);

  auto empty = ModelGraph::load(write_file("empty.pt", "").string());
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.status().code() == StatusCode::kInvalidArgument);
  CHECK(empty.status().message().find("empty") != std::string::npos);

  auto text = ModelGraph::load(write_file("text.pt", "this is not a model\n").string());
  REQUIRE_FALSE(text.ok());
  CHECK(text.status().code() == StatusCode::kInvalidArgument);
  CHECK(text.status().message().find("not a TorchScript model file") != std::string::npos);
  CHECK(text.status().message().find('\n') == std::string::npos);

  auto zip =
      ModelGraph::load(write_file("garbage.pt", std::string("PK\x03\x04garbage", 11)).string());
  REQUIRE_FALSE(zip.ok());
  CHECK(zip.status().code() == StatusCode::kInvalidArgument);

  auto loop = test_model("loop.pt");
  if (loop.empty()) {
    MESSAGE("skipped the model checks: /usr/bin/python3 cannot import torch");
    return;
  }
  auto looped = ModelGraph::load(loop.string(), shape({1, 3, 8, 8}));
  REQUIRE_FALSE(looped.ok());
  CHECK(looped.status().code() == StatusCode::kUnsupported);
  CHECK(looped.status().message().find("control flow") != std::string::npos);

  auto tuple = ModelGraph::load(test_model("tuple_out.pt").string(), shape({1, 3, 8, 8}));
  REQUIRE_FALSE(tuple.ok());
  CHECK(tuple.status().code() == StatusCode::kUnsupported);
  CHECK(tuple.status().message().find("one tensor output") != std::string::npos);

  auto wrong_shape = ModelGraph::load(test_model("tiny_cnn.pt").string(), shape({1, 5, 32, 32}));
  REQUIRE_FALSE(wrong_shape.ok());
  CHECK(wrong_shape.status().code() == StatusCode::kInvalidArgument);
  CHECK(wrong_shape.status().message().find("[1, 5, 32, 32]") != std::string::npos);
}

TEST_CASE("Retain::kHeadsUpTo keeps only the heads it needs and their weights") {
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  auto full = load_ok(path, shape({1, 3, 32, 32}));
  CHECK(full->retained_weight_bytes() == full->total_weight_bytes());
  int keep = -1;  // the cut after the residual block
  for (const auto& c : full->cuts()) {
    if (c.name == "block.relu") keep = c.id;
  }
  REQUIRE(keep > 0);
  LoadOptions options = shape({1, 3, 32, 32});
  options.retain = edgesplit::partitioner::Retain::kHeadsUpTo;
  options.retain_cut = keep;
  auto heads = load_ok(path, options);
  REQUIRE(heads->cuts().size() == full->cuts().size());
  CHECK(heads->retained_weight_bytes() == full->cut(keep).head_weight_bytes);
  CHECK(heads->retained_weight_bytes() < heads->total_weight_bytes());
  CHECK(heads->can_run_head(keep));
  CHECK(heads->can_run_head(0));
  CHECK_FALSE(heads->can_run_head(keep + 1));
  CHECK_FALSE(heads->can_run_tail(keep));
  CHECK(full->can_run_tail(keep));
  torch::manual_seed(6);
  at::Tensor input = torch::randn({1, 3, 32, 32});
  for (int c = 0; c <= keep; ++c) {
    CAPTURE(c);
    auto a = heads->run_head(c, input);
    auto b = full->run_head(c, input);
    REQUIRE(a.size() == b.size());
    CHECK(torch::equal(a[0], b[0]));
  }
  // The device cut keeps every head, so every weight.
  options.retain_cut = -1;
  CHECK(load_ok(path, options)->retained_weight_bytes() == full->total_weight_bytes());
  options.retain_cut = static_cast<int>(full->cuts().size());
  auto bad = ModelGraph::load(path.string(), options);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("heads and tails are built apart: prepare_head builds no tail, Retain::kTails no head") {
  // The default model (in the repository), through the optimized engine, whose side graphs are
  // checked against the plain graph as they are built.
  const fs::path path = source_dir() / "models" / "default" / "fashion_mnist_cnn.pt";
  LoadOptions options = shape({1, 1, 28, 28});
  options.engine = edgesplit::partitioner::Engine::kOptimized;
  auto all = load_ok(path, options);
  const int cut = all->device_cut() / 2;
  REQUIRE(cut > 0);
  CHECK_FALSE(all->head_built(cut));
  CHECK_FALSE(all->tail_built(cut));
  all->prepare_head(cut);
  CHECK(all->head_built(cut));
  CHECK_FALSE(all->tail_built(cut));  // a device sending from this cut needs no tail
  torch::manual_seed(12);
  const at::Tensor input = torch::randn({1, 1, 28, 28});
  const auto crossing = all->run_head(cut, input);
  CHECK_FALSE(all->tail_built(cut));
  const at::Tensor split = all->run_tail(cut, crossing);  // built on first use
  CHECK(all->tail_built(cut));
  CHECK(torch::allclose(split, all->run(input), 1e-4, 1e-5));
  for (const auto& c : all->cuts()) {
    if (c.id != cut) CHECK_FALSE((all->head_built(c.id) || all->tail_built(c.id)));
  }

  options.retain = edgesplit::partitioner::Retain::kTails;
  auto tails = load_ok(path, options);
  CHECK(tails->retained_weight_bytes() == tails->total_weight_bytes());
  for (const auto& c : tails->cuts()) {
    CAPTURE(c.id);
    CHECK_FALSE(tails->can_run_head(c.id));
    CHECK(tails->can_run_tail(c.id));
  }
  tails->prepare(cut);  // the tail only
  CHECK(tails->tail_built(cut));
  CHECK_FALSE(tails->head_built(cut));
  CHECK(torch::allclose(tails->run_tail(cut, crossing), split, 1e-5, 1e-6));
  // Every tail built: each still agrees with the heads of a graph that builds both.
  for (const auto& c : tails->cuts()) tails->prepare_tail(c.id);
  for (const auto& c : tails->cuts()) {
    CAPTURE(c.id);
    CHECK(torch::allclose(tails->run_tail(c.id, all->run_head(c.id, input)), split, 1e-4, 1e-5));
  }
}

TEST_CASE("run_between: the head of one cut then the part to a later cut is that cut's head") {
  // The default model (in the repository): what an early exit reads and where the frame goes on.
  const fs::path path = source_dir() / "models" / "default" / "fashion_mnist_cnn.pt";
  torch::manual_seed(11);
  const at::Tensor input = torch::randn({1, 1, 28, 28});
  for (const auto engine :
       {edgesplit::partitioner::Engine::kPlain, edgesplit::partitioner::Engine::kOptimized}) {
    LoadOptions options = shape({1, 1, 28, 28});
    options.engine = engine;
    auto g = load_ok(path, options);
    const int last = g->device_cut();
    for (int from = 1; from <= last; ++from) {
      const auto crossing = g->run_head(from, input);
      for (int to = from; to <= last; ++to) {
        CAPTURE(from);
        CAPTURE(to);
        REQUIRE(g->can_run_between(from, to));
        const auto between = g->run_between(from, to, crossing);
        const auto direct = g->run_head(to, input);
        REQUIRE(between.size() == direct.size());
        if (engine == edgesplit::partitioner::Engine::kPlain) {
          CHECK(torch::equal(between[0], direct[0]));
        } else {
          CHECK(torch::allclose(between[0], direct[0], 1e-4, 1e-4));
        }
      }
    }
    CHECK_FALSE(g->can_run_between(3, 2));
  }
  // Only the heads kept: nothing between cuts.
  LoadOptions heads = shape({1, 1, 28, 28});
  heads.retain = edgesplit::partitioner::Retain::kHeadsUpTo;
  heads.retain_cut = 8;
  CHECK_FALSE(load_ok(path, heads)->can_run_between(2, 6));
}

TEST_CASE("heads and tails run concurrently from several threads") {
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  auto g = load_ok(path, shape({1, 3, 32, 32}));
  torch::manual_seed(4);
  at::Tensor input = torch::randn({1, 3, 32, 32});
  CHECK(concurrent_mismatches(
            *g, input, g->run(input),
            [](const at::Tensor& a, const at::Tensor& b) { return torch::equal(a, b); }) == 0);
}

TEST_CASE("shared MobileNetV2: cut points - metadata and exact head/tail at every cut") {
  auto path = shared_mobilenet();
  if (path.empty()) {
    MESSAGE("skipped: ../shared/models/mobilenet_v2_imagenet is absent");
    return;
  }
  auto meta = (source_dir() / "models/meta/mobilenet_v2_imagenet.json").string();
  auto info = edgesplit::partitioner::load_model_info(path.string(), meta);
  INFO(info.status().to_string());
  REQUIRE(info.ok());
  CHECK(info->labels.size() == 1000);
  CHECK(info->labels[0].find("tench") != std::string::npos);
  auto g = load_ok(path, shape(info->input_shape));
  const auto& cuts = g->cuts();
  CHECK(cuts.size() >= 30);
  auto names = names_of(*g);
  for (const char* block :
       {"features.3", "features.5", "features.6", "features.8", "features.16"}) {
    CHECK_MESSAGE(names.count(block), block);  // after each residual block
  }
  CHECK(cuts.back().tensors[0].shape == std::vector<int64_t>({1, 1000}));
  CHECK(g->total_weight_bytes() > 13'000'000);
  CHECK(g->total_weight_bytes() < 15'000'000);
  int non_negative = 0;
  for (const auto& c : cuts) non_negative += c.non_negative() ? 1 : 0;
  CHECK(non_negative >= 15);  // after every ReLU6

  torch::manual_seed(5);
  at::Tensor input = torch::randn({1, 3, 224, 224});
  check_all_cuts_exact(*g, input);
  auto module = torch::jit::load(path.string());
  module.eval();
  at::Tensor reference = module.forward({input}).toTensor();
  CHECK(torch::allclose(g->run(input), reference, 1e-4, 1e-3));
}

TEST_CASE("edgesplit-inspect lists cut points and rejects bad input with exit code 2") {
  auto inspect = bin_dir() / "edgesplit-inspect";
  if (!fs::exists(inspect)) {
    MESSAGE("skipped: edgesplit-inspect is not built");
    return;
  }
  auto [missing_rc, missing_out] = run_command(inspect.string() + " /nonexistent.pt 2>&1");
  CHECK(missing_rc == 2);
  CHECK(missing_out.find("does not exist") != std::string::npos);
  CHECK(std::count(missing_out.begin(), missing_out.end(), '\n') == 1);
  auto [flag_rc, flag_out] = run_command(inspect.string() + " x.pt --input-shape 1,a 2>&1");
  CHECK(flag_rc == 2);
  CHECK(std::count(flag_out.begin(), flag_out.end(), '\n') == 1);

  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped the listing: /usr/bin/python3 cannot import torch");
    return;
  }
  auto [rc, out] =
      run_command(inspect.string() + " " + path.string() + " --json --input-shape 1,3,32,32");
  REQUIRE(rc == 0);
  auto j = nlohmann::json::parse(out);
  auto g = load_ok(path, shape({1, 3, 32, 32}));
  CHECK(j["digest"] == g->digest());
  REQUIRE(j["cuts"].size() == g->cuts().size());
  CHECK(j["cuts"][1]["name"] == g->cuts()[1].name);
  CHECK(j["cuts"][1]["head_weight_bytes"] == g->cuts()[1].head_weight_bytes);
  auto [table_rc, table] =
      run_command(inspect.string() + " " + path.string() + " --input-shape 1,3,32,32");
  CHECK(table_rc == 0);
  CHECK(table.find("block.relu") != std::string::npos);
  CHECK(table.find("sha256:") != std::string::npos);
}
