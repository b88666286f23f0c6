// Building synthetic profiles in tests.
#pragma once

#include "profiles/profile.h"

namespace edgesplit::testing {

// A timing whose median, p10 and p90 are all `median` ms (10 runs).
inline profiles::Timing ms(double median) {
  profiles::Timing t;
  t.median_ms = t.p10_ms = t.p90_ms = median;
  t.runs = 10;
  return t;
}

}  // namespace edgesplit::testing
