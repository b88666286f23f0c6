"""Sensitivity of the tail to errors at a cut, from the calibration images only: the Fisher
information E_y~p[g g^T], g = d log p(y|x) / dx, estimated with S labels sampled from the fp32
prediction per image. Saves the per-element diagonal (C x H*W) and, for features.16, the
channel-space matrix summed over positions (160 x 160; used by the KLT experiment).

Usage: /usr/bin/python3 fisher.py [f16|f13|pooled]"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from common import CACHE, NCAL, SHAPES, START, load, model

cut = sys.argv[1] if len(sys.argv) > 1 else "f16"
torch.manual_seed(0)
x, _, _ = load(cut)
m = model()
S = 16  # sampled labels per image
shape = SHAPES[cut]
Cn = shape[0]
Pn = int(np.prod(shape[1:])) if len(shape) > 1 else 1
diag = np.zeros((Cn, Pn))
G = np.zeros((Cn, Cn))
for i in range(NCAL):
    t = torch.from_numpy(x[i:i + 1]).view(1, *shape).repeat(S, *([1] * len(shape))).requires_grad_(True)
    if cut == "pooled":
        lg = m.classifier(t)
    else:
        h = t
        for j in range(START[cut], 19):
            h = getattr(m.features, str(j))(h)
        lg = m.classifier(torch.flatten(F.adaptive_avg_pool2d(h, [1, 1]), 1))
    lp = torch.log_softmax(lg, 1)
    y = torch.multinomial(lp[0].exp().detach(), S, replacement=True)
    lp.gather(1, y[:, None]).sum().backward()
    g = t.grad.reshape(S, Cn, Pn).double().numpy()
    diag += (g ** 2).sum(0) / S
    gg = g.transpose(0, 2, 1).reshape(-1, Cn)
    G += gg.T @ gg / S
diag /= NCAL
G /= NCAL
suffix = "" if cut == "f16" else "_" + cut
np.save(os.path.join(CACHE, f"fisher_diag{suffix}.npy"), diag)
np.save(os.path.join(CACHE, f"fisher_chan{suffix}.npy"), G)
cd = diag.sum(1)
print("per-channel Fisher: max/median %.1f, p90/p10 %.1f" % (cd.max() / np.median(cd), np.percentile(cd, 90) / np.percentile(cd, 10)))
if Pn > 1:
    pd = diag.sum(0)
    print("per-position Fisher max/min %.1f" % (pd.max() / pd.min()))
