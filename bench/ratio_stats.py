"""The interval the benchmarks report for per-round ratios: the mean on the log scale and its 95%
t-interval over rounds (a ratio of 2 and one of 0.5 cancel)."""

import math
import statistics

# Student's t, two-sided 95%, by degrees of freedom; 2.0 beyond the table.
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
