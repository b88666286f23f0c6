#!/usr/bin/env python3
"""Interleaved comparison of several edgesplit-server builds or flag sets under the same loads.

Every server is started at once; in each round every run (kind, devices, offered req/s) is sent to
each server in turn with the same seed (rotating the order per round), as batching_bench.py does.
Prints per run and server the median p99 (open loop) or answered req/s (saturation, closed loop)
and its ratio to the first server's, paired by round, with a 95% interval.

    /usr/bin/python3 bench/batching/compare.py --rounds 5 \\
        --runs load50:1:240,load50:16:365,load80:1:384,saturation:16:0 \\
        b1=build/bin:--max-batch,1 old=/tmp/old/bin:--max-batch,16,--batch-from,backlog \\
        new=build/bin:--max-batch,16,--batch-from,backlog

A server is NAME=BIN_DIR[:FLAG,FLAG,...]; BIN_DIR holds edgesplit-server and edgesplit-load. The
offered rates are absolute: set them from batch 1's saturated rate measured first (this machine's
speed drifts by tens of percent between runs).
"""

import argparse
import os
import random
import statistics
import sys
import tempfile

import batching_bench as bb

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "elastic"))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("servers", nargs="+", help="NAME=BIN_DIR[:FLAG,FLAG,...]; the first is the base")
    ap.add_argument("--runs", required=True,
                    help="KIND:DEVICES:RATE,...; KIND saturation (rate 0, closed loop) or any name")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--cuts", default="21,45")
    ap.add_argument("--deadline-ms", type=int, default=1000)
    ap.add_argument("--model", default=os.path.join(common.shared_dir(), "models",
                                                    "mobilenet_v2_imagenet",
                                                    "mobilenet_v2_imagenet.pt"))
    ap.add_argument("--profile", default=os.path.join(common.ROOT, "bench", "profiles",
                                                      "mobilenet_v2_imagenet.profile.json"))
    args = ap.parse_args()
    if not os.path.exists(args.model):
        print(f"compare: {args.model} is absent (../shared/models); nothing to measure",
              file=sys.stderr)
        return 2
    runs = []
    for spec in args.runs.split(","):
        try:
            kind, devices, rate = spec.split(":")
            runs.append((kind, int(devices), float(rate)))
        except ValueError:
            print(f"compare: --runs takes KIND:DEVICES:RATE, not '{spec}'", file=sys.stderr)
            return 2
    workdir = tempfile.mkdtemp(prefix="edgesplit-compare-")
    common_args = ["--workers", "2", "--threads", "1", "--queue", "64",
                   "--max-in-flight-per-client", "64", "--log-level", "warn",
                   "--profile", args.profile]
    servers = []
    for spec in args.servers:
        name, _, rest = spec.partition("=")
        bin_dir, _, extra = rest.partition(":")
        if not name or not os.path.exists(os.path.join(bin_dir, "edgesplit-server")):
            print(f"compare: a server is NAME=BIN_DIR[:FLAGS] with BIN_DIR/edgesplit-server; "
                  f"got '{spec}'", file=sys.stderr)
            return 2
        s = bb.Server(name, bin_dir, args.model, common_args + (extra.split(",") if extra else []),
                      workdir)
        s.bin_dir = bin_dir
        servers.append(s)
    results = {}
    try:
        for s in servers:
            s.wait_ready()
        for s in servers:  # warm up
            bb.load(s.bin_dir, args.model, s, 16, 0.0, 2, args.cuts, args.deadline_ms, 1, workdir)
        rng = random.Random(7)
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for kind, devices, rate in runs:
                seed = rng.randrange(1 << 30)
                for s in order:
                    m = bb.load(s.bin_dir, args.model, s, devices, rate, args.seconds, args.cuts,
                                args.deadline_ms, seed, workdir)
                    results.setdefault((kind, devices), {}).setdefault(s.name, []).append(m)
                    print(f"  round {r} {kind} {devices} devices {s.name}: {m['ok_per_s']:.0f} ok/s"
                          f" p50 {m['p50_ms']:.1f} p99 {m['p99_ms']:.1f} ms batch "
                          f"{m['mean_batch']:.2f}", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()
    base = servers[0].name
    for (kind, devices), by in results.items():
        key = "ok_per_s" if kind == "saturation" else "p99_ms"
        for name, ms in by.items():
            ratios = [m[key] / b[key] for m, b in zip(ms, by[base]) if b[key] > 0]
            mean, lo, hi = bb.interval(ratios)
            print(f"{kind} {devices} devices {name}: {key} median "
                  f"{statistics.median(m[key] for m in ms):.1f}, / {base} {mean:.3f} "
                  f"[{lo:.3f}, {hi:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
