#!/usr/bin/python3
"""Elastic models: the Pareto tables of the shipped families (models/families/), with targets.

    bench/run.sh elastic [--quick] --out DIR [--check]

For each family, `edgesplit-family table` measures every member on this machine: multiply-adds,
weight bytes, device latency at 1 and 2 threads (batch 1, the optimized engine; every member timed in
every round, in a rotating order, so slow spells of the host hit all alike), and top-1 paired against
the family's reference on the same images (the images after the 100 calibration images the variants
were derived on, in the fixed shuffled order edgesplit-family uses), with 95% intervals.

Targets (elastic models), each judged on the interval, not the point:
  mnv2_derived_speedup_within_1pt  the largest lower end of the 1-thread speedup interval among
                                   MobileNetV2's derived variants (skipped blocks, low-rank layers)
                                   whose loss against MobileNetV2 has its upper end <= 1 point
                                   (1.0: none qualifies, MobileNetV2 itself); target >= 1.3
  imagenet_front_span              the Pareto front's latency span at 1 thread: the slowest front
                                   member's lower latency end over the fastest one's upper end;
                                   target >= 10

Writes DIR/results.json (targets, both tables), DIR/<family>-table.json and .md, DIR/summary.md.
Needs ../shared (models and images); without it, says so and exits 2.
"""

import json
import os
import subprocess
import sys
import time

from common import ROOT, parser, report, shared_dir


def run_table(binary, family, images, labels, scored, rounds, out_dir, name):
    out = os.path.join(out_dir, name + "-table.json")
    md = os.path.join(out_dir, name + "-table.md")
    cmd = [binary, "table", "--family", family, "--images", images, "--labels", labels,
           "--scored", str(scored), "--rounds", str(rounds), "--out", out, "--markdown", md]
    print("elastic: " + " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        table = json.load(f)
    table["wall_s"] = round(time.time() - t0, 1)
    return table


def latency(row, threads=1):
    for s in row["latency"]:
        if s["threads"] == threads:
            return s
    raise KeyError(threads)


def targets_of(imagenet):
    targets = {}
    best = 1.0
    best_name = imagenet["reference"]
    for row in imagenet["rows"]:
        v = row["variant"]
        derived = row["name"].startswith("mobilenet_v2-") and ("skip" in v or "low-rank" in v)
        if derived and row["drop_interval_pp"][1] <= 1.0:
            low = latency(row)["speedup_interval"][0]
            if low > best:
                best, best_name = low, row["name"]
    targets["mnv2_derived_speedup_within_1pt"] = {
        "value": round(best, 3), "target": 1.3, "pass": best >= 1.3, "member": best_name}
    front = [r for r in imagenet["rows"] if r["pareto"]]
    slow = max(front, key=lambda r: latency(r)["median_ms"])
    fast = min(front, key=lambda r: latency(r)["median_ms"])
    span_low = latency(slow)["interval_ms"][0] / latency(fast)["interval_ms"][1]
    span = latency(slow)["median_ms"] / latency(fast)["median_ms"]
    targets["imagenet_front_span"] = {
        "value": round(span_low, 2), "point": round(span, 2), "target": 10.0,
        "pass": span_low >= 10.0, "slowest": slow["name"], "fastest": fast["name"]}
    return targets


def main():
    args = parser(__doc__).parse_args()
    shared = shared_dir()
    if not os.path.isdir(os.path.join(shared, "models")):
        print("elastic: ../shared (models and images) is absent; nothing to measure", file=sys.stderr)
        return 2
    binary = os.path.join(args.bin_dir, "edgesplit-family")
    os.makedirs(args.out, exist_ok=True)
    data = os.path.join(shared, "data")
    imagenet_scored = 400 if args.quick else 0
    cifar_scored = 1000 if args.quick else 2000
    rounds = 8 if args.quick else 15
    est = "5-10 minutes" if args.quick else "20-30 minutes"
    print(f"elastic: two families, about {est} on a 2-core machine", file=sys.stderr, flush=True)
    tables = {
        "imagenet": run_table(binary, os.path.join(ROOT, "models/families/imagenet.json"),
                              os.path.join(data, "imagenet-val-1300/images"),
                              os.path.join(data, "imagenet-val-1300/labels.tsv"),
                              imagenet_scored, rounds, args.out, "imagenet"),
        "cifar10": run_table(binary, os.path.join(ROOT, "models/families/cifar10.json"),
                             os.path.join(data, "cifar10-test/images"),
                             os.path.join(data, "cifar10-test/labels.tsv"),
                             cifar_scored, rounds, args.out, "cifar10"),
    }
    targets = targets_of(tables["imagenet"])
    results = {"bench": "elastic", "quick": args.quick, "targets": targets, "tables": tables}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        for name in ("imagenet", "cifar10"):
            with open(os.path.join(args.out, name + "-table.md")) as t:
                f.write(f"## {name} ({tables[name]['scored_images']} scored images)\n\n{t.read()}\n")
        f.write("## Targets\n\n")
        for k, v in targets.items():
            f.write(f"- {k}: {v['value']} (target {v['target']}): {'met' if v['pass'] else 'missed'}\n")
    return report("elastic", targets, args.check)


if __name__ == "__main__":
    sys.exit(main())
