import sys
import numpy as np
from common import NCAL, cal_kl, load, paired, tail_top1
from ecsq import *
x, l, t = load("f16")
cal = x[:NCAL]
mu = cal.reshape(NCAL, 160, 49).mean((0, 2)).repeat(49)
def run(name, s, gamma=1.0, sep=True, nclass=4, score=False, kmax=7, ncap=2):
    w = fisher_weights(gamma, sep)
    k, xh = quantize(x, s * w, mu, kmax=kmax)
    sc = step_classes(w, nclass)
    ctx, n = contexts(k, kmax, ncap=ncap, step_class=sc, nclass=nclass)
    b, _ = rate_bytes(k, kmax, ctx, n)
    kl = cal_kl(xh[:NCAL])
    st = paired(t[NCAL:], tail_top1(xh[NCAL:]), l[NCAL:]) if score else None
    print(f"{name:20s} s={s:<5} g={gamma} sep={sep} ncl={nclass} ncap={ncap}: {b.mean():6.0f} B  calKL {kl:.4f}  " +
          (f"loss {st['loss']:+.2f} [{st['lo']:+.2f},{st['hi']:+.2f}] agree {st['agree']:.1f}" if st else ""), flush=True)
for args in eval(sys.argv[1]):
    run(**args)
