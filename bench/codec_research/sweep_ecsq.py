import sys
import numpy as np
from common import NCAL, cal_kl, load, paired, tail_top1
from ecsq import *
x, l, t = load("f16")
cal = x[:NCAL]
mu = cal.reshape(NCAL, 160, 49).mean((0, 2)).repeat(49)
def run(name, s, gamma, dz=0.0, recon=0.0, nclass=4, diag=False, score=True):
    w = fisher_weights(gamma) if gamma else np.ones(7840)
    k, xh = quantize(x, s * w, mu, deadzone=dz, recon=recon)
    sc = step_classes(w, nclass) if gamma else None
    ctx, n = contexts(k, 7, step_class=sc, nclass=nclass if gamma else 1, diag=diag)
    b, _ = rate_bytes(k, 7, ctx, n)
    kl = cal_kl(xh[:NCAL])
    st = paired(t[NCAL:], tail_top1(xh[NCAL:]), l[NCAL:]) if score else None
    print(f"{name:28s} s={s:<5} g={gamma} dz={dz} rc={recon}: {b.mean():6.0f} B  calKL {kl:.4f}  " +
          (f"loss {st['loss']:+.2f} [{st['lo']:+.2f},{st['hi']:+.2f}] agree {st['agree']:.1f}" if st else ""), flush=True)
for args in eval(sys.argv[1]):
    run(*args)
