"""Shared helpers for the codec research: cached activations, the tail of MobileNetV2, the paired
accuracy statistics, the byte counters (zstd CLI, ideal static-model code length, a vectorised
rANS coder) and the header sizes.

Everything is fitted on the first 100 images (calibration, sorted by file name) and scored on the
other 1,200. Run cache_features.py once first.
"""
import os
import subprocess
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MODEL = os.path.join(ROOT, "shared/models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt")
CACHE = os.environ.get("CODEC_RESEARCH_CACHE", "/tmp/codec_research")
NCAL = 100

# Today's packed header (packing/header.h) for a rank-4 NCHW tensor with one (scale, offset) pair:
# 12 fixed + 8*4 shape + 8 + 8 payload length + 4 CRC = 64 bytes. Per-channel pairs would add 8 B each.
HEADER_V1_PER_TENSOR = 12 + 8 * 4 + 8 * 1 + 8 + 4
# The compact header proposed in README.md (profile-referenced model): see design there.
HEADER_V2 = 44

torch.set_num_threads(int(os.environ.get("CODEC_RESEARCH_THREADS", "1")))
_model = None


def model():
    global _model
    if _model is None:
        _model = torch.jit.load(MODEL).eval()
    return _model


def load(cut="f16"):
    x = np.load(os.path.join(CACHE, f"{cut}.npy"))
    labels = np.load(os.path.join(CACHE, "labels.npy"))
    logits = np.load(os.path.join(CACHE, "logits.npy"))
    return x, labels, logits.argmax(1)


SHAPES = {"f13": (96, 14, 14), "f16": (160, 7, 7), "pooled": (1280,)}
START = {"f13": 14, "f16": 17}


def _tail_batches(x, cut, batch):
    """The model's tail output (torch tensors, one per batch) for activations x (N, elements)."""
    m = model()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            t = torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype=np.float32))
            if cut == "pooled":
                yield m.classifier(t)
                continue
            h = t.view(-1, *SHAPES[cut])
            for j in range(START[cut], 19):
                h = getattr(m.features, str(j))(h)
            yield m.classifier(torch.flatten(F.adaptive_avg_pool2d(h, [1, 1]), 1))


def tail_top1(x, cut="f16", batch=300):
    """Top-1 of the model's tail run on the (N, elements) float array x of activations at cut."""
    return np.concatenate([y.argmax(1).numpy() for y in _tail_batches(x, cut, batch)])


def paired(ref_top1, enc_top1, labels):
    """Loss in top-1 points of enc against ref with the exact conditional 95% interval."""
    n = len(labels)
    r = ref_top1 == labels
    e = enc_top1 == labels
    lost = int(np.sum(r & ~e))
    gained = int(np.sum(~r & e))
    m = lost + gained
    if m == 0:
        lo = hi = 0.0
    else:
        pl = beta.ppf(0.025, lost, m - lost + 1) if lost > 0 else 0.0
        ph = beta.ppf(0.975, lost + 1, m - lost) if lost < m else 1.0
        lo, hi = 100.0 * m * (2 * pl - 1) / n, 100.0 * m * (2 * ph - 1) / n
    return dict(loss=100.0 * (lost - gained) / n, lo=lo, hi=hi, lost=lost, gained=gained,
                agree=100.0 * np.mean(ref_top1 == enc_top1), top1=100.0 * e.mean(),
                ref_top1=100.0 * r.mean())


def zstd_sizes(frames, level=19):
    """Real zstd sizes (CLI, no checksum, like ZSTD_compress) of a list of bytes objects."""
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, b in enumerate(frames):
            p = os.path.join(d, f"{i}.bin")
            with open(p, "wb") as f:
                f.write(b)
            paths.append(p)
        subprocess.run(["zstd", "-q", f"-{level}", "--no-check", "-f"] + paths, check=True)
        return np.array([min(os.path.getsize(p + ".zst"), len(frames[i])) for i, p in enumerate(paths)])


def pack_bits(codes, bits):
    """Packs each row of the (N, n) integer array codes into bits per code, LSB first."""
    n = codes.shape[1]
    shifts = np.arange(bits, dtype=np.uint64)
    b = ((codes.astype(np.uint64)[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(len(codes), -1)
    return [bytes(np.packbits(row, bitorder="little")) for row in b]


# ---------------------------------------------------------------------------------------------
# Static models: one frequency table (sum = 2**PROB_BITS, every symbol >= 1) per context.
PROB_BITS = 12


def fit_freqs(symbols, contexts, nsym, nctx, prob_bits=PROB_BITS, prior=0.5):
    """Frequency tables (nctx, nsym) fitted on calibration symbols (counts + prior, normalised to
    2**prob_bits, each entry >= 1)."""
    counts = np.zeros((nctx, nsym), dtype=np.float64)
    np.add.at(counts, (contexts.ravel(), symbols.ravel()), 1.0)
    counts += prior
    return normalize_freqs(counts, prob_bits)


def normalize_freqs(counts, prob_bits=PROB_BITS):
    total = 1 << prob_bits
    p = counts / counts.sum(1, keepdims=True)
    f = np.maximum(1, np.floor(p * total)).astype(np.int64)
    # fix the sums: add/remove from the largest entries
    for c in range(len(f)):
        d = total - f[c].sum()
        while d != 0:
            j = int(np.argmax(f[c])) if d < 0 else int(np.argmax(p[c] - f[c] / total))
            step = 1 if d > 0 else -1
            if step < 0 and f[c, j] <= 1:
                break
            f[c, j] += step
            d -= step
    assert np.all(f.sum(1) == total) and np.all(f >= 1)
    return f


def ideal_bytes(symbols, contexts, freqs, prob_bits=PROB_BITS):
    """Per-frame ideal code length in bytes (sum of -log2 p) under the static model."""
    p = freqs[contexts, symbols] / float(1 << prob_bits)
    return (-np.log2(p)).sum(1) / 8.0


# ---------------------------------------------------------------------------------------------
# rANS (32-bit state, byte-wise renormalisation, L = 2**23), vectorised over frames. Symbols are
# encoded in reverse so that the decoder reads them forward. Final state: 4 bytes.
RANS_L = 1 << 23


def rans_encode(symbols, contexts, freqs, prob_bits=PROB_BITS):
    """Encodes each row of symbols (N, n) with per-element contexts (N, n) -> list of bytes."""
    N, n = symbols.shape
    cum = np.concatenate([np.zeros((len(freqs), 1), np.int64), np.cumsum(freqs, 1)], 1)
    x = np.full(N, RANS_L, dtype=np.int64)
    out = np.zeros((N, n * 3 + 8), dtype=np.uint8)  # bytes written backwards from the end
    pos = np.full(N, out.shape[1], dtype=np.int64)
    rows = np.arange(N)
    for i in range(n - 1, -1, -1):
        s = symbols[:, i]
        c = contexts[:, i]
        f = freqs[c, s]
        start = cum[c, s]
        x_max = ((RANS_L >> prob_bits) << 8) * f
        while True:
            m = x >= x_max
            if not m.any():
                break
            pos[m] -= 1
            out[rows[m], pos[m]] = (x[m] & 0xFF).astype(np.uint8)
            x[m] >>= 8
        x = ((x // f) << prob_bits) + (x % f) + start
    res = []
    for k in range(N):
        res.append(int(x[k]).to_bytes(4, "little") + bytes(out[k, pos[k]:]))
    return res


def rans_decode(streams, contexts, freqs, prob_bits=PROB_BITS):
    """Decodes the streams (contexts known in advance, as for a static model) -> (N, n) symbols."""
    N, n = contexts.shape
    mask = (1 << prob_bits) - 1
    cum = np.concatenate([np.zeros((len(freqs), 1), np.int64), np.cumsum(freqs, 1)], 1)
    syms = np.zeros((N, n), dtype=np.int64)
    for k, b in enumerate(streams):
        x = int.from_bytes(b[:4], "little")
        p = 4
        for i in range(n):
            c = contexts[k, i]
            slot = x & mask
            s = int(np.searchsorted(cum[c], slot, side="right") - 1)
            syms[k, i] = s
            x = int(freqs[c, s]) * (x >> prob_bits) + slot - int(cum[c, s])
            while x < RANS_L:
                x = (x << 8) | b[p]
                p += 1
        assert p == len(b) and x == RANS_L, "rANS stream did not end where expected"
    return syms


def fmt_row(name, bpe, nbytes, st, extra=""):
    return (f"| {name} | {bpe:.3f} | {nbytes:,.0f} | {st['loss']:+.2f} [{st['lo']:+.2f}, {st['hi']:+.2f}] | "
            f"{st['agree']:.1f}% | {st['lost']}/{st['gained']} |{extra}")


def tail_logits(x, cut="f16", batch=300):
    """Logits of the model's tail (float64 numpy) for activations x (N, elements)."""
    return np.concatenate([y.double().numpy() for y in _tail_batches(x, cut, batch)])


_ref_cal = {}


def cal_kl(xhat_cal, cut="f16"):
    """Mean KL(fp32 || encoded) of the softmax over the calibration images: the fitting criterion."""
    if cut not in _ref_cal:
        x, _, _ = load(cut)
        _ref_cal[cut] = torch.log_softmax(torch.from_numpy(tail_logits(x[:NCAL], cut)), 1)
    lp = _ref_cal[cut]
    lq = torch.log_softmax(torch.from_numpy(tail_logits(xhat_cal, cut)), 1)
    return float((lp.exp() * (lp - lq)).sum(1).mean())
