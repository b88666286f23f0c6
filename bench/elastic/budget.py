#!/usr/bin/python3
"""Equal budget: at each latency bound of a sweep, the family's top-1 against the best single member.

    bench/run.sh elastic budget [--quick] --out DIR [--check]

The device (edgesplit-device, one thread on one core, frames at 30 fps from the CIFAR-10 test
images, no contender) first runs each member of the CIFAR-10 family that a family stream uses (a
profile and an accuracy in the manifest: the plain ResNets and the derived variants, each alone on
the device: `--model M [--variant V] --cut device`), on the same frames, and takes the 90th
percentile of each one's frame latencies. The members on the front (none faster is as accurate,
on these frames) set the sweep's bounds (`--bounds`):

- `between` (default): the geometric mean of the 90th percentiles of each two front members
  neighbouring in median latency, and 1.15x the slowest front member's: each bound lies between
  what one member can meet and what the next cannot, where choosing per frame can pay, and the
  best fixed member meets it with a margin of about 15%, so that a rerun minutes later meets it
  again;
- `own`: each front member's own 90th percentile (a knife edge: a rerun of that member keeps
  44-80% of its frames within on this machine, and the comparison says more about the host than
  the family).

At each bound B, the family runs with `--objective accuracy --max-latency-ms B
--max-accuracy-drop none`, and right after it the best fixed member runs again: the most accurate
member, plain or derived, that had at least 90% of its frames within B alone, and if it keeps
fewer than 90% within B now (this machine's speed drifts by tens of percent between runs minutes
apart), the next one, up to three: the best fixed member is the most accurate one that meets the
bound beside the family's run, and the pair compared is two neighbouring runs on the same frames.
Target (elastic models): at every bound, the family's top-1 is at least the best fixed member's,
paired on the same frames: the lower end of the 95% interval of (family - best fixed) is above -1
point (or no member met the bound again), and at least 90% of the family's frames are within B.
"""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contention as c  # noqa: E402  (the same device runner and image folder)
from common import ROOT, parser, report, shared_dir  # noqa: E402

RERUNS = 3  # fixed members run again at a bound, at most (the first that meets it is compared)


def paired_interval(a, b, z=1.96):
    """Difference of two paired 0/1 sequences (a - b) in points, with a normal-approx interval."""
    n = len(a)
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(1, n - 1)
    half = z * math.sqrt(var / n)
    return 100 * mean, 100 * (mean - half), 100 * (mean + half)


def main():
    ap = parser(__doc__)
    ap.add_argument("--fps", type=float, default=30)
    ap.add_argument("--frames", type=int, default=0,
                    help="frames per run (default 500, 200 with --quick; the 95%% interval of "
                         "the top-1 difference narrows as 1/sqrt(frames))")
    ap.add_argument("--bounds", choices=["between", "own"], default="between",
                    help="the sweep: between neighbouring members' 90th percentiles (and 1.15x "
                         "the slowest's), or at each member's own 90th percentile")
    args = ap.parse_args()
    shared = shared_dir()
    if not os.path.isdir(os.path.join(shared, "data", "cifar10-test")):
        print("budget: ../shared (models and images) is absent; nothing to measure", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    frames = args.frames or (200 if args.quick else 500)
    images = os.path.join(args.out, "images")
    labels = c.interleaved_images(shared, images, per_class=(frames + 9) // 10)
    device = os.path.join(args.bin_dir, "edgesplit-device")
    family = os.path.join(ROOT, "models", "families", "cifar10.json")
    with open(family) as f:
        manifest = json.load(f)
    base = os.path.dirname(family)
    # What a family stream loads: every member with a profile and an accuracy (docs/elastic.md).
    candidates = [m for m in manifest["members"] if "profile" in m and "accuracy" in m]
    pin = ["taskset", "-c", c.CORE]
    common = ["--input", images, "--max-frames", str(frames), "--threads", "1", "--json",
              "--fps", str(args.fps), "--quiet"]
    idle = c.Contender()
    print(f"budget: {len(candidates)} members alone, then the family and the best of them at each "
          f"bound ({args.bounds}, from the front), {frames} frames each", file=sys.stderr,
          flush=True)

    def by_source(fs):
        return {f["source"]: f for f in fs}

    def run_alone(m):
        cmd = pin + [device, "--model", os.path.normpath(os.path.join(base, m["model"])),
                     "--profile", os.path.normpath(os.path.join(base, m["profile"])),
                     "--cut", "device"] + common
        if m.get("variant"):
            cmd += ["--variant", json.dumps(m["variant"])]
        return c.run_device(cmd, 10 ** 9, idle, labels)

    fixed = {}
    for m in candidates:
        fs = run_alone(m)
        lat = sorted(f["latency_ms"] for f in fs)
        fixed[m["name"]] = {"frames": by_source(fs), "p90_ms": lat[int(0.9 * (len(lat) - 1))],
                            "p50_ms": lat[(len(lat) - 1) // 2],
                            "top1": sum(f["right"] for f in fs) / len(fs)}
        print(f"budget: {m['name']} alone: p90 {fixed[m['name']]['p90_ms']:.2f} ms, top-1 "
              f"{100 * fixed[m['name']]['top1']:.1f}%", file=sys.stderr, flush=True)

    # Neighbours by median latency (steadier than the 90th percentile, which can swap two close
    # members in a short run).
    by_speed = sorted(candidates, key=lambda m: fixed[m["name"]]["p50_ms"])
    # The front: each member more accurate than every faster one. A member off it is never the
    # best fixed choice where a faster one meets the bound, so bounds between its neighbours say
    # nothing new.
    front = []
    for m in by_speed:
        if not front or fixed[m["name"]]["top1"] > fixed[front[-1]["name"]]["top1"]:
            front.append(m)
    print("budget: the front: " + ", ".join(m["name"] for m in front), file=sys.stderr,
          flush=True)
    if args.bounds == "own":
        sweep = [(round(fixed[m["name"]]["p90_ms"], 3), m["name"] + "'s p90") for m in front]
    else:
        sweep = []
        for fast, slow in zip(front, front[1:]):
            a, b = fixed[fast["name"]]["p90_ms"], fixed[slow["name"]]["p90_ms"]
            sweep.append((round(math.sqrt(a * b), 3),
                          "between %s's and %s's p90" % (fast["name"], slow["name"])))
        slowest = front[-1]["name"]
        sweep.append((round(1.15 * fixed[slowest]["p90_ms"], 3), "1.15x %s's p90" % slowest))
    sweep.sort(reverse=True)

    rows = []
    for bound, bound_from in sweep:
        meeting = []
        for name, r in fixed.items():
            within = sum(f["latency_ms"] <= bound for f in r["frames"].values()) / len(r["frames"])
            if within >= 0.9:
                meeting.append((r["top1"], name))
        meeting.sort(reverse=True)
        cmd = pin + [device, "--family", family, "--objective", "accuracy", "--max-latency-ms",
                     str(bound), "--max-accuracy-drop", "none"] + common
        fs = c.run_device(cmd, 10 ** 9, idle, labels)
        fam = by_source(fs)
        within = sum(f["latency_ms"] <= bound for f in fs) / len(fs)
        members = {}
        for f in fs:
            members[f["member"]] = members.get(f["member"], 0) + 1
        row = {"bound_ms": bound, "bound_from": bound_from,
               "family_top1": sum(f["right"] for f in fs) / len(fs), "family_within": within,
               "members": members, "fixed_again": []}
        # The baseline again, right after the family's run: the most accurate member that met the
        # bound alone, and if it misses it now (this machine's speed drifts by tens of percent
        # between runs minutes apart), the next one, up to RERUNS members: the best fixed member
        # is the most accurate one that meets the bound in the run beside the family's.
        best = again = None
        for _, name in meeting[:RERUNS]:
            fs_again = by_source(run_alone(next(m for m in candidates if m["name"] == name)))
            met = sum(f["latency_ms"] <= bound for f in fs_again.values()) / len(fs_again)
            row["fixed_again"].append({"member": name, "within": met})
            print(f"budget: bound {bound} ms: {name} again: {100 * met:.1f}% within",
                  file=sys.stderr, flush=True)
            best, again = name, fs_again
            if met >= 0.9:
                break
        row["best_fixed"] = best
        if best:
            common_src = sorted(set(fam) & set(again))
            a = [fam[s]["right"] for s in common_src]
            b = [again[s]["right"] for s in common_src]
            point, low, high = paired_interval(a, b)
            fixed_within = sum(again[s]["latency_ms"] <= bound
                               for s in common_src) / len(common_src)
            row.update({"best_fixed_top1": sum(b) / len(b),
                        "best_fixed_within": fixed_within,
                        "diff_pp": round(point, 2),
                        "diff_interval_pp": [round(low, 2), round(high, 2)],
                        "paired_frames": len(common_src),
                        # No member met the bound again: the family only has to.
                        "pass": (low > -1 or fixed_within < 0.9) and within >= 0.9})
        else:
            row.update({"pass": within >= 0.9})
        rows.append(row)
        print(f"budget: bound {bound} ms ({bound_from}): best fixed {best}, family "
              f"top-1 {100 * row['family_top1']:.1f}% ({row.get('diff_pp')} points "
              f"{row.get('diff_interval_pp')}), {100 * within:.0f}% within, {members}",
              file=sys.stderr, flush=True)
    ok = all(r["pass"] for r in rows)
    results = {"bench": "elastic-budget", "quick": args.quick, "frames": frames,
               "bounds": args.bounds, "front": [m["name"] for m in front],
               "fixed": {k: {"p50_ms": v["p50_ms"], "p90_ms": v["p90_ms"], "top1": v["top1"]}
                         for k, v in fixed.items()},
               "rows": rows,
               "targets": {"family_at_least_best_fixed_at_every_bound": {
                   "value": sum(r["pass"] for r in rows), "target": len(rows), "pass": ok}}}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"budget: {sum(r['pass'] for r in rows)} of {len(rows)} bounds met", file=sys.stderr)
    return report("budget", results["targets"], args.check)


if __name__ == "__main__":
    sys.exit(main())
