#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh: packages, configure, build), then runs the tests:
# a short fuzz run of the codec's decoder, the server's message handling and the JPEG path, then
# every ctest test (labels: unit, integration, models, netns). Extra arguments go to ctest, e.g.
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
ctest --output-on-failure --timeout 600 "$@"
