// Batched tails (server/tail_executor.h): a batch gives each request what it gets alone, a request
// that does not fit fails alone, every cut of the shipped models batches, and early exits on the
// server answer the rows that pass with the exit head's classes while the rest go on.
//
// What "the same" means: on this machine (x86-64, LibTorch 1.13, oneDNN) every batched row was
// bit-exact to the row run alone, for the default model, ResNet-20 (every cut) and MobileNetV2
// (cuts 0, 21, 45, 55). The default model is held to that; for the shared models, whose oneDNN
// kernels may differ with the batch on other CPUs, rows must agree within float error
// (|diff| <= 1e-4 x (1 + max |logit|)) and on the top-1 class; the test prints the largest
// difference per model.
#include <doctest/doctest.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include "packing/codec.h"
#include "partitioner/exit_head.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "server/tail_executor.h"
#include "tests/test_paths.h"

namespace edgesplit::server {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<partitioner::ModelGraph> load(const fs::path& path) {
  partitioner::LoadOptions lo;
  auto info = partitioner::load_model_info(path.string(), "");
  if (info.ok()) lo.input_shape = info->input_shape;
  auto graph = partitioner::ModelGraph::load(path.string(), lo);
  REQUIRE_MESSAGE(graph.ok(), graph.status().message());
  return std::shared_ptr<partitioner::ModelGraph>(std::move(graph).value());
}

// Packed crossing tensors of `cut` for `n` pseudo-random inputs (fp32 payloads: exact).
std::vector<std::vector<std::vector<uint8_t>>> payloads_for(const partitioner::ModelGraph& g,
                                                            int cut, int n, int bits = 0) {
  std::vector<std::vector<std::vector<uint8_t>>> out;
  torch::manual_seed(7 + cut);
  for (int i = 0; i < n; ++i) {
    at::Tensor input = torch::rand(g.cut(0).tensors[0].shape);
    std::vector<at::Tensor> crossing = g.run_head(cut, input);
    std::vector<std::vector<uint8_t>> packed;
    for (auto& t : crossing) {
      t = t.contiguous();
      packing::EncodeOptions eo;
      if (bits == 0) {
        eo.format = packing::Format::kFloat32;
      } else {
        eo.bits = bits;
      }
      auto p =
          packing::encode(t.data_ptr<float>(), static_cast<size_t>(t.numel()), t.sizes().vec(), eo);
      REQUIRE(p.ok());
      packed.push_back(std::move(p).value());
    }
    out.push_back(std::move(packed));
  }
  return out;
}

BatchRequest request_of(const std::vector<std::vector<uint8_t>>& payloads) {
  BatchRequest r;
  for (const auto& p : payloads) r.payloads.push_back({p.data(), p.size()});
  r.top_k = 3;
  r.want_logits = true;
  return r;
}

// Runs every cut's tail for `rows` requests batched and one by one; returns the largest difference.
double compare_cuts(const partitioner::ModelGraph& g, const std::vector<int>& cuts, int rows,
                    double tolerance) {
  double worst = 0;
  for (int cut : cuts) {
    CAPTURE(cut);
    auto payloads = payloads_for(g, cut, rows);
    std::vector<BatchRequest> requests;
    for (const auto& p : payloads) requests.push_back(request_of(p));
    auto batched = run_tail_batch(g, nullptr, cut, requests, {});
    REQUIRE(batched.size() == requests.size());
    for (size_t r = 0; r < requests.size(); ++r) {
      // The same request alone: a batch of one.
      auto alone = std::move(run_tail_batch(g, nullptr, cut, {requests[r]}, {}).front());
      REQUIRE_MESSAGE(alone.ok(), alone.status().message());
      REQUIRE_MESSAGE(batched[r].ok(), batched[r].status().message());
      const auto& a = alone->logits;
      const auto& b = batched[r]->logits;
      REQUIRE(a.size() == b.size());
      double scale = 0, diff = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        scale = std::max(scale, static_cast<double>(std::abs(a[i])));
        diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
      }
      worst = std::max(worst, diff);
      CHECK(diff <= tolerance * (1 + scale));
      CHECK(alone->top.front().index == batched[r]->top.front().index);
    }
  }
  return worst;
}

std::vector<int> every_cut(const partitioner::ModelGraph& g) {
  std::vector<int> cuts;
  for (const auto& c : g.cuts()) {
    if (c.id != g.device_cut()) cuts.push_back(c.id);
  }
  return cuts;
}

TEST_CASE("a batched tail gives each request what it gets alone: the default model, bit for bit") {
  auto g = load(testing::source_dir() / "models" / "default" / "fashion_mnist_cnn.pt");
  const double worst = compare_cuts(*g, every_cut(*g), 5, 0.0);
  MESSAGE("default model, every cut, 5 rows: largest difference " << worst);
  CHECK(worst == 0.0);
  for (int cut : every_cut(*g)) CHECK(check_batched_tail(*g, cut, 4).ok());
}

TEST_CASE("a worker's warm-up builds a tail and runs it on zeros") {
  auto g = load(testing::source_dir() / "models" / "default" / "fashion_mnist_cnn.pt");
  const int cut = every_cut(*g).back();
  CHECK_FALSE(g->tail_built(cut));
  Result<double> ms = warm_tail(*g, cut, 2);
  REQUIRE_MESSAGE(ms.ok(), ms.status().message());
  CHECK(*ms > 0);
  CHECK(g->tail_built(cut));
  // The whole model (cut 0) too, and no runs at all only builds.
  REQUIRE(warm_tail(*g, 0, 1).ok());
  REQUIRE(warm_tail(*g, 1, 0).ok());
  CHECK(g->tail_built(1));
  // A batching server's workers also warm the batch sizes they may form.
  Result<double> batch = warm_tail(*g, 0, 1, 8);
  REQUIRE_MESSAGE(batch.ok(), batch.status().message());
  CHECK(warm_tail(*g, 0, 1, 0).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a request that does not fit fails alone - the rest of its batch runs") {
  auto g = load(testing::source_dir() / "models" / "default" / "fashion_mnist_cnn.pt");
  const int cut = every_cut(*g)[every_cut(*g).size() / 2];
  auto payloads = payloads_for(*g, cut, 3, 8);
  std::vector<BatchRequest> requests;
  for (const auto& p : payloads) requests.push_back(request_of(p));
  // The middle request's payload is cut short; a fourth sends the wrong number of tensors.
  requests[1].payloads[0].size /= 2;
  BatchRequest none = requests[0];
  none.payloads.clear();
  requests.push_back(none);
  auto out = run_tail_batch(*g, nullptr, cut, requests, {});
  REQUIRE(out.size() == 4);
  CHECK(out[0].ok());
  CHECK(out[2].ok());
  CHECK(out[1].status().code() == StatusCode::kMalformed);
  CHECK(out[3].status().code() == StatusCode::kMalformed);
  auto alone = std::move(run_tail_batch(*g, nullptr, cut, {requests[2]}, {}).front());
  REQUIRE(alone.ok());
  CHECK(alone->logits == out[2]->logits);
  // A cut the model does not have fails every request, clearly.
  auto bad = run_tail_batch(*g, nullptr, 999, requests, {});
  for (const auto& r : bad) CHECK(r.status().code() == StatusCode::kMalformed);
}

TEST_CASE("batched tails of ResNet-20 and MobileNetV2 agree with single rows within float error") {
  const fs::path shared = testing::shared_dir();
  if (shared.empty()) {
    MESSAGE("skipped: ../shared (models) is absent");
    return;
  }
  auto resnet = load(shared / "models/resnet_cifar10/resnet20_cifar10.pt");
  const double r_worst = compare_cuts(*resnet, every_cut(*resnet), 4, 1e-4);
  MESSAGE("ResNet-20, every cut, 4 rows: largest difference " << r_worst);
  auto mobilenet = load(testing::shared_mobilenet());
  // The input, two inner cuts (one a residual stage, one after the last block) and the classifier.
  const std::vector<int> cuts = {0, 21, 45, 55};
  const double m_worst = compare_cuts(*mobilenet, cuts, 4, 1e-4);
  MESSAGE("MobileNetV2, cuts 0/21/45/55, 4 rows: largest difference " << m_worst);
  for (int cut : cuts) CHECK(check_batched_tail(*mobilenet, cut, 2).ok());
}

TEST_CASE("server exits: rows that pass leave with the exit head's classes, the rest go on") {
  const fs::path dir = testing::source_dir() / "models";
  auto g = load(dir / "default" / "fashion_mnist_cnn.pt");
  auto loaded = ServerExits::load((dir / "exits" / "fashion_mnist_cnn_exits.json").string(), *g,
                                  partitioner::Engine::kOptimized);
  REQUIRE_MESSAGE(loaded.ok(), loaded.status().message());
  const ServerExits& exits = **loaded;
  REQUIRE(exits.exits().size() == 1);
  const int exit_cut = exits.exits()[0].cut;
  CHECK(g->cut(exit_cut).name == "res1.relu");
  CHECK(exits.digest().rfind("sha256:", 0) == 0);
  CHECK(exits.exits()[0].ms > 0);
  // Rows cut before the exit; each one's exit-head confidence straight from the head.
  const int cut = exit_cut - 1;
  const int n = 8;
  auto payloads = payloads_for(*g, cut, n);
  std::vector<double> confidence;
  std::vector<at::Tensor> head_logits;
  torch::manual_seed(7 + cut);  // the inputs payloads_for made
  for (int i = 0; i < n; ++i) {
    const at::Tensor input = torch::rand(g->cut(0).tensors[0].shape);
    const at::Tensor at_exit = g->run_head(exit_cut, input).at(0);
    head_logits.push_back(exits.run(0, at_exit).reshape({-1}));
    confidence.push_back(partitioner::max_softmax_rows(head_logits.back()).at(0));
  }
  // A threshold between the confidences: some rows leave, some do not.
  std::vector<double> sorted = confidence;
  std::sort(sorted.begin(), sorted.end());
  const double threshold = (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  REQUIRE(sorted[n / 2 - 1] < sorted[n / 2]);
  std::vector<BatchRequest> requests;
  for (const auto& p : payloads) {
    requests.push_back(request_of(p));
    requests.back().exit_threshold = threshold;
  }
  requests[0].exit_threshold = 0;  // asks for no exit
  requests[1].exit_threshold = 1;  // never leaves
  auto batched = run_tail_batch(*g, nullptr, cut, requests, {}, &exits);
  std::vector<BatchRequest> plain = requests;
  for (auto& r : plain) r.exit_threshold = 0;
  auto without = run_tail_batch(*g, nullptr, cut, plain, {}, &exits);
  int left = 0, stayed = 0;
  for (size_t r = 0; r < requests.size(); ++r) {
    CAPTURE(r);
    REQUIRE_MESSAGE(batched[r].ok(), batched[r].status().message());
    REQUIRE(without[r].ok());
    CHECK_FALSE(without[r]->exit.has_value());
    const bool should_leave = r >= 2 && confidence[r] >= threshold;
    REQUIRE(batched[r]->exit.has_value() == should_leave);
    // The same row alone: the same answer, bit for bit.
    auto alone = std::move(run_tail_batch(*g, nullptr, cut, {requests[r]}, {}, &exits).front());
    REQUIRE(alone.ok());
    CHECK(alone->exit.has_value() == should_leave);
    CHECK(alone->logits == batched[r]->logits);
    if (should_leave) {
      ++left;
      CHECK(batched[r]->exit->cut == exit_cut);
      CHECK(batched[r]->exit->position == "res1");
      CHECK(batched[r]->exit->confidence == doctest::Approx(confidence[r]));
      // The exit head's own classes, as the head alone gives them.
      const at::Tensor want = head_logits[r].contiguous();
      REQUIRE(batched[r]->logits.size() == static_cast<size_t>(want.numel()));
      for (size_t i = 0; i < batched[r]->logits.size(); ++i) {
        CHECK(batched[r]->logits[i] == doctest::Approx(want.data_ptr<float>()[i]).epsilon(1e-5));
      }
      CHECK(batched[r]->top.front().index == want.argmax().item<int64_t>());
    } else {
      ++stayed;
      // The whole tail, as without exits (the part to the exit then the rest of the tail).
      const auto& a = without[r]->logits;
      const auto& b = batched[r]->logits;
      REQUIRE(a.size() == b.size());
      for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == doctest::Approx(a[i]).epsilon(1e-4));
      CHECK(without[r]->top.front().index == batched[r]->top.front().index);
    }
  }
  MESSAGE("threshold " << threshold << ": " << left << " rows left at the exit, " << stayed
                       << " went on");
  CHECK(left >= 2);
  CHECK(stayed >= 4);
  // A row cut at or after the exit passes no exit on the server.
  auto late = payloads_for(*g, exit_cut, 2);
  std::vector<BatchRequest> after;
  for (const auto& p : late) {
    after.push_back(request_of(p));
    after.back().exit_threshold = 1e-6;
  }
  for (const auto& r : run_tail_batch(*g, nullptr, exit_cut, after, {}, &exits)) {
    REQUIRE(r.ok());
    CHECK_FALSE(r->exit.has_value());
  }
}

TEST_CASE("server exits: heads of another model or cut are refused in one sentence") {
  const fs::path dir = testing::source_dir() / "models";
  auto g = load(dir / "default" / "fashion_mnist_cnn.pt");
  auto other = ServerExits::load((dir / "exits" / "resnet56_cifar10_exits.json").string(), *g,
                                 partitioner::Engine::kOptimized);
  REQUIRE_FALSE(other.ok());
  CHECK(other.status().code() == StatusCode::kInvalidArgument);
  CHECK(other.status().message().find("trained on model") != std::string::npos);
  CHECK(other.status().message().find('\n') == std::string::npos);
  auto missing = ServerExits::load((dir / "exits" / "nothing_exits.json").string(), *g,
                                   partitioner::Engine::kOptimized);
  CHECK_FALSE(missing.ok());
}

}  // namespace
}  // namespace edgesplit::server
