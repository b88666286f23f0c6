"""What the energy benchmarks share: the interval of per-round ratios, and how a run ends
(bench/run.sh's contract: summary.md beside results.json, the summary printed, --check fails on a
missed target)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ratio_stats import interval  # noqa: E402,F401  (re-exported for the energy benchmarks)


def finish(out_dir, lines, targets, check):
    """Writes `lines` to out_dir/summary.md and prints them; exits 1 with --check when a target
    is missed."""
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if check and not all(t["pass"] for t in targets.values()):
        sys.exit(1)
