// The libFuzzer initialisation every edgesplit fuzz target shares: with EDGESPLIT_FUZZ_WRITE_SEEDS
// set to a folder, the target writes its seed corpus there (scripts/fuzz.sh seeds each corpus this
// way) and exits instead of fuzzing.
#pragma once

#include <cstdlib>

// Defines LLVMFuzzerInitialize calling `write_seeds(const char* dir)` when asked to.
#define EDGESPLIT_FUZZ_SEEDS(write_seeds)                              \
  extern "C" int LLVMFuzzerInitialize(int*, char***) {                 \
    if (const char* dir = std::getenv("EDGESPLIT_FUZZ_WRITE_SEEDS")) { \
      write_seeds(dir);                                                \
      std::exit(0);                                                    \
    }                                                                  \
    return 0;                                                          \
  }
