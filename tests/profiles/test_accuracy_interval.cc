// The accuracy interval against known values: Clopper-Pearson and Wilson ends from scipy
// (scipy.stats.beta.ppf, norm.ppf), Newcombe's paired interval against his published example and
// against the large-sample (Wald) interval, and its behaviour where the conditional interval was
// degenerate (no or one-sided discordant images).
#include <doctest/doctest.h>

#include <initializer_list>

#include "profiles/accuracy_interval.h"

using edgesplit::profiles::clopper_pearson;
using edgesplit::profiles::drop_interval;
using edgesplit::profiles::fp32_right_of;
using edgesplit::profiles::normal_quantile;
using edgesplit::profiles::wilson;

TEST_CASE("Clopper-Pearson and Wilson intervals match scipy - the normal quantile too") {
  struct Case {
    int64_t k, m;
    double low, high;
  };
  for (const Case& c :
       {Case{5, 10, 0.18708602844739855, 0.8129139715526015}, Case{0, 10, 0, 0.3084971078187608},
        Case{1, 20, 0.0012650894979498038, 0.24873276277202777},
        Case{10, 12, 0.5158622513140328, 0.9791374745399076},
        Case{30, 50, 0.45179402847918043, 0.7359216049054632}}) {
    CAPTURE(c.k);
    CAPTURE(c.m);
    const auto p = clopper_pearson(c.k, c.m, 0.95);
    CHECK(p.low == doctest::Approx(c.low).epsilon(1e-9));
    CHECK(p.high == doctest::Approx(c.high).epsilon(1e-9));
  }
  CHECK(clopper_pearson(10, 10, 0.95).high == 1.0);
  CHECK(clopper_pearson(0, 0, 0.95).low == 0.0);
  CHECK(clopper_pearson(0, 0, 0.95).high == 1.0);
  CHECK(normal_quantile(0.975) == doctest::Approx(1.959963984540054).epsilon(1e-10));
  CHECK(normal_quantile(0.5) == doctest::Approx(0).epsilon(1e-12));
  const auto w = wilson(5, 10, 0.95);
  CHECK(w.low == doctest::Approx(0.236593090512564).epsilon(1e-9));
  CHECK(w.high == doctest::Approx(0.7634069094874361).epsilon(1e-9));
}

TEST_CASE("the paired loss interval: Newcombe's example - Wald at large counts - no degeneracy") {
  // Newcombe (1998), method 10, on the table (36, 12, 2, 0): 0.0569 to 0.3404. Here fp32 is the
  // first margin: right 48 of 50, lost 12, gained 2.
  const auto ex = drop_interval(50, 12, 2, 48, 0.95);
  CHECK(ex.point_pp == doctest::Approx(20));
  CHECK(ex.low_pp == doctest::Approx(5.692958400323883).epsilon(1e-7));
  CHECK(ex.high_pp == doctest::Approx(34.04276029749408).epsilon(1e-7));
  // Large counts: the large-sample interval, (b - c)/n +- 1.96 sqrt((b + c)/n^2 - (b - c)^2/n^3).
  const auto big = drop_interval(10000, 400, 100, 7400, 0.95);
  CHECK(big.low_pp == doctest::Approx(2.5657).epsilon(1e-3));
  CHECK(big.high_pp == doctest::Approx(3.4343).epsilon(2e-3));
  // An encoding that changed none of 300 images is not known to lose exactly 0: about +-1 point.
  const auto none = drop_interval(300, 0, 0, 270, 0.95);
  CHECK(none.point_pp == 0);
  CHECK(none.high_pp == doctest::Approx(1.0114376979636803).epsilon(1e-7));
  CHECK(none.low_pp == doctest::Approx(-1.0114376979636803).epsilon(1e-7));
  // All discordant images one way: the upper end is above the observed loss.
  const auto one_way = drop_interval(300, 6, 0, 270, 0.95);
  CHECK(one_way.high_pp > one_way.point_pp + 1);
  // A "gain" of 2 points on 100 images (3 gained, 1 lost) is inside its interval.
  const auto gain = drop_interval(100, 1, 3, 70, 0.95);
  CHECK(gain.point_pp == doctest::Approx(-2));
  CHECK(gain.high_pp > 0);
  // Without labels (fp32 is the truth: right on all n) the loss is a proportion: exact interval.
  const auto agreement = drop_interval(300, 6, 0, 300, 0.95);
  const auto cp = clopper_pearson(6, 300, 0.95);
  CHECK(agreement.low_pp == doctest::Approx(100 * cp.low));
  CHECK(agreement.high_pp == doctest::Approx(100 * cp.high));
  // Confidence 0: the point at both ends; more images with the same rates: narrower.
  const auto point = drop_interval(300, 10, 2, 270, 0);
  CHECK(point.low_pp == point.point_pp);
  CHECK(point.high_pp == point.point_pp);
  const auto more = drop_interval(3000, 100, 20, 2700, 0.95);
  const auto fewer = drop_interval(300, 10, 2, 270, 0.95);
  CHECK(more.high_pp - more.low_pp < fewer.high_pp - fewer.low_pp);
  CHECK(drop_interval(0, 0, 0, 0, 0.95).high_pp == 0);
  CHECK(fp32_right_of(0.72, 300) == 216);
  CHECK(fp32_right_of(1.0, 300) == 300);
}
