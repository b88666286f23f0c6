// Comma-separated integers, as command-line flags take them ("4,8,16"). Header-only and free of
// LibTorch; here because every component and tool links the packing library.
#pragma once

#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace edgesplit {

// "3,7" -> {3, 7}; nullopt when an item is empty or not an integer, or when every item is not
// within [lo, hi]. An empty text is an empty list.
inline std::optional<std::vector<int>> parse_int_list(const std::string& text,
                                                      int lo = std::numeric_limits<int>::min(),
                                                      int hi = std::numeric_limits<int>::max()) {
  std::vector<int> out;
  for (size_t start = 0; start < text.size();) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = text.substr(start, comma - start);
    try {
      size_t used = 0;
      const int value = std::stoi(item, &used);
      if (used != item.size() || value < lo || value > hi) return std::nullopt;
      out.push_back(value);
    } catch (const std::exception&) {
      return std::nullopt;
    }
    start = comma + 1;
  }
  if (!text.empty() && text.back() == ',') return std::nullopt;
  return out;
}

}  // namespace edgesplit
