// Helpers for the partitioner tests: python3-torch detection, exporting test models into the build
// tree (cached), and the head-then-tail versus whole-graph exactness check.
#pragma once

#include "tests/partitioner/torch_doctest.h"  // first: see there

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "partitioner/model_graph.h"
#include "tests/test_paths.h"

namespace edgesplit::testing {

inline const char* kPython = "/usr/bin/python3";

// Whether /usr/bin/python3 can import torch and torchvision (needed to export test models).
inline bool python_has_torch() {
  static const bool ok = [] {
    std::string cmd = std::string(kPython) + " -c 'import torch, torchvision' >/dev/null 2>&1";
    return std::filesystem::exists(kPython) && std::system(cmd.c_str()) == 0;
  }();
  return ok;
}

inline std::filesystem::path models_cache() {
  auto dir = binary_dir() / "models-cache";
  std::filesystem::create_directories(dir);
  return dir;
}

// Holds an exclusive lock on the models cache while it lives. Test binaries run in parallel under
// ctest, and an export is not byte-for-byte reproducible: without the lock a second process could
// replace a model file another one has already loaded (and taken the digest of).
class CacheLock {
 public:
  CacheLock()
      : fd_(::open((models_cache() / ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {
    REQUIRE(fd_ >= 0);
    REQUIRE(::flock(fd_, LOCK_EX) == 0);
  }
  ~CacheLock() { ::close(fd_); }
  CacheLock(const CacheLock&) = delete;
  CacheLock& operator=(const CacheLock&) = delete;

 private:
  int fd_;
};

// The small models of tests/partitioner/make_test_models.py, written once into the build tree.
// Empty when python3-torch is missing.
inline std::filesystem::path test_model(const std::string& file) {
  if (!python_has_torch()) return {};
  auto dir = models_cache() / "test-models";
  auto path = dir / file;
  CacheLock lock;
  if (!std::filesystem::exists(path)) {
    std::string cmd = std::string(kPython) + " " +
                      (source_dir() / "tests/partitioner/make_test_models.py").string() + " " +
                      dir.string();
    REQUIRE(std::system(cmd.c_str()) == 0);
  }
  REQUIRE(std::filesystem::exists(path));
  return path;
}

// A torchvision architecture exported by models/export.py (random weights), cached in the build
// tree. Empty when python3-torch is missing.
inline std::filesystem::path exported_model(const std::string& arch, bool trace = false) {
  if (!python_has_torch()) return {};
  auto path = models_cache() / (arch + (trace ? "_traced" : "") + ".pt");
  CacheLock lock;
  if (!std::filesystem::exists(path)) {
    std::string cmd = std::string(kPython) + " " + (source_dir() / "models/export.py").string() +
                      " " + arch + " " + path.string() + (trace ? " --trace" : "");
    REQUIRE(std::system(cmd.c_str()) == 0);
  }
  REQUIRE(std::filesystem::exists(path));
  return path;
}

// Runs the head of `cut` on `input` and checks the crossing tensors: as many as the cut point
// lists, of its shapes (recorded for batch 1), non-negative where it says so; with `dense`, also
// plain contiguous CPU float tensors (what the codec reads).
inline std::vector<at::Tensor> checked_head(const partitioner::ModelGraph& graph, int cut,
                                            const at::Tensor& input, bool dense) {
  const auto& point = graph.cut(cut);
  auto crossing = graph.run_head(cut, input);
  REQUIRE(crossing.size() == point.tensors.size());
  for (size_t i = 0; i < crossing.size(); ++i) {
    auto expected = point.tensors[i].shape;
    if (!expected.empty()) expected[0] = input.size(0);
    CHECK(crossing[i].sizes().vec() == expected);
    if (dense) {
      CHECK((crossing[i].layout() == at::kStrided));
      CHECK(crossing[i].device().is_cpu());
      CHECK((crossing[i].scalar_type() == at::kFloat));
      CHECK(crossing[i].is_contiguous());
    }
    if (point.tensors[i].non_negative) CHECK(crossing[i].min().item<float>() >= 0.0f);
  }
  return crossing;
}

// Head then tail of `cut` on `input` must equal `whole` (the processed graph's output) bit for bit,
// and the crossing tensors must have the shapes the cut point lists.
inline void check_cut_exact(const partitioner::ModelGraph& graph, int cut, const at::Tensor& input,
                            const at::Tensor& whole) {
  CAPTURE(cut);
  CAPTURE(graph.cut(cut).name);
  at::Tensor out = graph.run_tail(cut, checked_head(graph, cut, input, /*dense=*/false));
  REQUIRE(out.sizes() == whole.sizes());
  CHECK(torch::equal(out, whole));
}

// The optimized engine's contract at one cut: the crossing tensors are dense, contiguous CPU
// float tensors of the listed shapes (what the codec reads), and head then tail agree with
// `whole` within `tolerance` x (1 + max |whole|) with the same top-1 for every row.
inline void check_cut_close(const partitioner::ModelGraph& graph, int cut, const at::Tensor& input,
                            const at::Tensor& whole, double tolerance = 1e-4) {
  CAPTURE(cut);
  CAPTURE(graph.cut(cut).name);
  at::Tensor out = graph.run_tail(cut, checked_head(graph, cut, input, /*dense=*/true));
  REQUIRE(out.sizes() == whole.sizes());
  CHECK((out.layout() == at::kStrided));
  const double scale = 1.0 + whole.abs().max().item<double>();
  const double diff = (out - whole).abs().max().item<double>();
  CAPTURE(diff);
  CHECK(diff <= tolerance * scale);
  if (whole.dim() == 2) CHECK(torch::equal(out.argmax(1), whole.argmax(1)));
}

// Runs head then tail from 4 threads at once, 40 times each over the cuts, and returns how many
// results `same` rejected against `whole`.
inline int concurrent_mismatches(
    const partitioner::ModelGraph& graph, const at::Tensor& input, const at::Tensor& whole,
    const std::function<bool(const at::Tensor&, const at::Tensor&)>& same) {
  const int cuts = static_cast<int>(graph.cuts().size());
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 40; ++i) {
        const int cut = (t * 7 + i) % cuts;
        if (!same(graph.run_tail(cut, graph.run_head(cut, input)), whole)) ++mismatches;
      }
    });
  }
  for (auto& t : threads) t.join();
  return mismatches.load();
}

}  // namespace edgesplit::testing
