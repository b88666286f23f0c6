#!/usr/bin/python3
"""A device's move to a split plan whose head it has never built, in edgesplit-device builds
compared: each device starts without its server (so it runs the model whole and builds no split
head), the server comes up once the device has finished --server-after frames, and the scheduler
moves to a split plan. Per run: the first frame that ran a split head (its latency, head time and
the head's build inside the frame, where the build reports it), the median latency of the next
frames at that cut (up to 20), the share of the later frames that ran a split plan, the slowest
frame and the highest server-load factor planned with after the server came back, and the frames
that kept the previous plan meanwhile. Each build in turn (the order alternating from round to
round, so that the machine's drift hits both alike), medians over the rounds and per-round ratios.

    bench/engine/device_plan_switch.py --rounds 8 --out DIR/plan_switch.json \\
        --server-bin build/bin/edgesplit-server --server-args "--model M.pt --threads 1" \\
        before=/tmp/old/bin/edgesplit-device after=build/bin/edgesplit-device \\
        -- --model M.pt --meta M.json --profile P.json --input IMAGES --threads 1 \\
           --max-frames 400 --fps 30 --objective throughput --in-flight 2

Everything after `--` goes to every device (`--json`, `--server` and a 1 s handshake timeout
are added); `--server-extra NAME=FLAGS` adds server flags for one build's runs (the same device
binary twice, against two server settings). No root, no testbed: loopback.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from builds import frames_in, free_port, in_round, parse_builds, ratio


def frames_of(path):
    with open(path) as f:
        return frames_in(f)


def run_once(binary, args, server_cmd, server_after, timeout_s, scratch):
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    out_path = os.path.join(scratch, "device.jsonl")
    with open(out_path, "w") as out, open(os.path.join(scratch, "device.err"), "w") as err:
        device = subprocess.Popen([binary] + args + ["--json", "--server", endpoint,
                                                     "--handshake-timeout-ms", "1000"],
                                  stdout=out, stderr=err)
    server = None
    try:
        deadline = time.monotonic() + timeout_s
        while len(frames_of(out_path)) < server_after and device.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("%s: %d frames within %d s" % (binary, server_after, timeout_s))
            time.sleep(0.02)
        server = subprocess.Popen(server_cmd + ["--bind", endpoint], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        rc = device.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if device.poll() is None:
            device.kill()
        if server:
            server.terminate()
            server.wait()
    frames = frames_of(out_path)
    if rc != 0:
        raise RuntimeError("%s: exit %d" % (binary, rc))
    first = next((i for i, f in enumerate(frames)
                  if f["completed"] == "server" and f["plan"]["cut"] > 0), None)
    if first is None:
        raise RuntimeError("%s: no frame ran a split head (%d frames)" % (binary, len(frames)))
    back = next(i for i, f in enumerate(frames) if f["completed"] == "server")
    f0 = frames[first]
    cut = f0["plan"]["cut"]
    after = frames[first + 1:]
    later = [f["latency_ms"] for f in after if f["plan"]["cut"] == cut][:20]
    return {"first_split_frame": first, "cut": cut,
            "first_split_latency_ms": f0["latency_ms"], "first_split_head_ms": f0["head_ms"],
            "first_split_head_build_ms": f0.get("head_build_ms", None),
            "later_latency_ms": statistics.median(later) if later else None,
            "later_frames": len(later),
            "split_share_after": (sum(1 for f in after if f["completed"] == "server" and
                                      f["plan"]["cut"] > 0) / len(after)) if after else None,
            "max_latency_after_back_ms": max(f["latency_ms"] for f in frames[back:]),
            "max_server_load_after_back": max(f["conditions"].get("server_load", 1.0)
                                              for f in frames[back:]),
            "held_frames": sum(1 for f in frames if "held_for_cut" in f["plan"]),
            "head_builds_in_frames": sum(1 for f in frames if "head_build_ms" in f)}


def main(argv):
    if "--" not in argv:
        sys.exit("device_plan_switch.py: give the device's flags after --, e.g. -- --model M.pt")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--server-bin", required=True, help="the edgesplit-server to start")
    ap.add_argument("--server-args", required=True, help="its flags (--bind is added)")
    ap.add_argument("--server-extra", action="append", default=[], metavar="NAME=FLAGS",
                    help="more server flags for build NAME's runs only (repeatable)")
    ap.add_argument("--server-after", type=int, default=30,
                    help="frames the device finishes before the server starts (default 30)")
    ap.add_argument("--timeout-s", type=int, default=120)
    ap.add_argument("--out", required=True)
    ap.add_argument("builds", nargs="+", metavar="NAME=BINARY")
    args = ap.parse_args(argv[:cut])
    device_args = argv[cut + 1:]
    builds = parse_builds(ap, args.builds, "edgesplit-device")
    server_cmd = [args.server_bin] + shlex.split(args.server_args)
    extra = {}
    for item in args.server_extra:
        name, eq, flags = item.partition("=")
        if not eq or name not in [n for n, _ in builds]:
            ap.error("--server-extra %s: give NAME=FLAGS for one of the builds" % item)
        extra[name] = shlex.split(flags)
    scratch = os.path.join(os.path.dirname(os.path.abspath(args.out)), "scratch")
    os.makedirs(scratch, exist_ok=True)
    runs = {name: [] for name, _ in builds}
    for r in range(args.rounds):
        for name, binary in in_round(builds, r):
            row = run_once(binary, device_args, server_cmd + extra.get(name, []),
                           args.server_after, args.timeout_s, scratch)
            runs[name].append(row)
            print("round %d %s %s" % (r, name, json.dumps(row)), flush=True)
    numeric = ("first_split_latency_ms", "first_split_head_ms", "later_latency_ms",
               "split_share_after", "max_latency_after_back_ms", "max_server_load_after_back",
               "held_frames", "head_builds_in_frames")
    median = {name: {k: statistics.median(x[k] for x in rows if x[k] is not None)
                     for k in numeric if any(x[k] is not None for x in rows)}
              for name, rows in runs.items()}
    result = {"argv": sys.argv, "device_args": device_args, "server": server_cmd,
              "server_extra": extra,
              "rounds": args.rounds, "runs": runs, "median": median}
    if len(builds) == 2:
        result["ratios"] = {k: ratio(runs, builds, k)
                            for k in ("first_split_latency_ms", "max_latency_after_back_ms")}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({"median": median, "ratios": result.get("ratios")}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
