// What a sanitizer build changes for tests that measure the process they run.
#pragma once

namespace edgesplit::testing {

// A sanitizer's shadow memory (and AddressSanitizer's redzones and quarantine of freed blocks, kept
// rather than returned) make a process's resident memory no measure of what edgesplit holds: tests
// that bound it skip.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr const char* kResidentMemorySkip =
    "skipped: resident memory under a sanitizer (shadow memory, redzones, quarantine) is not what "
    "the process holds";
#else
inline constexpr const char* kResidentMemorySkip = nullptr;
#endif

// A sanitizer slows edgesplit's own code several times (LibTorch's kernels are not instrumented):
// tests whose bounds are set from Release timings skip.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr const char* kReleaseTimingSkip =
    "skipped: a sanitizer slows the device beyond the Release timings this test's bounds are set "
    "from";
#else
inline constexpr const char* kReleaseTimingSkip = nullptr;
#endif

}  // namespace edgesplit::testing
