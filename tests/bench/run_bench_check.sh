#!/usr/bin/env bash
# Runs one benchmark with --check for ctest's opt-in `bench` label (tests/bench/CMakeLists.txt):
# its exit status is the benchmark's (non-zero when a target is missed). A benchmark that cannot
# run here says "skipped: <why>" and exits 77, which ctest reports as skipped.
#   run_bench_check.sh [--needs-shared] [--needs-root] [--needs-python-torch] -- COMMAND...
# EDGESPLIT_TIMING_LOCK=FILE runs the benchmark under `flock FILE`, so that timing runs on a shared
# machine do not overlap.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
shared="${EDGESPLIT_SHARED_DIR:-$(dirname "$root")/shared}"

skip() {
  echo "skipped: $*"
  exit 77
}

while [ $# -gt 0 ]; do
  case "$1" in
    --needs-shared)
      [ -d "$shared/models" ] && [ -d "$shared/data" ] ||
        skip "needs ../shared (models and data sets) beside the repository or EDGESPLIT_SHARED_DIR"
      ;;
    --needs-root)
      [ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, tc, cgroups)"
      ;;
    --needs-python-torch)
      /usr/bin/python3 -c 'import torch, numpy' 2>/dev/null ||
        skip "needs Debian's python3-torch and python3-numpy"
      ;;
    --) shift; break ;;
    *) echo "run_bench_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "run_bench_check.sh: no command after --" >&2; exit 2; }

if [ -n "${EDGESPLIT_TIMING_LOCK:-}" ]; then
  exec flock "$EDGESPLIT_TIMING_LOCK" "$@"
fi
exec "$@"
