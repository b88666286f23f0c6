// Checks the optimized engine (Engine::kOptimized): head then tail against its whole model at every
// cut within float tolerance, dense contiguous crossing tensors, the same cuts as the plain engine,
// one copy of the converted weights across heads, per-op fallback stated in the report, threads,
// and on the shared MobileNetV2 the same top-1 as the plain engine on real images at every cut.
#include "tests/partitioner/torch_doctest.h"  // first: see there

#include <ATen/Context.h>

#include <atomic>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <thread>

#include "imaging/preprocess.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "partitioner/tensor_cache.h"
#include "tests/partitioner/model_test_util.h"
#include "tests/test_paths.h"

namespace {

namespace fs = std::filesystem;
using edgesplit::partitioner::Engine;
using edgesplit::partitioner::LoadOptions;
using edgesplit::partitioner::ModelGraph;
using namespace edgesplit::testing;

LoadOptions options_for(std::vector<int64_t> shape, Engine engine, int max_crossing = 1) {
  LoadOptions o;
  o.input_shape = std::move(shape);
  o.engine = engine;
  o.max_crossing_tensors = max_crossing;
  return o;
}

std::shared_ptr<ModelGraph> load_ok(const fs::path& path, const LoadOptions& options) {
  auto graph = ModelGraph::load(path.string(), options);
  INFO(graph.status().to_string());
  REQUIRE(graph.ok());
  return graph.value();
}

bool has_backend(const std::string& name) {
  auto b = edgesplit::partitioner::available_backends();
  return std::find(b.begin(), b.end(), name) != b.end();
}

// Loads `path` with the plain engine and `engine` and checks the latter at every cut on `input`.
std::shared_ptr<ModelGraph> check_every_cut(const fs::path& path, const at::Tensor& input,
                                            int max_crossing = 1,
                                            Engine engine = Engine::kOptimized) {
  auto shape = input.sizes().vec();
  shape[0] = 1;
  auto plain = load_ok(path, options_for(shape, Engine::kPlain, max_crossing));
  auto fast = load_ok(path, options_for(shape, engine, max_crossing));
  MESSAGE(path.filename().string() << ": " << fast->engine_report().summary());
  // The cuts do not depend on the engine (device and server may run different ones).
  REQUIRE(fast->cuts().size() == plain->cuts().size());
  for (size_t i = 0; i < fast->cuts().size(); ++i) {
    CHECK(fast->cuts()[i].name == plain->cuts()[i].name);
    CHECK(fast->cuts()[i].elements == plain->cuts()[i].elements);
    CHECK(fast->cuts()[i].head_weight_bytes == plain->cuts()[i].head_weight_bytes);
  }
  CHECK(fast->digest() == plain->digest());
  at::Tensor reference = plain->run(input);
  at::Tensor whole = fast->run(input);
  const double scale = 1.0 + reference.abs().max().item<double>();
  CHECK((whole - reference).abs().max().item<double>() <= 1e-4 * scale);
  for (const auto& c : fast->cuts()) check_cut_close(*fast, c.id, input, whole);
  return fast;
}

}  // namespace

TEST_CASE("engine names parse and print") {
  using edgesplit::partitioner::engine_name;
  using edgesplit::partitioner::parse_engine;
  CHECK((parse_engine("optimized") == Engine::kOptimized));
  CHECK((parse_engine("plain") == Engine::kPlain));
  CHECK_FALSE(parse_engine("fast").has_value());
  CHECK_FALSE(parse_engine("").has_value());
  CHECK(std::string(engine_name(Engine::kPlain)) == "plain");
  for (Engine e : {Engine::kPlain, Engine::kOptimized, Engine::kOneDnn, Engine::kXnnpack}) {
    CHECK((parse_engine(engine_name(e)) == e));
  }
  CHECK(std::string(engine_name(Engine::kXnnpack)) == "xnnpack");
  CHECK((LoadOptions().engine == Engine::kOptimized));  // the default
}

TEST_CASE("optimized engine: tiny CNN - every cut close to the whole model - dense crossings") {
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  torch::manual_seed(11);
  auto g = check_every_cut(path, torch::randn({1, 3, 32, 32}));
  const auto& report = g->engine_report();
  CHECK((report.engine == Engine::kOptimized));
  CHECK(report.failures.empty());
  if (at::hasMKLDNN()) {
    CHECK(report.backend == "onednn");
    CHECK(report.accelerated_ops >= 4);  // stem, the block's two convolutions, down
  } else {
    CHECK(report.backend == "frozen-graph");
  }
  // A batch of 3 (shapes were recorded for batch 1).
  at::Tensor batch = torch::randn({3, 3, 32, 32});
  at::Tensor whole = g->run(batch);
  for (const auto& c : g->cuts()) check_cut_close(*g, c.id, batch, whole);
  // The traced file gives the same answers.
  auto traced = test_model("tiny_cnn_traced.pt");
  auto t = load_ok(traced, options_for({1, 3, 32, 32}, Engine::kOptimized));
  CHECK(torch::allclose(t->run(batch), whole, 1e-4, 1e-5));
}

TEST_CASE("optimized engine: multi-branch block with multi-tensor cuts") {
  auto path = test_model("branchy.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  torch::manual_seed(12);
  at::Tensor input = torch::randn({1, 3, 16, 16});
  auto g = check_every_cut(path, input, 3);
  size_t widest = 0;
  for (const auto& c : g->cuts()) widest = std::max(widest, c.tensors.size());
  CHECK(widest == 3);
}

TEST_CASE("optimized engine: ops it cannot convert run on the default path and are named") {
  auto path = test_model("upconv.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  torch::manual_seed(13);
  auto g = check_every_cut(path, torch::randn({1, 3, 16, 16}));
  const auto& report = g->engine_report();
  CHECK(report.failures.empty());
  REQUIRE(report.fallback_ops.count("aten::conv_transpose2d"));
  CHECK(report.fallback_ops.at("aten::conv_transpose2d") == 1);
  CHECK(report.summary().find("aten::conv_transpose2d") != std::string::npos);
  if (at::hasMKLDNN()) CHECK(report.accelerated_ops >= 2);  // stem and mix
}

TEST_CASE("xnnpack engine: every cut close - one packed copy of the weights across heads") {
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  if (!has_backend("xnnpack")) {
    // Asking for a backend this LibTorch lacks is one clear error.
    auto g = ModelGraph::load(path.string(), options_for({1, 3, 32, 32}, Engine::kXnnpack));
    REQUIRE_FALSE(g.ok());
    CHECK(g.status().message().find("no xnnpack backend") != std::string::npos);
    MESSAGE("skipped: this LibTorch has no XNNPACK");
    return;
  }
  torch::manual_seed(16);
  auto g = check_every_cut(path, torch::randn({1, 3, 32, 32}), 1, Engine::kXnnpack);
  CHECK(g->engine_report().backend == "xnnpack");
  CHECK(g->engine_report().accelerated_ops == 5);  // four convolutions and the linear layer
  CHECK(g->engine_report().failures.empty());
  torch::manual_seed(17);
  check_every_cut(test_model("branchy.pt"), torch::randn({1, 3, 16, 16}), 3, Engine::kXnnpack);
  auto options = options_for({1, 3, 32, 32}, Engine::kXnnpack);
  options.retain = edgesplit::partitioner::Retain::kHeadsUpTo;
  auto heads = load_ok(path, options);
  CHECK(heads->retained_weight_bytes() == heads->total_weight_bytes());
}

TEST_CASE("optimized engine: the plain engine reports itself and converts nothing") {
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  auto g = load_ok(path, options_for({1, 3, 32, 32}, Engine::kPlain));
  CHECK((g->engine_report().engine == Engine::kPlain));
  CHECK(g->engine_report().backend == "none");
  CHECK(g->engine_report().accelerated_ops == 0);
  CHECK(g->engine_report().summary() == "plain");
}

TEST_CASE("optimized engine: retained heads share one copy of the converted weights") {
  auto path = shared_mobilenet();
  int64_t side = 224;
  if (path.empty()) {
    path = test_model("tiny_cnn.pt");
    side = 32;
  }
  if (path.empty()) {
    MESSAGE("skipped: neither ../shared nor python3-torch for a test model");
    return;
  }
  auto options = options_for({1, 3, side, side}, Engine::kOptimized);
  options.retain = edgesplit::partitioner::Retain::kHeadsUpTo;
  options.retain_cut = -1;  // every head
  auto heads = load_ok(path, options);
  // Every head holds its own graph, but the converted weights are built once: all heads together
  // hold about the model's weights (oneDNN may pad a few), not the sum of every head's weights.
  int64_t sum_of_heads = 0;
  for (const auto& c : heads->cuts()) sum_of_heads += c.head_weight_bytes;
  CAPTURE(sum_of_heads);
  CHECK(heads->retained_weight_bytes() <= heads->total_weight_bytes() * 11 / 10);
  CHECK(heads->retained_weight_bytes() >= heads->total_weight_bytes() * 9 / 10);
  CHECK(sum_of_heads > 3 * heads->total_weight_bytes());
  torch::manual_seed(14);
  at::Tensor input = torch::randn({1, 3, side, side});
  auto full = load_ok(path, options_for({1, 3, side, side}, Engine::kOptimized));
  for (int c : {0, heads->device_cut() / 2, heads->device_cut()}) {
    CAPTURE(c);
    auto a = heads->run_head(c, input);
    auto b = full->run_head(c, input);
    REQUIRE(a.size() == b.size());
    CHECK(torch::allclose(a[0], b[0], 1e-5, 1e-6));
  }
}

TEST_CASE("optimized engine: heads and tails run concurrently from several threads") {
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  auto g = load_ok(path, options_for({1, 3, 32, 32}, Engine::kOptimized));
  torch::manual_seed(15);
  at::Tensor input = torch::randn({1, 3, 32, 32});
  CHECK(
      concurrent_mismatches(*g, input, g->run(input), [](const at::Tensor& a, const at::Tensor& b) {
        return torch::allclose(a, b, 1e-4, 1e-5);
      }) == 0);
}

TEST_CASE(
    "optimized engine: shared MobileNetV2 - every cut close - same top-1 as plain on images") {
  auto path = shared_mobilenet();
  const auto images_dir = shared_dir() / "data/imagenet-val-1300/images";
  if (path.empty() || !fs::exists(images_dir)) {
    MESSAGE("skipped: ../shared (MobileNetV2 and imagenet-val-1300) is absent");
    return;
  }
  auto meta = (source_dir() / "models/meta/mobilenet_v2_imagenet.json").string();
  auto info = edgesplit::partitioner::load_model_info(path.string(), meta);
  REQUIRE(info.ok());
  // 32 real images, preprocessed as the device does.
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(images_dir)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 32);
  files.resize(32);
  std::vector<at::Tensor> rows;
  for (const auto& f : files) {
    cv::Mat image = cv::imread(f.string(), cv::IMREAD_COLOR);
    REQUIRE_FALSE(image.empty());
    auto values = edgesplit::imaging::preprocess(image, *info);
    REQUIRE(values.ok());
    rows.push_back(torch::from_blob(values->data(), info->input_shape).clone());
  }
  at::Tensor batch = torch::cat(rows, 0);

  // Large activations kept for reuse, as the device and the server run (set_compute_threads).
  edgesplit::partitioner::set_compute_threads(0);
  auto plain = load_ok(path, options_for(info->input_shape, Engine::kPlain));
  auto fast = load_ok(path, options_for(info->input_shape, Engine::kOptimized));
  MESSAGE("mobilenet_v2_imagenet: " << fast->engine_report().summary());
  if (at::hasMKLDNN()) CHECK(fast->engine_report().accelerated_ops >= 52);
  at::Tensor reference = plain->run(batch);
  at::Tensor whole = fast->run(batch);
  const double scale = 1.0 + reference.abs().max().item<double>();
  CHECK((whole - reference).abs().max().item<double>() <= 1e-4 * scale);
  CHECK(torch::equal(whole.argmax(1), reference.argmax(1)));  // 100% top-1 agreement
  // Every cut, on 8 of the images: close to the optimized whole model, and so the same top-1 as
  // the plain engine. (Without the tensor cache set_compute_threads installs, all 32 at every cut
  // took six minutes on 2 cores, 44% of it in the kernel: page faults on activations too large
  // for the heap, mapped afresh each time; 8 took 80 s, and take 20 s with it.)
  const at::Tensor few = batch.slice(0, 0, 8);
  const at::Tensor few_whole = fast->run(few);
  CHECK(torch::equal(few_whole.argmax(1), reference.slice(0, 0, 8).argmax(1)));
  for (const auto& c : fast->cuts()) check_cut_close(*fast, c.id, few, few_whole);

  if (!has_backend("xnnpack")) return;
  // XNNPACK (the backend of arm64 builds without oneDNN): the same top-1 on every image.
  auto xnn = load_ok(path, options_for(info->input_shape, Engine::kXnnpack));
  MESSAGE("mobilenet_v2_imagenet: " << xnn->engine_report().summary());
  at::Tensor xnn_whole = xnn->run(batch);
  CHECK((xnn_whole - reference).abs().max().item<double>() <= 1e-4 * scale);
  CHECK(torch::equal(xnn_whole.argmax(1), reference.argmax(1)));
  for (const auto& c : xnn->cuts()) {
    if (c.id % 8 == 0) check_cut_close(*xnn, c.id, few, xnn->run(few));
  }
}

TEST_CASE("optimized engine: ReLU6 on channels that are not whole oneDNN blocks stays exact") {
  // LibTorch 1.13's in-place oneDNN clamp computes nothing on 8 channels (MobileNetV1's
  // explicit padding and 24-channel layers hit the same); the engine keeps such clamps dense.
  auto path = test_model("padded.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  torch::manual_seed(18);
  at::Tensor input = torch::rand({1, 3, 32, 32});
  auto plain = load_ok(path, options_for({1, 3, 32, 32}, Engine::kPlain));
  at::Tensor reference = plain->run(input);
  const double scale = 1.0 + reference.abs().max().item<double>();
  auto unchecked_options = options_for({1, 3, 32, 32}, Engine::kOptimized);
  unchecked_options.verify_tolerance = -1;  // what the backend computes by itself
  auto unchecked = load_ok(path, unchecked_options);
  CHECK((unchecked->run(input) - reference).abs().max().item<double>() <= 1e-4 * scale);
  auto g = check_every_cut(path, input);
  CHECK(g->engine_report().fallbacks.empty());
}

TEST_CASE(
    "optimized engine: a graph that differs from the plain one is caught and runs another way") {
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  // A tolerance of zero: any reordering of float operations counts as a difference, so the
  // engine walks down its backends (oneDNN, XNNPACK, frozen-graph folding) and ends with what
  // reproduces the plain graph exactly.
  auto options = options_for({1, 3, 32, 32}, Engine::kOptimized);
  options.verify_tolerance = 0;
  auto g = load_ok(path, options);
  const auto& report = g->engine_report();
  MESSAGE(report.summary());
  REQUIRE_FALSE(report.fallbacks.empty());
  REQUIRE_FALSE(report.failures.empty());
  CHECK(report.failures.size() <= 3);
  CHECK(report.failures[0].find("differed from the plain graph") != std::string::npos);
  CHECK(report.summary().find("instead") != std::string::npos);
  int graphs = 0;
  for (const auto& [used, count] : report.fallbacks) graphs += count;
  CHECK(graphs >= 1);
  // Whatever each graph ended up as, it reproduces the plain graph bit for bit on the probe's
  // distribution, and every cut still agrees with the whole model.
  auto plain = load_ok(path, options_for({1, 3, 32, 32}, Engine::kPlain));
  torch::manual_seed(19);
  at::Tensor input = torch::rand({1, 3, 32, 32});
  at::Tensor whole = g->run(input);
  CHECK(torch::allclose(whole, plain->run(input), 1e-5, 1e-6));
  for (const auto& c : g->cuts()) check_cut_close(*g, c.id, input, whole);
}

TEST_CASE(
    "engine on a device: placed graphs give the CPU's results - a device it cannot use is "
    "one sentence") {
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  using edgesplit::StatusCode;
  torch::manual_seed(13);
  at::Tensor input = torch::randn({2, 3, 32, 32});
  auto cpu = load_ok(path, options_for({1, 3, 32, 32}, Engine::kOptimized));
  CHECK(cpu->engine_report().device == "cpu");
  CHECK_FALSE(cpu->on_gpu());
  at::Tensor whole = cpu->run(input);
  // "cpu" named explicitly takes the placement path a GPU takes: weights copied into every graph,
  // inputs and outputs moved. Same cuts, same results, for both engines.
  for (Engine engine : {Engine::kOptimized, Engine::kPlain}) {
    CAPTURE(edgesplit::partitioner::engine_name(engine));
    LoadOptions o = options_for({1, 3, 32, 32}, engine);
    o.device = "cpu";
    auto placed = load_ok(path, o);
    CHECK(placed->engine_report().device == "cpu");
    CHECK_FALSE(placed->on_gpu());
    REQUIRE(placed->cuts().size() == cpu->cuts().size());
    at::Tensor out = placed->run(input);
    CHECK(torch::allclose(out, whole, 1e-4, 1e-5));
    for (const auto& c : placed->cuts()) check_cut_close(*placed, c.id, input, whole);
  }
  // Devices this LibTorch cannot use.
  LoadOptions bad = options_for({1, 3, 32, 32}, Engine::kOptimized);
  bad.device = "banana";
  auto r = ModelGraph::load(path.string(), bad);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  CHECK(r.status().message().find("not a LibTorch device") != std::string::npos);
  bad.device = "cuda:0";
  r = ModelGraph::load(path.string(), bad);
  if (!edgesplit::partitioner::cuda_available()) {
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kUnsupported);
    CHECK(r.status().message().find("needs a LibTorch built with CUDA") != std::string::npos);
  } else {
    CHECK(r.ok());
  }
}

TEST_CASE("engine on a GPU: every cut on cuda:0 gives the CPU's results, from pinned inputs") {
  if (!edgesplit::partitioner::cuda_available()) {
    MESSAGE("skipped: this LibTorch has no CUDA or sees no GPU");
    return;
  }
  auto path = test_model("tiny_cnn.pt");
  if (path.empty()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch to export the test model");
    return;
  }
  torch::manual_seed(14);
  at::Tensor input = torch::randn({4, 3, 32, 32});
  auto cpu = load_ok(path, options_for({1, 3, 32, 32}, Engine::kPlain));
  at::Tensor whole = cpu->run(input);
  LoadOptions o = options_for({1, 3, 32, 32}, Engine::kOptimized);
  o.device = "cuda:0";
  auto gpu = load_ok(path, o);
  MESSAGE(gpu->engine_report().summary());
  CHECK(gpu->on_gpu());
  CHECK(gpu->engine_report().device == "cuda:0");
  CHECK(gpu->engine_report().backend == "frozen-graph");
  at::Tensor out = gpu->run(input.pin_memory());
  CHECK((out.device() == at::Device(at::kCPU)));
  CHECK(torch::allclose(out, whole, 1e-3, 1e-4));
  for (const auto& c : gpu->cuts()) check_cut_close(*gpu, c.id, input, whole, 1e-3);
}

TEST_CASE("tensor cache: a freed large block is reused, small ones are not kept, the limit holds") {
  namespace p = edgesplit::partitioner;
  p::install_tensor_cache(size_t{256} << 20);
  const p::TensorCacheStats start = p::tensor_cache_stats();
  REQUIRE(start.installed);
  const int64_t large = static_cast<int64_t>(p::kLargeTensorBytes / sizeof(float)) + 1024;
  void* first = nullptr;
  {
    at::Tensor t = torch::full({large}, 1.5f);
    first = t.data_ptr();
    CHECK(p::tensor_cache_stats().live_bytes >= p::kLargeTensorBytes);
  }
  CHECK(p::tensor_cache_stats().cached_blocks == start.cached_blocks + 1);
  {
    // The same block again, its old contents overwritten as asked.
    at::Tensor t = torch::zeros({large});
    CHECK(t.data_ptr() == first);
    CHECK(t.sum().item<float>() == 0.0f);
    CHECK(p::tensor_cache_stats().hits == start.hits + 1);
  }
  void* twice = nullptr;
  {
    // Larger than every kept block: a new one.
    const uint64_t misses = p::tensor_cache_stats().misses;
    at::Tensor u = torch::empty({large * 2});
    twice = u.data_ptr();
    CHECK(twice != first);
    CHECK(p::tensor_cache_stats().misses == misses + 1);
  }
  {
    // Kept: blocks of `large` and 2 x `large` values. Just above `large`, the smallest kept block
    // that fits is more than 1.5 times the request: a new one.
    const uint64_t misses = p::tensor_cache_stats().misses;
    at::Tensor r = torch::empty({large + 1024});
    CHECK(r.data_ptr() != twice);
    CHECK(r.data_ptr() != first);
    CHECK(p::tensor_cache_stats().misses == misses + 1);
    // At 1.4 x `large`, the 2 x block is within 1.5 times the request: taken.
    at::Tensor w = torch::empty({large * 14 / 10});
    CHECK(w.data_ptr() == twice);
  }
  {
    at::Tensor small = torch::ones({1024, 1024});  // 4 MiB: LibTorch's own allocator
    (void)small;
  }
  const p::TensorCacheStats mid = p::tensor_cache_stats();
  CHECK(mid.live_bytes == start.live_bytes);
  CHECK(mid.cached_bytes <= mid.limit_bytes);
  CHECK(mid.cached_blocks == start.cached_blocks + 3);  // three large blocks, no small one
  // A lower limit gives back the least recently freed blocks first.
  p::install_tensor_cache(size_t{100} << 20);
  const p::TensorCacheStats lower = p::tensor_cache_stats();
  CHECK(lower.cached_bytes <= size_t{100} << 20);
  CHECK(lower.evictions > mid.evictions);
  CHECK(p::release_tensor_cache() == lower.cached_bytes);
  CHECK(p::tensor_cache_stats().cached_bytes == 0);
  // A limit of 0 keeps nothing.
  p::install_tensor_cache(0);
  { at::Tensor t = torch::empty({large}); }
  CHECK(p::tensor_cache_stats().cached_blocks == 0);
  p::install_tensor_cache(p::kTensorCacheDefaultBytes);
}

TEST_CASE("tensor cache: threads share it, and a convolution's large tensors come back to it") {
  namespace p = edgesplit::partitioner;
  p::install_tensor_cache(size_t{512} << 20);
  // Four threads take and give back large blocks, each checking it alone wrote its block.
  const int64_t large = static_cast<int64_t>(p::kLargeTensorBytes / sizeof(float)) + 4096;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        at::Tensor x = torch::full({large + t * 1024}, static_cast<float>(t * 100 + i));
        if (x.min().item<float>() != x.max().item<float>() ||
            x[0].item<float>() != static_cast<float>(t * 100 + i)) {
          ++wrong;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong == 0);
  const p::TensorCacheStats s = p::tensor_cache_stats();
  CHECK(s.hits > 0);
  CHECK(s.cached_bytes <= s.limit_bytes);
  // A convolution on a 39 MiB activation (16 x 800 x 800 floats), twice: the same result; its
  // output comes through the cache, is freed into it rather than lost (live bytes back where
  // they were), and the next convolution's output takes it back.
  torch::manual_seed(3);
  at::Tensor input = torch::randn({1, 16, 800, 800}).contiguous();
  REQUIRE(input.nbytes() >= p::kLargeTensorBytes);
  at::Tensor weight = torch::randn({16, 16, 3, 3});
  const p::TensorCacheStats before_conv = p::tensor_cache_stats();
  at::Tensor a = torch::conv2d(input, weight, {}, 1, 1);
  const p::TensorCacheStats after_a = p::tensor_cache_stats();
  CHECK(after_a.hits + after_a.misses > before_conv.hits + before_conv.misses);
  at::Tensor b = torch::conv2d(input, weight, {}, 1, 1);
  CHECK(torch::equal(a, b));
  const double sum = a.sum().item<double>();
  if (at::hasMKLDNN()) {
    // oneDNN's own tensors (allocated by ideep, not through LibTorch's allocator) beside it.
    at::Tensor m = input.to_mkldnn();
    at::Tensor c = torch::mkldnn_convolution(m, weight, {}, {1, 1}, {1, 1}, {1, 1}, 1).to_dense();
    CHECK(torch::allclose(c, a, 1e-4, 1e-4));
  }
  a = at::Tensor();
  b = at::Tensor();
  CHECK(p::tensor_cache_stats().live_bytes == before_conv.live_bytes);
  const uint64_t hits_before_d = p::tensor_cache_stats().hits;
  at::Tensor d = torch::conv2d(input, weight, {}, 1, 1);
  CHECK(p::tensor_cache_stats().hits > hits_before_d);
  CHECK(d.sum().item<double>() == sum);
  d = at::Tensor();
  CHECK(p::tensor_cache_stats().live_bytes == before_conv.live_bytes);
  p::install_tensor_cache(p::kTensorCacheDefaultBytes);
}
