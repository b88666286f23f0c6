#!/usr/bin/python3
"""Exports a torchvision architecture as TorchScript, with a metadata JSON beside it.

    /usr/bin/python3 models/export.py ARCH OUT.pt [--weights FILE] [--trace] [--labels FILE]

Without --weights the weights are random (seeded, so the same file comes out every time).
Scripted by default; --trace traces it on a random input instead. The metadata (OUT.json) holds
what a device needs to feed the model: input shape, colour, resize, normalization, labels.
"""

import argparse
import json
import os
import sys

import torch
import torchvision

# ImageNet preprocessing used by torchvision's classifiers.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class GoogLeNetLogits(torchvision.models.GoogLeNet):
    """GoogLeNet returning only the logits (its scripted forward returns a named tuple)."""

    def forward(self, x):
        x = self._transform_input(x)
        x, _, _ = self._forward(x)
        return x


class Inception3Logits(torchvision.models.Inception3):
    """Inception-v3 returning only the logits (its scripted forward returns a named tuple)."""

    def forward(self, x):
        x = self._transform_input(x)
        x, _ = self._forward(x)
        return x


def build(arch):
    """The torchvision model ARCH with random weights, and its input side (pixels)."""
    if arch == "googlenet":
        model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
        model.__class__ = GoogLeNetLogits
        return model, 224, 256
    if arch == "inception_v3":
        model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
        model.__class__ = Inception3Logits
        return model, 299, 342
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown architecture '{arch}'")
    return torchvision.models.get_model(arch, weights=None), 224, 256


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", help="torchvision architecture, e.g. resnet18, mobilenet_v2")
    parser.add_argument("out", help="output TorchScript file (.pt); OUT.json is written beside it")
    parser.add_argument("--weights", help="state_dict file to load (default: random weights)")
    parser.add_argument("--trace", action="store_true", help="trace instead of script")
    parser.add_argument("--labels", help="labels file name (one class a line) for the metadata")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    try:
        model, side, resize_short = build(args.arch)
    except (ValueError, AttributeError) as e:
        print(f"export.py: {e}", file=sys.stderr)
        return 2
    if args.weights:
        state = torch.load(args.weights, map_location="cpu")
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    model.eval()
    shape = [1, 3, side, side]
    with torch.no_grad():
        if args.trace:
            scripted = torch.jit.trace(model, torch.rand(*shape))
        else:
            scripted = torch.jit.script(model)

    out = args.out
    tmp = out + ".tmp%d" % os.getpid()
    scripted.save(tmp)
    os.replace(tmp, out)
    meta = {
        "name": args.arch,
        "input_shape": shape,
        "color": "rgb",
        "resize_short": resize_short,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "weights": os.path.basename(args.weights) if args.weights else "random (seed %d)" % args.seed,
        "exported_by": "trace" if args.trace else "script",
    }
    if args.labels:
        meta["labels"] = args.labels
    meta_path = os.path.splitext(out)[0] + ".json"
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    os.replace(meta_path + ".tmp", meta_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
