#!/usr/bin/python3
"""Start-up of edgesplit-server builds compared: the time from launch to "accepting requests",
the resident memory then and the CPU time spent, for each build in turn (the order alternating
from round to round, so that the machine's drift hits both alike), medians over the rounds.

    bench/engine/server_start.py --rounds 6 --out DIR/server_start.json \\
        before=/tmp/old/bin/edgesplit-server after=build/bin/edgesplit-server \\
        -- --model M.pt --bind tcp://127.0.0.1:5611 --threads 1 --http-port 0

Everything after `--` goes to every server. No root, no testbed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from builds import in_round, parse_builds, ratio


def vm_mb(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024.0
    return out


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_once(binary, args, timeout_s, log_path):
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        p = subprocess.Popen([binary] + args, stdout=subprocess.DEVNULL, stderr=log)
    ready = None
    try:
        # The log goes to a file, polled: a pipe nobody reads after the start could fill and
        # block the server.
        while ready is None and p.poll() is None and time.monotonic() - t0 < timeout_s:
            with open(log_path) as f:
                if "accepting requests" in f.read():
                    ready = time.monotonic() - t0
                    break
            time.sleep(0.02)
        if ready is None:
            raise RuntimeError("%s did not accept requests within %d s (log: %s)"
                               % (binary, timeout_s, log_path))
        vm = vm_mb(p.pid)
        return {"ready_s": round(ready, 3), "rss_mb": round(vm["VmRSS"], 1),
                "peak_rss_mb": round(vm["VmHWM"], 1), "cpu_s": round(cpu_s(p.pid), 2)}
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv):
    if "--" not in argv:
        sys.exit("server_start.py: give the server's flags after --, e.g. -- --model M.pt")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--timeout-s", type=int, default=300)
    ap.add_argument("--out", required=True)
    ap.add_argument("builds", nargs="+", metavar="NAME=BINARY")
    args = ap.parse_args(argv[:cut])
    server_args = argv[cut + 1:]
    builds = parse_builds(ap, args.builds, "edgesplit-server")
    runs = {name: [] for name, _ in builds}
    logs = tempfile.mkdtemp(prefix="server_start-")  # each start's log, the last one kept
    for r in range(args.rounds):
        for name, binary in in_round(builds, r):
            row = start_once(binary, server_args, args.timeout_s,
                             os.path.join(logs, "%s.log" % name))
            runs[name].append(row)
            print("round %d %s %s" % (r, name, json.dumps(row)), flush=True)
    median = {name: {k: statistics.median(x[k] for x in rows) for k in rows[0]}
              for name, rows in runs.items()}
    result = {"argv": sys.argv, "server_args": server_args, "rounds": args.rounds, "runs": runs,
              "median": median}
    if len(builds) == 2:
        result["ready_ratio"] = ratio(runs, builds, "ready_s")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["median"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
