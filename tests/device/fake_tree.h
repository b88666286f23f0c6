// A temporary folder for fake sysfs and cgroup trees (removed at the end of the test), and
// writing a file in it as the kernel shows one (text and a newline).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace edgesplit::testing {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/edgesplit-tree-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

inline void put(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p) << text << '\n';
}

}  // namespace edgesplit::testing
