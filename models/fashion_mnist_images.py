#!/usr/bin/python3
"""Writes Fashion-MNIST test images as 8-bit gray PNGs plus labels.tsv, for edgesplit-profile.

The first --count images of Debian's dataset-fashion-mnist test split (t10k), in test-set order,
named <test index>_<class>.png (so sorting by name keeps that order), and labels.tsv with
"file<TAB>class index" lines:
  /usr/bin/python3 models/fashion_mnist_images.py --out /tmp/fashion-mnist-test --count 1000
"""

import argparse
import os
import sys

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_fashion_mnist import DEFAULT_DATA_DIR, load_split, sample_file_name  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", required=True, help="folder to write (created if needed)")
    parser.add_argument("--count", type=int, default=1000, help="images to write (1..10000)")
    args = parser.parse_args()
    images, labels = load_split(args.data_dir, "test")
    if not 1 <= args.count <= len(labels):
        sys.exit(f"--count must be in 1..{len(labels)}")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for i in range(args.count):
        name = sample_file_name(i, int(labels[i]))
        Image.fromarray(images[i], mode="L").save(os.path.join(args.out, name))
        rows.append(f"{name}\t{int(labels[i])}\n")
    with open(os.path.join(args.out, "labels.tsv"), "w") as f:
        f.writelines(rows)
    print(f"wrote {args.count} images and labels.tsv to {args.out}")


if __name__ == "__main__":
    main()
