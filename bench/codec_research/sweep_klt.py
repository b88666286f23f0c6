import sys, os
import numpy as np
from common import CACHE, NCAL, cal_kl, load, paired, tail_top1
from ecsq import *
x, l, t = load("f16")
N = len(x)
X = x.reshape(N, 160, 49)
mu = X[:NCAL].mean((0, 2))
G = np.load(os.path.join(CACHE, "fisher_chan.npy"))
d = np.load(os.path.join(CACHE, "fisher_diag.npy"))
b = d.sum(0); b = b / np.exp(np.log(b).mean())  # position weights
lam, Q = np.linalg.eigh(G)
A = np.sqrt(np.maximum(lam, 1e-12))[:, None] * Q.T  # u = A (x - mu): Fisher-whitened error metric
Xc = X - mu[None, :, None]
U = np.einsum("ij,njp->nip", A, Xc)
mode = sys.argv[1]
KM = 31
if mode == "pca":
    Uc = U[:NCAL].transpose(0, 2, 1).reshape(-1, 160)
    ev, R = np.linalg.eigh(Uc.T @ Uc)
    A2 = R.T @ A
else:
    A2 = A
Ainv = np.linalg.inv(A2)
U = np.einsum("ij,njp->nip", A2, Xc)
var = U[:NCAL].var((0, 2))
cls = np.searchsorted(np.quantile(np.log(var), [0.25, 0.5, 0.75]), np.log(var))
pw = b ** -0.5  # position step multipliers
for s in [float(v) for v in sys.argv[2:]]:
    step = s * np.outer(np.ones(160), pw) * np.sqrt(d.sum() / 160 / 49) ** 0  # placeholder scale
    k, uh = quantize(U.reshape(N, -1), (s * np.outer(np.ones(160), pw)).reshape(-1), 0.0, kmax=KM)
    ctx, n = contexts(k, KM, step_class=np.repeat(cls, 49), nclass=4)
    r, _ = rate_bytes(k, KM, ctx, n)
    xh = (np.einsum("ij,njp->nip", Ainv, uh.reshape(N, 160, 49)) + mu[None, :, None]).reshape(N, -1).astype(np.float32)
    kl = cal_kl(xh[:NCAL])
    print(f"{mode} s={s}: {r.mean():.0f} B calKL {kl:.4f}", flush=True)
