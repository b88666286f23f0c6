#include "partitioner/cut_table.h"

#include <cstdio>

namespace edgesplit::partitioner {

std::string cut_table_digest(const std::vector<CutTableEntry>& cuts) {
  std::string text;
  for (const CutTableEntry& c : cuts) {
    text += std::to_string(c.id) + " " + c.name + " ";
    for (size_t t = 0; t < c.shapes.size(); ++t) {
      if (t > 0) text += ",";
      for (size_t d = 0; d < c.shapes[t].size(); ++d) {
        if (d > 0) text += "x";
        text += std::to_string(c.shapes[t][d]);
      }
    }
    text += "\n";
  }
  uint64_t h = 14695981039346656037ull;  // FNV-1a 64-bit offset basis
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 1099511628211ull;  // FNV prime
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "fnv1a64:%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace edgesplit::partitioner
