#!/usr/bin/python3
"""Whether a device goes back to its server after a burst of other devices' requests, in
edgesplit-device builds compared: a fresh server per run, one device streaming to it, and
edgesplit-load's simulated devices flooding the same server from --load-after seconds into the
run for --load-seconds. Per run: the share of remote frames before the burst, during it and in
the last --tail-seconds of the run; the time from the burst's end to the first remote frame that
was not a server probe (the stream back on a remote plan); the server probes sent; and the
latency (p50) before the burst and in the tail. Each build in turn (the order alternating from
round to round, so that the machine's drift hits both alike), medians over the rounds.

    bench/engine/server_recovery.py --rounds 3 --device-quota 0.2 --out DIR/recovery.json \\
        --server-bin build/bin/edgesplit-server --server-args "--model M.pt --threads 1" \\
        --load-bin build/bin/edgesplit-load --load-args "--model M.pt --cut 21 --clients 16" \\
        before=OLD/bin/edgesplit-device after=build/bin/edgesplit-device \\
        -- --model M.pt --meta M.json --profile P.json --input IMAGES --threads 1 \\
           --max-frames 250 --fps 10 --objective latency

Everything after `--` goes to every device (`--json` and `--server` are added); `--server` and
`--seconds` are added to the load. Loopback; root for --device-quota.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from builds import frames_in, in_round, parse_builds, start_server, wait_ready


def p50(values):
    return statistics.median(values) if values else None


def run_once(binary, device_args, server_cmd, load_cmd, args, scratch):
    out_path = os.path.join(scratch, "device.jsonl")
    server, endpoint, http_port = start_server(server_cmd, scratch)
    device = None
    try:
        wait_ready(http_port, server, args.timeout_s)
        with open(out_path, "w") as out, open(os.path.join(scratch, "device.err"), "w") as err:
            device = subprocess.Popen([binary] + device_args + ["--json", "--server", endpoint],
                                      stdout=out, stderr=err, preexec_fn=args.enter_cgroup)
        # The device's clock starts at its ready line; the burst is timed from there.
        deadline = time.monotonic() + args.timeout_s
        while device.poll() is None:
            with open(out_path) as f:
                if any('"type":"ready"' in line for line in f):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("%s: no ready line within %d s" % (binary, args.timeout_s))
            time.sleep(0.02)
        t_ready = time.monotonic()
        time.sleep(args.load_after)
        t_load = time.monotonic() - t_ready
        load = subprocess.run(load_cmd + ["--server", endpoint, "--seconds", str(args.load_seconds),
                                          "--drain-ms", "2000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=args.timeout_s)
        t_end = time.monotonic() - t_ready
        if load.returncode != 0:
            raise RuntimeError("edgesplit-load: exit %d: %s" % (load.returncode, load.stderr[-300:]))
        rc = device.wait(timeout=args.timeout_s)
    finally:
        if device is not None and device.poll() is None:
            device.kill()
        server.terminate()
        server.wait()
    with open(out_path) as f:
        lines = f.readlines()
    frames = frames_in(lines)
    if rc != 0 or not frames:
        raise RuntimeError("%s: exit %d, %d frames" % (binary, rc, len(frames)))
    summary = next((json.loads(x) for x in lines if '"type":"summary"' in x), {})
    ready = next(json.loads(x) for x in lines if '"type":"ready"' in x)
    if not ready.get("fps"):
        raise RuntimeError("give the devices --fps: frame times come from their arrival rate")
    # Frames arrive at --fps from the ready line on: frame i at i / fps seconds.
    at = [f["frame"] / ready["fps"] for f in frames]
    end = at[-1]
    remote = [f["completed"] in ("server", "server_exit") for f in frames]
    probe = [bool(f["plan"].get("server_probe")) for f in frames]

    def share(lo, hi):
        sel = [r for t, r in zip(at, remote) if lo <= t < hi]
        return sum(sel) / len(sel) if sel else None

    def lat(lo, hi):
        return p50([f["latency_ms"] for t, f in zip(at, frames) if lo <= t < hi])

    back = next((t - t_end for t, r, p in zip(at, remote, probe)
                 if t >= t_end and r and not p), None)
    return {"load_from_s": t_load, "load_to_s": t_end, "run_s": end,
            "remote_share_before": share(0, t_load), "remote_share_during": share(t_load, t_end),
            "remote_share_tail": share(end - args.tail_seconds, end + 1),
            "back_after_s": back, "server_probes": sum(probe),
            "latency_p50_before_ms": lat(0, t_load),
            "latency_p50_tail_ms": lat(end - args.tail_seconds, end + 1),
            "summary_server_probes": summary.get("server_probes"),
            "load_ok_per_second": json.loads(load.stdout).get("ok_per_second")
            if load.stdout.strip().startswith("{") else None}


def main(argv):
    if "--" not in argv:
        sys.exit("server_recovery.py: give the device's flags after --, e.g. -- --model M.pt")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--server-args", required=True,
                    help="its flags (--bind and --http-port are added)")
    ap.add_argument("--load-bin", required=True, help="the edgesplit-load to run")
    ap.add_argument("--load-args", required=True, help="its flags (--server, --seconds added)")
    ap.add_argument("--load-after", type=float, default=5, help="seconds into the run (default 5)")
    ap.add_argument("--load-seconds", type=float, default=8, help="the burst's length (default 8)")
    ap.add_argument("--tail-seconds", type=float, default=8,
                    help="the end of the run that counts as after (default 8)")
    ap.add_argument("--device-quota", type=float, default=0,
                    help="run each device under a CPU quota of this share of one core, in 10 ms "
                    "periods (a cgroup v1 cpu controller; root), so that the server is worth "
                    "reaching (default: none)")
    ap.add_argument("--timeout-s", type=int, default=180)
    ap.add_argument("--out", required=True)
    ap.add_argument("builds", nargs="+", metavar="NAME=BINARY")
    args = ap.parse_args(argv[:cut])
    device_args = argv[cut + 1:]
    builds = parse_builds(ap, args.builds, "edgesplit-device")
    args.enter_cgroup = None
    if args.device_quota > 0:
        group = "/sys/fs/cgroup/cpu/edgesplit-recovery-%d" % os.getpid()
        try:
            os.makedirs(group, exist_ok=True)
            with open(os.path.join(group, "cpu.cfs_period_us"), "w") as f:
                f.write("10000")
            with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as f:
                f.write(str(int(args.device_quota * 10000)))
        except OSError as e:
            ap.error("--device-quota needs root and cgroup v1's cpu controller: %s" % e)

        def enter():
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        args.enter_cgroup = enter
    server_cmd = [args.server_bin] + shlex.split(args.server_args)
    load_cmd = [args.load_bin] + shlex.split(args.load_args)
    scratch = os.path.join(os.path.dirname(os.path.abspath(args.out)), "scratch")
    os.makedirs(scratch, exist_ok=True)
    runs = {name: [] for name, _ in builds}
    for r in range(args.rounds):
        for name, binary in in_round(builds, r):
            row = run_once(binary, device_args, server_cmd, load_cmd, args, scratch)
            runs[name].append(row)
            print("round %d %s %s" % (r, name, json.dumps(row)), flush=True)
    keys = ("remote_share_before", "remote_share_during", "remote_share_tail", "server_probes",
            "latency_p50_before_ms", "latency_p50_tail_ms")
    median = {name: {k: p50([x[k] for x in rows if x[k] is not None]) for k in keys}
              for name, rows in runs.items()}
    for name, rows in runs.items():
        back = [x["back_after_s"] for x in rows]
        median[name]["back_after_s"] = p50([b for b in back if b is not None])
        median[name]["runs_back"] = "%d of %d" % (sum(b is not None for b in back), len(back))
    result = {"argv": sys.argv, "device_args": device_args, "server": server_cmd,
              "load": load_cmd, "rounds": args.rounds, "runs": runs, "median": median}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({"median": median}, indent=1))
    if args.device_quota > 0:
        os.rmdir(group)


if __name__ == "__main__":
    main(sys.argv[1:])
