// How much top-1 an encoding loses against fp32, with a confidence interval from the images both
// were scored on. Scores are paired (the same images, the same truth): `lost` images fp32 gets
// right and the encoding wrong, `gained` the other way round, `fp32_right` images fp32 gets right
// in all. The loss in points is 100 (lost - gained) / n.
//
// With labels the interval is Newcombe's hybrid score interval for a difference of paired
// proportions (method 10 of Newcombe, Statistics in Medicine 17:2635, 1998: Wilson intervals of
// the two accuracies combined with their observed correlation). Unlike the interval conditional on
// the discordant images, it is not degenerate when few or no images are discordant: an encoding
// that changed none of 300 images is not known to lose exactly 0 points. Without labels (truth is
// fp32's own top-1, so fp32_right = n and nothing can be gained) the loss is the disagreement rate,
// a single binomial proportion, and the interval is its exact Clopper-Pearson one. Free of
// LibTorch.
#pragma once

#include <cstdint>

namespace edgesplit::profiles {

struct DropInterval {
  double point_pp = 0;  // 100 (lost - gained) / n
  double low_pp = 0;    // lower end at the confidence (may be negative: a possible gain)
  double high_pp = 0;   // upper end
};

// The loss of top-1 points against fp32 on `n` paired images. `confidence` in [0, 1): 0 gives the
// point estimate as both ends. n = 0 gives all zeros. fp32_right >= n (no labels) takes the exact
// binomial interval of lost / n.
DropInterval drop_interval(int64_t n, int64_t lost, int64_t gained, int64_t fp32_right,
                           double confidence);

// fp32's right answers among a profile's `scored` images from its top-1 fraction (rounded).
int64_t fp32_right_of(double fp32_top1, int64_t scored);

// The exact (Clopper-Pearson) two-sided interval for a binomial proportion: k successes in m
// trials at `confidence`; {0, 1} when m = 0.
struct Proportion {
  double low = 0, high = 1;
};
Proportion clopper_pearson(int64_t k, int64_t m, double confidence);
// The Wilson score interval for k successes in m trials at `confidence`; {0, 1} when m = 0.
Proportion wilson(int64_t k, int64_t m, double confidence);
// The standard normal quantile: z with P(Z <= z) = p, for p in (0, 1).
double normal_quantile(double p);

}  // namespace edgesplit::profiles
