// Checks cut discovery and bit-exact head/tail on torchvision architectures exported at test time
// by models/export.py (random weights, cached in <build>/models-cache/).
#include "tests/partitioner/torch_doctest.h"  // first: see there

#include <chrono>
#include <set>

#include "partitioner/model_graph.h"
#include "tests/partitioner/model_test_util.h"

namespace {

using edgesplit::partitioner::LoadOptions;
using edgesplit::partitioner::ModelGraph;
using namespace edgesplit::testing;

// Exports ARCH, loads it, checks the processed graph against the original module and head then
// tail against the processed graph at every cut (or `sample` cuts spread over the list).
std::shared_ptr<ModelGraph> check_architecture(const std::string& arch, int side, size_t min_cuts,
                                               size_t sample = 0, bool trace = false,
                                               int max_crossing = 1) {
  auto path = exported_model(arch, trace);
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch/torchvision to export " << arch);
    return nullptr;
  }
  LoadOptions options;
  options.input_shape = {1, 3, side, side};
  options.engine = edgesplit::partitioner::Engine::kPlain;  // bit for bit
  options.max_crossing_tensors = max_crossing;
  auto start = std::chrono::steady_clock::now();
  auto loaded = ModelGraph::load(path.string(), options);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(loaded.status().to_string());
  REQUIRE(loaded.ok());
  auto g = loaded.value();
  const auto& cuts = g->cuts();
  const std::string label = arch + (trace ? " (traced)" : "");
  MESSAGE(label << ": " << cuts.size() << " cut points, loaded in " << seconds << " s");
  CHECK(cuts.size() >= min_cuts);
  CHECK(cuts.back().tensors.at(0).shape == std::vector<int64_t>({1, 1000}));

  torch::manual_seed(7);
  at::Tensor input = torch::rand({1, 3, side, side});
  at::Tensor whole = g->run(input);
  auto module = torch::jit::load(path.string());
  module.eval();
  at::Tensor reference;
  {
    torch::NoGradGuard no_grad;
    reference = module.forward({input}).toTensor();
  }
  const double scale = 1.0 + reference.abs().max().item<double>();
  CHECK((whole - reference).abs().max().item<double>() <= 1e-4 * scale);

  std::vector<int> ids;
  if (sample == 0 || cuts.size() <= sample) {
    for (const auto& c : cuts) ids.push_back(c.id);
  } else {
    for (size_t i = 0; i < sample; ++i)
      ids.push_back(static_cast<int>(i * (cuts.size() - 1) / (sample - 1)));
  }
  for (int id : ids) check_cut_exact(*g, id, input, whole);

  // The optimized engine on the same file: the same cuts; its whole model close to the plain one;
  // head then tail close to its whole model at up to 6 of the cuts above.
  LoadOptions fast = options;
  fast.engine = edgesplit::partitioner::Engine::kOptimized;
  auto optimized = ModelGraph::load(path.string(), fast);
  INFO(optimized.status().to_string());
  REQUIRE(optimized.ok());
  auto o = optimized.value();
  MESSAGE(label << ": " << o->engine_report().summary());
  REQUIRE(o->cuts().size() == cuts.size());
  for (size_t i = 0; i < cuts.size(); ++i) CHECK(o->cuts()[i].name == cuts[i].name);
  at::Tensor fast_whole = o->run(input);
  CHECK((fast_whole - whole).abs().max().item<double>() <= 1e-3 * scale);
  const size_t step = std::max<size_t>(1, ids.size() / 6);
  for (size_t i = 0; i < ids.size(); i += step) check_cut_close(*o, ids[i], input, fast_whole);
  return g;
}

std::set<std::string> names_of(const ModelGraph& g) {
  std::set<std::string> names;
  for (const auto& c : g.cuts()) names.insert(c.name);
  return names;
}

}  // namespace

TEST_CASE("resnet18: a cut between every pair of residual blocks - exact at every cut") {
  auto g = check_architecture("resnet18", 224, 20);
  if (!g) return;
  auto names = names_of(*g);
  for (const char* block :
       {"maxpool", "layer1.0.relu", "layer1.1.relu", "layer2.0.relu", "layer2.1.relu",
        "layer3.0.relu", "layer3.1.relu", "layer4.0.relu", "layer4.1.relu", "avgpool", "fc"}) {
    CHECK_MESSAGE(names.count(block), block);
  }
}

TEST_CASE("resnet18 traced: same cut points as scripted") {
  auto traced = check_architecture("resnet18", 224, 20, 0, true);
  if (!traced) return;
  auto names = names_of(*traced);
  CHECK(names.count("layer3.1.relu"));
  CHECK(names.count("layer4.1.relu"));
}

TEST_CASE("resnet18 with two crossing tensors: cuts inside the residual blocks - exact") {
  auto one = check_architecture("resnet18", 224, 20, 4);
  auto two = check_architecture("resnet18", 224, 40, 0, false, 2);
  if (!one || !two) return;
  CHECK(two->cuts().size() > one->cuts().size());
  // Inside layer2.1: the block input (skip) and the ReLU after its first conv cross together.
  bool inside = false;
  for (const auto& c : two->cuts()) {
    if (c.name == "layer2.0.relu+layer2.1.relu") inside = c.tensors.size() == 2;
  }
  CHECK(inside);
}

TEST_CASE("resnet50") {
  auto g = check_architecture("resnet50", 224, 30, 8);
  if (!g) return;
  CHECK(names_of(*g).count("layer3.5.relu"));
}

TEST_CASE("mobilenet_v2") { check_architecture("mobilenet_v2", 224, 40); }

// At 64 x 64 the features end at 2 x 2 and the adaptive pooling spreads them over 7 x 7, a shape
// oneDNN's pooling does not take: the optimized engine must still build and agree at every cut.
TEST_CASE("vgg16") {
  auto g = check_architecture("vgg16", 64, 30, 8);
  if (!g) return;
  CHECK(g->total_weight_bytes() > 500'000'000);
}

TEST_CASE("googlenet") { check_architecture("googlenet", 224, 15, 8); }

TEST_CASE("inception_v3") { check_architecture("inception_v3", 299, 15, 8); }

TEST_CASE("densenet121") { check_architecture("densenet121", 224, 10, 8); }
