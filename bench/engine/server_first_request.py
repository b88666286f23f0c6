#!/usr/bin/python3
"""What a fresh edgesplit-server's first requests cost, per server configuration: each run starts
the server, waits until /readyz says ready, and runs one device per cut in --cuts, one after
another (each `--cut C`, a few frames). Per cut: the first frame's server compute (the first
request at that cut; at the first cut listed, the server's first request at all), its latency, and
the median server compute of the frames after. Each configuration in turn (the order alternating
from round to round, so that the machine's drift hits both alike), medians over the rounds and
per-round ratios.

    bench/engine/server_first_request.py --rounds 8 --out DIR/first_request.json \\
        --server-bin build/bin/edgesplit-server --server-args "--model M.pt --threads 1" \\
        --cuts 21,37,0 cold="--warmup-runs 0" warm="" \\
        -- build/bin/edgesplit-device --model M.pt --meta M.json --input IMAGES --threads 1

NAME="FLAGS" adds FLAGS to --server-args for that configuration. Everything after `--` is the
device's command (`--cut`, `--max-frames`, `--json` and `--server` are added). No root: loopback.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

from builds import frames_in, in_round, start_server, wait_ready


def run_once(server_cmd, device_cmd, cuts, frames, timeout_s, scratch):
    server, endpoint, http_port = start_server(server_cmd, scratch)
    try:
        ready_s = wait_ready(http_port, server, timeout_s)
        row = {"ready_s": ready_s, "cuts": {}}
        for cut in cuts:
            p = subprocess.run(device_cmd + ["--cut", str(cut), "--max-frames", str(frames),
                                             "--json", "--server", endpoint],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=timeout_s)
            fs = frames_in(p.stdout.splitlines())
            if p.returncode != 0 or len(fs) != frames or \
                    any(f["completed"] != "server" for f in fs):
                raise RuntimeError("cut %d: exit %d, %d frames, not all on the server: %s" %
                                   (cut, p.returncode, len(fs), p.stderr[-400:]))
            row["cuts"][str(cut)] = {
                "first_server_ms": fs[0]["server_compute_ms"],
                "first_latency_ms": fs[0]["latency_ms"],
                "later_server_ms": statistics.median(f["server_compute_ms"] for f in fs[2:])}
        return row
    finally:
        server.terminate()
        server.wait()


def main(argv):
    if "--" not in argv:
        sys.exit("server_first_request.py: give the device's command after --")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--server-bin", required=True, help="the edgesplit-server to start")
    ap.add_argument("--server-args", required=True,
                    help="its flags (--bind and --http-port are added)")
    ap.add_argument("--cuts", default="21,37,0", help="cuts in the order run (default 21,37,0)")
    ap.add_argument("--frames", type=int, default=8, help="frames per cut (default 8)")
    ap.add_argument("--timeout-s", type=int, default=120)
    ap.add_argument("--out", required=True)
    ap.add_argument("configs", nargs="+", metavar='NAME="FLAGS"')
    args = ap.parse_args(argv[:cut])
    device_cmd = argv[cut + 1:]
    if args.frames < 3:
        ap.error("--frames must be at least 3")
    cuts = [int(c) for c in args.cuts.split(",")]
    configs = []
    for item in args.configs:
        name, eq, flags = item.partition("=")
        if not eq:
            ap.error('%s: give NAME="FLAGS"' % item)
        configs.append((name, shlex.split(flags)))
    server_base = [args.server_bin] + shlex.split(args.server_args)
    scratch = os.path.join(os.path.dirname(os.path.abspath(args.out)), "scratch")
    os.makedirs(scratch, exist_ok=True)
    runs = {name: [] for name, _ in configs}
    for r in range(args.rounds):
        for name, flags in in_round(configs, r):
            row = run_once(server_base + flags, device_cmd, cuts, args.frames, args.timeout_s,
                           scratch)
            runs[name].append(row)
            print("round %d %s %s" % (r, name, json.dumps(row)), flush=True)
    keys = ("first_server_ms", "first_latency_ms", "later_server_ms")
    median = {name: {"ready_s": statistics.median(x["ready_s"] for x in rows),
                     "cuts": {str(c): {k: statistics.median(x["cuts"][str(c)][k] for x in rows)
                                       for k in keys} for c in cuts}}
              for name, rows in runs.items()}
    result = {"argv": sys.argv, "device": device_cmd, "server": server_base,
              "configs": {n: f for n, f in configs}, "cuts": cuts, "rounds": args.rounds,
              "runs": runs, "median": median}
    if len(configs) == 2:
        (a, _), (b, _) = configs
        ratios = {}
        for c in cuts:
            for k in ("first_server_ms", "first_latency_ms"):
                rs = sorted(y["cuts"][str(c)][k] / x["cuts"][str(c)][k]
                            for x, y in zip(runs[a], runs[b]) if x["cuts"][str(c)][k] > 0)
                ratios["%s@%d" % (k, c)] = {
                    "of": "%s / %s" % (b, a), "median": statistics.median(rs), "min": rs[0],
                    "max": rs[-1], "below_1": sum(1 for x in rs if x < 1), "rounds": len(rs)}
        result["ratios"] = ratios
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({"median": median, "ratios": result.get("ratios")}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
