// Helpers for the partitioner tests: python3-torch detection, exporting test models into the build
// tree (cached), and the head-then-tail versus whole-graph exactness check.
#pragma once

#include "tests/partitioner/torch_doctest.h"  // first: see there

#include <cstdlib>
#include <filesystem>
#include <string>

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

// The small models of tests/partitioner/make_test_models.py, written once into the build tree.
// Empty when python3-torch is missing.
inline std::filesystem::path test_model(const std::string& file) {
  if (!python_has_torch()) return {};
  auto dir = models_cache() / "test-models";
  auto path = dir / file;
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
  if (!std::filesystem::exists(path)) {
    std::string cmd = std::string(kPython) + " " + (source_dir() / "models/export.py").string() +
                      " " + arch + " " + path.string() + (trace ? " --trace" : "");
    REQUIRE(std::system(cmd.c_str()) == 0);
  }
  REQUIRE(std::filesystem::exists(path));
  return path;
}

// Head then tail of `cut` on `input` must equal `whole` (the processed graph's output) bit for bit,
// and the crossing tensors must have the shapes the cut point lists.
inline void check_cut_exact(const partitioner::ModelGraph& graph, int cut, const at::Tensor& input,
                            const at::Tensor& whole) {
  const auto& point = graph.cut(cut);
  CAPTURE(cut);
  CAPTURE(point.name);
  auto crossing = graph.run_head(cut, input);
  REQUIRE(crossing.size() == point.tensors.size());
  for (size_t i = 0; i < crossing.size(); ++i) {
    auto expected = point.tensors[i].shape;  // recorded for batch 1
    if (!expected.empty()) expected[0] = input.size(0);
    CHECK(crossing[i].sizes().vec() == expected);
    if (point.tensors[i].non_negative) CHECK(crossing[i].min().item<float>() >= 0.0f);
  }
  at::Tensor out = graph.run_tail(cut, crossing);
  REQUIRE(out.sizes() == whole.sizes());
  CHECK(torch::equal(out, whole));
}

}  // namespace edgesplit::testing
