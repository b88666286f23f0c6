#!/usr/bin/python3
"""Plots an edgesplit profile: accuracy vs bytes per frame, and latency per cut.

Writes two figures (the format follows the file extension of --out-prefix's outputs, PNG or SVG):
  PREFIX-accuracy.EXT  top-1 vs packed bytes per frame (log x), one curve per cut (its encodings
                       without a lossless stage and with the best one), JPEG points at cut 0, the
                       fp32 top-1 as a line
  PREFIX-latency.EXT   per cut, the predicted latency split into head (device), transfer and tail
                       (server), at a few bandwidths, for one encoding choice per cut

Run with Debian's Python and python3-matplotlib:
  /usr/bin/python3 profiles/plot.py PROFILE.json --out-prefix docs/mobilenet_v2 [--format svg]
"""

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def best_per_size(points):
    """The upper-left frontier: points no other point beats in both bytes and top-1."""
    front = []
    for b, a, name in sorted(points):
        if not front or a > front[-1][1]:
            front.append((b, a, name))
    return front


def quantized_curve(cut, lossless):
    """(bytes, top1, name) of the cut's per-tensor quantized encodings with `lossless`."""
    out = []
    for e in cut["encodings"]:
        if e["jpeg_quality"] or e["per_channel"] or e["lossless"] != lossless:
            continue
        if e["format"] != "quantized" and e["format"] != "fp32" and e["format"] != "fp16":
            continue
        out.append((e["bytes_mean"], e["top1"], e["name"]))
    return sorted(out)


def plot_accuracy(profile, path, max_cuts):
    cuts = [c for c in profile["cuts"] if c["encodings"]]
    if len(cuts) > max_cuts:
        # Keep an even spread, always with cut 0.
        step = len(cuts) / max_cuts
        cuts = [cuts[int(i * step)] for i in range(max_cuts)]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    cmap = plt.get_cmap("viridis")
    lossless_names = sorted({e["lossless"] for c in cuts for e in c["encodings"]} - {"none"})
    for i, cut in enumerate(cuts):
        colour = cmap(i / max(1, len(cuts) - 1))
        # One curve per range choice ("", "/clip99.9", "/clip99/cal", ...): for each precision,
        # the smallest of its lossless variants. fp16/fp32 close the plain min/max curve.
        by_name = {}
        for lossless in ["none"] + lossless_names:
            for b, a, name in quantized_curve(cut, lossless):
                base = name.split("+")[0]
                if base not in by_name or b < by_name[base][0]:
                    by_name[base] = (b, a, name)
        families = {}
        for base, point in by_name.items():
            family = base.split("/", 1)[1] if "/" in base else ""
            families.setdefault(family, []).append(point)
        styles = ["-", "--", ":", "-."]
        for k, family in enumerate(sorted(families)):
            pts = sorted(families[family])
            label = f"cut {cut['id']} {cut['name']}" + (f" /{family}" if family else "")
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o", ls=styles[k % 4],
                    color=colour, ms=3, lw=1.2, label=label)
        jpeg = [(e["bytes_mean"], e["top1"], e["name"]) for e in cut["encodings"]
                if e["jpeg_quality"]]
        for b, a, name in jpeg:
            ax.plot(b, 100 * a, "s", color="tab:red", ms=6)
            ax.annotate(name, (b, 100 * a), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="tab:red")
    ax.set_xscale("log")
    ax.axhline(100 * profile["fp32_top1"], color="grey", ls="--", lw=1)
    ax.text(0.01, 100 * profile["fp32_top1"], " fp32", va="bottom", fontsize=8, color="grey",
            transform=ax.get_yaxis_transform())
    ax.set_xlabel("bytes per frame (mean over the calibration images, header included)")
    ax.set_ylabel("top-1 (%) on the scored images")
    truth = "labels" if profile.get("labels") else "agreement with fp32"
    ax.set_title(f"{profile['model_name']}: accuracy vs bytes per frame "
                 f"({profile['scored_images']} scored images, {truth})\n"
                 "each point a precision (per-tensor, its smallest lossless variant); "
                 "squares: the input as JPEG", fontsize=9)
    lowest = min([min(line.get_ydata()) for line in ax.get_lines() if len(line.get_ydata())],
                 default=0)
    ax.set_ylim(bottom=max(0, lowest - 2, 100 * profile["fp32_top1"] - 30))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def choose_encoding(cut, fp32_top1, max_drop):
    """The smallest encoding (JPEG included) within max_drop (fraction) of the fp32 top-1."""
    ok = [e for e in cut["encodings"] if fp32_top1 - e["top1"] <= max_drop]
    return min(ok, key=lambda e: e["bytes_mean"]) if ok else None


def plot_latency(profile, path, bandwidths_mbit, max_drop):
    cuts = [c for c in profile["cuts"]
            if c["encodings"] or c["id"] == profile["cuts"][-1]["id"]]
    cuts = [c for c in cuts if c["head"]["runs"] > 0 or c["id"] == 0]
    rows = []
    for c in cuts:
        enc = choose_encoding(c, profile["fp32_top1"], max_drop) if c["encodings"] else None
        if c["encodings"] and enc is None:
            continue
        head = c["head"]["median_ms"] + (enc["pack"]["median_ms"] if enc else 0)
        tail = c["tail"]["median_ms"] + (enc["unpack"]["median_ms"] if enc else 0)
        rows.append((c, enc, head, tail))
    n_bw = len(bandwidths_mbit)
    fig, axes = plt.subplots(1, n_bw, figsize=(4.2 * n_bw, 5), sharey=False)
    if n_bw == 1:
        axes = [axes]
    labels = [f"{c['id']} {c['name']}\n{e['name'] if e else 'local'}" for c, e, _, _ in rows]
    for ax, bw in zip(axes, bandwidths_mbit):
        heads = [r[2] for r in rows]
        transfers = [(r[1]["bytes_mean"] * 8 / (bw * 1e6) * 1e3) if r[1] else 0 for r in rows]
        tails = [r[3] if r[1] else 0 for r in rows]
        y = range(len(rows))
        ax.barh(y, heads, color="tab:blue", label="head + pack (device)")
        ax.barh(y, transfers, left=heads, color="tab:orange", label="transfer")
        ax.barh(y, tails, left=[h + t for h, t in zip(heads, transfers)], color="tab:green",
                label="unpack + tail (server)")
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels if ax is axes[0] else [], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("ms per frame")
        ax.set_title(f"{bw:g} Mbit/s", fontsize=9)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    dev = profile.get("device_machine", {}).get("cpu", "")
    srv = profile.get("server_machine", {}).get("cpu", "")
    fig.suptitle(f"{profile['model_name']}: latency per cut (smallest encoding within "
                 f"{100 * max_drop:g} pt of fp32 top-1; rtt and queueing left out)\n"
                 f"device: {dev}; server: {srv}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--out-prefix", required=True, help="e.g. docs/mobilenet_v2")
    parser.add_argument("--format", choices=["png", "svg"], default="png")
    parser.add_argument("--bandwidths", default="1,10,100", help="Mbit/s, comma-separated")
    parser.add_argument("--max-drop", type=float, default=1.0,
                        help="top-1 drop (points) allowed when choosing each cut's encoding")
    parser.add_argument("--max-cuts", type=int, default=12, help="curves in the accuracy plot")
    args = parser.parse_args()
    with open(args.profile) as f:
        profile = json.load(f)
    if not any(c["encodings"] for c in profile["cuts"]):
        sys.exit(f"{args.profile} has no encodings to plot")
    out_dir = os.path.dirname(args.out_prefix)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    bws = [float(b) for b in args.bandwidths.split(",") if b]
    acc = f"{args.out_prefix}-accuracy.{args.format}"
    lat = f"{args.out_prefix}-latency.{args.format}"
    plot_accuracy(profile, acc, args.max_cuts)
    plot_latency(profile, lat, bws, args.max_drop / 100)
    print(f"wrote {acc} and {lat}")


if __name__ == "__main__":
    main()
