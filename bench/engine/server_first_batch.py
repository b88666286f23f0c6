#!/usr/bin/python3
"""What a fresh batching edgesplit-server's first batches cost, per server build: each run starts
the server, waits until /readyz says ready, then edgesplit-load sends two bursts of --seconds each
(closed loop, --clients simulated devices, so that batches of up to --clients form). Per burst: the
slowest reply's latency (in the first burst, the first batch's), the median, the answered requests
per second (edgesplit-load's ok_per_second, after its --warmup-s of 0), the mean batch and the
server's compute per request (edgesplit-load's compute_by_batch, weighted by replies). Builds in turn (the
order alternating from round to round, so that the machine's drift hits both alike), medians over
the rounds and per-round ratios of the second build's over the first's.

    bench/engine/server_first_batch.py --rounds 8 --out DIR/first_batch.json \\
        --server-args "--model M.pt --threads 1 --max-batch 8 --max-queue-delay-us 50000" \\
        --load-bin build/bin/edgesplit-load --load-args "--model M.pt --cut 21" --clients 8 \\
        before=/tmp/before/edgesplit-server after=build/bin/edgesplit-server

No root: loopback.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

from builds import in_round, parse_builds, start_server, wait_ready


def run_once(server_cmd, load_cmd, bursts, timeout_s, scratch):
    server, endpoint, http_port = start_server(server_cmd, scratch)
    try:
        row = {"ready_s": wait_ready(http_port, server, timeout_s), "bursts": []}
        out = os.path.join(scratch, "load.json")
        for _ in range(bursts):
            p = subprocess.run(load_cmd + ["--server", endpoint, "--warmup-s", "0", "--latencies",
                                           "--output", out],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=timeout_s)
            if p.returncode != 0:
                raise RuntimeError("edgesplit-load exited %d: %s" % (p.returncode, p.stderr[-400:]))
            with open(out) as f:
                lat = json.load(f)["latencies_ms_all"]
            lat = lat or []
            if not lat:
                raise RuntimeError("edgesplit-load got no OK reply")
            with open(out) as f:
                result = json.load(f)
            # The server's compute per request over the burst's batches, by their replies.
            rows = [b for per_cut in result.get("compute_by_batch", {}).values()
                    for b in per_cut.values()]
            n = sum(b["replies"] for b in rows)
            row["bursts"].append({
                "max_ms": lat[-1], "p50_ms": statistics.median(lat), "replies": len(lat),
                "ok_per_s": result["ok_per_second"], "mean_batch": result["mean_batch_size"],
                "row_ms": sum(b["row_ms"] * b["replies"] for b in rows) / n if n else 0.0})
        return row
    finally:
        server.terminate()
        server.wait()


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--server-args", required=True,
                    help="the server's flags (--bind and --http-port are added)")
    ap.add_argument("--load-bin", required=True, help="the edgesplit-load to run")
    ap.add_argument("--load-args", required=True,
                    help="its flags (--server, --clients, --seconds, --output are added)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=0.5, help="each burst's length (default 0.5)")
    ap.add_argument("--bursts", type=int, default=2)
    ap.add_argument("--timeout-s", type=int, default=120)
    ap.add_argument("--out", required=True)
    ap.add_argument("builds", nargs=2, metavar="NAME=BINARY", help="two edgesplit-server builds")
    args = ap.parse_args(argv)
    builds = parse_builds(ap, args.builds, "edgesplit-server")
    load_cmd = [args.load_bin] + shlex.split(args.load_args) + [
        "--clients", str(args.clients), "--seconds", str(args.seconds)]
    scratch = os.path.join(os.path.dirname(os.path.abspath(args.out)), "scratch")
    os.makedirs(scratch, exist_ok=True)
    runs = {name: [] for name, _ in builds}
    for r in range(args.rounds):
        for name, binary in in_round(builds, r):
            row = run_once([binary] + shlex.split(args.server_args), load_cmd, args.bursts,
                           args.timeout_s, scratch)
            runs[name].append(row)
            print("round %d %s %s" % (r, name, json.dumps(row)), flush=True)
    median = {name: {"ready_s": statistics.median(x["ready_s"] for x in rows),
                     "bursts": [{k: statistics.median(x["bursts"][i][k] for x in rows)
                                 for k in ("max_ms", "p50_ms", "ok_per_s", "mean_batch",
                                           "row_ms")} for i in range(args.bursts)]}
              for name, rows in runs.items()}
    (a, _), (b, _) = builds
    ratios = {}
    for key, get in (("first_burst_max_ms", lambda x: x["bursts"][0]["max_ms"]),
                     ("last_burst_ok_per_s", lambda x: x["bursts"][-1]["ok_per_s"]),
                     ("ready_s", lambda x: x["ready_s"])):
        rs = sorted(get(y) / get(x) for x, y in zip(runs[a], runs[b]) if get(x) > 0)
        ratios[key] = {"of": "%s / %s" % (b, a), "median": statistics.median(rs), "min": rs[0],
                       "max": rs[-1], "below_1": sum(1 for v in rs if v < 1), "rounds": len(rs)}
    result = {"argv": sys.argv, "server_args": args.server_args, "load": load_cmd,
              "builds": dict(builds), "rounds": args.rounds, "runs": runs, "median": median,
              "ratios": ratios}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({"median": median, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
