// Top-k classes from a row of logits, as softmax probabilities. Free of LibTorch so the device's
// output code and the server's reply code share it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace edgesplit::partitioner {

struct ClassScore {
  int index = 0;
  float score = 0.0f;  // softmax probability
};

// The k highest of `n` logits, best first (ties: lower index first), with softmax scores.
// NaN logits rank last; k is capped at n.
inline std::vector<ClassScore> top_k(const float* logits, size_t n, size_t k) {
  std::vector<ClassScore> out;
  if (n == 0 || k == 0) return out;
  float max_logit = -INFINITY;
  for (size_t i = 0; i < n; ++i) {
    if (logits[i] > max_logit) max_logit = logits[i];
  }
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isnan(logits[i])) sum += std::exp(static_cast<double>(logits[i] - max_logit));
  }
  std::vector<int> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<int>(i);
  k = std::min(k, n);
  auto better = [&](int a, int b) {
    float la = logits[a], lb = logits[b];
    bool na = std::isnan(la), nb = std::isnan(lb);
    if (na != nb) return nb;
    if (la != lb) return la > lb;
    return a < b;
  };
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                    better);
  out.reserve(k);
  for (size_t i = 0; i < k; ++i) {
    float l = logits[order[i]];
    float p = (std::isnan(l) || sum <= 0.0)
                  ? 0.0f
                  : static_cast<float>(std::exp(static_cast<double>(l - max_logit)) / sum);
    out.push_back({order[i], p});
  }
  return out;
}

}  // namespace edgesplit::partitioner
