#!/usr/bin/env bash
# Builds the parts of edgesplit that need no LibTorch (packing, transport, the server's core and
# flags: codec, wire validation, admission, batcher, client table, memory budget, metrics, CURVE)
# in Debug under a sanitizer and runs their unit and integration tests. Any report fails the run.
#   scripts/sanitize.sh             AddressSanitizer and UndefinedBehaviorSanitizer, in build-asan/
#   scripts/sanitize.sh thread      ThreadSanitizer, in build-tsan/
# Extra arguments go to ctest. Needs the packages of scripts/setup.sh (run it, or scripts/test.sh,
# first).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kind="${1:-address}"
[ "$#" -gt 0 ] && shift
case "$kind" in
  address) sanitize="address,undefined"; dir="$root/build-asan" ;;
  thread) sanitize="thread"; dir="$root/build-tsan" ;;
  *) echo "usage: $0 [address|thread] [ctest arguments]" >&2; exit 2 ;;
esac

extra=()
if command -v ccache >/dev/null; then
  extra+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=1
fi
cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DEDGESPLIT_SANITIZE="$sanitize" -DEDGESPLIT_ONLY="packing;transport;server" \
  -DEDGESPLIT_BUILD_BENCH=OFF ${EDGESPLIT_CMAKE_ARGS:-} "${extra[@]}"
cmake --build "$dir" -j "${EDGESPLIT_JOBS:-$(nproc)}"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$root/scripts/tsan-suppressions.txt}"
cd "$dir"
ctest --output-on-failure --timeout 600 -L 'unit|integration' "$@"
