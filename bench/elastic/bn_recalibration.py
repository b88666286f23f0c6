#!/usr/bin/python3
"""Batch-norm recalibration of MobileNetV2's derived variants: how much of their loss it wins back.

    /usr/bin/python3 bench/elastic/bn_recalibration.py [--shared ../shared] [--mode skip|size|both]

Dynamic-OFA and slimmable networks re-estimate a sub-network's batch-norm statistics on a few
hundred images before using it: a sub-network sees other activation statistics than the network
its layers were trained in. That needs no training, so it could make edgesplit's derived variants
(`partitioner/variant.h`: skipped blocks, other input sizes) cheaper in accuracy. This script
measures it, in PyTorch, before anything is built into the engine.

The shared MobileNetV2 has its batch norms folded into the convolutions (they hold mean 0, variance
1 and the bias), so recalibration here *matches distributions*: each batch norm's input, per
channel, over the calibration images, is mapped by an affine a x + c so that its mean and variance
in the variant equal those in the full network (in order, in one pass over the calibration batch,
each layer seeing the corrections made before it). That is what re-estimating the statistics of an
unfolded network does.

Images: `imagenet-val-1300`, file names sorted and shuffled with a fixed seed; the first 100
calibrate, the other 1,200 are scored (top-1, paired against the full network on the same images,
with a normal 95% interval of the paired difference). Preprocessing as the model's README says
(bilinear resize of the short side, centre crop, (x/255 - 0.50196) / 0.50196); input sizes below
224 resize the short side by the same ratio (the variants' "scaled" crop). Needs Debian's
`python3-torch`, `python3-torchvision`, `python3-pil` and about 2 GB of memory. On this project's
two-core machine each row took 5-8 minutes (1,200 images scored twice, plus loading them at a
new size), so `--mode both` (12 rows) takes more than an hour.
"""
import argparse
import copy
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image

from budget import paired_interval
from common import shared_dir


def eager_twin(scripted):
    """torchvision's MobileNetV2 with the TF 'SAME' padding the shared file has in front of its
    stride-2 3x3 convolutions, carrying the scripted module's weights."""
    m = torchvision.models.mobilenet_v2()
    for mod in list(m.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.Conv2d) and child.stride == (2, 2) and child.kernel_size == (3, 3):
                child.padding = (0, 0)
                setattr(mod, name, nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), child))
    mine = [k for k in m.state_dict() if not k.endswith("num_batches_tracked")]
    theirs = {k: v for k, v in scripted.state_dict().items() if not k.endswith("num_batches_tracked")}
    if len(mine) != len(theirs):
        raise SystemExit(f"the model has {len(theirs)} tensors, torchvision's MobileNetV2 {len(mine)}")
    state = {}
    for a, (b, t) in zip(mine, theirs.items()):
        if m.state_dict()[a].shape != t.shape:
            raise SystemExit(f"tensor {b} does not match torchvision's {a}")
        state[a] = t
    m.load_state_dict(state, strict=False)
    return m.eval()


class Images:
    def __init__(self, root, seed=7, calibration=100):
        self.root = Path(root)
        self.labels = {}
        for line in open(self.root / "labels.tsv"):
            f, c = line.split()
            self.labels[f] = int(c)
        files = sorted(self.labels)
        random.Random(seed).shuffle(files)
        self.calibration, self.test = files[:calibration], files[calibration:]
        self.cache = {}

    def load(self, f, side, short):
        im = Image.open(self.root / "images" / f).convert("RGB")
        w, h = im.size
        s = short / min(w, h)
        im = im.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - 0.50196) / 0.50196

    def batch(self, files, side):
        short = round(256 * side / 224)
        key = (side, short)
        if key not in self.cache:
            self.cache = {key: {f: self.load(f, side, short) for f in self.calibration + self.test}}
        return torch.stack([self.cache[key][f] for f in files])


def batch_norms(model):
    return [(n, b) for n, b in model.named_modules() if isinstance(b, nn.BatchNorm2d)]


def input_statistics(model, x):
    """Per batch norm: the mean and variance of its input per channel over x."""
    stats, hooks = {}, []
    for n, b in batch_norms(model):
        def hook(mod, inp, out, n=n):
            t = inp[0].double()
            stats[n] = (t.mean((0, 2, 3)), t.var((0, 2, 3)))
        hooks.append(b.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return stats


def recalibrate(model, x, reference):
    """Maps each batch norm's input onto the reference's mean and variance (in place)."""
    hooks = []
    for n, b in batch_norms(model):
        def pre(mod, inp, n=n):
            t = inp[0].double()
            mean, var = t.mean((0, 2, 3)), t.var((0, 2, 3))
            ref_mean, ref_var = reference[n]
            a = torch.sqrt((ref_var + 1e-12) / (var + 1e-12))
            c = ref_mean - a * mean
            rm, g = mod.running_mean.double(), mod.weight.double()
            s = torch.sqrt(mod.running_var.double() + mod.eps)
            # BN(a x + c) written as a batch norm of x: same running stats, new weight and bias.
            mod.bias.data = (mod.bias.double() + g * (c + a * rm - rm) / s).float()
            mod.weight.data = (g * a).float()
        hooks.append(b.register_forward_pre_hook(pre))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()


def multiply_adds(model, side):
    total, hooks = [0], []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            def conv(md, i, o):
                total[0] += o.numel() * md.in_channels // md.groups * md.kernel_size[0] * md.kernel_size[1]
            hooks.append(mod.register_forward_hook(conv))
        elif isinstance(mod, nn.Linear):
            def linear(md, i, o):
                total[0] += md.in_features * md.out_features
            hooks.append(mod.register_forward_hook(linear))
    with torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    for h in hooks:
        h.remove()
    return total[0] / 1e6


def right(model, images, side):
    out = []
    with torch.no_grad():
        for i in range(0, len(images.test), 25):
            files = images.test[i:i + 25]
            pred = model(images.batch(files, side)).argmax(1)
            out += [int(pred[j]) == images.labels[f] for j, f in enumerate(files)]
    return np.array(out, dtype=float)


def loss(variant, full):
    """Points of top-1 lost against the full network, paired, with a normal 95% interval."""
    mean, low, high = paired_interval(list(full), list(variant))
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=shared_dir())
    ap.add_argument("--mode", choices=["skip", "path", "size", "both"], default="both",
                    help="skip: each skippable block alone; path: the greedy skip path of models/families/imagenet.json (features.10, then .9, then .6); size: 192 and 160 px; both: skip and size")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shared = Path(a.shared)
    scripted = torch.jit.load(str(shared / "models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt")).eval()
    model = eager_twin(scripted)
    images = Images(shared / "data/imagenet-val-1300")
    x = images.batch(images.test[:8], 224)
    with torch.no_grad():
        err = (model(x) - scripted(x)).abs().max().item()
    if err > 1e-3:
        raise SystemExit(f"the eager twin differs from the scripted model by {err}")
    reference = input_statistics(model, images.batch(images.calibration, 224))
    full = right(model, images, 224)
    base = multiply_adds(model, 224)
    print(f"full network: top-1 {100 * full.mean():.2f}% on {len(full)} images, {base:.1f} M multiply-adds")
    print("| variant | M multiply-adds | loss, points [95%] | loss after recalibration |")
    print("|---|---:|---|---|")
    rows = []
    if a.mode in ("skip", "both"):
        for k, block in enumerate(model.features):
            if not getattr(block, "use_res_connect", False):
                continue
            v = copy.deepcopy(model)
            v.features[k] = nn.Identity()  # the block's output is its input: y = x
            rows.append((f"skip features.{k}", v, 224))
    if a.mode == "path":
        for n in range(1, 4):
            v = copy.deepcopy(model)
            blocks = (10, 9, 6)[:n]
            for k in blocks:
                v.features[k] = nn.Identity()
            rows.append(("skip " + ",".join(f"features.{k}" for k in blocks), v, 224))
    if a.mode in ("size", "both"):
        for side in (192, 160):
            rows.append((f"{side} px", copy.deepcopy(model), side))
    for name, v, side in rows:
        plain = right(v, images, side)
        recalibrate(v, images.batch(images.calibration, side), reference)
        recal = right(v, images, side)
        print(f"| {name} | {multiply_adds(v, side):.1f} | {loss(plain, full)} | {loss(recal, full)} |", flush=True)


if __name__ == "__main__":
    main()
