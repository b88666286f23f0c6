#!/usr/bin/env python3
"""The placement run: MobileNetV2's unit blocks split over two executors with frames pipelined
through them (edgesplit-device --placement auto over big and little) against the best single
executor, in rounds, every contender on the same frames:

  split   the cost model's split over big (core 0, 1500 MHz) and little (core 1, capped at
          1000 MHz by a CPU quota on its stage's thread), one intra-op thread each
  big     the whole model on big, one thread
  little  the whole model on little, one thread
  both    for reference, the whole model on both cores with two intra-op threads (no split)

With --server, the contenders are instead:

  server  the cost model's stages on big (core 0), then the crossing to an edgesplit-server on
          this machine pinned to core 1 (one thread, one worker, on loopback), which runs the
          rest; the tensor goes 8-bit quantized
  big     the whole model on big, one thread
  split   big then little, as above (both cores, no server)

and the targets are the same with `server` in place of `split`.

The executors come from device/descriptions/vm_big_little.json (--knobs quota). Every run is a
closed loop (--in-flight frames) over the same preloaded ImageNet frames; frames/s is the steady
state's (the first window of frames left out). One segment table, measured once at the start
(--placement-profile-out), is used by every run, so each round runs the same placement; each run
reports the cost model's period against its measured one. Targets: split / best single executor
>= 1.3 (mean over rounds, 95% interval), and the cost model's period within 15% of the measured
one (median over the split runs).

  bench/run.sh energy placement [--server] [--quick] --out DIR [--check]
"""
import argparse
import json
import socket
import os
import statistics
import subprocess
import sys
import time

from common import finish, interval

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("EDGESPLIT_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))
DESCRIPTION = os.path.join(REPO, "device/descriptions/vm_big_little.json")
MODEL = os.path.join(SHARED, "models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt")
IMAGES = os.path.join(SHARED, "data/imagenet-val-1300/images")
SERVER_PROFILE = os.path.join(REPO, "bench/profiles/mobilenet_v2_imagenet.profile.json")

CONTENDERS = ["split", "big", "little", "both"]
PLACEMENT = {"split": ["--placement", "auto", "--placement-executors", "big,little"],
             "big": ["--placement", "big"], "little": ["--placement", "little"],
             "both": ["--placement", "both"]}
FULL = {"frames": 1200, "rounds": 6, "block_ms": 80}
QUICK = {"frames": 400, "rounds": 3, "block_ms": 40}
TARGET_SPEEDUP = 1.3
TARGET_PERIOD_ERROR = 0.15


def device(bin_dir, out, extra):
    cmd = [os.path.join(bin_dir, "edgesplit-device"), "--model", MODEL, "--input", IMAGES,
           "--knobs", "quota", "--device-description", DESCRIPTION, "--objective", "throughput",
           "--quiet", "--output", out] + extra
    t0 = time.time()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit("bench/run.sh energy placement: edgesplit-device failed (%d): %s\n%s" % (
            done.returncode, " ".join(cmd), done.stderr))
    lines = [json.loads(x) for x in open(out) if x.strip()]
    kinds = {}
    for j in lines:
        if j.get("type") != "frame":
            kinds[j["type"]] = j
    kinds["frames"] = [j for j in lines if j.get("type") == "frame"]
    kinds["wall_s"] = time.time() - t0
    return kinds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="400 frames a run, 3 rounds")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--bin-dir", default=os.environ.get("EDGESPLIT_BIN_DIR",
                                                        os.path.join(REPO, "build", "bin")))
    ap.add_argument("--server", action="store_true",
                    help="the device's stages then a server on core 1 (see above)")
    args = ap.parse_args()
    global CONTENDERS
    server = None
    if args.server:
        CONTENDERS = ["server", "big", "split"]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        endpoint = "tcp://127.0.0.1:%d" % port
        server = subprocess.Popen(
            ["taskset", "-c", "1", os.path.join(args.bin_dir, "edgesplit-server"), "--model",
             MODEL, "--profile", SERVER_PROFILE, "--threads", "1", "--workers", "1", "--bind",
             endpoint], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        PLACEMENT["server"] = ["--placement", "auto", "--placement-executors", "big",
                               "--server", endpoint]
        time.sleep(3)
        if server.poll() is not None:
            sys.exit("bench/run.sh energy placement --server: edgesplit-server failed: %s"
                     % server.stderr.read())
    try:
        run_all(args)
    finally:
        if server:
            server.terminate()
            server.wait()


def run_all(args):
    for p in [MODEL, IMAGES]:
        if not os.path.exists(p):
            sys.exit("bench/run.sh energy placement: %s is missing: the run needs ../shared's "
                     "MobileNetV2 and ImageNet images" % p)
    if not os.path.exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") or os.geteuid() != 0:
        sys.exit("bench/run.sh energy placement: needs root and cgroup v1's cpu controller (a "
                 "quota on the little executor's thread)")
    timing = QUICK if args.quick else FULL
    raw = os.path.join(args.out, "raw")
    os.makedirs(raw, exist_ok=True)
    table = os.path.join(args.out, "segments.json")
    common = ["--max-frames", str(timing["frames"])]
    # The segment table: every unit block timed on every executor, once.
    profiled = device(args.bin_dir, os.path.join(raw, "profile.jsonl"),
                      common + PLACEMENT["split"] + [
                          "--placement-executors", "big,little,both",
                          "--placement-block-ms", str(timing["block_ms"]),
                          "--placement-profile-out", table])
    print("segment table: %s" % {e["name"]: round(sum(e["block_ms"]), 2)
                                 for e in profiled["segment_table"]["executors"]},
          file=sys.stderr)
    runs = {c: [] for c in CONTENDERS}
    for rnd in range(timing["rounds"]):
        order = CONTENDERS[rnd % len(CONTENDERS):] + CONTENDERS[:rnd % len(CONTENDERS)]
        for c in order:
            r = device(args.bin_dir, os.path.join(raw, "%s-%d.jsonl" % (c, rnd)),
                       common + PLACEMENT[c] + ["--placement-profile", table])
            s = r["placement_summary"]
            runs[c].append({"round": rnd, "fps": s["steady_fps"], "period_ms": s["period_ms"],
                            "predicted_period_ms": s["predicted_period_ms"],
                            "period_error": s["period_error"], "stages": s["stages"],
                            "latency_ms": s["latency_ms"], "failed": s["failed"],
                            "placement": r["placement"]["stages"],
                            "crossing": r["placement"].get("server"),
                            "answered_by_server": s.get("answered_by_server", 0),
                            "top1": [f["top"][0]["index"] for f in r["frames"] if "top" in f]})
            print("round %d %-6s %7.1f frames/s (period %.2f ms, predicted %.2f ms, %+.1f%%)" % (
                rnd, c, s["steady_fps"], s["period_ms"], s["predicted_period_ms"],
                100 * s["period_error"]), file=sys.stderr)

    mean_fps = {c: statistics.mean(r["fps"] for r in runs[c]) for c in CONTENDERS}
    best = max([c for c in ["big", "little"] if c in CONTENDERS], key=lambda c: mean_fps[c])
    main = "server" if args.server else "split"
    reference = "split" if args.server else "both"
    ratios = [s["fps"] / b["fps"] for s, b in zip(runs[main], runs[best])]
    speedup, lo, hi = interval(ratios)
    vs_both, both_lo, both_hi = interval([s["fps"] / b["fps"]
                                          for s, b in zip(runs[main], runs[reference])])
    errors = [abs(r["period_error"]) for r in runs[main]]
    median_error = statistics.median(errors)
    same_top1 = all(r["top1"] == runs["big"][0]["top1"] for c in CONTENDERS for r in runs[c]
                    if c != "server")
    agreement = None
    if args.server:  # 8-bit crossing: top-1 as the fp32 model's on most frames
        ref = runs["big"][0]["top1"]
        agreement = statistics.mean(
            sum(a == b for a, b in zip(r["top1"], ref)) / max(1, len(ref)) for r in runs["server"])
    targets = {
        "pipelined_fps_over_best_single_executor": {
            "value": round(speedup, 4), "interval95": [round(lo, 4), round(hi, 4)],
            "target": ">= %.1f" % TARGET_SPEEDUP, "pass": speedup >= TARGET_SPEEDUP},
        "cost_model_period_error": {
            "value": round(median_error, 4), "max": round(max(errors), 4),
            "target": "<= %.2f (median |predicted / measured - 1| over the split runs)"
                      % TARGET_PERIOD_ERROR,
            "pass": median_error <= TARGET_PERIOD_ERROR},
    }
    split = runs[main][0]["placement"]
    results = {
        "bench": "energy placement", "quick": args.quick, "rounds": timing["rounds"],
        "frames_per_run": timing["frames"], "model": os.path.relpath(MODEL, os.path.dirname(REPO)),
        "description": os.path.relpath(DESCRIPTION, REPO),
        "placement": split, "best_single_executor": best,
        "mean_fps": {c: round(v, 2) for c, v in mean_fps.items()},
        "%s_over_%s" % (main, reference): {"value": round(vs_both, 4),
                                            "interval95": [round(both_lo, 4), round(both_hi, 4)]},
        "same_top1_everywhere": same_top1,
        "server_top1_agreement_with_fp32": agreement,
        "segment_table": profiled["segment_table"],
        "note": "little is core 1 under a CPU quota of 1000/1500 on its stage's thread: a quota "
                "slices time and does not slow the clock; the two cores of this VM are alike",
        "targets": targets, "runs": {c: [{k: v for k, v in r.items() if k != "top1"}
                                         for r in runs[c]] for c in CONTENDERS},
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)

    def fmt_placement(stages):
        return " then ".join("%s (cuts %d-%d, %s..%s)" % (s["executor"], s["from_cut"],
                                                           s["to_cut"], s["from"], s["to"])
                             for s in stages)

    crossing = runs[main][0].get("crossing")
    lines = ["Placement: " + fmt_placement(split) + (
        " then the server from cut %d (%s, %d bytes)" % (crossing["cut"], crossing["cut_name"],
                                                         crossing["bytes"]) if crossing else ""),
             "",
             "| contender | frames/s (mean of %d rounds) | period ms measured (median) | "
             "period ms predicted | error (median) |" % timing["rounds"],
             "|---|---|---|---|---|"]
    for c in CONTENDERS:
        lines.append("| %s | %.1f | %.2f | %.2f | %+.1f%% |" % (
            c, mean_fps[c], statistics.median(r["period_ms"] for r in runs[c]),
            statistics.median(r["predicted_period_ms"] for r in runs[c]),
            100 * statistics.median(r["period_error"] for r in runs[c])))
    lines.append("")
    lines.append("%s stages, measured (median ms per frame) against predicted%s:" % (
        main, " (the server's: hand-over to answer, against the crossing's latency)"
        if args.server else ""))
    for i, st in enumerate(runs[main][0]["stages"]):
        lines.append("- %s: %.2f ms measured, %.2f predicted" % (
            st["executor"], statistics.median(r["stages"][i]["measured_ms"] for r in runs[main]),
            st["predicted_ms"]))
    lines.append("")
    lines.append("- %s / %s (the best single executor): %.3f (95%% interval %.3f..%.3f), "
                 "target >= %.1f: %s" % (main, best, speedup, lo, hi, TARGET_SPEEDUP,
                                        "pass" if targets["pipelined_fps_over_best_single_executor"]["pass"] else "MISSED"))
    lines.append("- cost model: median |period error| %.1f%% (max %.1f%%) over the %s runs, "
                 "target <= 15%%: %s" % (100 * median_error, 100 * max(errors), main,
                                        "pass" if targets["cost_model_period_error"]["pass"] else "MISSED"))
    lines.append("- reference: %s / %s %.3f (95%% interval %.3f..%.3f)" % (
        main, reference, vs_both, both_lo, both_hi))
    lines.append("- top-1 of every frame the same in every run%s: %s" % (
        " on the device" if args.server else "", same_top1))
    if args.server:
        lines.append("- frames answered by the server: %s of %d per run; top-1 as the fp32 "
                     "model's on %.1f%% of frames (8-bit crossing)" % (
                         [r["answered_by_server"] for r in runs["server"]], timing["frames"],
                         100 * agreement))
    finish(args.out, lines, targets, args.check)


if __name__ == "__main__":
    main()
