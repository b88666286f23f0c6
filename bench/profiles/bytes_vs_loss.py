#!/usr/bin/python3
"""Bytes per frame against top-1 loss, with the paired 95% interval, for every encoding of a profile.

  /usr/bin/python3 bench/profiles/bytes_vs_loss.py PROFILE.json [--cuts 37,45] [--max-loss 3]

Prints a Markdown table per cut: encoding, bytes per frame (mean over the calibration images,
header included), bits per element, the loss in top-1 points against fp32 on the scored images
with its 95% interval (the profile's `drop_pp`: Newcombe's paired interval, see
profiles/accuracy_interval.h), agreement with fp32, and whether the encoding meets a 1-point bound
at the interval's upper end (what the device's default --max-accuracy-drop 1 checks). Encodings
that differ only in the lossless stage share their accuracy; the smaller is shown.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile")
    ap.add_argument("--cuts", default="", help="cut ids to show (default: every cut with encodings)")
    ap.add_argument("--max-loss", type=float, default=1e9,
                    help="leave out encodings whose point loss exceeds this many points")
    args = ap.parse_args()
    with open(args.profile) as f:
        p = json.load(f)
    wanted = {int(c) for c in args.cuts.split(",") if c}
    n = p["scored_images"]
    print(f"{p['model_name']}: {n} scored images, fp32 top-1 {100 * p['fp32_top1']:.2f}%"
          f"{'' if p['labels'] else ' (agreement: no labels)'}\n")
    for cut in p["cuts"]:
        if not cut["encodings"] or (wanted and cut["id"] not in wanted):
            continue
        best = {}
        for e in cut["encodings"]:
            if "drop_pp" not in e:
                sys.exit(f"{args.profile}: encoding {e['name']} at cut {cut['id']} has no paired "
                         "counts: re-profile with this edgesplit-profile")
            key = e["name"].split("+")[0]
            if key not in best or e["bytes_mean"] < best[key]["bytes_mean"]:
                best[key] = e
        print(f"### cut {cut['id']} `{cut['name']}` ({cut['elements']} values, fp32 "
              f"{cut['fp32_bytes']} B)\n")
        print("| encoding | bytes/frame | bits/element | loss, points [95%] | agreement | "
              "upper end <= 1 |")
        print("|---|---|---|---|---|---|")
        for e in sorted(best.values(), key=lambda e: e["bytes_mean"]):
            d = e["drop_pp"]
            if d["point"] > args.max_loss:
                continue
            bpe = 8 * e["bytes_mean"] / cut["elements"]
            print(f"| {e['name']} | {e['bytes_mean']:.0f} | {bpe:.2f} | {d['point']:+.2f} "
                  f"[{d['low95']:+.2f}, {d['high95']:+.2f}] | {100 * e['agreement']:.1f}% | "
                  f"{'yes' if d['high95'] <= 1 else 'no'} |")
        print()


if __name__ == "__main__":
    main()
