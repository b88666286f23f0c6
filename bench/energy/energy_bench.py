#!/usr/bin/env python3
"""The energy run: edgesplit-device's outer loop (--governor manager) against the
performance, schedutil-like and ondemand-like governors, in rounds, each contender on the same
scenario and inputs:

  window 0: MobileNetV2 (ImageNet, 5 fps) alone, latency bound loose (100 ms)
  window 1: the same, bound tight (15 ms)
  window 2: bound loose again; ResNet-56 (CIFAR-10, 10 fps, bound 50 ms) joins (half-way)
  window 3: both, MobileNetV2's bound tight again

The bounds follow the optimized engine's times here: MobileNetV2 takes about 8 ms at the top level
(1000 MHz) and 20-25 ms at the lowest (400 MHz), so the loose bound lets every level through and
the tight one needs about 600 MHz or more. (Bounds of 300 and 60 ms, set when a frame took 35-40
ms at the top level, no longer bound anything: every governor met both at 400 MHz.)

The device is this machine's "little" executor of device/descriptions/vm_2core.json: one core
under a CPU quota (--knobs quota, levels 400..1000 MHz of a 1500 MHz core), one LibTorch thread;
every frame runs on the device (no server), so the level is the only knob. Energy is modeled from
the description (this VM has no energy counter); the results say so. Per window and contender:
joules per frame, the levels, p50/p95 latency per stream, the share of frames over their bound.

  bench/run.sh energy [--quick] [--rounds N] --out DIR [--check]
  bench/run.sh energy --from-raw OLD/raw [--rounds N] --out DIR   (the results again, no run)

Ratios of joules per frame are paired by round and given with their 95% interval over the rounds;
a ratio target is met only where its interval supports it (one round: none is claimed).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import finish, interval

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("EDGESPLIT_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))

CONTENDERS = ["manager", "performance", "schedutil", "ondemand"]
LOOSE_MS, TIGHT_MS = 100.0, 15.0
A_FPS, B_FPS, B_BOUND_MS = 5.0, 10.0, 50.0
FULL = {"window_s": 20.0, "rounds": 3}
QUICK = {"window_s": 8.0, "rounds": 1}
# Targets.
TARGET_SAVING_ONE = 0.20
TARGET_SAVING_TWO = 0.50
TARGET_MISSES = 0.05


def streams(window_s):
    return [
        {"name": "imagenet",
         "model": os.path.join(SHARED, "models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt"),
         "profile": os.path.join(REPO, "bench/profiles/mobilenet_v2_imagenet.profile.json"),
         "input": os.path.join(SHARED, "data/imagenet-val-1300/images"), "fps": A_FPS, "loop": 0,
         "max_frames": int(A_FPS * 4 * window_s),
         "latency_steps": [[0, LOOSE_MS], [window_s, TIGHT_MS], [2 * window_s, LOOSE_MS],
                           [3 * window_s, TIGHT_MS]]},
        {"name": "cifar",
         "model": os.path.join(SHARED, "models/resnet_cifar10/resnet56_cifar10.pt"),
         "profile": os.path.join(REPO, "bench/profiles/resnet56_cifar10.profile.json"),
         "input": os.path.join(SHARED, "data/cifar10-test/images"), "fps": B_FPS, "loop": 0,
         "start_s": 2 * window_s, "max_frames": int(B_FPS * 2 * window_s),
         "constraints": {"max_latency_ms": B_BOUND_MS}},
    ]


def run_one(bin_dir, out_dir, contender, rnd, window_s):
    config = {"threads": 1, "knobs": "quota", "executor": "little", "governor": contender,
              "device_description": os.path.join(REPO, "device/descriptions/vm_2core.json"),
              "streams": streams(window_s)}
    base = os.path.join(out_dir, "raw", "%s-r%d" % (contender, rnd))
    with open(base + ".config.json", "w") as f:
        json.dump(config, f, indent=1)
    t0 = time.time()
    with open(base + ".stderr", "w") as err:
        rc = subprocess.call([os.path.join(bin_dir, "edgesplit-device"), "--config",
                              base + ".config.json", "--json", "--output", base + ".jsonl"],
                             stderr=err)
    if rc != 0:
        sys.exit("bench/run.sh energy: edgesplit-device failed (%d) for %s: see %s.stderr" %
                 (rc, contender, base))
    return base + ".jsonl", time.time() - t0


def idle_watts():
    """The little executor's idle power when it is the same at every level (vm_2core.json: the
    board's idle), else None: what the governors cannot change."""
    with open(os.path.join(REPO, "device/descriptions/vm_2core.json")) as f:
        d = json.load(f)
    little = [x for x in d["executors"] if x["name"] == "little"][0]
    idle = {lv["idle_watts"] for lv in little["levels"]}
    return idle.pop() if len(idle) == 1 else None


def windows_of(path, window_s):
    """Per window: frames, joules (from the frame lines' running total), levels, latencies."""
    fps = {"imagenet": A_FPS, "cifar": B_FPS}
    start = {"imagenet": 0.0, "cifar": 2 * window_s}
    frames, device = [], None
    with open(path) as f:
        for line in f:
            j = json.loads(line)
            if j.get("type") == "frame":
                t = start[j["stream"]] + j["frame"] / fps[j["stream"]]
                frames.append((t, j))
            elif j.get("type") == "device":
                device = j
    # The meter's running total at each turn (about once a second, from the first turn at the
    # loop's start), interpolated at the window's edges.
    turns = sorted({(j["energy_t_s"], j["energy_j"]) for _, j in frames})

    def energy_at(t):
        if not turns or t <= turns[0][0]:
            return turns[0][1] if turns else 0.0
        for (t0, e0), (t1, e1) in zip(turns, turns[1:]):
            if t0 <= t <= t1:
                return e0 + (e1 - e0) * (t - t0) / (t1 - t0) if t1 > t0 else e1
        # Past the last turn a frame line saw: at the last turn's mean power.
        t0, e0 = turns[-1]
        return e0 + (e0 / t0 if t0 > 0 else 0.0) * (t - t0)

    out = []
    for w in range(4):
        lo, hi = w * window_s, (w + 1) * window_s
        inside = [j for t, j in frames if lo <= t < hi]
        joules = energy_at(hi) - energy_at(lo)
        idle = idle_watts()
        row = {"window": w, "frames": len(inside), "joules": joules,
               "joules_per_frame": joules / len(inside) if inside else None,
               "joules_above_idle_per_frame":
                   (joules - idle * window_s) / len(inside) if inside and idle is not None
                   else None,
               "mean_mhz": statistics.mean(j["levels"]["little"] for j in inside) if inside else None,
               "over_bound": sum(1 for j in inside if not j.get("within_bound", True)),
               "streams": {}}
        for name in ("imagenet", "cifar"):
            lat = sorted(j["latency_ms"] for j in inside if j["stream"] == name)
            if lat:
                row["streams"][name] = {"frames": len(lat), "p50_ms": lat[len(lat) // 2],
                                        "p95_ms": lat[min(len(lat) - 1, int(0.95 * len(lat)))]}
        out.append(row)
    return out, device


def fmt_ratio(r, with_interval):
    if not with_interval:
        return "%.4f" % r["value"]
    return "%.4f [%.4f, %.4f]" % (r["value"], r["ci95"][0], r["ci95"][1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 s windows, one round")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--rounds", type=int, help="rounds (default: 3, or 1 with --quick); the "
                    "intervals need 2 or more")
    ap.add_argument("--from-raw", metavar="DIR",
                    help="recompute the results from an earlier run's raw/ folder (its JSON "
                    "lines) instead of running; --quick and --rounds must match that run")
    ap.add_argument("--bin-dir", default=os.environ.get("EDGESPLIT_BIN_DIR",
                                                        os.path.join(REPO, "build", "bin")))
    args = ap.parse_args()
    for p in [os.path.join(SHARED, "models"), os.path.join(SHARED, "data")]:
        if not args.from_raw and not os.path.isdir(p):
            sys.exit("bench/run.sh energy: %s is missing: the run needs ../shared's models and data" % p)
    timing = dict(QUICK if args.quick else FULL)
    if args.rounds is not None:
        if args.rounds < 1:
            sys.exit("bench/run.sh energy: --rounds must be 1 or more")
        timing["rounds"] = args.rounds
    window_s = timing["window_s"]
    os.makedirs(os.path.join(args.out, "raw") if not args.from_raw else args.out, exist_ok=True)
    runs = {c: [] for c in CONTENDERS}
    for rnd in range(timing["rounds"]):
        order = CONTENDERS[rnd % len(CONTENDERS):] + CONTENDERS[:rnd % len(CONTENDERS)]
        for c in order:
            if args.from_raw:
                path, wall = os.path.join(args.from_raw, "%s-r%d.jsonl" % (c, rnd)), None
                if not os.path.exists(path):
                    sys.exit("bench/run.sh energy: %s is missing: --from-raw needs the raw/ "
                             "folder of a run with these --rounds" % path)
            else:
                path, wall = run_one(args.bin_dir, args.out, c, rnd, window_s)
            wins, device = windows_of(path, window_s)
            runs[c].append({"round": rnd, "windows": wins, "wall_s": wall,
                            "energy": device["energy"] if device else None})
            print("round %d %-11s %s J/frame per window; %d frames over bound" % (
                rnd, c, [round(w["joules_per_frame"] or 0, 3) for w in wins],
                sum(w["over_bound"] for w in wins)), file=sys.stderr)

    def jpf(r, ws):
        """Joules per frame of one run over windows `ws`."""
        n = sum(r["windows"][w]["frames"] for w in ws)
        return sum(r["windows"][w]["joules"] for w in ws) / n if n else float("nan")

    def median_jpf(c, ws):
        return statistics.median(jpf(r, ws) for r in runs[c])

    table = []
    for w in range(4):
        row = {"window": w, "bound_imagenet_ms": [LOOSE_MS, TIGHT_MS, LOOSE_MS, TIGHT_MS][w],
               "cifar": w >= 2}
        for c in CONTENDERS:
            ws = [r["windows"][w] for r in runs[c]]
            above = [x["joules_above_idle_per_frame"] for x in ws
                     if x["joules_above_idle_per_frame"] is not None]
            row[c] = {"joules_per_frame": median_jpf(c, [w]),
                      "joules_above_idle_per_frame": statistics.median(above) if above else None,
                      "mean_mhz": statistics.median(x["mean_mhz"] for x in ws if x["mean_mhz"]),
                      "over_bound_fraction": sum(x["over_bound"] for x in ws) /
                      max(1, sum(x["frames"] for x in ws)),
                      "streams": ws[0]["streams"]}
        table.append(row)
    def ratio(a, b, ws):
        """Mean and 95% interval of a's joules per frame over b's, paired by round (both ran in
        the same round, one after the other)."""
        per_round = [jpf(ra, ws) / jpf(rb, ws) for ra, rb in zip(runs[a], runs[b])]
        mean, lo, hi = interval([x for x in per_round if x == x])
        return {"value": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)],
                "per_round": [round(x, 4) for x in per_round]}

    rounds = timing["rounds"]
    for row in table:
        row["manager_over_performance"] = ratio("manager", "performance", [row["window"]])
        row["manager_over_schedutil"] = ratio("manager", "schedutil", [row["window"]])
    one = ratio("manager", "performance", [0, 1])
    two = ratio("manager", "performance", [2, 3])
    saving_one, saving_two = 1 - one["value"], 1 - two["value"]
    saving_one_ci = [round(1 - one["ci95"][1], 4), round(1 - one["ci95"][0], 4)]
    saving_two_ci = [round(1 - two["ci95"][1], 4), round(1 - two["ci95"][0], 4)]
    frames_all = sum(w["frames"] for r in runs["manager"] for w in r["windows"])
    misses = sum(w["over_bound"] for r in runs["manager"] for w in r["windows"]) / max(1, frames_all)
    # A target is claimed only where the interval supports it; one round has no interval.
    supported = rounds >= 2
    vs_schedutil = sum(1 for row in table
                       if supported and row["manager_over_schedutil"]["ci95"][1] <= 1.0)
    vs_schedutil_point = sum(1 for row in table if row["manager_over_schedutil"]["value"] <= 1.0)
    targets = {
        "energy_saving_vs_performance_one_model": {
            "value": round(saving_one, 4), "ci95": saving_one_ci,
            "target": ">= %.2f" % TARGET_SAVING_ONE,
            "pass": supported and saving_one_ci[0] >= TARGET_SAVING_ONE},
        "energy_saving_vs_performance_two_models": {
            "value": round(saving_two, 4), "ci95": saving_two_ci,
            "target": ">= %.2f" % TARGET_SAVING_TWO,
            "pass": supported and saving_two_ci[0] >= TARGET_SAVING_TWO},
        "manager_frames_over_bound": {
            "value": round(misses, 4), "target": "<= %.2f" % TARGET_MISSES,
            "pass": misses <= TARGET_MISSES},
        "windows_manager_at_most_schedutil": {
            "value": vs_schedutil, "point_estimates": vs_schedutil_point,
            "target": "4 of 4 (the interval of manager / schedutil at or below 1)",
            "pass": vs_schedutil == 4},
    }
    results = {
        "bench": "energy", "quick": args.quick, "window_s": window_s, "rounds": rounds,
        "interval_note": "ratios of joules per frame are paired by round (each round runs every "
                         "contender once, in a rotating order); 95%% t-interval of their logs over "
                         "%d round(s)%s" % (rounds, "" if supported else ": none from one round"),
        "energy_source": "modeled",
        "energy_note": "this VM has no energy counter: joules are modeled from "
                       "device/descriptions/vm_2core.json (a two-core Raspberry Pi 4 derived "
                       "from published figures) and the process's CPU time; the knob is a CPU "
                       "quota, which slices time and does not slow the clock",
        "top1_note": "every frame runs the same fp32 model on the device (no server, no "
                     "variants): top-1 is the same under every governor by construction",
        "windows": table, "targets": targets, "runs": runs,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = ["| window | ImageNet bound | streams | " + " | ".join(
        "%s J/frame (MHz, over bound)" % c for c in CONTENDERS) + " |",
        "|---|---|---|" + "---|" * len(CONTENDERS)]
    for row in table:
        lines.append("| %d | %g ms | %s | %s |" % (
            row["window"], row["bound_imagenet_ms"], "both" if row["cifar"] else "ImageNet",
            " | ".join("%.3f (%.0f, %.1f%%)" % (row[c]["joules_per_frame"], row[c]["mean_mhz"],
                                               100 * row[c]["over_bound_fraction"])
                       for c in CONTENDERS)))
    lines.append("")
    lines.append("Above the board's idle power (what a governor can change; derived: joules - "
                 "idle watts x window, per frame):")
    lines.append("")
    lines.append("| window | " + " | ".join(CONTENDERS) + " |")
    lines.append("|---|" + "---|" * len(CONTENDERS))
    for row in table:
        lines.append("| %d | %s |" % (row["window"], " | ".join(
            "%.4f" % row[c]["joules_above_idle_per_frame"]
            if row[c]["joules_above_idle_per_frame"] is not None else "-" for c in CONTENDERS)))
    lines.append("")
    lines.append("Paired by round, manager's joules per frame over each baseline's (mean and 95%% "
                 "interval over %d rounds):" % rounds if supported else
                 "Manager's joules per frame over each baseline's (one round, no interval):")
    lines.append("")
    lines.append("| window | manager / performance | manager / schedutil |")
    lines.append("|---|---|---|")
    for row in table:
        lines.append("| %d | %s | %s |" % (row["window"], fmt_ratio(row["manager_over_performance"], supported),
                                           fmt_ratio(row["manager_over_schedutil"], supported)))
    lines.append("")
    for k, t in targets.items():
        ci = " [%.4f, %.4f]" % tuple(t["ci95"]) if "ci95" in t and supported else ""
        lines.append("- %s: %s%s (target %s): %s" % (k, t["value"], ci, t["target"],
                                                    "pass" if t["pass"] else "MISSED"))
    if not supported:
        lines.append("- one round: no interval, so no ratio target is claimed (--rounds 2 or more)")
    lines.append("- energy: modeled (no counter here); top-1: unchanged by construction")
    finish(args.out, lines, targets, args.check)


if __name__ == "__main__":
    main()
