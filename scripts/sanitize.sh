#!/usr/bin/env bash
# Builds edgesplit in Debug under a sanitizer and runs unit and integration tests; any report fails
# the run.
#   scripts/sanitize.sh [address]   AddressSanitizer and UndefinedBehaviorSanitizer, in build-asan/
#   scripts/sanitize.sh thread      ThreadSanitizer, in build-tsan/
# These build only the parts without LibTorch (packing, transport, the server's core: codec, wire
# validation, admission, batcher, client table, memory budget, metrics, CURVE) and run their tests.
#   scripts/sanitize.sh address --torch   the other unit tests (partitioner, scheduler, imaging, the
#       device, the server's tails and flags) and the server's reliability, in build-asan-torch/
#   scripts/sanitize.sh thread --torch    those that run edgesplit's threads (device runtime,
#       streams and lanes, the server's workers and batcher, concurrent heads and tails, end to
#       end), in build-tsan-torch/
# With --torch, edgesplit's code is built at -O0 (address) or -O1 (thread) with line tables only
# (-g1): parsing LibTorch's headers, not optimizing, is what costs. Only the test executables that
# run are built, tests run two at a time (EDGESPLIT_TEST_JOBS), and some are left out for time
# (listed below with their reasons; EDGESPLIT_SANITIZE_ALL=1 runs every one). LibTorch, OpenCV,
# GDAL, libzmq, OpenPGM and libsodium are not instrumented: what is suppressed inside them, and
# why, is in scripts/tsan-suppressions.txt and below. Extra arguments go to ctest. Needs the
# packages of scripts/setup.sh (run it, or scripts/test.sh, first).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kind="${1:-address}"
[ "$#" -gt 0 ] && shift
with_torch=0
if [ "${1:-}" = "--torch" ]; then
  with_torch=1
  shift
fi
case "$kind" in
  address) sanitize="address,undefined"; dir="$root/build-asan"; opt="-O0 -g1" ;;
  thread) sanitize="thread"; dir="$root/build-tsan"; opt="-O1 -g1" ;;
  *) echo "usage: $0 [address|thread] [--torch] [ctest arguments]" >&2; exit 2 ;;
esac

# Test executables by where they run. The build without LibTorch runs tests_free. --torch builds and
# runs tests_address (address) or tests_threads (thread), less the cases in slow_address or
# slow_thread; with EDGESPLIT_SANITIZE_ALL=1 it runs all of tests_address, tests_threads and
# tests_more under either sanitizer, none left out. tests_never runs under no sanitizer, for the
# reason given.
tests_free="test_packing test_protocol test_transport test_server_core test_curve"
# ThreadSanitizer: the tests that start edgesplit's threads (engine heads and tails from several
# threads, batched tails, the device's link and compute token, its runtime, device and server end
# to end, the server's reliability).
tests_threads="partitioner_engine_test test_tail_batch device_core_test test_runtime test_end_to_end
  test_reliability"
# AddressSanitizer and UBSan: every unit test that links LibTorch or was left out of the build
# without it, and the server under hostile, flooding and batching clients (test_reliability);
# test_end_to_end runs under ThreadSanitizer.
tests_address="partitioner_engine_test partitioner_unit_test test_tail_batch device_core_test
  test_runtime test_reliability partitioner_pressure_test profiles_unit_test scheduler_unit_test
  timing_check_unit_test accuracy_interval_unit_test verify_report_unit_test family_unit_test
  test_imaging test_server_flags"
# Left out of CI's runs for time (EDGESPLIT_SANITIZE_ALL=1 runs them; 6.5 minutes of tests one at
# a time under AddressSanitizer, and the profiler's build): the profiler (its library,
# edgesplit-profile and their tests), the first hour with a new model, model families, Prometheus
# scraping /metrics.
tests_more="profiler_unit_test profiler_tool_test test_first_hour test_elastic test_metrics_client"
# partitioner_models_test: torchvision models exported at test time (label models, not unit).
# test_testbed, test_quota_knob, test_dead_peer: root, network namespaces and cgroups (label
# netns).
# test_placement: pipelined stages timed against the cost model's prediction on pinned cores
# under cgroup quotas (root): a sanitizer's slowdown is not what the profile measured.
tests_never="partitioner_models_test test_testbed test_quota_knob test_dead_peer test_placement"

# Test cases left out of CI's runs for time, by name:
# - the shared MobileNetV2 at every cut, plain against optimized engine (80 s in the release
#   build, several times that under a sanitizer): one thread; the tiny models' cases run the same
#   engine code;
# - kill -9 and restart of the server (1-1.5 minutes): mostly the device's timeouts;
# - the batching server's tensor cache seen in /metrics (1.5 minutes under AddressSanitizer: two
#   MobileNetV2 servers' start-up); partitioner_engine_test's cases test the cache itself;
# - the shared MobileNetV2's cut points with exact head and tail at every cut (50 s under
#   AddressSanitizer): the tiny models' cases run the same cut discovery and head/tail code;
# - every head of the shared MobileNetV2 retained, optimized (30 s under either sanitizer): the
#   XNNPACK case retains every head of a tiny model through the same code, one packed copy of
#   the weights across them;
# - under ThreadSanitizer, the entropy-coded plan fitted by edgesplit-profile (not built there);
# - under ThreadSanitizer, the end-to-end cases that check accuracy over many images and the
#   processes' exit on bad flags (2.5 minutes of tests there): the first run the device and server
#   threads of the other end-to-end cases, which run, over more frames; in the second each process
#   stops during start-up (the flag parsers' own tests run under AddressSanitizer).
slow_address="optimized engine: shared MobileNetV2 - every cut close|kill -9 and restart"
slow_address="$slow_address|a batching server keeps a batch's large tensors"
slow_address="$slow_address|shared MobileNetV2: cut points - metadata and exact head/tail at every cut"
slow_address="$slow_address|optimized engine: retained heads share one copy of the converted weights"
slow_thread="$slow_address|an entropy-coded plan fitted by the profiler|fp32 split at several cuts"
slow_thread="$slow_thread|fp32 split with the optimized engine|8-bit split keeps the top-1 class"
slow_thread="$slow_thread|user errors get one sentence and exit code 2"

extra=()
if command -v ccache >/dev/null; then
  extra+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=1
fi
jobs="${EDGESPLIT_JOBS:-$(nproc)}"
if [ "$with_torch" = 0 ]; then
  cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DEDGESPLIT_SANITIZE="$sanitize" -DEDGESPLIT_ONLY="packing;transport;server" \
    -DEDGESPLIT_BUILD_BENCH=OFF ${EDGESPLIT_CMAKE_ARGS:-} "${extra[@]}"
  cmake --build "$dir" -j "$jobs"
else
  dir="$dir-torch"
  cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS_DEBUG="$opt" -DCMAKE_C_FLAGS_DEBUG="$opt" \
    -DEDGESPLIT_SANITIZE="$sanitize" -DEDGESPLIT_BUILD_BENCH=OFF ${EDGESPLIT_CMAKE_ARGS:-} \
    "${extra[@]}"
  # Every test executable is in one of the lists above, so a new one is not left out unnoticed.
  known=" $tests_free $tests_address $tests_threads $tests_more $tests_never "
  known="${known//$'\n'/ }"
  exes="$(cmake --build "$dir" -- -t targets all |
    sed -n 's|^tests/\([a-z0-9_]*\): CXX_EXECUTABLE.*|\1|p')"
  for exe in $exes; do
    if [[ "$known" != *" $exe "* ]]; then
      echo "$0: test executable $exe is in none of the lists in this script; add it to one." >&2
      exit 2
    fi
  done
  targets="$tests_address"
  [ "$kind" = thread ] && targets="$tests_threads"
  [ "${EDGESPLIT_SANITIZE_ALL:-0}" = 1 ] && targets="$tests_address $tests_threads $tests_more"
  # Tests of executables not built here have no label, so -L below leaves them out (those built
  # by an earlier EDGESPLIT_SANITIZE_ALL=1 run in the same folder do run).
  # shellcheck disable=SC2086
  cmake --build "$dir" -j "$jobs" --target $targets
fi

# OpenCV's gPhoto2 camera backend, probed when a camera cannot be opened, leaks the USB device
# lists of libusb from a plugin it unloads (so LeakSanitizer cannot name it): not probed here.
export OPENCV_VIDEOIO_PRIORITY_GPHOTO2=0
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$root/scripts/tsan-suppressions.txt}"
selection=()
if [ "$with_torch" = 1 ]; then
  slow="$slow_address"
  [ "$kind" = thread ] && slow="$slow_thread"
  selection=(-j "${EDGESPLIT_TEST_JOBS:-2}")
  [ "${EDGESPLIT_SANITIZE_ALL:-0}" = 1 ] || selection+=(-E "^($slow)")
fi
cd "$dir"
ctest --output-on-failure --timeout 600 "${selection[@]}" -L 'unit|integration' "$@"
