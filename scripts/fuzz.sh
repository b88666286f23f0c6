#!/usr/bin/env bash
# Fuzzes with libFuzzer + ASan + UBSan: the codec's decoder (tests/fuzz/fuzz_decode.cc) and the
# server's message handling (tests/fuzz/fuzz_server.cc: parse_request, admission, payload checks
# and decoding, without LibTorch) and the JPEG path (tests/fuzz/fuzz_jpeg.cc: libjpeg's header
# read and OpenCV's decoder).
#   scripts/fuzz.sh [SECONDS] [TARGET...]   (default 20 s for each of fuzz_decode, fuzz_server,
#                                            fuzz_jpeg)
# Builds into build-fuzz/ with clang, seeds a corpus per target with valid inputs, runs each target
# for SECONDS and exits non-zero when a fuzzer finds a crash, a leak or undefined behaviour (the
# reproducer is left in build-fuzz/findings/TARGET/). Skips (exit 0) when clang is not installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-20}"
build="$root/build-fuzz"

cc="$(command -v clang || command -v clang-14 || true)"
cxx="$(command -v clang++ || command -v clang++-14 || true)"
if [ -z "$cc" ] || [ -z "$cxx" ]; then
  echo "fuzz: clang is not installed, skipping (apt-get install clang libclang-rt-14-dev)"
  exit 0
fi

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
targets=("${@:2}")
[ "${#targets[@]}" -eq 0 ] && targets=(fuzz_decode fuzz_server fuzz_jpeg)

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" "${launcher[@]}" \
  -DEDGESPLIT_ONLY="packing;transport;imaging;server" -DEDGESPLIT_BUILD_FUZZ=ON \
  -DEDGESPLIT_BUILD_TESTS=OFF -DEDGESPLIT_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" --target "${targets[@]}" -j "${EDGESPLIT_JOBS:-2}"

failed=0
for target in "${targets[@]}"; do
  corpus="$build/corpus/$target"
  findings="$build/findings/$target"
  mkdir -p "$corpus" "$findings"
  EDGESPLIT_FUZZ_WRITE_SEEDS="$corpus" "$build/bin/$target"

  log="$build/$target.log"
  echo "fuzz: running $target for ${seconds}s (log: $log)"
  set +e
  "$build/bin/$target" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$findings/" "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  grep -E "^stat::number_of_executed_units|^stat::new_units_added|^Done [0-9]+ runs" "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED (exit $rc); reproducers in $findings/"
    failed=1
  else
    echo "fuzz: $target: no findings"
  fi
done
exit "$failed"
