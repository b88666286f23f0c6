"""Quantizers studied: uniform (per tensor / per channel, fitted ranges), Lloyd-Max codebooks,
and the entropy-constrained uniform quantizer (one step size, many levels, entropy coded)."""
import numpy as np

C, P = 160, 49  # features.16: channels, positions


def chan_index(n_elems=C * P, positions=P):
    return np.arange(n_elems) // positions


def uniform_codes(x, lo, hi, bits):
    """Free uniform quantizer (no exact-zero constraint): levels lo + k*d, k = 0..2**bits-1.
    lo/hi scalars or per-element arrays broadcastable to x."""
    L = (1 << bits) - 1
    d = (hi - lo) / L
    q = np.clip(np.rint((x - lo) / d), 0, L).astype(np.int64)
    return q, lo + q * d


def uniform_codes_zero(x, lo, hi, bits):
    """Today's packing quantizer (packing/quantize.cc): the grid contains 0 exactly."""
    L = (1 << bits) - 1
    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, 0.0)
    d = (hi - lo) / L
    z = np.clip(np.rint(-lo / d), 0, L)
    q = np.clip(np.floor(x / d + z + 0.5), 0, L).astype(np.int64)
    return q, (q - z) * d


def lloyd_max(v, k, iters=60):
    """1-D k-means (Lloyd-Max) on samples v -> sorted levels (k,)."""
    v = np.sort(v.ravel())
    c = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        t = (c[1:] + c[:-1]) / 2
        idx = np.searchsorted(t, v)
        s = np.bincount(idx, weights=v, minlength=k)
        n = np.bincount(idx, minlength=k)
        c = np.where(n > 0, s / np.maximum(n, 1), c)
    return np.sort(c)


def ec_lloyd(v, k, lam, iters=60):
    """Entropy-constrained Lloyd (Chou-Lookabaugh-Gray): minimises E[(v-c)^2] + lam * bits."""
    v = np.sort(v.ravel())
    c = np.quantile(v, (np.arange(k) + 0.5) / k)
    p = np.full(k, 1.0 / k)
    for _ in range(iters):
        cost = (v[:, None] - c[None]) ** 2 + lam * (-np.log2(np.maximum(p, 1e-12)))[None]
        idx = cost.argmin(1)
        n = np.bincount(idx, minlength=k)
        s = np.bincount(idx, weights=v, minlength=k)
        c = np.where(n > 0, s / np.maximum(n, 1), c)
        p = n / n.sum()
    keep = p > 0
    return c[keep], p[keep]


def nearest_codes(x, levels):
    """Codes of the nearest level (levels sorted, (k,) or per-element (..., k))."""
    if levels.ndim == 1:
        t = (levels[1:] + levels[:-1]) / 2
        q = np.searchsorted(t, x)
        return q, levels[q]
    raise ValueError


def nearest_codes_per_channel(x, levels_c, ch):
    """x (N, n); levels_c (C, k) sorted per channel; ch (n,) channel of each element."""
    q = np.zeros(x.shape, dtype=np.int64)
    xh = np.zeros(x.shape, dtype=np.float32)
    for c in range(levels_c.shape[0]):
        cols = ch == c
        lv = levels_c[c]
        t = (lv[1:] + lv[:-1]) / 2
        qq = np.searchsorted(t, x[:, cols])
        q[:, cols] = qq
        xh[:, cols] = lv[qq]
    return q, xh


def ecsq_codes(x, step, center=0.0, kmax=None, deadzone=0.0):
    """Uniform reconstruction grid center + k*step (k signed), rounding with an optional dead zone
    (|r| < 0.5 + deadzone maps to 0). step/center may be per-element arrays."""
    r = (x - center) / step
    k = np.sign(r) * np.floor(np.maximum(np.abs(r) - deadzone + 0.5, 0))
    if kmax is not None:
        k = np.clip(k, -kmax, kmax)
    k = k.astype(np.int64)
    return k, (center + k * step).astype(np.float32)
