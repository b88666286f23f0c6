// Where tests find the repository, the build tree and ../shared (which may be absent).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace edgesplit::testing {

inline std::filesystem::path source_dir() { return EDGESPLIT_SOURCE_DIR; }
inline std::filesystem::path binary_dir() { return EDGESPLIT_BINARY_DIR; }
inline std::filesystem::path bin_dir() { return binary_dir() / "bin"; }

// ../shared beside the repository, or EDGESPLIT_SHARED_DIR; empty when absent.
inline std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("EDGESPLIT_SHARED_DIR")) return env;
  auto p = source_dir().parent_path() / "shared";
  return std::filesystem::exists(p / "models") ? p : std::filesystem::path();
}

inline std::filesystem::path shared_mobilenet() {
  auto s = shared_dir();
  if (s.empty()) return {};
  auto p = s / "models" / "mobilenet_v2_imagenet" / "mobilenet_v2_imagenet.pt";
  return std::filesystem::exists(p) ? p : std::filesystem::path();
}

// ../shared's labelled ImageNet validation images; empty when absent.
inline std::filesystem::path shared_imagenet_images() {
  auto s = shared_dir();
  if (s.empty()) return {};
  auto p = s / "data" / "imagenet-val-1300" / "images";
  return std::filesystem::exists(p) ? p : std::filesystem::path();
}

}  // namespace edgesplit::testing
