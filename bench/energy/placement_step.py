#!/usr/bin/env python3
"""The placement follows the network: MobileNetV2 placed over the device's big core and a server
(edgesplit-device --placement auto --server), the device and the server in two network
namespaces joined by a shaped link (bench/testbed/netbed.py) whose bandwidth falls and comes back
during the run:

  fast  100 Mbit/s, 5 ms round trip
  slow    2 Mbit/s, 20 ms round trip
  fast  again

Contenders, each a closed loop (--in-flight frames, --objective throughput) over the same
preloaded ImageNet frames, in rounds (rotating order), each run through the same three phases:

  adaptive  --placement auto: the placement is weighed again every second on the bandwidth and
            round trip the link measures (--placement-recheck-ms 1000) and changes when another is
            predicted at least 10% better
  fixed     --placement auto --placement-recheck-ms 0: the placement chosen at the start, kept
  big       --placement big: the whole model on the device, no server

The server runs on core 1 (one thread, one worker), the device's stages on core 0 (big), as in
`bench/run.sh energy placement --server`. One segment table, measured once at the start, is used
by every run. Per phase and contender: frames/s over the phase less its start (2 s in the first
phase; in the others the reaction allowed after the step: 3 s after the fall, 6 s after the
rise), the placements run and where frames finished. Targets:

  reaction_fall_s       after the fall, how long until the adaptive run's placement changes (the
                        largest over rounds): <= 3 s (one check sees it, the next confirms it,
                        then the frames in flight finish)
  reaction_rise_s       the same after the rise: <= 6 s (the bandwidth estimate comes back up
                        only from probes when the crossing's tensors are too small to time the
                        link)
  phase_fps_vs_best     per phase, the adaptive run's frames/s over the better of fixed and big
                        in the same round (mean over rounds and its 95% interval, the smallest
                        over phases): >= 0.9, the interval's lower end deciding

  bench/run.sh energy placement-step [--quick] --out DIR [--check]      (root)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench", "testbed"))
import netbed  # noqa: E402

from common import finish, interval  # noqa: E402

SHARED = os.environ.get("EDGESPLIT_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))
DESCRIPTION = os.path.join(REPO, "device/descriptions/vm_big_little.json")
MODEL = os.path.join(SHARED, "models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt")
IMAGES = os.path.join(SHARED, "data/imagenet-val-1300/images")
SERVER_PROFILE = os.path.join(REPO, "bench/profiles/mobilenet_v2_imagenet.profile.json")
PORT = 5599
PHASES = [("fast", 100.0, 5.0), ("slow", 2.0, 20.0), ("fast", 100.0, 5.0)]
CONTENDERS = {
    "adaptive": ["--placement", "auto", "--placement-executors", "big",
                 "--placement-recheck-ms", "1000"],
    "fixed": ["--placement", "auto", "--placement-executors", "big",
              "--placement-recheck-ms", "0"],
    "big": ["--placement", "big"],
}
FULL = {"rounds": 8, "phase_s": 15.0, "block_ms": 60}
QUICK = {"rounds": 1, "phase_s": 10.0, "block_ms": 30}
# Per phase, what is left out of its frames/s: the start (model loading done, the pipeline
# filling), then the reaction each step is allowed (TARGET_REACTION_S).
SETTLE_S = [2.0, 3.0, 6.0]
TARGET_REACTION_S = [3.0, 6.0]  # after the fall, after the rise
TARGET_FPS_RATIO = 0.9


def read_lines(path, partial=False):
    out = []
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return out
    rows = text.split("\n")
    if partial:
        rows = rows[:-1]  # the last may be cut short
    for row in rows:
        if row.strip():
            try:
                out.append(json.loads(row))
            except json.JSONDecodeError:
                pass
    return out


def device_argv(bin_dir, out, extra, server):
    return ([os.path.join(bin_dir, "edgesplit-device"), "--model", MODEL, "--input", IMAGES,
             "--knobs", "none", "--device-description", DESCRIPTION, "--objective", "throughput",
             "--max-frames", "1000000", "--quiet", "--output", out,
             "--server", server] + extra)


def run_one(tb, bin_dir, raw, name, rnd, extra, phase_s, server):
    """One run through the phases; the link is set to the first phase before it starts. Returns
    its lines and, in the run's own clock (frame lines' t_ms), when each phase began."""
    out = os.path.join(raw, "%s-%d.jsonl" % (name, rnd))
    if os.path.exists(out):
        os.remove(out)  # the phases are timed from this run's first frame line
    err = open(os.path.join(raw, "%s-%d.err" % (name, rnd)), "w")
    tb.set_link(PHASES[0][1], PHASES[0][2])
    proc = tb.spawn("dev", device_argv(bin_dir, out, extra, server), subprocess.DEVNULL, err)
    # The phases are timed from the first frame (model loading, the handshake and the burst at
    # the crossing come before it): t0 is that frame's time on this clock less its t_ms.
    give_up = time.time() + 120
    first = None
    while time.time() < give_up and proc.poll() is None:
        frames = [j for j in read_lines(out, partial=True) if j.get("type") == "frame"]
        if frames:
            first = frames[0]
            break
        time.sleep(0.02)
    if first is None:
        tb.stop(proc)
        err.close()
        sys.exit("bench/run.sh energy placement-step: %s run %d produced no frame: %s" % (
            name, rnd, open(err.name).read()[-2000:]))
    t0 = time.time() - first["t_ms"] / 1000.0
    starts = [0.0]
    for i, (_, rate, rtt) in enumerate(PHASES):
        if i > 0:
            tb.set_link(rate, rtt)
            starts.append(time.time() - t0)
        end = t0 + (i + 1) * phase_s + first["t_ms"] / 1000.0
        while time.time() < end and proc.poll() is None:
            time.sleep(0.05)
    ended = time.time() - t0
    tb.stop(proc, timeout=30.0)  # SIGTERM: the frames in flight finish, then the summary
    err.close()
    lines = read_lines(out)
    return lines, starts, ended


def summarise(lines, starts, ended):
    """Per phase: frames/s after the settling time, and where frames finished."""
    frames = [j for j in lines if j.get("type") == "frame"]
    placements = [j for j in lines if j.get("type") == "placement"]
    bounds = starts[1:] + [ended]
    phases = []
    for i, (name, rate, rtt) in enumerate(PHASES):
        lo, hi = starts[i] + SETTLE_S[i], bounds[i]
        inside = [f for f in frames if lo * 1000 <= f["t_ms"] < hi * 1000]
        server = sum(1 for f in inside if f.get("completed") == "server")
        phases.append({"phase": name, "rate_mbit": rate, "rtt_ms": rtt,
                       "from_s": round(lo, 3), "to_s": round(hi, 3), "frames": len(inside),
                       "fps": round(len(inside) / (hi - lo), 2) if hi > lo else 0.0,
                       "on_server": server,
                       "failed": sum(1 for f in inside if "error" in f)})
    changes = []
    for p in placements[1:]:
        changes.append({"t_s": round(p["t_ms"] / 1000.0, 3), "from_frame": p["from_frame"],
                        "crossing_cut": p.get("server", {}).get("cut"),
                        "why": p.get("replaces_because", "")})
    first_crossing = placements[0].get("server", {}).get("cut") if placements else None
    # Reaction: from each step to the first change after it.
    reactions = []
    for s in starts[1:]:
        after = [c["t_s"] - s for c in changes if c["t_s"] >= s]
        reactions.append(round(min(after), 3) if after else None)
    order = [f["frame"] for f in frames]
    return {"phases": phases, "placements": len(placements),
            "first_crossing_cut": first_crossing, "changes": changes,
            "reaction_s": reactions, "steps_s": [round(x, 3) for x in starts[1:]],
            "frames": len(frames),
            "in_order_once": order == list(range(len(order)))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 6 s phases")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--phase-s", type=float, default=0)
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help="those to run (comma-separated; the targets need all three)")
    ap.add_argument("--bin-dir", default=os.environ.get("EDGESPLIT_BIN_DIR",
                                                        os.path.join(REPO, "build", "bin")))
    args = ap.parse_args()
    for p in [MODEL, IMAGES]:
        if not os.path.exists(p):
            sys.exit("bench/run.sh energy placement-step: %s is missing: the run needs "
                     "../shared's MobileNetV2 and ImageNet images" % p)
    problem = netbed.root_problem()
    if problem:
        sys.exit("bench/run.sh energy placement-step: " + problem)
    timing = dict(QUICK if args.quick else FULL)
    if args.rounds > 0:
        timing["rounds"] = args.rounds
    if args.phase_s > 0:
        timing["phase_s"] = args.phase_s
    chosen = [c for c in args.contenders.split(",") if c]
    if not chosen or any(c not in CONTENDERS for c in chosen):
        sys.exit("bench/run.sh energy placement-step: --contenders takes some of %s" %
                 ",".join(CONTENDERS))
    raw = os.path.join(args.out, "raw")
    os.makedirs(raw, exist_ok=True)
    per_run = 3 * timing["phase_s"] + 12
    print("placement-step: %d rounds x %d contenders, about %.0f s" % (
        timing["rounds"], len(chosen), timing["rounds"] * len(chosen) * per_run),
        file=sys.stderr)
    netbed.install_signal_handlers()
    started = time.time()
    runs = {c: [] for c in chosen}
    with netbed.Testbed(slowdown=0) as tb:
        server = "tcp://%s:%d" % (netbed.SRV_ADDR, PORT)
        log = open(os.path.join(raw, "server.log"), "w")
        srv = tb.spawn("srv", ["taskset", "-c", "1", os.path.join(args.bin_dir, "edgesplit-server"),
                               "--model", MODEL, "--profile", SERVER_PROFILE, "--threads", "1",
                               "--workers", "1", "--bind", server], log, log)
        time.sleep(3)
        if srv.poll() is not None:
            sys.exit("bench/run.sh energy placement-step: edgesplit-server failed: see " + log.name)
        # One segment table for every run, measured on the fast link.
        table = os.path.join(args.out, "segments.json")
        tb.set_link(PHASES[0][1], PHASES[0][2])
        prof = tb.spawn("dev", device_argv(args.bin_dir, os.path.join(raw, "profile.jsonl"),
                                           CONTENDERS["big"] + [
                                               "--max-frames", "10",
                                               "--placement-block-ms", str(timing["block_ms"]),
                                               "--placement-profile-out", table], server),
                        subprocess.DEVNULL, subprocess.DEVNULL)
        if prof.wait() != 0 or not os.path.exists(table):
            sys.exit("bench/run.sh energy placement-step: the segment table was not measured")
        for rnd in range(timing["rounds"]):
            names = list(chosen)
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for c in order:
                lines, starts, ended = run_one(tb, args.bin_dir, raw, c, rnd,
                                               CONTENDERS[c] + ["--placement-profile", table],
                                               timing["phase_s"], server)
                s = summarise(lines, starts, ended)
                s["round"] = rnd
                runs[c].append(s)
                print("round %d %-8s " % (rnd, c) + "  ".join(
                    "%s %.1f/s (%d on server)" % (p["phase"], p["fps"], p["on_server"])
                    for p in s["phases"]) + "  changes at %s" % [ch["t_s"] for ch in s["changes"]],
                    file=sys.stderr)
        tb.stop(srv)
    wall = time.time() - started

    ratios = []
    for i, (name, _, _) in enumerate(PHASES if len(chosen) == len(CONTENDERS) else []):
        per_round = []
        for rnd in range(timing["rounds"]):
            a = runs["adaptive"][rnd]["phases"][i]["fps"]
            best = max(runs["fixed"][rnd]["phases"][i]["fps"], runs["big"][rnd]["phases"][i]["fps"])
            if best > 0:
                per_round.append(a / best)
        ratios.append((i, name, interval(per_round), per_round))
    worst = min(ratios, key=lambda r: r[2][1]) if ratios else (0, "-", (0.0, 0.0, 0.0), [])
    targets = {}
    for step, (key, limit) in enumerate(zip(("reaction_fall_s", "reaction_rise_s"),
                                            TARGET_REACTION_S)):
        every = [r["reaction_s"][step] for r in runs.get("adaptive", [])]
        worst_reaction = None if None in every or not every else max(every)
        targets[key] = {"value": worst_reaction, "target": "<= %g" % limit, "every_round": every,
                        "pass": worst_reaction is not None and worst_reaction <= limit}
    targets.update({
        "phase_fps_vs_best": {
            "value": round(worst[2][0], 3),
            "interval95": [round(worst[2][1], 3), round(worst[2][2], 3)],
            "phase": "%d (%s)" % (worst[0] + 1, worst[1]), "target": ">= %g" % TARGET_FPS_RATIO,
            "pass": worst[2][1] >= TARGET_FPS_RATIO},
    })
    result = {
        "bench": "energy placement-step",
        "command": " ".join(["bench/run.sh", "energy", "placement-step"] + sys.argv[1:]),
        "quick": args.quick, "rounds": timing["rounds"], "phase_s": timing["phase_s"],
        "settle_s": SETTLE_S, "phases": [{"name": n, "rate_mbit": r, "rtt_ms": t}
                                         for n, r, t in PHASES],
        "model": os.path.relpath(MODEL, os.path.dirname(REPO)),
        "description": os.path.relpath(DESCRIPTION, REPO), "wall_seconds": round(wall, 1),
        "delay_by": "netem" if tb.use_netem else "userspace wire",
        "fps_ratio_per_phase": [{"phase": "%d (%s)" % (i + 1, n), "mean": round(v[0], 3),
                                 "interval95": [round(v[1], 3), round(v[2], 3)],
                                 "per_round": [round(x, 3) for x in pr]}
                                for i, n, v, pr in ratios],
        "runs": runs, "targets": targets,
    }
    lines = ["# The placement follows the network", "",
             "Frames/s per phase (less its first %s s), mean over %d rounds:" % (
                 "/".join("%g" % x for x in SETTLE_S), timing["rounds"]), "",
             "| contender | " + " | ".join("%d: %s %g Mbit/s" % (i + 1, n, r)
                                          for i, (n, r, _) in enumerate(PHASES)) + " |",
             "|---|" + "---|" * len(PHASES)]
    for c in chosen:
        lines.append("| %s | " % c + " | ".join(
            "%.1f" % statistics.mean(r["phases"][i]["fps"] for r in runs[c])
            for i in range(len(PHASES))) + " |")
    lines += ["", "adaptive / the better of fixed and big, per phase: " + ", ".join(
        "%s %.2f [%.2f, %.2f]" % (n, v[0], v[1], v[2]) for _, n, v, _ in ratios),
        "", "Reaction after the fall / the rise, per round (s): %s / %s" % (
            targets["reaction_fall_s"]["every_round"], targets["reaction_rise_s"]["every_round"]),
        ""]
    for k, t in targets.items():
        lines.append("- %s: %s (target %s): %s" % (k, t["value"], t["target"],
                                                   "met" if t["pass"] else "missed"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    finish(args.out, lines, targets, args.check)


if __name__ == "__main__":
    main()
