#!/usr/bin/python3
"""Trains early-exit heads (SPINN / BranchyNet style) for a frozen backbone and exports them.

The backbone (TorchScript, eval mode) runs once: its tensors at the exit positions are cached
(training images fp16, test images fp32) and the small heads train on the cache, as on 2 CPU cores
one backbone pass costs 3 to 6 epochs of the heads. Augmentation: a random shift of the cached
tensors by the equivalent of the usual input shift (convolutions are translation-equivariant away
from the borders); no flips, which do not commute with the backbone. No label smoothing: the max
softmax decides an exit.

  resnet56       ../shared/models/resnet_cifar10/resnet56_cifar10.pt, exits after layer1 and layer2;
                 trains on ../shared/data/cifar10-train (JPEG archive, read in place, 10% held out
                 for validation), scores on ../shared/data/cifar10-test (JPEG)
  fashion_mnist  models/default/fashion_mnist_cnn.pt, exit after res1: the end of the first stage,
                 at half the multiply-adds (down1, before it, is at 11%); the data is Debian's
                 dataset-fashion-mnist, read by models/train_fashion_mnist.py's code

Writes into --out, per exit, NAME_exit_POSITION.pt (TorchScript: the backbone's N x C x H x W tensor
after POSITION in, N x classes logits out) and NAME_exit_POSITION.json (backbone digest, position,
input shape, multiply-adds, training, test top-1, threshold table), and NAME_exits.json: the cascade
per threshold (leave at the first exit whose max softmax reaches it, else run the whole model),
with the test images the cascade gets wrong where the whole model is right (lost) and the other
way round (gained), for paired intervals of its loss.

  /usr/bin/python3 models/train_exits.py --model resnet56 --out models/exits
  /usr/bin/python3 models/train_exits.py --model resnet56 --limit 500 --epochs 1 --out /tmp/x
  /usr/bin/python3 models/train_exits.py --model resnet56 --rescore --out models/exits
                 (the heads in --out scored again, their tables rewritten, no training)
"""

import argparse
import hashlib
import io
import json
import math
import os
import sys
import tarfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import train_fashion_mnist as fmnist

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared"))
CIFAR_DIR = os.path.join(SHARED, "models", "resnet_cifar10")
CIFAR_TRAIN = os.path.join(SHARED, "data", "cifar10-train", "train.tar.gz")
CIFAR_TEST = os.path.join(SHARED, "data", "cifar10-test")
CIFAR_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
VALIDATION_FRACTION = 0.1  # of the training images, held out to report accuracy per epoch


# ---------------------------------------------------------------------------------------------
# Data: uint8 images (N x H x W x 3 or N x H x W) and int64 labels; to_input normalizes a batch.


def pick(count, limit, seed):
    """Indices of all COUNT items, or of a seeded random LIMIT of them (the sets are by class)."""
    if limit is None or limit >= count:
        return np.arange(count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[:limit])


def decode_rgb(sources):
    return np.stack([np.asarray(Image.open(s).convert("RGB")) for s in sources])


def load_cifar(split, limit, seed):
    with open(os.path.join(CIFAR_DIR, "labels.txt")) as f:
        labels = [line.strip() for line in f if line.strip()]
    if split == "train":
        entries = []
        with tarfile.open(CIFAR_TRAIN, "r:gz") as tar:  # train/CLASS/NNNN.jpg, read in place
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg"):
                    cls = member.name.split("/")[-2]
                    data = tar.extractfile(member).read()
                    entries.append((member.name, labels.index(cls), data))
        entries.sort()
        chosen = [entries[i] for i in pick(len(entries), limit, seed)]
        return (decode_rgb(io.BytesIO(data) for _, _, data in chosen),
                np.array([label for _, label, _ in chosen], dtype=np.int64))
    with open(os.path.join(CIFAR_TEST, "labels.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    rows = [rows[i] for i in pick(len(rows), limit, seed)]
    return (decode_rgb(os.path.join(CIFAR_TEST, "images", name) for name, _ in rows),
            np.array([int(label) for _, label in rows], dtype=np.int64))


def cifar_input(images_u8):
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - CIFAR_MEAN) / CIFAR_STD


def load_fashion_mnist(split, limit, seed):
    images, labels = fmnist.load_split(fmnist.DEFAULT_DATA_DIR, split)
    chosen = pick(len(labels), limit, seed)
    return images[chosen], labels[chosen]


# ---------------------------------------------------------------------------------------------
# Backbones, cut into stages: each stage maps the previous stage's tensor to its own; the last
# stage's output is the logits. Exits attach after the named stages; cuts[] is the partitioner's
# name for the same tensor (as in the profiles).


def resnet56_stages(m):
    return [
        ("layer1", lambda x: m.layer1(F.relu(m.bn1(m.conv1(x))))),
        ("layer2", m.layer2),
        ("logits", lambda x: m.linear(torch.flatten(F.adaptive_avg_pool2d(m.layer3(x), 1), 1))),
    ]


def fashion_mnist_stages(m):
    return [
        ("res1", lambda x: m.res1(m.down1(m.stem(x)))),
        ("logits", lambda x: m.fc(torch.flatten(m.pool(m.res2(m.down2(x))), 1))),  # dropout: eval
    ]


MODELS = {
    "resnet56": dict(name="resnet56_cifar10", path=os.path.join(CIFAR_DIR, "resnet56_cifar10.pt"),
                     stages=resnet56_stages, load=load_cifar, to_input=cifar_input,
                     input_shape=(3, 32, 32), heads={"layer1": (32, 64), "layer2": (64,)},
                     shift={"layer1": 4, "layer2": 2},
                     cuts={"layer1": "layer1.8:relu", "layer2": "layer2.8:relu"}),
    "fashion_mnist": dict(name="fashion_mnist_cnn",
                          path=os.path.join(HERE, "default", "fashion_mnist_cnn.pt"),
                          stages=fashion_mnist_stages, load=load_fashion_mnist,
                          to_input=fmnist.to_input, input_shape=(1, 28, 28), heads={"res1": (24,)},
                          shift={"res1": 1}, cuts={"res1": "res1.relu"}),
}


class ExitHead(nn.Module):
    """Early exit: stride-2 3x3 conv-BN-ReLU layers of the given widths, global average, linear."""

    def __init__(self, channels, widths, num_classes):
        super().__init__()
        layers = []
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def count_macs(fn, x):
    """Multiply-adds of fn(x) for batch 1: convolutions and matrix products, from the profiler."""
    with torch.no_grad(), torch.profiler.profile(with_flops=True) as prof:
        fn(x)
    return sum(e.flops for e in prof.events()
               if e.name in ("aten::conv2d", "aten::addmm", "aten::mm") and e.flops) // 2


def stage_macs(stages, backbone, input_shape):
    """Multiply-adds per image from the input to the end of each stage; fails loudly unless the
    stages compose to the whole model."""
    x = probe = torch.rand((4,) + input_shape, generator=torch.Generator().manual_seed(1))
    cumulative, total = {}, 0
    with torch.no_grad():
        for name, fn in stages:
            total += count_macs(fn, x[:1])
            x, cumulative[name] = fn(x), total
        difference = float((x - backbone(probe)).abs().max())
    assert difference < 1e-5, f"the stages differ from the whole model by {difference}"
    return cumulative


def extract(stages, to_input, images, positions, dtype, with_logits, batch=250):
    """One backbone pass: {position: N x C x H x W tensor in dtype} and the N x classes logits."""
    features, logits = {}, []
    names = [name for name, _ in stages]
    last = len(stages) if with_logits else 1 + max(names.index(p) for p in positions)
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = to_input(images[start:start + batch])
            for name, fn in stages[:last]:
                x = fn(x)
                if name in positions:
                    if name not in features:
                        features[name] = torch.empty((len(images),) + x.shape[1:], dtype=dtype)
                    features[name][start:start + len(x)] = x
            if with_logits:
                logits.append(x)
    return features, torch.cat(logits) if with_logits else None


def random_shift(x, pixels, generator):
    """Shifts each tensor by up to PIXELS in each direction, zero-filling (post-ReLU features)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4)
    offsets = torch.randint(0, 2 * pixels + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def predict(head, features, batch=1000):
    head.eval()
    with torch.no_grad():
        return torch.cat([head(features[i:i + batch].float())
                          for i in range(0, len(features), batch)])


def accuracy(logits, labels):
    return int((logits.argmax(1) == labels).sum()) / len(labels) if len(labels) else None


def train_heads(args, heads, spec, train_feats, train_labels, val_feats, val_labels):
    """Trains all heads on the same batches (independent losses; the backbone is not involved)."""
    generator = torch.Generator().manual_seed(args.seed)
    params = [p for head in heads.values() for p in head.parameters()]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = (len(train_labels) + args.batch - 1) // args.batch
    total, warm = steps * args.epochs, max(1, steps * args.epochs // 10)

    def factor(s):  # linear warm-up over the first 10% of the steps, then cosine decay
        return (s + 1) / warm if s < warm else 0.5 + 0.5 * math.cos(math.pi * (s - warm)
                                                                     / (total - warm))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start = time.time()
    for epoch in range(args.epochs):
        for head in heads.values():
            head.train()
        order = torch.randperm(len(train_labels), generator=generator)
        losses = {name: 0.0 for name in heads}
        for step in range(steps):
            idx = order[step * args.batch:(step + 1) * args.batch]
            y = train_labels[idx]
            loss = 0.0
            for name, head in heads.items():
                x = random_shift(train_feats[name][idx].float(), spec["shift"][name], generator)
                head_loss = F.cross_entropy(head(x), y)
                losses[name] += float(head_loss) * len(idx)
                loss = loss + head_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        report = ", ".join(f"{name} loss {losses[name] / len(train_labels):.4f} val top-1 "
                           f"{accuracy(predict(head, val_feats[name]), val_labels):.4f}"
                           for name, head in heads.items())
        seconds = time.time() - start
        print(f"epoch {epoch + 1}/{args.epochs}: {report}, {seconds:.0f} s "
              f"({1000 * seconds / (epoch + 1) / len(train_labels):.3f} ms per image-epoch)",
              flush=True)
    return time.time() - start


# ---------------------------------------------------------------------------------------------
# Threshold tables


def cascade_table(exit_probs, final_logits, labels, cost_at):
    """Per threshold: images leave at the first exit whose max softmax reaches it, else run the
    whole model ("backbone"); the fraction leaving at each and their top-1, overall top-1 and mean
    multiply-adds. cost_at[name]: the backbone up to the exit plus every head up to this one."""
    steps = list(exit_probs.items()) + [("backbone", F.softmax(final_logits, 1))]
    backbone_right = final_logits.argmax(1) == labels
    rows = []
    for t in THRESHOLDS:
        remaining, row = torch.ones(len(labels), dtype=torch.bool), {"threshold": t, "exits": {}}
        right = torch.zeros(len(labels), dtype=torch.bool)
        macs = 0
        for name, probs in steps:
            confidence, predicted = probs.max(1)
            leave = remaining & ((confidence >= t) | (name == "backbone"))
            count, hits = int(leave.sum()), int((predicted[leave] == labels[leave]).sum())
            row["exits"][name] = {"fraction": count / len(labels),
                                  "top1": hits / count if count else None}
            right |= leave & (predicted == labels)
            macs += cost_at[name] * count
            remaining &= ~leave
        # Paired against the whole model on the same images: what the cascade loses and gains.
        row.update(top1=int(right.sum()) / len(labels), macs_mean=macs / len(labels),
                   lost=int((backbone_right & ~right).sum()),
                   gained=int((~backbone_right & right).sum()))
        rows.append(row)
    return rows


def fmt(value):
    return "   -  " if value is None else f"{value:6.4f}"


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def rescore(args, spec, digest, stages, positions):
    """Scores the exported heads in args.out on the test images again and rewrites the threshold
    tables of their JSON and of NAME_exits.json (the rest of the files is kept)."""
    path = os.path.join(args.out, f"{spec['name']}_exits.json")
    with open(path) as f:
        exits = json.load(f)
    if exits["model_digest"] != digest:
        sys.exit(f"error: {path} was made for another backbone")
    try:
        test_images, test_labels = spec["load"]("test", args.limit, args.seed)
    except (OSError, ValueError) as e:
        sys.exit(f"error: cannot read the {args.model} data: {e}")
    test_feats, test_logits = extract(stages, spec["to_input"], test_images, positions,
                                      torch.float32, True)
    y_test = torch.from_numpy(test_labels)
    exit_probs, metas, cost_at, heads_so_far = {}, {}, {}, 0
    for name in positions:
        head_path = os.path.join(args.out, f"{spec['name']}_exit_{name}")
        with open(head_path + ".json") as f:
            metas[name] = json.load(f)
        logits = predict(torch.jit.load(head_path + ".pt"), test_feats[name])
        exit_probs[name] = F.softmax(logits, 1)
        macs = metas[name]["macs"]
        heads_so_far += macs
        cost_at[name] = metas[name]["backbone_macs_to_position"] + heads_so_far
        alone = cascade_table({name: exit_probs[name]}, test_logits, y_test,
                              {name: metas[name]["backbone_macs_to_position"] + macs,
                               "backbone": exits["backbone_macs"] + macs})
        metas[name]["thresholds"] = [
            {"threshold": r["threshold"], "exit_fraction": r["exits"][name]["fraction"],
             "exit_top1": r["exits"][name]["top1"], "with_backbone_top1": r["top1"],
             "with_backbone_macs_mean": r["macs_mean"], "lost": r["lost"], "gained": r["gained"]}
            for r in alone]
        write_json(head_path + ".json", metas[name])
    cost_at["backbone"] = exits["backbone_macs"] + heads_so_far
    cascade = cascade_table(exit_probs, test_logits, y_test, cost_at)
    for row in cascade:
        row["macs_ratio"] = row["macs_mean"] / exits["backbone_macs"]
    exits["cascade"] = cascade
    write_json(path, exits)
    for row in cascade:
        print(f"threshold {row['threshold']:.2f}: top-1 {row['top1']:.4f}, "
              f"lost {row['lost']}, gained {row['gained']}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--out", required=True, help="folder for the exported heads and JSON")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--limit", type=int, help="use this many train and test images (smoke)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads (results are reproducible for a fixed thread count)")
    parser.add_argument("--rescore", action="store_true",
                        help="no training: score the heads already in --out on the test images "
                             "again and rewrite their threshold tables")
    args = parser.parse_args()
    if args.epochs < 1 or (args.limit is not None and args.limit < 10):
        parser.error("--epochs must be at least 1 and --limit at least 10")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    spec = MODELS[args.model]
    if not os.path.exists(spec["path"]):
        sys.exit(f"error: the backbone {spec['path']} is missing")
    with open(spec["path"], "rb") as f:
        digest = "sha256:" + hashlib.sha256(f.read()).hexdigest()
    backbone = torch.jit.load(spec["path"]).eval()
    stages, positions = spec["stages"](backbone), list(spec["heads"])
    cumulative = stage_macs(stages, backbone, spec["input_shape"])
    full_macs = cumulative[stages[-1][0]]
    if args.rescore:
        return rescore(args, spec, digest, stages, positions)
    try:
        train_images, train_labels = spec["load"]("train", args.limit, args.seed)
        test_images, test_labels = spec["load"]("test", args.limit, args.seed)
    except (OSError, ValueError) as e:
        sys.exit(f"error: cannot read the {args.model} data: {e}")

    start = time.time()
    features, _ = extract(stages, spec["to_input"], train_images, positions, torch.float16, False)
    cache_s = time.time() - start
    start = time.time()
    test_feats, test_logits = extract(stages, spec["to_input"], test_images, positions,
                                      torch.float32, True)
    print(f"{spec['name']}: {full_macs:,} multiply-adds; cached the tensors of {len(train_labels)} "
          f"training images in {cache_s:.1f} s ({1000 * cache_s / len(train_labels):.2f} ms each, "
          f"up to {positions[-1]}) and of {len(test_labels)} test images in "
          f"{time.time() - start:.1f} s (whole model)", flush=True)

    torch.manual_seed(args.seed)
    heads, head_macs, cost_at, num_classes = {}, {}, {}, test_logits.shape[1]
    for name in positions:
        shape = tuple(test_feats[name].shape[1:])
        heads[name] = ExitHead(shape[0], spec["heads"][name], num_classes).eval()
        head_macs[name] = count_macs(heads[name], torch.zeros((1,) + shape))
        cost_at[name] = cumulative[name] + sum(head_macs.values())  # heads up to this one run too
        params = sum(p.numel() for p in heads[name].parameters())
        print(f"exit {name}: input {list(shape)}, {head_macs[name]:,} multiply-adds "
              f"({100 * head_macs[name] / full_macs:.2f}% of the backbone), {params:,} parameters; "
              f"backbone up to {name}: {100 * cumulative[name] / full_macs:.1f}%")

    # Hold out VALIDATION_FRACTION of the training images (seeded), reported per epoch.
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(args.seed))
    n_val = max(1, int(len(order) * VALIDATION_FRACTION))
    labels = torch.from_numpy(train_labels)
    val_feats = {name: f[order[:n_val]] for name, f in features.items()}
    features = {name: f[order[n_val:]] for name, f in features.items()}  # drops the full cache
    seconds = train_heads(args, heads, spec, features, labels[order[n_val:]], val_feats,
                          labels[order[:n_val]])

    # Export, reload, and score the exported heads on the test tensors.
    os.makedirs(args.out, exist_ok=True)
    y_test = torch.from_numpy(test_labels)
    backbone_top1 = accuracy(test_logits, y_test)
    print(f"\ntest images: {len(y_test)}; backbone top-1 {backbone_top1:.4f}")
    exit_probs, tables, files = {}, {}, []
    for name, head in heads.items():
        path = os.path.join(args.out, f"{spec['name']}_exit_{name}")
        torch.jit.script(head.eval()).save(path + ".pt.tmp")
        os.replace(path + ".pt.tmp", path + ".pt")
        logits = predict(torch.jit.load(path + ".pt"), test_feats[name])
        assert float((logits - predict(head, test_feats[name])).abs().max()) < 1e-4
        exit_probs[name] = F.softmax(logits, 1)
        # This exit alone in front of the backbone (every image reaches it).
        alone = cascade_table({name: exit_probs[name]}, test_logits, y_test,
                              {name: cumulative[name] + head_macs[name],
                               "backbone": full_macs + head_macs[name]})
        tables[name] = [{"threshold": r["threshold"], "exit_fraction": r["exits"][name]["fraction"],
                         "exit_top1": r["exits"][name]["top1"], "with_backbone_top1": r["top1"],
                         "with_backbone_macs_mean": r["macs_mean"], "lost": r["lost"],
                         "gained": r["gained"]} for r in alone]
        write_json(path + ".json", {
            "format_version": 1, "model_name": spec["name"], "model_digest": digest,
            "position": name, "cut": spec["cuts"][name],
            "input_shape": [1] + list(test_feats[name].shape[1:]), "num_classes": num_classes,
            "head": f"{len(spec['heads'][name])} x (3x3 conv stride 2, BN, ReLU) to "
                    f"{list(spec['heads'][name])} channels, global average pool, linear",
            "macs": head_macs[name], "params": sum(p.numel() for p in head.parameters()),
            "backbone_macs": full_macs, "backbone_macs_to_position": cumulative[name],
            "training": {"images": len(order) - n_val, "validation_images": n_val,
                         "epochs": args.epochs, "seconds": round(seconds, 1),
                         "feature_cache_seconds": round(cache_s, 1), "batch": args.batch,
                         "lr": args.lr, "seed": args.seed, "threads": args.threads},
            "test": {"images": len(y_test), "top1": accuracy(logits, y_test),
                     "backbone_top1": backbone_top1},
            "thresholds": tables[name]})
        files += [path + ".pt", path + ".json"]
        print(f"exit {name}: top-1 {accuracy(logits, y_test):.4f} (every image leaving here)")
    print("each exit alone: fraction of the images reaching the threshold / their top-1")
    print("  threshold  " + "  ".join(f"{n:>15}" for n in positions))
    for i, t in enumerate(THRESHOLDS):
        print(f"  {t:9.2f}  " + "  ".join(f"{tables[n][i]['exit_fraction']:6.4f}/"
                                         f"{fmt(tables[n][i]['exit_top1'])}" for n in positions))

    cost_at["backbone"] = full_macs + sum(head_macs.values())
    cascade = cascade_table(exit_probs, test_logits, y_test, cost_at)
    for row in cascade:
        row["macs_ratio"] = row["macs_mean"] / full_macs
    path = os.path.join(args.out, f"{spec['name']}_exits.json")
    write_json(path, {"format_version": 1, "model_name": spec["name"], "model_digest": digest,
                      "exits": [{"position": n, "file": f"{spec['name']}_exit_{n}.pt"}
                                for n in positions],
                      "backbone_macs": full_macs, "backbone_top1": backbone_top1,
                      "test_images": len(y_test), "cascade": cascade})
    files.append(path)
    names = positions + ["backbone"]
    print("\ncascade: leave at the first exit reaching the threshold (fraction / their top-1)")
    print("  threshold  " + "  ".join(f"{n:>15}" for n in names) + "   top-1  vs backbone   MMACs")
    for row in cascade:
        cells = "  ".join(f"{row['exits'][n]['fraction']:6.4f}/{fmt(row['exits'][n]['top1'])}"
                          for n in names)
        print(f"  {row['threshold']:9.2f}  {cells}  {row['top1']:.4f}  "
              f"{row['top1'] - backbone_top1:+.4f}  {row['macs_mean'] / 1e6:7.2f} "
              f"({row['macs_ratio']:.2f}x)")
    print("\nwrote " + ", ".join(files))
    print(f"training time {seconds:.1f} s ({args.epochs} epochs, {len(order) - n_val} images, "
          f"{args.threads} threads; caching the training tensors took {cache_s:.1f} s more)")


if __name__ == "__main__":
    main()
