#!/usr/bin/python3
"""Equal budget: at each latency bound of a sweep, the family's top-1 against the best single member.

    bench/run.sh elastic budget [--quick] --out DIR [--check]

The device (edgesplit-device, one thread on one core, frames at 30 fps from the CIFAR-10 test
images, no contender) runs the members of the CIFAR-10 family that a family stream uses (a profile
and an accuracy in the manifest: the plain ResNets and the derived variants) each alone (`--model M
[--variant V] --cut device`), and the family (`--family`, `--objective accuracy --max-latency-ms B
--max-accuracy-drop none`) at each bound B of a sweep.

Bounds. A first, short pass runs every member alone on one round's frames. The front is the members
that no faster one (by median latency in that pass) matches in accuracy (the manifest's, measured
on 2,000 test images). The sweep (`--bounds`):
- `between` (default): the geometric mean of the 90th percentiles of each two front members
  neighbouring in median latency, and 1.15x the slowest front member's: each bound lies between
  what one member can meet and what the next cannot, where choosing per frame can pay;
- `own`: each front member's own 90th percentile (a knife edge).

Rounds. The frames are split into `--rounds` parts; each round runs every front member alone and
the family at every bound on that round's part, in an order that rotates from round to round, so
that this machine's slow and fast spells (its speed drifts by tens of percent between runs minutes
apart) fall on every run alike. At each bound, over all rounds: the best fixed member is the most
accurate front member (manifest accuracy) with at least 90% of its frames within B, and the
family's top-1 is compared with its top-1 paired on the same frames. DIR/results.json holds the
verdicts, DIR/frames.json every frame of every run. `--overhead-off` also runs the family with
`--head-overhead off` (heads planned with the load factor alone, docs/runtime.md) at every bound in
the same rounds, and pairs it with the default. Target (elastic models): at
every bound, the lower end of the 95% interval of (family - best fixed) is above -1 point (or no
member met the bound), and at least 90% of the family's frames are within B.
"""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contention as c  # noqa: E402  (the same device runner and image folder)
from common import ROOT, parser, report, shared_dir  # noqa: E402


def paired_interval(a, b, z=1.96):
    """Difference of two paired 0/1 sequences (a - b) in points, with a normal-approx interval."""
    n = len(a)
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(1, n - 1)
    half = z * math.sqrt(var / n)
    return 100 * mean, 100 * (mean - half), 100 * (mean + half)


def percentile(values, q):
    v = sorted(values)
    return v[int(q * (len(v) - 1))]


def split_rounds(images, rounds):
    """Folders images/round-K with links to the K-th part of the (sorted) image links."""
    names = sorted(n for n in os.listdir(images) if not n.startswith("round-"))
    parts = []
    for k in range(rounds):
        part = names[k * len(names) // rounds:(k + 1) * len(names) // rounds]
        folder = os.path.join(images, f"round-{k}")
        os.makedirs(folder, exist_ok=True)
        for n in part:
            link = os.path.join(folder, n)
            if not os.path.lexists(link):
                os.symlink(os.readlink(os.path.join(images, n)), link)
        parts.append((folder, len(part)))
    return parts


def main():
    ap = parser(__doc__)
    ap.add_argument("--fps", type=float, default=30)
    ap.add_argument("--frames", type=int, default=0,
                    help="frames per member and per bound over all rounds (default 2000, 400 "
                         "with --quick; the 95%% interval of the top-1 difference narrows as "
                         "1/sqrt(frames))")
    ap.add_argument("--rounds", type=int, default=0,
                    help="rounds the frames are split into (default 5, 2 with --quick)")
    ap.add_argument("--overhead-off", action="store_true",
                    help="also run the family with --head-overhead off at every bound, in the "
                         "same rounds (a comparison; not part of the target)")
    ap.add_argument("--bounds", choices=["between", "own"], default="between",
                    help="the sweep: between neighbouring members' 90th percentiles (and 1.15x "
                         "the slowest's), or at each member's own 90th percentile")
    args = ap.parse_args()
    shared = shared_dir()
    if not os.path.isdir(os.path.join(shared, "data", "cifar10-test")):
        print("budget: ../shared (models and images) is absent; nothing to measure", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    frames = args.frames or (400 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 5)
    if rounds < 1 or frames < 10 * rounds:
        print("budget: --rounds must be >= 1 and --frames at least 10 per round", file=sys.stderr)
        return 2
    images = os.path.join(args.out, "images")
    labels = c.interleaved_images(shared, images, per_class=(frames + 9) // 10)
    parts = split_rounds(images, rounds)
    device = os.path.join(args.bin_dir, "edgesplit-device")
    family = os.path.join(ROOT, "models", "families", "cifar10.json")
    with open(family) as f:
        manifest = json.load(f)
    base = os.path.dirname(family)
    # What a family stream loads: every member with a profile and an accuracy (docs/elastic.md).
    candidates = [m for m in manifest["members"] if "profile" in m and "accuracy" in m]
    accuracy = {m["name"]: m["accuracy"]["top1"] for m in candidates}
    pin = ["taskset", "-c", c.CORE]
    idle = c.Contender()
    per_round = frames // rounds
    print(f"budget: {len(candidates)} members alone on {parts[0][1]} frames to set the bounds, "
          f"then {rounds} rounds of {per_round} frames: every front member alone and the family "
          f"at every bound ({args.bounds})", file=sys.stderr, flush=True)

    def common(folder):
        return ["--input", folder, "--threads", "1", "--json", "--fps", str(args.fps), "--quiet"]

    def run_alone(m, folder):
        cmd = pin + [device, "--model", os.path.normpath(os.path.join(base, m["model"])),
                     "--profile", os.path.normpath(os.path.join(base, m["profile"])),
                     "--cut", "device"] + common(folder)
        if m.get("variant"):
            cmd += ["--variant", json.dumps(m["variant"])]
        return c.run_device(cmd, 10 ** 9, idle, labels)

    def run_family(bound, folder, extra=()):
        cmd = pin + [device, "--family", family, "--objective", "accuracy", "--max-latency-ms",
                     str(bound), "--max-accuracy-drop", "none"] + common(folder) + list(extra)
        return c.run_device(cmd, 10 ** 9, idle, labels)

    # The bounds, from a short pass on the first round's frames.
    first = {}
    for m in candidates:
        lat = [f["latency_ms"] for f in run_alone(m, parts[0][0])]
        first[m["name"]] = {"p50_ms": percentile(lat, 0.5), "p90_ms": percentile(lat, 0.9)}
        print(f"budget: {m['name']} alone: p50 {first[m['name']]['p50_ms']:.2f} ms, p90 "
              f"{first[m['name']]['p90_ms']:.2f} ms", file=sys.stderr, flush=True)
    # The front: each member more accurate than every faster one (by median latency, steadier
    # than the 90th percentile, which can swap two close members in a short run). A member off
    # it is never the best fixed choice where a faster one meets the bound.
    front = []
    for m in sorted(candidates, key=lambda m: first[m["name"]]["p50_ms"]):
        if not front or accuracy[m["name"]] > accuracy[front[-1]["name"]]:
            front.append(m)
    print("budget: the front: " + ", ".join(m["name"] for m in front), file=sys.stderr,
          flush=True)
    if args.bounds == "own":
        sweep = [(round(first[m["name"]]["p90_ms"], 3), m["name"] + "'s p90") for m in front]
    else:
        sweep = []
        for fast, slow in zip(front, front[1:]):
            a, b = first[fast["name"]]["p90_ms"], first[slow["name"]]["p90_ms"]
            sweep.append((round(math.sqrt(a * b), 3),
                          "between %s's and %s's p90" % (fast["name"], slow["name"])))
        slowest = front[-1]["name"]
        sweep.append((round(1.15 * first[slowest]["p90_ms"], 3), "1.15x %s's p90" % slowest))
    sweep.sort(reverse=True)

    # The rounds: every front member alone and the family at every bound, the order rotating.
    runs = [("member", m["name"]) for m in front] + [("family", b) for b, _ in sweep]
    if args.overhead_off:
        runs += [("family-off", b) for b, _ in sweep]
    got = {r: {} for r in runs}  # run -> source -> frame
    for k, (folder, n) in enumerate(parts):
        order = runs[k % len(runs):] + runs[:k % len(runs)]
        for kind, what in order:
            if kind == "member":
                fs = run_alone(next(m for m in front if m["name"] == what), folder)
            elif kind == "family":
                fs = run_family(what, folder)
            else:
                fs = run_family(what, folder, ["--head-overhead", "off"])
            for f in fs:
                got[(kind, what)][f["source"]] = f
        print(f"budget: round {k + 1} of {rounds} done", file=sys.stderr, flush=True)

    def within(fs, bound):
        return sum(f["latency_ms"] <= bound for f in fs.values()) / len(fs)

    fixed = {}
    for m in front:
        fs = got[("member", m["name"])]
        lat = [f["latency_ms"] for f in fs.values()]
        fixed[m["name"]] = {"accuracy": accuracy[m["name"]], "p50_ms": percentile(lat, 0.5),
                            "p90_ms": percentile(lat, 0.9),
                            "top1": sum(f["right"] for f in fs.values()) / len(fs),
                            "frames": len(fs)}
    rows = []
    for bound, bound_from in sweep:
        fam = got[("family", bound)]
        fam_within = within(fam, bound)
        members = {}
        for f in fam.values():
            members[f["member"]] = members.get(f["member"], 0) + 1
        row = {"bound_ms": bound, "bound_from": bound_from,
               "family_top1": sum(f["right"] for f in fam.values()) / len(fam),
               "family_within": fam_within, "members": members,
               "fixed_within": {m["name"]: within(got[("member", m["name"])], bound)
                                for m in front}}
        meeting = sorted((accuracy[n], n) for n, w in row["fixed_within"].items() if w >= 0.9)
        best = meeting[-1][1] if meeting else None
        row["best_fixed"] = best
        if best:
            again = got[("member", best)]
            common_src = sorted(set(fam) & set(again))
            a = [fam[s]["right"] for s in common_src]
            b = [again[s]["right"] for s in common_src]
            point, low, high = paired_interval(a, b)
            row.update({"best_fixed_top1": sum(b) / len(b),
                        "best_fixed_within": row["fixed_within"][best],
                        "diff_pp": round(point, 2),
                        "diff_interval_pp": [round(low, 2), round(high, 2)],
                        "paired_frames": len(common_src),
                        "pass": low > -1 and fam_within >= 0.9})
        else:
            # No member met the bound: the family only has to.
            row.update({"pass": fam_within >= 0.9})
        if args.overhead_off:
            off = got[("family-off", bound)]
            common_src = sorted(set(fam) & set(off))
            point, low, high = paired_interval([fam[s]["right"] for s in common_src],
                                               [off[s]["right"] for s in common_src])
            w_point, w_low, w_high = paired_interval(
                [fam[s]["latency_ms"] <= bound for s in common_src],
                [off[s]["latency_ms"] <= bound for s in common_src])
            off_members = {}
            for f in off.values():
                off_members[f["member"]] = off_members.get(f["member"], 0) + 1
            row["overhead_off"] = {
                "family_top1": sum(f["right"] for f in off.values()) / len(off),
                "family_within": within(off, bound), "members": off_members,
                "auto_minus_off_top1_pp": [round(point, 2), round(low, 2), round(high, 2)],
                "auto_minus_off_within_pp": [round(w_point, 2), round(w_low, 2),
                                             round(w_high, 2)]}
            print(f"budget: bound {bound} ms, --head-overhead off: top-1 "
                  f"{100 * row['overhead_off']['family_top1']:.1f}%, "
                  f"{100 * row['overhead_off']['family_within']:.1f}% within, {off_members}; "
                  f"auto - off: top-1 {row['overhead_off']['auto_minus_off_top1_pp']} points, "
                  f"within {row['overhead_off']['auto_minus_off_within_pp']} points",
                  file=sys.stderr, flush=True)
        rows.append(row)
        print(f"budget: bound {bound} ms ({bound_from}): best fixed {best}, family "
              f"top-1 {100 * row['family_top1']:.1f}% ({row.get('diff_pp')} points "
              f"{row.get('diff_interval_pp')}), {100 * fam_within:.1f}% within, {members}; "
              "members within: " + ", ".join(f"{n} {100 * w:.1f}%"
                                             for n, w in row["fixed_within"].items()),
              file=sys.stderr, flush=True)
    ok = all(r["pass"] for r in rows)
    results = {"bench": "elastic-budget", "quick": args.quick, "frames": frames,
               "rounds": rounds, "bounds": args.bounds, "front": [m["name"] for m in front],
               "bounds_pass": first, "fixed": fixed, "rows": rows,
               "targets": {"family_at_least_best_fixed_at_every_bound": {
                   "value": sum(r["pass"] for r in rows), "target": len(rows), "pass": ok}}}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    # Every frame of every run (latency, member, right or wrong), for a closer look.
    with open(os.path.join(args.out, "frames.json"), "w") as f:
        json.dump({(what if kind == "member" else f"{kind} at {what} ms"):
                   sorted(fs.values(), key=lambda x: x["source"])
                   for (kind, what), fs in got.items()}, f)
    print(f"budget: {sum(r['pass'] for r in rows)} of {len(rows)} bounds met", file=sys.stderr)
    return report("budget", results["targets"], args.check)


if __name__ == "__main__":
    sys.exit(main())
