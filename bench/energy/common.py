"""What the energy benchmarks share: the interval of per-round ratios, and how a run ends
(bench/run.sh's contract: summary.md beside results.json, the summary printed, --check fails on a
missed target)."""

import math
import os
import statistics
import sys

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def interval(values):
    """Mean and 95% t-interval of per-round ratios (on the log scale); zeros without values."""
    logs = [math.log(v) for v in values if v > 0]
    if not logs:
        return 0.0, 0.0, 0.0
    m = statistics.mean(logs)
    if len(logs) < 2:
        return math.exp(m), math.exp(m), math.exp(m)
    h = T95.get(len(logs) - 1, 2.0) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(m), math.exp(m - h), math.exp(m + h)


def finish(out_dir, lines, targets, check):
    """Writes `lines` to out_dir/summary.md and prints them; exits 1 with --check when a target
    is missed."""
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if check and not all(t["pass"] for t in targets.values()):
        sys.exit(1)
