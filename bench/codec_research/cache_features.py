"""Caches the MobileNetV2 activations at the cuts studied (features.13, features.16, pooled) and the
fp32 logits for all 1,300 images of ../shared/data/imagenet-val-1300 (sorted by file name).

Preprocessing as the model's README/JSON and imaging/preprocess.cc: RGB, resize the short side to
256 (bilinear, as cv::INTER_LINEAR when enlarging; the images are 227x227), center crop 224,
x/255, then (x - 0.50196) / 0.50196.

Usage: /usr/bin/python3 bench/codec_research/cache_features.py [--out DIR]   (default /tmp/codec_research)
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MODEL = os.path.join(ROOT, "shared/models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt")
DATA = os.path.join(ROOT, "shared/data/imagenet-val-1300")
MEAN = STD = 0.50196


def load_image(path):
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)  # H W 3
    h, w = img.shape[:2]
    s = 256.0 / min(h, w)
    rw = 256 if w <= h else int(round(w * s))
    rh = 256 if h < w else int(round(h * s))
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(rh, rw), mode="bilinear", align_corners=False)
    t = t.round().clamp(0, 255)  # OpenCV returns uint8
    y0, x0 = (rh - 224) // 2, (rw - 224) // 2
    t = t[:, :, y0:y0 + 224, x0:x0 + 224] / 255.0
    return (t - MEAN) / STD


def tail_from(m, k, x):
    """Runs features[k+1:], pooling and classifier: the part of m.forward after features.k."""
    for i in range(k + 1, 19):
        x = getattr(m.features, str(i))(x)
    x = F.adaptive_avg_pool2d(x, [1, 1])
    return m.classifier(torch.flatten(x, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/codec_research")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    m = torch.jit.load(MODEL).eval()
    rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(DATA, "labels.tsv")) if l.strip()]
    rows.sort(key=lambda r: r[0])
    names = [r[0] for r in rows]
    labels = np.array([int(r[1]) for r in rows], dtype=np.int64)
    f13, f16, pooled, logits = [], [], [], []
    t0 = time.time()
    with torch.no_grad():
        for i, n in enumerate(names):
            x = load_image(os.path.join(DATA, "images", n))
            h = x
            for j in range(17):
                h = getattr(m.features, str(j))(h)
                if j == 13:
                    f13.append(h.numpy().reshape(-1).copy())
            f16.append(h.numpy().reshape(-1).copy())
            y = tail_from(m, 16, h)
            if i < 5:  # the split must reproduce the whole model
                ref = m(x)
                d = (ref - y).abs().max().item()
                print(f"{n}: max |split - whole| = {d:.3g}, same top-1 {ref.argmax().item() == y.argmax().item()}")
                assert d < 1e-4
                assert (tail_from(m, 13, torch.from_numpy(f13[-1]).view(1, 96, 14, 14)) - y).abs().max() < 1e-4
            hp = h
            for j in (17, 18):
                hp = getattr(m.features, str(j))(hp)
            pooled.append(F.adaptive_avg_pool2d(hp, [1, 1]).flatten().numpy().copy())
            logits.append(y.numpy().reshape(-1).copy())
            if i % 200 == 0:
                print(i, f"{time.time() - t0:.0f}s", flush=True)
    np.save(os.path.join(a.out, "f13.npy"), np.stack(f13))
    np.save(os.path.join(a.out, "f16.npy"), np.stack(f16))
    np.save(os.path.join(a.out, "pooled.npy"), np.stack(pooled))
    lg = np.stack(logits)
    np.save(os.path.join(a.out, "logits.npy"), lg)
    np.save(os.path.join(a.out, "labels.npy"), labels)
    top1 = lg.argmax(1)
    print("fp32 top-1 calibration %.2f%%, scored %.2f%% (n=%d)" % (
        100 * (top1[:100] == labels[:100]).mean(), 100 * (top1[100:] == labels[100:]).mean(), len(labels) - 100))


if __name__ == "__main__":
    main()
