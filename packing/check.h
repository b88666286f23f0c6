// EDGESPLIT_CHECK: broken invariants and unusable configuration fail loudly, at once, with file,
// line and the values involved. Not for anything that arrives from outside (use Status for that).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>

#define EDGESPLIT_CHECK(cond)                                                       \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

#define EDGESPLIT_CHECK_OP(a, op, b)                                                               \
  do {                                                                                             \
    const auto& edgesplit_a_ = (a);                                                                \
    const auto& edgesplit_b_ = (b);                                                                \
    if (!(edgesplit_a_ op edgesplit_b_)) {                                                         \
      std::ostringstream edgesplit_os_;                                                            \
      edgesplit_os_ << __FILE__ << ":" << __LINE__ << ": check failed: " #a " " #op " " #b << " (" \
                    << edgesplit_a_ << " vs " << edgesplit_b_ << ")\n";                            \
      std::fputs(edgesplit_os_.str().c_str(), stderr);                                             \
      std::abort();                                                                                \
    }                                                                                              \
  } while (0)

#define EDGESPLIT_CHECK_EQ(a, b) EDGESPLIT_CHECK_OP(a, ==, b)
#define EDGESPLIT_CHECK_NE(a, b) EDGESPLIT_CHECK_OP(a, !=, b)
#define EDGESPLIT_CHECK_LT(a, b) EDGESPLIT_CHECK_OP(a, <, b)
#define EDGESPLIT_CHECK_LE(a, b) EDGESPLIT_CHECK_OP(a, <=, b)
#define EDGESPLIT_CHECK_GE(a, b) EDGESPLIT_CHECK_OP(a, >=, b)
