// drop_interval, clopper_pearson and wilson (accuracy_interval.h). The binomial tail is summed in
// logs (lgamma), and the exact interval's ends found by bisection on it: exact to 1e-12 for the
// few thousand images a profile scores.
#include "profiles/accuracy_interval.h"

#include <algorithm>
#include <cmath>

namespace edgesplit::profiles {
namespace {

// P(X <= k) for X ~ binomial(m, p).
double binomial_cdf(int64_t k, int64_t m, double p) {
  if (k < 0) return 0;
  if (k >= m) return 1;
  if (p <= 0) return 1;
  if (p >= 1) return 0;
  const double lp = std::log(p), lq = std::log1p(-p);
  const double lm = std::lgamma(static_cast<double>(m) + 1);
  // Sum the terms from the largest down, in a numerically stable way (log-sum-exp).
  double max_log = -INFINITY;
  for (int64_t i = 0; i <= k; ++i) {
    const double t = lm - std::lgamma(static_cast<double>(i) + 1) -
                     std::lgamma(static_cast<double>(m - i) + 1) + static_cast<double>(i) * lp +
                     static_cast<double>(m - i) * lq;
    max_log = std::max(max_log, t);
  }
  double sum = 0;
  for (int64_t i = 0; i <= k; ++i) {
    const double t = lm - std::lgamma(static_cast<double>(i) + 1) -
                     std::lgamma(static_cast<double>(m - i) + 1) + static_cast<double>(i) * lp +
                     static_cast<double>(m - i) * lq;
    sum += std::exp(t - max_log);
  }
  return std::min(1.0, std::exp(max_log) * sum);
}

// The p in [0, 1] where f(p) (decreasing in p) crosses `target`.
template <typename F>
double solve_decreasing(F f, double target) {
  double lo = 0, hi = 1;
  for (int i = 0; i < 200 && hi - lo > 1e-13; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (f(mid) > target) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

}  // namespace

Proportion clopper_pearson(int64_t k, int64_t m, double confidence) {
  Proportion out;
  if (m <= 0) return out;
  k = std::clamp<int64_t>(k, 0, m);
  const double alpha = 1 - std::clamp(confidence, 0.0, 1.0 - 1e-12);
  // Lower end: P(X >= k | p) = alpha / 2, i.e. P(X <= k - 1 | p) = 1 - alpha / 2.
  out.low =
      k == 0 ? 0.0
             : solve_decreasing([&](double p) { return binomial_cdf(k - 1, m, p); }, 1 - alpha / 2);
  // Upper end: P(X <= k | p) = alpha / 2.
  out.high =
      k == m ? 1.0 : solve_decreasing([&](double p) { return binomial_cdf(k, m, p); }, alpha / 2);
  return out;
}

double normal_quantile(double p) {
  p = std::clamp(p, 1e-300, 1 - 1e-16);
  // Phi(x) = erfc(-x / sqrt 2) / 2 is increasing: bisect on it.
  double lo = -40, hi = 40;
  for (int i = 0; i < 200 && hi - lo > 1e-14; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

Proportion wilson(int64_t k, int64_t m, double confidence) {
  Proportion out;
  if (m <= 0) return out;
  k = std::clamp<int64_t>(k, 0, m);
  const double z = normal_quantile(0.5 + std::clamp(confidence, 0.0, 1.0 - 1e-12) / 2);
  const double n = static_cast<double>(m), x = static_cast<double>(k), z2 = z * z;
  const double center = (x + z2 / 2) / (n + z2);
  const double half = z * std::sqrt(x * (n - x) / n + z2 / 4) / (n + z2);
  out.low = std::max(0.0, center - half);
  out.high = std::min(1.0, center + half);
  return out;
}

int64_t fp32_right_of(double fp32_top1, int64_t scored) {
  return std::clamp<int64_t>(std::llround(fp32_top1 * static_cast<double>(scored)), 0, scored);
}

DropInterval drop_interval(int64_t n, int64_t lost, int64_t gained, int64_t fp32_right,
                           double confidence) {
  DropInterval d;
  if (n <= 0) return d;
  lost = std::clamp<int64_t>(lost, 0, n);
  gained = std::clamp<int64_t>(gained, 0, n - lost);
  fp32_right = std::clamp<int64_t>(fp32_right, lost, n - gained);
  const double nn = static_cast<double>(n);
  d.point_pp = 100.0 * static_cast<double>(lost - gained) / nn;
  if (!(confidence > 0)) {
    d.low_pp = d.high_pp = d.point_pp;
    return d;
  }
  if (fp32_right >= n) {
    // fp32 is right on every image (no labels: it is the truth): the loss is lost / n.
    const Proportion p = clopper_pearson(lost - gained, n, confidence);
    d.low_pp = 100.0 * p.low;
    d.high_pp = 100.0 * p.high;
    return d;
  }
  // The 2x2 table of (fp32 right?, encoding right?): a both, b = lost, c = gained, e neither.
  const double b = static_cast<double>(lost), c = static_cast<double>(gained);
  const double a = static_cast<double>(fp32_right) - b;
  const double e = nn - a - b - c;
  const double p1 = (a + b) / nn, p2 = (a + c) / nn;
  const Proportion w1 = wilson(fp32_right, n, confidence);
  const Proportion w2 = wilson(fp32_right - lost + gained, n, confidence);
  const double den = std::sqrt((a + b) * (c + e) * (a + c) * (b + e));
  const double phi = den > 0 ? (a * e - b * c) / den : 0.0;
  const double dl1 = p1 - w1.low, du1 = w1.high - p1, dl2 = p2 - w2.low, du2 = w2.high - p2;
  const double delta = std::sqrt(std::max(0.0, dl1 * dl1 - 2 * phi * dl1 * du2 + du2 * du2));
  const double eps = std::sqrt(std::max(0.0, du1 * du1 - 2 * phi * du1 * dl2 + dl2 * dl2));
  const double theta = p1 - p2;
  d.low_pp = 100.0 * std::max(-1.0, theta - delta);
  d.high_pp = 100.0 * std::min(1.0, theta + eps);
  return d;
}

}  // namespace edgesplit::profiles
