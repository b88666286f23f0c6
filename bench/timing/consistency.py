#!/usr/bin/python3
"""How far two timing runs of the same model agree, and whether head + tail adds up.

Runs edgesplit-profile RUNS times on the same model (timings only matter: one calibration and
one scored image, one encoding), then reports per cut:
  * the relative difference of the head (and tail) median between the runs,
  * head(c) + tail(c) against the whole model's time (the last cut's head) within each run.

  bench/timing/consistency.py --profile build/bin/edgesplit-profile \
      --model ../shared/models/mobilenet_v1_imagenet/mobilenet_v1_0.5_160.pt \
      --images DIR [--runs 2] [--threads 1] --out DIR

Writes DIR/consistency.json and prints a table. Exit status 0 (this is a measurement).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def run_profile(args, out_path):
    cmd = [args.profile, "--model", args.model, "--images", args.images, "--out", out_path,
           "--calibration", "1", "--scored", "1", "--bits", "8", "--lossless", "none",
           "--jpeg", "none", "--threads", str(args.threads), "--cuts", args.cuts, "--quiet"]
    cmd += args.extra
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit("edgesplit-profile failed (%d): %s" % (proc.returncode, proc.stderr.strip()))
    with open(out_path) as f:
        return json.load(f), time.time() - t0, proc.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="build/bin/edgesplit-profile")
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cuts", default="all")
    ap.add_argument("--out", required=True)
    ap.add_argument("extra", nargs="*", help="more edgesplit-profile flags (after --)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    runs = []
    for i in range(args.runs):
        prof, secs, err = run_profile(args, os.path.join(args.out, "run%d.json" % i))
        runs.append({"profile": prof, "seconds": secs, "stderr": err})
        print("run %d: %.1f s" % (i, secs), file=sys.stderr)

    def times(prof):
        out = {}
        for c in prof["cuts"]:
            h, t = c.get("head", {}), c.get("tail", {})
            if h.get("runs", 0) > 0 and t.get("runs", 0) > 0:
                out[c["id"]] = (c["name"], h["median_ms"], t["median_ms"],
                                h.get("p10_ms", 0), h.get("p90_ms", 0))
        return out

    per_run = [times(r["profile"]) for r in runs]
    ids = sorted(set.intersection(*[set(t) for t in per_run]))
    last = max(ids)
    rows = []
    for cid in ids:
        row = {"cut": cid, "name": per_run[0][cid][0]}
        heads = [t[cid][1] for t in per_run]
        tails = [t[cid][2] for t in per_run]
        row["head_ms"] = heads
        row["tail_ms"] = tails
        row["head_diff"] = (max(heads) - min(heads)) / max(1e-9, min(heads))
        row["tail_diff"] = ((max(tails) - min(tails)) / max(1e-9, min(tails))
                            if min(tails) > 0 else 0.0)
        row["sum_vs_whole"] = [(t[cid][1] + t[cid][2]) / t[last][1] - 1 for t in per_run]
        rows.append(row)
    whole = [t[last][1] for t in per_run]
    for r in rows:
        # The same difference with each run's heads relative to its own whole model: what is left
        # when the machine was uniformly faster or slower in one run (the device's load factor
        # absorbs that), i.e. whether the relative costs of the cuts agree.
        rel = [h / w for h, w in zip(r["head_ms"], whole)]
        r["head_diff_relative"] = (max(rel) - min(rel)) / max(1e-9, min(rel))
    inner = [r for r in rows if r["cut"] not in (0, last)]
    summary = {
        "model": args.model,
        "runs": args.runs,
        "threads": args.threads,
        "whole_ms": [t[last][1] for t in per_run],
        "head_diff_median": statistics.median(r["head_diff"] for r in inner),
        "head_diff_max": max(r["head_diff"] for r in inner),
        "head_diff_relative_median": statistics.median(r["head_diff_relative"] for r in inner),
        "head_diff_relative_max": max(r["head_diff_relative"] for r in inner),
        "sum_vs_whole_max_abs": max(abs(x) for r in inner for x in r["sum_vs_whole"]),
        "cuts_off_by_15pct": sorted({r["cut"] for r in inner
                                     for x in r["sum_vs_whole"] if abs(x) > 0.15}),
        "warnings": [r["stderr"].strip() for r in runs if "warning" in r["stderr"]],
    }
    with open(os.path.join(args.out, "consistency.json"), "w") as f:
        json.dump({"summary": summary, "cuts": rows}, f, indent=1)
    print("%-4s %-28s %-22s %-9s %s" % ("cut", "name", "head ms per run", "head diff",
                                          "(head+tail)/whole - 1 per run"))
    for r in rows:
        print("%-4d %-28.28s %-22s %8.1f%% %s" % (
            r["cut"], r["name"], " ".join("%.2f" % x for x in r["head_ms"]),
            100 * r["head_diff"], " ".join("%+.1f%%" % (100 * x) for x in r["sum_vs_whole"])))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
