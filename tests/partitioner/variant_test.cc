// Derived variants checked against their definition: a skipped block gives exactly the network
// without it, a full-rank factorization reproduces the layer within float error, an input-size
// variant runs at its size; the description format and digests; the shared ResNet-20 and
// MobileNetV2 (skipped when ../shared is absent).
#include "tests/partitioner/torch_doctest.h"  // first: see there

#include <torch/script.h>

#include "partitioner/model_graph.h"
#include "partitioner/variant.h"
#include "tests/partitioner/model_test_util.h"
#include "tests/test_paths.h"

namespace {

namespace fs = std::filesystem;
using edgesplit::StatusCode;
using edgesplit::partitioner::Engine;
using edgesplit::partitioner::LoadOptions;
using edgesplit::partitioner::ModelGraph;
using edgesplit::partitioner::parse_variant;
using edgesplit::partitioner::variant_digest;
using edgesplit::partitioner::VariantSpec;
using namespace edgesplit::testing;

std::shared_ptr<ModelGraph> load_ok(const fs::path& path, const LoadOptions& options) {
  auto graph = ModelGraph::load(path.string(), options);
  INFO(graph.status().to_string());
  REQUIRE(graph.ok());
  return graph.value();
}

VariantSpec spec_of(const std::string& json) {
  auto spec = parse_variant(json);
  INFO(spec.status().to_string());
  REQUIRE(spec.ok());
  return spec.value();
}

LoadOptions plain(const std::vector<int64_t>& shape, const std::string& variant = "{}") {
  LoadOptions o;
  o.input_shape = shape;
  o.engine = Engine::kPlain;
  o.variant = spec_of(variant);
  return o;
}

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / (1.0 + b.abs().max().item<double>());
}

}  // namespace

TEST_CASE("variant descriptions: canonical form, labels, digests and errors") {
  VariantSpec spec = spec_of(R"({"skip": ["b", "a"], "low_rank": {"fc": 3}, "input_size": 96})");
  CHECK(spec.skip == std::vector<std::string>{"a", "b"});
  CHECK(spec.canonical() == R"({"input_size":96,"low_rank":{"fc":3},"skip":["a","b"]})");
  CHECK(spec.label() == "skip a,b; low-rank fc:3; 96 px");
  CHECK(spec_of(spec.canonical()) == spec);
  CHECK(spec_of("{}").empty());
  CHECK(spec_of("{}").label() == "full");
  CHECK(variant_digest("sha256:abc", VariantSpec{}) == "sha256:abc");
  const std::string d = variant_digest("sha256:abc", spec);
  CHECK(d.rfind("sha256:", 0) == 0);
  CHECK(d.size() == 7 + 64);
  CHECK(d != variant_digest("sha256:abd", spec));
  CHECK(d == variant_digest("sha256:abc", spec_of(R"({"low_rank":{"fc":3},"input_size":96,
                                                        "skip":["b","a"]})")));
  for (const char* bad :
       {"[]", "{\"skip\": \"a\"}", "{\"skip\": [\"a\", \"a\"]}", "{\"low_rank\": {\"fc\": 0}}",
        "{\"low_rank\": {\"fc\": 1.5}}", "{\"input_size\": 4}", "{\"depth\": 3}", "not json"}) {
    CAPTURE(bad);
    auto r = parse_variant(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
  }
  CHECK(parse_variant("{\"depth\": 3}").status().message().find("\"depth\"") != std::string::npos);

  // A tight crop is part of the description and of the digest: the same module, other inputs,
  // another accuracy.
  VariantSpec tight = spec_of(R"({"input_size": 192, "resize_short": 256})");
  CHECK(tight.canonical() == R"({"input_size":192,"resize_short":256})");
  CHECK(tight.label() == "192 px; short side 256");
  CHECK(spec_of(tight.canonical()) == tight);
  CHECK_FALSE(tight == spec_of(R"({"input_size": 192})"));
  CHECK(variant_digest("sha256:abc", tight) !=
        variant_digest("sha256:abc", spec_of(R"({"input_size": 192})")));
  CHECK_FALSE(parse_variant(R"({"resize_short": 4})").ok());
  CHECK_FALSE(parse_variant(R"({"resize_short": "256"})").ok());
}

TEST_CASE("a skipped block gives exactly the network without it, and does not run") {
  auto tiny = test_model("tiny_cnn.pt");
  if (tiny.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch and torchvision");
    return;
  }
  const std::vector<int64_t> shape = {1, 3, 32, 32};
  auto base = load_ok(tiny, plain(shape));
  CHECK(base->skippable_blocks() == std::vector<std::string>{"block"});
  CHECK(base->digest() == base->base_digest());

  auto skipped = load_ok(tiny, plain(shape, R"({"skip": ["block"]})"));
  auto reference = load_ok(test_model("tiny_cnn_without_block.pt"), plain(shape));
  CHECK(skipped->skippable_blocks().empty());
  CHECK(skipped->base_digest() == base->digest());
  CHECK(skipped->digest() == variant_digest(base->digest(), skipped->variant()));
  CHECK(skipped->digest() != base->digest());
  // The block's two convolutions are gone: fewer weights, fewer cuts, fewer multiply-adds.
  CHECK(skipped->total_weight_bytes() == reference->total_weight_bytes());
  CHECK(skipped->total_weight_bytes() < base->total_weight_bytes());
  CHECK(skipped->cuts().size() == reference->cuts().size());
  CHECK(skipped->multiply_adds() == reference->multiply_adds());
  CHECK(skipped->multiply_adds() < base->multiply_adds());
  torch::manual_seed(3);
  at::Tensor x = torch::rand({4, 3, 32, 32});
  at::Tensor out = skipped->run(x);
  CHECK(torch::equal(out, reference->run(x)));
  CHECK_FALSE(torch::equal(out, base->run(x)));
  for (const auto& cut : skipped->cuts()) check_cut_exact(*skipped, cut.id, x, out);

  // The optimized engine builds the same variant (within float tolerance).
  LoadOptions optimized = plain(shape, R"({"skip": ["block"]})");
  optimized.engine = Engine::kOptimized;
  auto fast = load_ok(tiny, optimized);
  CHECK(fast->digest() == skipped->digest());
  CHECK(relative_error(fast->run(x), out) < 1e-4);

  auto bad = ModelGraph::load(tiny.string(), plain(shape, R"({"skip": ["stem"]})"));
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK(bad.status().message().find("\"stem\"") != std::string::npos);
  CHECK(bad.status().message().find("block") != std::string::npos);  // the candidates
}

TEST_CASE("a full-rank factorization reproduces its layer - lower ranks approximate it") {
  auto tiny = test_model("tiny_cnn.pt");
  if (tiny.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch and torchvision");
    return;
  }
  const std::vector<int64_t> shape = {1, 3, 32, 32};
  auto base = load_ok(tiny, plain(shape));
  std::vector<std::string> names;
  for (const auto& layer : base->factorable_layers()) names.push_back(layer.name);
  CHECK(names == std::vector<std::string>{"stem.0", "block.conv1", "block.conv2", "down.0", "fc"});
  const auto& fc = base->factorable_layers().back();
  CHECK(fc.kind == "linear");
  CHECK(fc.out == 10);
  CHECK(fc.in == 16);
  CHECK(fc.max_rank() == 10);
  const auto& conv = base->factorable_layers()[3];
  CHECK(conv.kind == "conv");
  CHECK(conv.in == 8 * 3 * 3);
  CHECK(conv.max_rank() == 16);

  torch::manual_seed(4);
  at::Tensor x = torch::rand({4, 3, 32, 32});
  at::Tensor out = base->run(x);
  for (const auto& layer : base->factorable_layers()) {
    CAPTURE(layer.name);
    const std::string full =
        "{\"low_rank\": {\"" + layer.name + "\": " + std::to_string(layer.max_rank()) + "}}";
    auto factorized = load_ok(tiny, plain(shape, full));
    CHECK(relative_error(factorized->run(x), out) < 1e-4);
    // Two layers where there was one: one more cut where the thin tensor crosses.
    CHECK(factorized->cuts().size() >= base->cuts().size());
    const std::string low = "{\"low_rank\": {\"" + layer.name + "\": 1}}";
    auto thin = load_ok(tiny, plain(shape, low));
    CHECK(relative_error(thin->run(x), out) > 1e-4);
  }
  // The reconstruction error of the layer's output falls with the rank, to float error at full.
  auto inputs = base->layer_inputs({"down.0", "fc"}, x);
  REQUIRE(inputs.ok());
  REQUIRE(inputs.value().size() == 2);
  CHECK(inputs.value()[0].sizes().vec() == std::vector<int64_t>{4, 8, 32, 32});
  CHECK(inputs.value()[1].sizes().vec() == std::vector<int64_t>{4, 16});
  auto errors = base->factorization_errors("down.0", inputs.value()[0], {1, 4, 8, 16});
  REQUIRE(errors.size() == 4);
  CHECK(errors[0] > errors[1]);
  CHECK(errors[1] > errors[2]);
  CHECK(errors[2] > errors[3]);
  CHECK(errors[3] < 1e-5);
  CHECK(base->factorization_errors("nothing", inputs.value()[0], {1}).empty());
  CHECK_FALSE(base->layer_inputs({"nothing"}, x).ok());

  auto too_high = ModelGraph::load(tiny.string(), plain(shape, R"({"low_rank": {"fc": 11}})"));
  REQUIRE_FALSE(too_high.ok());
  CHECK(too_high.status().message().find("at most 10") != std::string::npos);
}

TEST_CASE("an input-size variant runs at its size") {
  auto tiny = test_model("tiny_cnn.pt");
  if (tiny.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch and torchvision");
    return;
  }
  auto base = load_ok(tiny, plain({1, 3, 32, 32}));
  auto small = load_ok(tiny, plain({1, 3, 32, 32}, R"({"input_size": 24})"));
  CHECK(small->cut(0).tensors[0].shape == std::vector<int64_t>{1, 3, 24, 24});
  CHECK(small->multiply_adds() < base->multiply_adds());
  at::Tensor out = small->run(torch::rand({2, 3, 24, 24}));
  CHECK(out.sizes().vec() == std::vector<int64_t>{2, 10});
}

TEST_CASE("shared ResNet-20: identity blocks are skippable, and skipping one matches the module") {
  auto dir = shared_dir();
  fs::path path = dir.empty() ? fs::path() : dir / "models/resnet_cifar10/resnet20_cifar10.pt";
  if (path.empty() || !fs::exists(path)) {
    MESSAGE("skipped: ../shared/models/resnet_cifar10 is absent");
    return;
  }
  const std::vector<int64_t> shape = {1, 3, 32, 32};
  auto base = load_ok(path, plain(shape));
  // Stride-2 blocks (layer2.0, layer3.0) pad their shortcut: not the identity.
  CHECK(base->skippable_blocks() == std::vector<std::string>{"layer1.0", "layer1.1", "layer1.2",
                                                             "layer2.1", "layer2.2", "layer3.1",
                                                             "layer3.2"});
  auto skipped = load_ok(path, plain(shape, R"({"skip": ["layer2.1", "layer3.2"]})"));
  CHECK(skipped->skippable_blocks().size() == 5);

  // The reference: the scripted module's own blocks, called one by one without those two.
  torch::jit::Module m = torch::jit::load(path.string());
  m.eval();
  torch::manual_seed(5);
  at::Tensor x = torch::rand({2, 3, 32, 32});
  torch::NoGradGuard no_grad;
  auto call = [](torch::jit::Module module, const at::Tensor& in) {
    return module.forward({in}).toTensor();
  };
  at::Tensor y = torch::relu(call(m.attr("bn1").toModule(), call(m.attr("conv1").toModule(), x)));
  for (const char* layer : {"layer1", "layer2", "layer3"}) {
    for (const auto& child : m.attr(layer).toModule().named_children()) {
      const std::string name = std::string(layer) + "." + child.name;
      if (name == "layer2.1" || name == "layer3.2") continue;
      y = call(child.value, y);
    }
  }
  y = torch::flatten(torch::adaptive_avg_pool2d(y, {1, 1}), 1);
  y = call(m.attr("linear").toModule(), y);
  CHECK(relative_error(skipped->run(x), y) < 1e-4);
  CHECK(relative_error(base->run(x), y) > 1e-3);
}

TEST_CASE("shared MobileNetV2: skippable blocks, the classifier factorizes, multiply-adds") {
  auto path = shared_mobilenet();
  if (path.empty()) {
    MESSAGE("skipped: ../shared/models/mobilenet_v2_imagenet is absent");
    return;
  }
  auto base = load_ok(path, plain({1, 3, 224, 224}));
  // The ten inverted residual blocks with a stride of 1 and as many channels out as in.
  CHECK(base->skippable_blocks() ==
        std::vector<std::string>{"features.3", "features.5", "features.6", "features.8",
                                 "features.9", "features.10", "features.12", "features.13",
                                 "features.15", "features.16"});
  const auto& layers = base->factorable_layers();
  REQUIRE_FALSE(layers.empty());
  CHECK(layers.back().name == "classifier.1");
  CHECK(layers.back().out == 1000);
  CHECK(layers.back().in == 1280);
  // torchvision's MobileNetV2 at 224 px: 300 M multiply-adds (convolutions and the classifier).
  CHECK(base->multiply_adds() > 295'000'000);
  CHECK(base->multiply_adds() < 305'000'000);
}
