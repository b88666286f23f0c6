#!/usr/bin/python3
"""Plots an edgesplit profile: accuracy vs bytes per frame, and latency per cut.

Writes two figures (the format follows the file extension of --out-prefix's outputs, PNG or SVG):
  PREFIX-accuracy.EXT  top-1 vs packed bytes per frame (log x), one curve per cut (its encodings
                       without a lossless stage and with the best one), JPEG points at cut 0 (a
                       marker per quality), the fp32 top-1 as a line. Without labels in the
                       profile the y-axis is the agreement with the fp32 model's top-1 (fp32 is
                       100% by definition, and has no band). Every point has its 95% interval as
                       a bar: where the profile has the encoding's paired counts against fp32
                       ("lost", "gained"), the fp32 top-1 minus the paired interval of the
                       loss (the one profiles/accuracy_interval.h computes: a bar that does not
                       reach the fp32 line is evidence of a loss); otherwise the Wilson score
                       interval of its own top-1 over the scored images. The fp32 line has its
                       Wilson interval as a band. Points
                       below the y-axis are drawn on it as downward triangles. The legend is right
                       of the axes; when there are more cuts than --max-cuts (an even spread is
                       kept, always with the first and the last), a note under it (and a line on
                       stderr) names the ones left out
  PREFIX-latency.EXT   per cut (one row each), the predicted latency split into head (device),
                       transfer and tail (server), at a few bandwidths, for one encoding choice per
                       cut; whiskers span the p10-p90 of head + pack and of unpack + tail. Cuts
                       with no encoding within --max-drop, and the profile's "timing_warnings"
                       if it has any, are named in a note under the plots (and on stderr)

Run with Debian's Python and python3-matplotlib (nothing else beyond the standard library):
  /usr/bin/python3 profiles/plot.py PROFILE.json --out-prefix docs/mobilenet_v2 [--format svg]
"""

import argparse
import json
import math
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(p, n, z=Z95):
    """The Wilson score interval (lo, hi) of a binomial proportion p observed on n trials."""
    if n <= 0:
        return p, p
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_cdf(k, m, p):
    """P(X <= k) for X ~ binomial(m, p), summed in logs."""
    if k < 0:
        return 0.0
    if k >= m or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    lp, lq, lm = math.log(p), math.log1p(-p), math.lgamma(m + 1)
    terms = [lm - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * lp + (m - i) * lq
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def solve_decreasing(f, target):
    """The p in [0, 1] where f (decreasing in p) crosses target, by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        if hi - lo <= 1e-13:
            break
        mid = 0.5 * (lo + hi)
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def clopper_pearson(k, m, confidence=0.95):
    """The exact two-sided interval (lo, hi) of a binomial proportion, k of m."""
    if m <= 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    lo = 0.0 if k == 0 else solve_decreasing(lambda p: binomial_cdf(k - 1, m, p), 1 - alpha / 2)
    hi = 1.0 if k == m else solve_decreasing(lambda p: binomial_cdf(k, m, p), alpha / 2)
    return lo, hi


def drop_interval(n, lost, gained, fp32_right, confidence=0.95):
    """(point, lo, hi): top-1 points lost against fp32 on n paired images, as
    profiles/accuracy_interval.h computes them: Newcombe's hybrid score interval (method 10) with
    labels, the exact interval of lost / n without them (fp32 right on all n). 95% only."""
    if n <= 0:
        return 0.0, 0.0, 0.0
    point = 100.0 * (lost - gained) / n
    if fp32_right >= n:
        lo, hi = clopper_pearson(lost - gained, n, confidence)
        return point, 100.0 * lo, 100.0 * hi
    b, c = float(lost), float(gained)
    a = fp32_right - b
    e = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(p1, n)
    l2, u2 = wilson_interval(p2, n)
    den = math.sqrt((a + b) * (c + e) * (a + c) * (b + e))
    phi = (a * e - b * c) / den if den > 0 else 0.0
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    delta = math.sqrt(max(0.0, dl1 * dl1 - 2 * phi * dl1 * du2 + du2 * du2))
    eps = math.sqrt(max(0.0, du1 * du1 - 2 * phi * du1 * dl2 + dl2 * dl2))
    theta = p1 - p2
    return point, 100.0 * max(-1.0, theta - delta), 100.0 * min(1.0, theta + eps)


def paired(e):
    return e.get("lost", -1) >= 0 and e.get("gained", -1) >= 0


def top1_interval(e, n, fp32_top1):
    """(lo, hi) of an encoding's top-1 at 95%, fractions: fp32_top1 minus the paired loss
    interval when the profile has the counts, else the Wilson interval of its top-1."""
    if paired(e) and n > 0:
        right = min(n, max(0, round(fp32_top1 * n)))
        _, lo_pp, hi_pp = drop_interval(n, e["lost"], e["gained"], right)
        return max(0.0, fp32_top1 - hi_pp / 100), min(1.0, fp32_top1 - lo_pp / 100)
    return wilson_interval(e["top1"], n)


def best_per_size(points):
    """The upper-left frontier: points no other point beats in both bytes and top-1."""
    front = []
    for b, a, name in sorted(points):
        if not front or a > front[-1][1]:
            front.append((b, a, name))
    return front


def quantized_curve(cut, lossless, n, fp32_top1):
    """(bytes, top1, name, (lo, hi)) of the cut's per-tensor quantized encodings with
    `lossless`, with the 95% interval of top1 (top1_interval)."""
    out = []
    for e in cut["encodings"]:
        if e["jpeg_quality"] or e["per_channel"] or e["lossless"] != lossless:
            continue
        if e["format"] != "quantized" and e["format"] != "fp32" and e["format"] != "fp16":
            continue
        out.append((e["bytes_mean"], e["top1"], e["name"], top1_interval(e, n, fp32_top1)))
    return sorted(out)


def select_cuts(cuts, max_cuts):
    """(kept, left_out): an even spread of at most max_cuts cuts, the first and last always
    among them; max_cuts <= 0 keeps every cut."""
    if max_cuts <= 0 or len(cuts) <= max_cuts:
        return cuts, []
    if max_cuts == 1:
        keep = {0}
    else:
        keep = {round(i * (len(cuts) - 1) / (max_cuts - 1)) for i in range(max_cuts)}
    return ([c for i, c in enumerate(cuts) if i in keep],
            [c for i, c in enumerate(cuts) if i not in keep])


def cut_label(cut):
    return f"cut {cut['id']} {cut['name']}"


def accuracy_series(cut, lossless_names, n, fp32_top1):
    """{family: [(bytes, top1, name, (lo, hi))]}: one curve per range choice ("", "clip99.9",
    "clip99/cal", ...), for each precision the smallest of its lossless variants, and one of the
    entropy-coded encodings ("ecsq"). fp16/fp32 close the plain min/max curve."""
    by_name = {}
    for lossless in ["none"] + lossless_names:
        for b, a, name, iv in quantized_curve(cut, lossless, n, fp32_top1):
            base = name.split("+")[0]
            if base not in by_name or b < by_name[base][0]:
                by_name[base] = (b, a, name, iv)
    families = {}
    for base, point in by_name.items():
        family = base.split("/", 1)[1] if "/" in base else ""
        families.setdefault(family, []).append(point)
    # Entropy-coded encodings (ecsq1, ecsq0.8, ...): a curve of their own.
    for e in cut["encodings"]:
        if e["format"] == "entropy":
            families.setdefault("ecsq", []).append(
                (e["bytes_mean"], e["top1"], e["name"], top1_interval(e, n, fp32_top1)))
    return {f: sorted(p) for f, p in families.items()}


def plot_accuracy(profile, path, max_cuts):
    all_cuts = [c for c in profile["cuts"] if c["encodings"]]
    cuts, left_out = select_cuts(all_cuts, max_cuts)
    n = int(profile.get("scored_images") or 0)
    labelled = bool(profile.get("labels"))
    fp32 = 100 * profile["fp32_top1"]

    # Every curve and point first, so the y-range (and which points fall below it) is known
    # before anything is drawn.
    cmap = plt.get_cmap("viridis")
    lossless_names = sorted({e["lossless"] for c in cuts for e in c["encodings"]} - {"none"})
    styles = ["-", "--", ":", "-."]
    fp32_top1 = profile["fp32_top1"]
    curves = []  # (label, colour, linestyle, [(bytes, top1 %, name, (lo %, hi %))])
    for i, cut in enumerate(cuts):
        colour = cmap(i / max(1, len(cuts) - 1))
        families = accuracy_series(cut, lossless_names, n, fp32_top1)
        for k, family in enumerate(sorted(families)):
            label = cut_label(cut) + (f" /{family}" if family else "")
            pts = [(b, 100 * a, name, (100 * lo, 100 * hi))
                   for b, a, name, (lo, hi) in families[family]]
            curves.append((label, colour, styles[k % 4], pts))
    jpeg = []
    for e in (e for c in cuts for e in c["encodings"] if e["jpeg_quality"]):
        lo, hi = top1_interval(e, n, fp32_top1)
        jpeg.append((e["bytes_mean"], 100 * e["top1"], e["name"], (100 * lo, 100 * hi)))
    every = [p for _, _, _, pts in curves for p in pts] + jpeg
    shown = [e for c in cuts for e in c["encodings"]]
    n_paired = sum(1 for e in shown if paired(e))

    def wilson_pct(y):
        lo, hi = wilson_interval(y / 100, n)
        return 100 * lo, 100 * hi

    lowest = min((p[3][0] for p in every), default=fp32)
    bottom = max(0.0, lowest - 1, fp32 - 30)
    highest = max([p[3][1] for p in every] + [wilson_pct(fp32)[1] if labelled else fp32])
    top = highest + 0.04 * (highest - bottom) + 0.2

    fig, ax = plt.subplots(figsize=(12, 6))
    fig.subplots_adjust(left=0.07, right=0.68, top=0.88, bottom=0.1)
    handles = []
    clipped = 0

    def draw_points(pts, colour, marker, ms):
        """Markers and 95% bars for the points inside the y-range; triangles on the axis for
        the ones below it. Returns how many fell below."""
        inside = [p for p in pts if p[1] >= bottom]
        below = [p for p in pts if p[1] < bottom]
        if inside:
            lo_hi = [p[3] for p in inside]
            ax.errorbar([p[0] for p in inside], [p[1] for p in inside],
                        # max(0, ...): a paired end may equal the point, up to rounding.
                        yerr=[[max(0.0, p[1] - lh[0]) for p, lh in zip(inside, lo_hi)],
                              [max(0.0, lh[1] - p[1]) for p, lh in zip(inside, lo_hi)]],
                        fmt="none", ecolor=colour, elinewidth=0.7, alpha=0.4, capsize=1.5)
            ax.plot([p[0] for p in inside], [p[1] for p in inside], marker, color=colour, ms=ms,
                    ls="none", zorder=3, clip_on=False)  # whole markers on the edges too
        if below:
            ax.plot([p[0] for p in below], [bottom] * len(below), "v", color=colour, ms=ms + 3,
                    mec="black", mew=0.5, ls="none", clip_on=False, zorder=4)
        return len(below)

    for label, colour, ls, pts in curves:
        # The line goes to every point, the ones below the range too (the axes clip it).
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, color=colour, lw=1.2)
        clipped += draw_points(pts, colour, "o", 3)
        handles.append((Line2D([], [], color=colour, ls=ls, lw=1.2, marker="o", ms=3), label))
    jpeg_markers = ["s", "D", "p", "h", "P", "X", "*"]
    for k, point in enumerate(sorted(jpeg)):
        marker = jpeg_markers[k % len(jpeg_markers)]
        clipped += draw_points([point], "tab:red", marker, 6)
        if point[1] < bottom:
            ax.annotate(f"{point[2]} {point[1]:.1f}%", (point[0], bottom), xytext=(0, 7),
                        textcoords="offset points", ha="center", fontsize=7, color="tab:red",
                        annotation_clip=False)
        handles.append((Line2D([], [], color="tab:red", marker=marker, ms=6, ls="none"),
                        f"cut 0: the input as {point[2]}"))
    ax.set_xscale("log")
    ax.axhline(fp32, color="grey", ls="--", lw=1)
    if labelled:
        lo, hi = wilson_pct(fp32)
        ax.axhspan(lo, hi, color="grey", alpha=0.15, lw=0)
        ax.text(0.01, fp32, " fp32", va="bottom", fontsize=8, color="grey",
                transform=ax.get_yaxis_transform())
        handles.append(((Line2D([], [], color="grey", ls="--", lw=1),
                         Patch(color="grey", alpha=0.15, lw=0)),
                        f"fp32 top-1 {fp32:.1f}%, its 95% interval"))
    else:
        ax.text(0.01, fp32, " fp32", va="top", fontsize=8, color="grey",
                transform=ax.get_yaxis_transform())
        handles.append((Line2D([], [], color="grey", ls="--", lw=1),
                        "fp32: agrees with itself"))
    band = "; Wilson\nfor the fp32 band" if labelled else ""
    if n_paired == len(shown):
        bars = (f"bars: 95% interval, fp32 top-1 minus the\npaired interval of the loss "
                f"({n} images{band})")
    elif n_paired == 0:
        bars = f"bars: 95% interval (Wilson, {n} images)"
    else:
        bars = (f"bars: 95% interval, fp32 top-1 minus the\npaired interval of the loss "
                f"where the profile\nhas the counts, else Wilson ({n} images)")
    handles.append((Line2D([], [], color="grey", marker="|", ms=9, mew=0.8, ls="none"), bars))
    if clipped:
        handles.append((Line2D([], [], color="white", marker="v", ms=6, mec="black", mew=0.5,
                               ls="none"),
                        f"{clipped} point{'s' if clipped > 1 else ''} below the y-axis, "
                        "drawn on it"))

    ax.set_xlabel("bytes per frame (mean over the calibration images, header included)")
    if labelled:
        ax.set_ylabel(f"top-1 (%) on the {n} scored images")
    else:
        ax.set_ylabel("agreement with fp32 top-1 (%)")
    truth = "labels" if labelled else "no labels: agreement with fp32"
    ax.set_title(f"{profile['model_name']}: accuracy vs bytes per frame "
                 f"({n} scored images, {truth})\n"
                 "each point a precision (per-tensor, its smallest lossless variant), "
                 "its bar the 95% interval; red: the input as JPEG", fontsize=9)
    ax.set_ylim(bottom, top)
    ax.grid(True, which="both", alpha=0.3)
    leg = ax.legend([h for h, _ in handles], [t for _, t in handles], fontsize=7,
                    loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                    handlelength=2.5)
    if left_out:
        names = ", ".join(f"{c['id']} {c['name']}" for c in left_out)
        note = (f"{len(left_out)} of {len(all_cuts)} profiled cuts left out (--max-cuts "
                f"{max_cuts}; 0 shows all): cuts {names}")
        ax.annotate(textwrap.fill(note, 48), xy=(0, 0), xycoords=leg, xytext=(0, -6),
                    textcoords="offset points", va="top", ha="left", fontsize=7,
                    color="dimgrey")
        print(f"plot.py: {path}: {note}", file=sys.stderr)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def choose_encoding(cut, fp32_top1, max_drop):
    """The smallest encoding (JPEG included) within max_drop (fraction) of the fp32 top-1."""
    ok = [e for e in cut["encodings"] if fp32_top1 - e["top1"] <= max_drop]
    return min(ok, key=lambda e: e["bytes_mean"]) if ok else None


def spread(timing):
    """(median, p10, p90) of a timing summary, in ms (zeros when it was not measured)."""
    if not timing:
        return 0.0, 0.0, 0.0
    med = timing.get("median_ms", 0.0)
    return med, timing.get("p10_ms", med), timing.get("p90_ms", med)


def plot_latency(profile, path, bandwidths_mbit, max_drop):
    cuts = [c for c in profile["cuts"]
            if c["encodings"] or c["id"] == profile["cuts"][-1]["id"]]
    cuts = [c for c in cuts if c["head"]["runs"] > 0 or c["id"] == 0]
    rows = []  # (cut, encoding or None, (head med, p10, p90), (tail med, p10, p90))
    no_encoding = []
    for c in cuts:
        enc = choose_encoding(c, profile["fp32_top1"], max_drop) if c["encodings"] else None
        if c["encodings"] and enc is None:
            no_encoding.append(c)
            continue
        h, p, t, u = (spread(c["head"]), spread(enc.get("pack") if enc else None),
                      spread(c["tail"]), spread(enc.get("unpack") if enc else None))
        rows.append((c, enc, tuple(a + b for a, b in zip(h, p)),
                     tuple(a + b for a, b in zip(t, u))))
    n_bw = len(bandwidths_mbit)
    size = (max(8.0, 1.6 + 3.8 * n_bw), 1.6 + 0.3 * max(4, len(rows)))  # one line per row
    fig, axes = plt.subplots(1, n_bw, figsize=size, sharey=True)
    if n_bw == 1:
        axes = [axes]
    labels = [f"{c['id']} {c['name']}: {e['name'] if e else 'local'}" for c, e, _, _ in rows]
    y = list(range(len(rows)))
    whisker = dict(fmt="none", ecolor="black", elinewidth=0.9, capsize=2.5, capthick=0.9)
    for ax, bw in zip(axes, bandwidths_mbit):
        heads = [r[2][0] for r in rows]
        transfers = [(r[1]["bytes_mean"] * 8 / (bw * 1e6) * 1e3) if r[1] else 0 for r in rows]
        tails = [r[3][0] if r[1] else 0 for r in rows]
        ax.barh(y, heads, color="tab:blue", height=0.7)
        ax.barh(y, transfers, left=heads, color="tab:orange", height=0.7)
        ax.barh(y, tails, left=[h + t for h, t in zip(heads, transfers)], color="tab:green",
                height=0.7)
        # p10-p90: the head's at the end of the head segment, the tail's at the end of the bar.
        ax.errorbar(heads, y, xerr=[[r[2][0] - r[2][1] for r in rows],
                                    [r[2][2] - r[2][0] for r in rows]], **whisker)
        tail_rows = [i for i, r in enumerate(rows) if r[1]]
        ends = [heads[i] + transfers[i] + tails[i] for i in tail_rows]
        ax.errorbar(ends, [y[i] for i in tail_rows],
                    xerr=[[rows[i][3][0] - rows[i][3][1] for i in tail_rows],
                          [rows[i][3][2] - rows[i][3][0] for i in tail_rows]], **whisker)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlim(left=0)
        ax.set_xlabel("ms per frame")
        ax.set_title(f"{bw:g} Mbit/s", fontsize=9)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    dev = profile.get("device_machine", {}).get("cpu", "")
    srv = profile.get("server_machine", {}).get("cpu", "")
    agree = "" if profile.get("labels") else " (agreement: no labels)"
    fig.suptitle(f"{profile['model_name']}: latency per cut (smallest encoding within "
                 f"{100 * max_drop:g} pt of fp32 top-1{agree}; rtt and queueing left out)\n"
                 f"device: {dev}; server: {srv}", fontsize=9)
    fig.tight_layout()
    legend = [Patch(color="tab:blue"), Patch(color="tab:orange"), Patch(color="tab:green"),
              Line2D([], [], color="black", lw=0.9, marker="|", ms=6, mew=0.9)]
    leg = fig.legend(legend, ["head + pack (device)", "transfer", "unpack + tail (server)",
                              "p10-p90 of head + pack, of unpack + tail"],
                     fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                     frameon=False)
    width = int(fig.get_figwidth() * 15)  # characters of 7-point text across the figure
    notes = []
    if no_encoding:
        names = ", ".join(f"{c['id']} {c['name']}" for c in no_encoding)
        note = f"left out, no encoding within {100 * max_drop:g} pt of fp32: cuts {names}"
        print(f"plot.py: {path}: {note}", file=sys.stderr)
        notes.append(textwrap.fill(note, width))
    warnings = [str(w) for w in profile.get("timing_warnings") or []]
    if warnings:
        for w in warnings:
            print(f"plot.py: {path}: timing warning: {w}", file=sys.stderr)
        notes.append(f"timing warnings in the profile ({len(warnings)}; read the times with "
                     "care):")
        limit = width - 4
        notes += ["- " + (w if len(w) <= limit else w[:limit - 3] + "...") for w in warnings[:3]]
        if len(warnings) > 3:
            notes.append(f"... and {len(warnings) - 3} more in its \"timing_warnings\"")
    if notes:
        fig.add_artist(Annotation("\n".join(notes), xy=(0.5, 0), xycoords=leg, xytext=(0, -4),
                                  textcoords="offset points", ha="center", va="top", fontsize=7,
                                  multialignment="left",
                                  color="darkred" if warnings else "dimgrey"))
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--out-prefix", required=True, help="e.g. docs/mobilenet_v2")
    parser.add_argument("--format", choices=["png", "svg"], default="png")
    parser.add_argument("--bandwidths", default="1,10,100", help="Mbit/s, comma-separated")
    parser.add_argument("--max-drop", type=float, default=1.0,
                        help="top-1 drop (points) allowed when choosing each cut's encoding")
    parser.add_argument("--max-cuts", type=int, default=12,
                        help="curves in the accuracy plot (an even spread; the figure and stderr "
                             "name the cuts left out; 0: all)")
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
