"""The Pareto table of the codec study: every scheme fitted on the 100 calibration images, scored on the
other 1,200. Writes results/pareto.json and results/pareto.md.

Usage: /usr/bin/python3 pareto.py [--quick]   (after cache_features.py and fisher.py f16|f13|pooled)
"""
import json
import os
import sys

import numpy as np

from common import (HEADER_V1_PER_TENSOR, HEADER_V2, NCAL, cal_kl, fit_freqs, ideal_bytes, load, pack_bits, paired,
                    rans_decode, rans_encode, tail_top1, zstd_sizes)
from ecsq import FwEcsq, contexts
from quantizers import chan_index, uniform_codes_zero

quick = "--quick" in sys.argv
rows = []
FP32_INPUT = 3 * 224 * 224 * 4 + HEADER_V1_PER_TENSOR  # 602,176 B
JPEG90 = 16610


def add(name, cut, xh, x, labels, ref, per_frame_bytes, header, coder, extra=None):
    st = paired(ref[NCAL:], tail_top1(xh[NCAL:], cut), labels[NCAL:])
    kl = cal_kl(xh[:NCAL], cut)
    pb = np.asarray(per_frame_bytes, dtype=np.float64)
    row = dict(name=name, cut=cut, coder=coder, elements=x.shape[1], payload=pb.mean(), header=header,
               bytes=pb.mean() + header, p95=np.percentile(pb, 95) + header, max=pb.max() + header,
               bpe=8 * pb.mean() / x.shape[1], cal_kl=kl, **st, **(extra or {}))
    row["meets"] = row["bytes"] <= 1024 and row["loss"] <= 1.0 and row["hi"] <= 1.5
    rows.append(row)
    print(f"{cut:6s} {name:44s} {row['bpe']:.3f} b/e {row['bytes']:7.0f} B (p95 {row['p95']:.0f}) "
          f"loss {st['loss']:+.2f} [{st['lo']:+.2f},{st['hi']:+.2f}] agree {st['agree']:.1f}% calKL {kl:.4f}"
          f"{'  MEETS' if row['meets'] else ''}", flush=True)
    return row


def verify_rans(k, kmax, ctx, f, ideal, nverify=24):
    """Real rANS sizes over the scored frames, and a decode round trip of nverify of them."""
    sym = (k + kmax)[NCAL:]
    c = ctx[NCAL:]
    streams = rans_encode(sym, c, f)
    real = np.array([len(b) for b in streams], dtype=np.float64)
    dec = rans_decode(streams[:nverify], c[:nverify], f)
    assert np.array_equal(dec, sym[:nverify]), "rANS round trip failed"
    return real, dict(rans_real=real.mean(), rans_ideal=float(np.mean(ideal)), rans_roundtrip=nverify)


# --- features.16 -------------------------------------------------------------------------------
x, labels, ref = load("f16")
ch = chan_index()

# Today's best: 2-bit per-tensor range with today's zero-containing grid, [2, 98] percentile clip
# (the clip with the lowest calibration KL, exp_scalar.py), packed bits + zstd -19, v1 header.
lo, hi = np.percentile(x[:NCAL], [2, 98])
q, xh = uniform_codes_zero(x, lo, hi, 2)
zs = zstd_sizes(pack_bits(q[NCAL:], 2))
add("q2 per-tensor clip2% + zstd-19 (today)", "f16", xh, x, labels, ref, zs, HEADER_V1_PER_TENSOR, "zstd-19")
# Same codes, static per-channel model; and the neighbour-context model.
cc = np.broadcast_to(ch, q.shape)
f = fit_freqs(q[:NCAL], cc[:NCAL], 4, 160)
add("q2 per-tensor clip2% + static per-channel rANS", "f16", xh, x, labels, ref,
    ideal_bytes(q[NCAL:], cc[NCAL:], f) + 4, HEADER_V2, "static ideal+4")
kk = q - 2  # the contexts() helper clips neighbours to +-2
ctx, n = contexts(kk, 2)
f = fit_freqs(q[:NCAL], ctx[:NCAL], 4, n)
add("q2 per-tensor clip2% + static left/up-context rANS", "f16", xh, x, labels, ref,
    ideal_bytes(q[NCAL:], ctx[NCAL:], f) + 4, HEADER_V2, "static ideal+4")

# Fisher-weighted ECSQ at payload targets; s chosen by bisection on the calibration rate only.
targets = [1400, 1180, 980, 784, 690, 560] if not quick else [980, 784]
for gamma, label in ((1.0, "FW-ECSQ (Fisher-weighted steps)"), (0.0, "ECSQ, one step (no Fisher)")):
    E = FwEcsq(x, "f16", gamma=gamma)
    for tgt in (targets if gamma else [980, 784]):
        s = E.s_for_rate(x, tgt)
        k, xh, ctx, n = E.encode(x, s)
        f = E.fit_model(x, s)
        ideal = ideal_bytes((k + E.kmax)[NCAL:], ctx[NCAL:], f) + 4
        extra = dict(s=s, cal_target=tgt)
        per = ideal
        coder = "static ideal+4"
        if gamma and tgt in (980, 784):
            real, ver = verify_rans(k, E.kmax, ctx, f, ideal)
            extra.update(ver)
            per, coder = real, "rANS (real)"
        add(f"{label} + ctx rANS, s={s:.2f}", "f16", xh, x, labels, ref, per, HEADER_V2, coder, extra)
# Ablation: Fisher steps, but a context-free static model (one table per step class).
E = FwEcsq(x, "f16", gamma=1.0)
s = E.s_for_rate(x, 784)
k, xh, _, _ = E.encode(x, s)
cc = np.broadcast_to(E.cls, k.shape)
f = fit_freqs((k + 7)[:NCAL], cc[:NCAL], 15, 4)
add(f"FW-ECSQ s={s:.2f}, no neighbour context", "f16", xh, x, labels, ref,
    ideal_bytes((k + 7)[NCAL:], cc[NCAL:], f) + 4, HEADER_V2, "static ideal+4")
zs = zstd_sizes([bytes((kk + 7).astype(np.uint8)) for kk in k[NCAL:]])
add(f"FW-ECSQ s={s:.2f}, byte symbols + zstd-19", "f16", xh, x, labels, ref, zs, HEADER_V2, "zstd-19")

# --- reference cuts ----------------------------------------------------------------------------
for cut, tg in (("f13", [2000, 1600, 1200, 980]), ("pooled", [400, 300, 200, 150])):
    if quick:
        break
    xc, lc, rc = load(cut)
    E = FwEcsq(xc, cut, gamma=1.0, kmax=31 if cut == "pooled" else 7)
    for tgt in tg:
        s = E.s_for_rate(xc, tgt)
        k, xh, ctx, n = E.encode(xc, s)
        f = E.fit_model(xc, s)
        add(f"FW-ECSQ + ctx rANS, s={s:.2f}", cut, xh, xc, lc, rc,
            ideal_bytes((k + E.kmax)[NCAL:], ctx[NCAL:], f) + 4, HEADER_V2, "static ideal+4", dict(s=s, cal_target=tgt))

os.makedirs("results", exist_ok=True)
json.dump(rows, open("results/pareto.json", "w"), indent=1, default=float)
CUTN = {"f16": "features.16 (7,840)", "f13": "features.13 (18,816)", "pooled": "pooled (1,280)"}
with open("results/pareto.md", "w") as fo:
    fo.write("| cut | scheme | coder | bits/elem (payload) | B/frame incl. header (p95) | loss, points [95% CI] | "
             "agree w/ fp32 | lost/gained | cal KL | vs fp32 input | vs JPEG-90 |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        fo.write(f"| {CUTN[r['cut']]} | {r['name']}{' **meets**' if r['meets'] else ''} | {r['coder']} | {r['bpe']:.3f} | "
                 f"{r['bytes']:,.0f} ({r['p95']:,.0f}) | {r['loss']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}] | "
                 f"{r['agree']:.1f}% | {r['lost']}/{r['gained']} | {r['cal_kl']:.4f} | "
                 f"1/{FP32_INPUT / r['bytes']:,.0f} | 1/{JPEG90 / r['bytes']:.1f} |\n")
print(open("results/pareto.md").read())
