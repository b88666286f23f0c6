#!/usr/bin/python3
"""Trains edgesplit's default model, a small residual CNN for Fashion-MNIST, and exports it.

Reads Debian's dataset-fashion-mnist IDX files (no downloads), trains on CPU with a fixed seed and
writes, into --out (models/default by default):
  fashion_mnist_cnn.pt    TorchScript (torch.jit.script, eval mode), input 1x1x28x28 float, 10 logits
  fashion_mnist_cnn.json  metadata the device reads: input shape, colour, normalization, labels
  samples/                24 test-set images as 8-bit grayscale PNGs plus samples/labels.tsv

Run with Debian's Python (torch 1.13, torchvision):
  /usr/bin/python3 models/train_fashion_mnist.py                  # train, export, write samples
  /usr/bin/python3 models/train_fashion_mnist.py --samples-only   # rewrite samples/ and check them
  /usr/bin/python3 models/train_fashion_mnist.py --evaluate-only  # test accuracy of the exported model
"""

import argparse
import gzip
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
MODEL_NAME = "fashion_mnist_cnn"
LABELS = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
# Training-set pixel statistics after scaling to [0, 1], rounded; used for training and written to
# the metadata, so the device normalizes exactly as the model was trained.
MEAN = 0.2860
STD = 0.3530
NUM_SAMPLES = 24


# ---------------------------------------------------------------------------------------------
# Data


def read_idx(path):
    """Reads a gzip'd IDX file (the MNIST format) into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims} values, found {array.size}")
    return array.reshape(dims)


def load_split(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels.astype(np.int64)


def to_input(images_u8):
    """uint8 N x 28 x 28 -> normalized float N x 1 x 28 x 28, as the device's preprocessing does."""
    x = torch.from_numpy(np.array(images_u8, dtype=np.uint8)).float().div_(255.0).unsqueeze(1)
    return (x - MEAN) / STD


def augment(x, generator):
    """Random horizontal flip and a random shift of up to 2 pixels (zero-padded in pixel space)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    background = (0.0 - MEAN) / STD
    padded = F.pad(x, (2, 2, 2, 2), value=background)
    shifts = torch.randint(0, 5, (n, 2), generator=generator)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        out[i] = padded[i, :, dy:dy + 28, dx:dx + 28]
    return out


# ---------------------------------------------------------------------------------------------
# Model


class ConvBnRelu(nn.Sequential):
    """3x3 convolution, batch norm, ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut, then ReLU (ResNet's basic block)."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = ConvBnRelu(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.conv1(x))))


class FashionMnistCnn(nn.Module):
    """Input N x 1 x 28 x 28 -> 16x28x28 -> 32x14x14 (+res) -> 64x7x7 (+res) -> pool -> 10 logits."""

    def __init__(self, widths=(16, 32, 64), num_classes=10):
        super().__init__()
        w0, w1, w2 = widths
        self.stem = ConvBnRelu(1, w0, 1)
        self.down1 = ConvBnRelu(w0, w1, 2)
        self.res1 = ResidualBlock(w1)
        self.down2 = ConvBnRelu(w1, w2, 2)
        self.res2 = ResidualBlock(w2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.down1(x)
        x = self.res1(x)
        x = self.down2(x)
        x = self.res2(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.dropout(x))


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def evaluate(model, images, labels, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            logits = model(to_input(images[i:i + batch]))
            correct += int((logits.argmax(1) == torch.from_numpy(labels[i:i + batch])).sum())
    return correct / len(images)


def train(args, train_images, train_labels, test_images, test_labels):
    generator = torch.Generator().manual_seed(args.seed)
    model = FashionMnistCnn()
    steps_per_epoch = (len(train_images) + args.batch - 1) // args.batch
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=0.25)
    x_all = to_input(train_images)
    y_all = torch.from_numpy(train_labels)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        total_loss, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch:(step + 1) * args.batch]
            x = augment(x_all[idx], generator)
            y = y_all[idx]
            loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss) * len(idx)
            seen += len(idx)
        accuracy = evaluate(model, test_images, test_labels)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total_loss / seen:.4f}, "
              f"test accuracy {accuracy:.4f}, {time.time() - start:.0f} s", flush=True)
    return model, time.time() - start


# ---------------------------------------------------------------------------------------------
# Outputs


def sample_file_name(index, label):
    slug = LABELS[label].replace("/", "-").replace(" ", "-")
    return f"{index:04d}_{slug}.png"


def write_samples(out_dir, test_images, test_labels):
    """Writes the first NUM_SAMPLES test images with all ten classes present, as 8-bit gray PNGs."""
    samples_dir = os.path.join(out_dir, "samples")
    os.makedirs(samples_dir, exist_ok=True)
    for name in os.listdir(samples_dir):
        if name.endswith(".png") or name == "labels.tsv":
            os.remove(os.path.join(samples_dir, name))
    # Two of every class (the first ones in the test set), then the next images in order.
    chosen = []
    for c in range(10):
        chosen += [int(i) for i in np.flatnonzero(test_labels == c)[:2]]
    for i in range(len(test_labels)):
        if len(chosen) >= NUM_SAMPLES:
            break
        if i not in chosen:
            chosen.append(i)
    chosen.sort()
    rows = []
    for i in chosen:
        name = sample_file_name(i, int(test_labels[i]))
        Image.fromarray(test_images[i], mode="L").save(os.path.join(samples_dir, name))
        rows.append(f"{name}\t{int(test_labels[i])}\n")
    with open(os.path.join(samples_dir, "labels.tsv"), "w") as f:
        f.writelines(rows)
    return samples_dir


def check_samples(model_path, samples_dir):
    """Runs the exported TorchScript on the sample PNGs, loaded as the C++ device loads them."""
    model = torch.jit.load(model_path)
    model.eval()
    agree = 0
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(samples_dir, "labels.tsv"))]
    for name, label in rows:
        pixels = np.asarray(Image.open(os.path.join(samples_dir, name)).convert("L"))
        with torch.no_grad():
            predicted = int(model(to_input(pixels[None]))[0].argmax())
        agree += predicted == int(label)
        mark = "" if predicted == int(label) else f"  (predicted {LABELS[predicted]})"
        print(f"  {name}: {LABELS[int(label)]}{mark}")
    print(f"samples: {agree}/{len(rows)} predicted as labelled")
    return agree, len(rows)


def write_metadata(out_dir):
    meta = {
        "name": MODEL_NAME,
        "input_shape": [1, 1, 28, 28],
        "color": "gray",
        "resize_short": 0,
        "mean": [MEAN],
        "std": [STD],
        "labels": LABELS,
    }
    path = os.path.join(out_dir, f"{MODEL_NAME}.json")
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return path


def export(model, out_dir):
    model.eval()
    scripted = torch.jit.script(model)
    path = os.path.join(out_dir, f"{MODEL_NAME}.pt")
    scripted.save(path)
    return path


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", default=os.path.join(here, "default"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads (results are reproducible for a fixed thread count)")
    parser.add_argument("--samples-only", action="store_true",
                        help="rewrite samples/ from the test set and check the exported model on them")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="report the exported model's accuracy on the full test set")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)

    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        if not os.path.exists(os.path.join(args.data_dir, name)):
            sys.exit(f"error: {os.path.join(args.data_dir, name)} is missing; install Debian's "
                     "dataset-fashion-mnist package or pass --data-dir")
    test_images, test_labels = load_split(args.data_dir, "test")
    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, f"{MODEL_NAME}.pt")

    if args.samples_only or args.evaluate_only:
        if not os.path.exists(model_path):
            sys.exit(f"error: {model_path} does not exist; train first (run without flags)")
        if args.evaluate_only:
            accuracy = evaluate(torch.jit.load(model_path), test_images, test_labels)
            print(f"test accuracy (10000 images): {accuracy:.4f}")
        if args.samples_only:
            check_samples(model_path, write_samples(args.out, test_images, test_labels))
        return

    train_images, train_labels = load_split(args.data_dir, "train")
    print(f"train {train_images.shape}, test {test_images.shape}, pixel mean "
          f"{train_images.mean() / 255:.4f} std {train_images.std() / 255:.4f} "
          f"(normalizing with {MEAN} / {STD})", flush=True)
    model, seconds = train(args, train_images, train_labels, test_images, test_labels)
    export(model, args.out)
    meta_path = write_metadata(args.out)
    exported_accuracy = evaluate(torch.jit.load(model_path), test_images, test_labels)
    params = sum(p.numel() for p in model.parameters())
    print(f"training time {seconds:.0f} s ({args.epochs} epochs, {args.threads} threads)")
    print(f"parameters {params}")
    print(f"exported {model_path} ({os.path.getsize(model_path)} bytes), "
          f"{meta_path} ({os.path.getsize(meta_path)} bytes)")
    print(f"test accuracy of the exported model (10000 images): {exported_accuracy:.4f}")
    check_samples(model_path, write_samples(args.out, test_images, test_labels))


if __name__ == "__main__":
    main()
