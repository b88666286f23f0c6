"""Schemes 1-3: uniform quantization (per tensor / per channel, clip fitted on calibration KL),
Lloyd-Max codebooks, with packed / zstd-19 / static-entropy sizes. Writes results/scalar.json."""
import json
import os

import numpy as np

from common import NCAL, cal_kl
from measure import Bench
from quantizers import chan_index, lloyd_max, nearest_codes, nearest_codes_per_channel, uniform_codes, uniform_codes_zero

B = Bench("f16")
x = B.x
cal = x[:NCAL]
ch = chan_index()
res = []

# 1. Uniform, per tensor: clip percentile chosen by calibration KL.
for zero in (True, False):
    qf = uniform_codes_zero if zero else uniform_codes
    for bits in (1, 2, 3, 4):
        best = None
        for p in (0.0, 0.1, 0.5, 1, 2, 3, 5, 8, 12, 16, 20, 25, 30):
            lo, hi = np.percentile(cal, [p, 100 - p])
            _, xh = qf(cal, lo, hi, bits)
            k = cal_kl(xh)
            if best is None or k < best[0]:
                best = (k, p, lo, hi)
        k, p, lo, hi = best
        q, xh = qf(x, lo, hi, bits)
        sz = B.sizes(q, ch, 160, bits=bits)
        tag = "zero-grid" if zero else "free"
        B.report(f"uniform q{bits} per-tensor {tag} clip{p}%", xh, sz, key="zstd")
        B.rows[-1]["static_row"] = B.rows[-1]["static"]
        res.append(dict(B.rows[-1], fit=dict(p=p, lo=float(lo), hi=float(hi), kl=k)))

# 1b. Uniform, per channel: range mu_c +- a * sd_c, a chosen by calibration KL.
calc = cal.reshape(NCAL, 160, 49)
mu = calc.mean((0, 2))[ch]
sd = calc.std((0, 2))[ch]
for bits in (1, 2, 3, 4):
    best = None
    for a in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0):
        _, xh = uniform_codes(cal, mu - a * sd, mu + a * sd, bits)
        k = cal_kl(xh)
        if best is None or k < best[0]:
            best = (k, a)
    k, a = best
    q, xh = uniform_codes(x, mu - a * sd, mu + a * sd, bits)
    sz = B.sizes(q, ch, 160, bits=bits)
    B.report(f"uniform q{bits} per-channel free mu+-{a}sd", xh, sz, key="zstd")
    res.append(dict(B.rows[-1], fit=dict(a=a, kl=k)))

# 2. Lloyd-Max codebooks, per tensor and per channel, 2..8 levels.
for k_lv in (2, 3, 4, 5, 6, 8):
    lv = lloyd_max(cal, k_lv)
    q, xh = nearest_codes(x, lv)
    sz = B.sizes(q, ch, 160)
    B.report(f"lloyd {k_lv} levels per-tensor", xh, sz)
    res.append(dict(B.rows[-1]))
    lvc = np.stack([lloyd_max(calc[:, c], k_lv) for c in range(160)])
    q, xh = nearest_codes_per_channel(x, lvc, ch)
    sz = B.sizes(q, ch, 160)
    B.report(f"lloyd {k_lv} levels per-channel", xh, sz)
    res.append(dict(B.rows[-1]))

os.makedirs("results", exist_ok=True)
json.dump([{k: v for k, v in r.items() if k != "freqs"} for r in res], open("results/scalar.json", "w"), indent=1,
          default=float)
