#!/usr/bin/python3
"""Writes Fashion-MNIST test images as 8-bit gray PNGs plus labels.tsv, for edgesplit-profile.

The first --count images of Debian's dataset-fashion-mnist test split (t10k), in test-set order,
named <test index>_<class>.png (so sorting by name keeps that order), and labels.tsv with
"file<TAB>class index" lines:
  /usr/bin/python3 models/fashion_mnist_images.py --out /tmp/fashion-mnist-test --count 1000
--first N starts at test index N instead (images a profile made from the first ones never saw):
  /usr/bin/python3 models/fashion_mnist_images.py --out /tmp/fashion-mnist-next --first 1000
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
    parser.add_argument("--first", type=int, default=0,
                        help="test index of the first image written (default 0)")
    args = parser.parse_args()
    images, labels = load_split(args.data_dir, "test")
    if not 0 <= args.first < len(labels):
        sys.exit(f"--first must be in 0..{len(labels) - 1}")
    if not 1 <= args.count <= len(labels) - args.first:
        sys.exit(f"--count must be in 1..{len(labels) - args.first} (from --first {args.first})")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for i in range(args.first, args.first + args.count):
        name = sample_file_name(i, int(labels[i]))
        Image.fromarray(images[i], mode="L").save(os.path.join(args.out, name))
        rows.append(f"{name}\t{int(labels[i])}\n")
    with open(os.path.join(args.out, "labels.tsv"), "w") as f:
        f.writelines(rows)
    print(f"wrote {args.count} images and labels.tsv to {args.out}")


if __name__ == "__main__":
    main()
