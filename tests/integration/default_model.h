// The repository's default model and its sample images, and the built binaries, for the
// process-level tests.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>

#include "tests/test_paths.h"

namespace edgesplit::testing {

inline std::filesystem::path default_model() {
  return source_dir() / "models" / "default" / "fashion_mnist_cnn.pt";
}
inline std::filesystem::path default_samples() {
  return source_dir() / "models" / "default" / "samples";
}
inline std::string bin(const std::string& name) { return (bin_dir() / name).string(); }

// The sample images (PNG files) in default_samples().
inline size_t sample_count() {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(default_samples())) {
    if (e.path().extension() == ".png") ++n;
  }
  return n;
}

}  // namespace edgesplit::testing
