#!/usr/bin/python3
"""The first frames of edgesplit-device builds compared: per run, frame 0's head time, latency and
head page faults against the same for a later frame, and the start-up seconds of the ready line,
each build in turn (the order alternating from round to round, so that the machine's drift hits
both alike), medians over the rounds.

    bench/engine/device_first_frames.py --rounds 8 --out DIR/first_frames.json \\
        before=/tmp/old/bin/edgesplit-device after=build/bin/edgesplit-device \\
        -- --model M.pt --meta M.json --input IMAGES --threads 1 --max-frames 3 --cut local

Everything after `--` goes to every device (`--json` is added). No root, no testbed; a server,
where the flags name one, must already run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from builds import in_round, parse_builds, ratio


def run_once(binary, args, later, timeout_s):
    p = subprocess.run([binary] + args + ["--json"], capture_output=True, text=True,
                       timeout=timeout_s)
    frames, ready = [], None
    for line in p.stdout.splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("type") == "frame":
            frames.append(j)
        elif j.get("type") == "ready":
            ready = j
    if p.returncode != 0 or ready is None or len(frames) <= later:
        raise RuntimeError("%s: exit %d, %d frames (need %d); stderr: %s"
                           % (binary, p.returncode, len(frames), later + 1, p.stderr[-2000:]))
    first, then = frames[0], frames[later]
    return {"startup_s": ready.get("startup_s"),
            "first_head_ms": first["head_ms"], "first_latency_ms": first["latency_ms"],
            "first_head_page_faults": first.get("head_page_faults"),
            "first_plan": "%s:%s" % (first["plan"].get("cut"), first["plan"].get("encoding")),
            "later_head_ms": then["head_ms"], "later_latency_ms": then["latency_ms"]}


def main(argv):
    if "--" not in argv:
        sys.exit("device_first_frames.py: give the device's flags after --, e.g. -- --model M.pt")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--later", type=int, default=2,
                    help="the frame compared with frame 0 (default 2; --max-frames must exceed it)")
    ap.add_argument("--timeout-s", type=int, default=300)
    ap.add_argument("--out", required=True)
    ap.add_argument("builds", nargs="+", metavar="NAME=BINARY")
    args = ap.parse_args(argv[:cut])
    device_args = argv[cut + 1:]
    builds = parse_builds(ap, args.builds, "edgesplit-device")
    runs = {name: [] for name, _ in builds}
    for r in range(args.rounds):
        for name, binary in in_round(builds, r):
            row = run_once(binary, device_args, args.later, args.timeout_s)
            runs[name].append(row)
            print("round %d %s %s" % (r, name, json.dumps(row)), flush=True)
    numeric = ("startup_s", "first_head_ms", "first_latency_ms", "later_head_ms",
               "later_latency_ms")
    median = {name: {k: statistics.median(x[k] for x in rows) for k in numeric}
              for name, rows in runs.items()}
    result = {"argv": sys.argv, "device_args": device_args, "rounds": args.rounds,
              "later_frame": args.later, "runs": runs, "median": median}
    if len(builds) == 2:
        result["ratios"] = {k: ratio(runs, builds, k)
                            for k in ("first_head_ms", "first_latency_ms", "startup_s")}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({"median": median, "ratios": result.get("ratios")}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
