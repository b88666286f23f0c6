#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh: packages, configure, build), then runs the tests:
# a short fuzz run of the codec's decoder, the server's message handling and the JPEG path, then
# every ctest test (labels: unit, integration, models, netns; the unit tests and the models tests
# two at a time, the others one at a time). Extra arguments go to a single ctest run instead, e.g.
# `scripts/test.sh -L unit`.
#   EDGESPLIT_FUZZ_SECONDS=0 skips the fuzz run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"

fuzz_seconds="${EDGESPLIT_FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" != "0" ] && [ -x "$root/scripts/fuzz.sh" ]; then
  "$root/scripts/fuzz.sh" "$fuzz_seconds"
fi

cd "$root/build"
if [ "$#" -gt 0 ]; then
  exec ctest --output-on-failure --timeout 600 "$@"
fi
# Every test: the unit tests EDGESPLIT_TEST_JOBS (default 2) at a time, then the models tests
# (exact head/tail of exported torchvision networks, nothing timed) as many at a time, then the
# rest (real processes, some of which time what they run) one at a time.
rc=0
ctest --output-on-failure --timeout 600 -L '^unit$' -j "${EDGESPLIT_TEST_JOBS:-2}" || rc=$?
ctest --output-on-failure --timeout 600 -L '^models$' -j "${EDGESPLIT_TEST_JOBS:-2}" || rc=$?
ctest --output-on-failure --timeout 600 -LE '^(unit|models)$' || rc=$?
exit "$rc"
