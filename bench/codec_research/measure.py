"""Scores one encoding: accuracy on the 1,200 scored images and bytes per frame by several coders."""
import numpy as np

from common import (HEADER_V1_PER_TENSOR, HEADER_V2, NCAL, fit_freqs, ideal_bytes, load, pack_bits, paired,
                    tail_top1, zstd_sizes)

RANS_FLUSH = 4  # bytes: the final 32-bit rANS state


class Bench:
    def __init__(self, cut="f16"):
        self.cut = cut
        self.x, self.labels, self.ref = load(cut)
        self.n = self.x.shape[1]
        self.rows = []

    def score(self, xhat):
        return paired(self.ref[NCAL:], tail_top1(xhat[NCAL:], self.cut), self.labels[NCAL:])

    def sizes(self, sym, ctx=None, nctx=1, bits=None, zstd=True):
        """sym: (N, n) non-negative symbols for all 1,300 frames; ctx: (n,) or (N, n) context ids.
        Returns mean bytes per scored frame for: packed (bits), zstd-19 of packed bits, static
        model ideal + rANS flush (payload only, no header)."""
        out = {}
        nsym = int(sym.max()) + 1
        if bits is None:
            bits = max(1, int(np.ceil(np.log2(nsym))))
        out["packed"] = bits * self.n / 8
        if zstd:
            out["zstd"] = float(zstd_sizes(pack_bits(sym[NCAL:], bits)).mean())
        if ctx is None:
            ctx = np.zeros(self.n, dtype=np.int64)
        ctx = np.broadcast_to(ctx, sym.shape)
        f = fit_freqs(sym[:NCAL], ctx[:NCAL], nsym, nctx)
        out["static"] = float(ideal_bytes(sym[NCAL:], ctx[NCAL:], f).mean()) + RANS_FLUSH
        out["freqs"] = f
        return out

    def report(self, name, xhat, sz, st=None, key="static", header=HEADER_V2):
        if st is None:
            st = self.score(xhat)
        payload = sz[key]
        nbytes = payload + header
        row = dict(name=name, coder=key, payload=payload, header=header, bytes=nbytes,
                   bpe=8 * payload / self.n, **st,
                   zstd=sz.get("zstd"), static=sz.get("static"), packed=sz.get("packed"))
        self.rows.append(row)
        print(f"{name:42s} {row['bpe']:.3f} b/e  {nbytes:7.0f} B ({key}; zstd {sz.get('zstd', 0):.0f}, "
              f"static {sz.get('static', 0):.0f})  loss {st['loss']:+.2f} [{st['lo']:+.2f},{st['hi']:+.2f}] "
              f"agree {st['agree']:.1f}%", flush=True)
        return row
