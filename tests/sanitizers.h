// What a sanitizer build changes for tests that measure the process they run, or that spend
// their time where a sanitizer finds nothing.
#pragma once

namespace edgesplit::testing {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitized = true;
#else
inline constexpr bool kThreadSanitized = false;
#endif

// A sanitizer's shadow memory (and AddressSanitizer's redzones and quarantine of freed blocks, kept
// rather than returned) make a process's resident memory no measure of what edgesplit holds: tests
// that bound it skip.
inline constexpr const char* kResidentMemorySkip =
    kSanitized ? "skipped: resident memory under a sanitizer (shadow memory, redzones, quarantine) "
                 "is not what the process holds"
               : nullptr;

// A sanitizer slows edgesplit's own code several times (LibTorch's kernels are not instrumented):
// tests whose bounds are set from Release timings skip.
inline constexpr const char* kReleaseTimingSkip =
    kSanitized ? "skipped: a sanitizer slows the device beyond the Release timings this test's "
                 "bounds are set from"
               : nullptr;

}  // namespace edgesplit::testing
