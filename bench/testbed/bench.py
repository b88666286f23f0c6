"""The end-to-end benchmark: edgesplit against the alternatives (device-only, uploading the raw
input or a JPEG, the best fixed cut in fp32 and at 8 bits, the oracle) on the shaped network of
netbed.Testbed, with the device process N times slower than the server. Writes JSON, CSV and a
Markdown table under the results folder; bench/plot_bench.py draws the plots.

Every number comes from real runs of edgesplit-server and edgesplit-device: latency, bytes, plans
and predictions from the device's JSON lines, throughput from the arrival times of those lines,
device CPU time from the device cgroup's CPU accounting. Standard library only.
"""

import argparse
import contextlib
import csv
import datetime
import fcntl
import json
import os
import re
import shlex
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import costmodel  # noqa: E402
import interleave  # noqa: E402
import netbed  # noqa: E402
import turns  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("EDGESPLIT_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))
PORT = 5555
ACCURACY_BOUND = 1.0  # points of top-1, for edgesplit, the 8-bit contender and the oracle
RECOVERY_WINDOW = 5  # frames whose median latency says whether a trace run is back

# ---------------------------------------------------------------------------------------------
# Scenarios


def parse_scenario(path):
    """A scenario file: '# comment' lines, 'duration SECONDS' (traces), and one line per change,
    'T rate=MBIT rtt=MS [loss=PCT] [load=N]' (T in seconds from the start; later lines may give
    only what changes). `load=N`: N other devices keep one request each in flight at the server
    (edgesplit-load beside it, on the server's side of the link; 0: none). A file with a single
    change at 0 is a fixed scenario."""
    name = os.path.splitext(os.path.basename(path))[0]
    steps, duration, description = [], None, []
    state = {"rate": None, "rtt": None, "loss": 0.0, "load": 0.0}
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if line.startswith("#"):
                description.append(line.lstrip("# "))
                continue
            if not line:
                continue
            parts = line.split()
            if parts[0] == "duration":
                duration = float(parts[1])
                continue
            try:
                t = float(parts[0])
                for kv in parts[1:]:
                    k, v = kv.split("=")
                    if k not in state:
                        raise ValueError(k)
                    state[k] = float(v)
                if state["load"] < 0 or state["load"] != int(state["load"]):
                    raise ValueError("load")
            except ValueError:
                raise SystemExit("%s:%d: expected 'T rate=MBIT rtt=MS [loss=PCT] [load=N]' "
                                 "(N a whole number of devices) or 'duration S', found: %s" % (
                                     path, n, line))
            if state["rate"] is None or state["rtt"] is None:
                raise SystemExit("%s:%d: the first change must give rate= and rtt=" % (path, n))
            steps.append({"t": t, "rate": state["rate"], "rtt": state["rtt"],
                          "loss": state["loss"], "load": int(state["load"])})
    if not steps or steps[0]["t"] != 0:
        raise SystemExit("%s: the first change must be at time 0" % path)
    kind = "trace" if len(steps) > 1 else "fixed"
    if kind == "fixed" and steps[0]["load"]:
        raise SystemExit("%s: load= changes during a trace; a fixed scenario runs without other "
                         "devices' load (give the file a second change and a duration)" % path)
    if kind == "trace" and duration is None:
        raise SystemExit("%s: a trace needs 'duration SECONDS'" % path)
    return {"name": name, "kind": kind, "steps": steps, "duration": duration,
            "description": " ".join(description), "path": path}


def scenario_list(names, folder):
    out = []
    for n in names:
        path = n if os.path.exists(n) else os.path.join(folder, n + ".scn")
        if not os.path.exists(path):
            raise SystemExit("no scenario %s (looked for %s)" % (n, path))
        out.append(parse_scenario(path))
    return out


# ---------------------------------------------------------------------------------------------
# One device run


class Run:
    """The JSON lines of one device run, each with its arrival time (monotonic seconds), and the
    device cgroup's CPU time when the measured part started and when it ended."""

    def __init__(self):
        self.lines = []  # (arrival, dict)
        self.cpu_at = {}  # frame count -> cpu seconds
        self.t_first = None
        self.rc = None
        self.stderr = ""


def bound_flags(args):
    """edgesplit's accuracy bound on its command line (device_argv gives every device the
    --accuracy-confidence the oracle judges by)."""
    return ["--max-accuracy-drop", str(ACCURACY_BOUND)]


def split_bin_dir(extra, default):
    """(the folder whose edgesplit-device runs, the device's own flags): `--bin-dir DIR` in a
    contender's flags (--ab) is the bench's, to run another build of the device in the same
    rounds."""
    extra = list(extra)
    if "--bin-dir" in extra:
        i = extra.index("--bin-dir")
        if i + 1 >= len(extra):
            raise ValueError("--bin-dir needs a folder")
        return extra[i + 1], extra[:i] + extra[i + 2:]
    return default, extra


def device_argv(args, extra, max_frames=None):
    """edgesplit-device's command line in the testbed with `extra` flags; it loops over the
    images, for `max_frames` frames (None: until stopped)."""
    bin_dir, extra = split_bin_dir(extra, args.bin_dir)
    argv = [os.path.join(bin_dir, "edgesplit-device"),
            "--server", "tcp://%s:%d" % (netbed.SRV_ADDR, PORT),
            "--model", args.model, "--input", args.images, "--threads", "1", "--top-k", "1",
            "--engine", args.engine, "--quiet", "--loop", "0",
            # every device reports its plans' loss (`predicted.accuracy_drop_pp`) as the oracle
            # judges it; edgesplit's bound (bound_flags) holds at the same confidence
            "--accuracy-confidence", "%g" % args.accuracy_confidence]
    if args.meta:
        argv += ["--meta", args.meta]
    if args.profile:
        argv += ["--profile", args.profile]
    if max_frames:
        argv += ["--max-frames", str(max_frames)]
    if "--in-flight" not in extra:
        # The device's documented default (1; 4 for --objective throughput), given explicitly.
        argv += ["--in-flight", "4" if "throughput" in extra else "1"]
    return argv + list(extra)


def timeout_flags(flags, dilation, fixed_timeout_ms):
    """--timeout-ms for a contender under dilation K: a fixed plan gets `fixed_timeout_ms` x K (it
    should not fall back), edgesplit its default 1000 ms x K (the device's own time scale is
    dilated with the network's); nothing at K = 1 for edgesplit (its default). At K != 1 the
    handshake's timeout (default 2000 ms) is dilated too: at 100 ms x 10 the handshake alone takes
    two round trips of a second."""
    out = []
    if dilation != 1 and "--handshake-timeout-ms" not in flags:
        out = ["--handshake-timeout-ms", str(int(2000 * dilation))]
    if "--timeout-ms" in flags:
        return out
    if "--cut" in flags or "--plan" in flags:
        return out + ["--timeout-ms", str(int(fixed_timeout_ms * dilation))]
    return out + (["--timeout-ms", str(int(1000 * dilation))] if dilation != 1 else [])


def run_device(tb, args, extra, out_path, warmup, quota, duration=None, on_start=None):
    """Runs edgesplit-device in the device namespace with `extra` flags. The cgroup quota is
    applied when the device says it is ready (model loaded, handshake done: loading runs at full
    speed, every frame runs slowed down; a device without the ready line is slowed down at its
    first frame); the first `warmup` frames are not measured. With `duration` the device loops
    over the images and is stopped that many seconds after the first frame; `on_start(t0)` is
    called then."""
    argv = device_argv(args, extra, None if duration else args.frames + warmup)
    tb.set_slowdown(0)
    run = Run()
    err_path = out_path + ".err"
    import subprocess

    with open(err_path, "w") as err, open(out_path, "w") as raw:
        raw.write(json.dumps({"type": "argv", "argv": argv}) + "\n")
        proc = tb.spawn("dev", argv, subprocess.PIPE, err, in_cgroup=True)
        stop_at = None
        frames = 0
        try:
            slowed = False
            for line in proc.stdout:
                now = time.monotonic()
                raw.write(line.decode() if isinstance(line, bytes) else line)
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                run.lines.append((now, j))
                if not slowed and j.get("type") in ("ready", "frame"):
                    tb.set_slowdown(quota)  # model loaded, frames start: the device is slow now
                    slowed = True
                if j.get("type") != "frame":
                    continue
                frames += 1
                if frames == 1:
                    run.t_first = now
                    if duration:
                        stop_at = now + duration
                        if on_start:
                            on_start(now)
                if frames == warmup:
                    run.cpu_at[frames] = tb.cgroup.cpu_seconds()
                if stop_at and now >= stop_at:
                    break
        finally:
            run.cpu_at[frames] = tb.cgroup.cpu_seconds()
            tb.stop(proc, timeout=10.0)
            run.rc = proc.returncode
    tb.set_slowdown(0)
    with open(err_path) as f:
        run.stderr = f.read()[-2000:]
    return run


# ---------------------------------------------------------------------------------------------
# Metrics


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    rank = p / 100.0 * (len(v) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (rank - lo)


def plan_key(j):
    p = j.get("plan", {})
    return "%s:%s" % (p.get("cut"), p.get("encoding", "?"))


def metrics(run, warmup, labels, slo_ms=None):
    """Latency, throughput, bytes, accuracy, CPU and prediction figures of the measured frames
    (those after the first `warmup`)."""
    frames = [(t, j) for t, j in run.lines if j.get("type") == "frame"]
    measured = frames[warmup:]
    lat = [j["latency_ms"] for _, j in measured]
    m = {"frames": len(measured), "frames_total": len(frames), "rc": run.rc}
    if not measured:
        m["error"] = "no frames measured (device exit %s): %s" % (run.rc, run.stderr.strip()[-300:])
        return m
    where = {}
    for _, j in measured:
        where[j["completed"]] = where.get(j["completed"], 0) + 1
    span = measured[-1][0] - frames[warmup - 1][0] if warmup > 0 else measured[-1][0] - run.t_first
    n_span = len(measured) if warmup > 0 else len(measured) - 1
    cpu_keys = sorted(run.cpu_at)
    cpu = None
    if len(cpu_keys) >= 2 and cpu_keys[-1] > cpu_keys[0]:
        cpu = (run.cpu_at[cpu_keys[-1]] - run.cpu_at[cpu_keys[0]]) / (cpu_keys[-1] - cpu_keys[0])
    scored = [(j, labels.get(os.path.basename(j["source"]))) for _, j in measured]
    scored = [(j, lab) for j, lab in scored if lab is not None and j.get("top")]
    plans = {}
    for _, j in measured:
        plans[plan_key(j)] = plans.get(plan_key(j), 0) + 1
    predicted = [j["predicted"]["latency_ms"] / j["latency_ms"] for _, j in measured
                 if "predicted" in j and j["latency_ms"] > 0 and j["completed"] != "failed"]
    server_ms = [j.get("server_unpack_ms", 0) + j.get("server_compute_ms", 0) for _, j in measured]
    inner = [j for _, j in measured if j["completed"] == "server"]
    m.update({
        "latency_p50_ms": percentile(lat, 50), "latency_p95_ms": percentile(lat, 95),
        "latency_mean_ms": statistics.mean(lat),
        "fps": n_span / span if span > 0 else None,
        "bytes_per_frame": statistics.mean([j.get("bytes_sent", 0) for _, j in measured]),
        "bytes_per_server_frame": statistics.mean([j["bytes_sent"] for j in inner]) if inner
        else None,
        "completed": where,
        "failed": where.get("failed", 0),
        "top1": (sum(1 for j, lab in scored if j["top"][0]["index"] == lab) / len(scored))
        if scored else None,
        "scored": len(scored),
        "device_cpu_ms_per_frame": cpu * 1000 if cpu is not None else None,
        "server_ms_per_frame": statistics.mean(server_ms),
        "plans": dict(sorted(plans.items(), key=lambda kv: -kv[1])),
        "plan_changes": sum(1 for a, b in zip(measured, measured[1:])
                            if plan_key(a[1]) != plan_key(b[1])),
        "predicted_over_measured_p50": percentile(predicted, 50),
        "frame_gaps": sorted(set(range(frames[0][1]["frame"], frames[-1][1]["frame"] + 1)) -
                             {j["frame"] for _, j in frames}),
    })
    conds = [j["conditions"] for _, j in measured if "conditions" in j]
    if conds:
        m["device_load_p50"] = percentile([c["device_load"] for c in conds], 50)
        m["bandwidth_est_p50_mbps"] = percentile([c["bandwidth_mbps"] for c in conds], 50)
        m["rtt_est_p50_ms"] = percentile([c["rtt_ms"] for c in conds], 50)
        # the share of frames planned with the server reachable (not lost, not yet found)
        m["server_available_share"] = (sum(1 for c in conds if c.get("server_available")) /
                                       len(conds))
    drops = [j["predicted"]["accuracy_drop_pp"] for _, j in measured if "predicted" in j]
    if drops:
        m["profile_accuracy_drop_pp_max"] = max(drops)
    # Per plan that reached the server: bytes per frame and the profile's accuracy drop.
    by_plan = {}
    for j in inner:
        b = by_plan.setdefault(plan_key(j), {"frames": 0, "bytes": 0.0, "drop_pp": None})
        b["frames"] += 1
        b["bytes"] += j["bytes_sent"]
        if "predicted" in j:
            b["drop_pp"] = j["predicted"]["accuracy_drop_pp"]
    for b in by_plan.values():
        b["bytes"] /= b["frames"]
    m["server_plans"] = by_plan
    compute = [j.get("server_unpack_ms", 0) + j.get("server_compute_ms", 0) for j in inner]
    if compute:
        m["server_compute_p50_ms"] = percentile(compute, 50)
    if slo_ms:
        m["slo_ms"] = slo_ms
        m["slo_met"] = sum(1 for v in lat if v <= slo_ms) / len(lat)
    return m


def timeline(run, t0, dilation=1.0):
    """Per frame: arrival time from t0, latency, plan, where it completed (times / dilation)."""
    return [{"t": round((t - t0) / dilation, 4), "frame": j["frame"],
             "latency_ms": j["latency_ms"] / dilation,
             "plan": plan_key(j), "completed": j["completed"]}
            for t, j in run.lines if j.get("type") == "frame"]


# ---------------------------------------------------------------------------------------------
# Contenders


def contenders_for(profile, bw, rtt, slowdown, args):
    """(name, flags, note) for a fixed-bandwidth scenario, and the oracle's candidate plans."""
    out = [("device-only", ["--cut", "device"], ""),
           ("server-raw", ["--cut", "input", "--bits", "fp32"], ""),
           ("server-jpeg90", ["--cut", "input", "--bits", "jpeg90"], "")]
    for enc, name in (("fp32", "fixed-fp32"), ("q8", "fixed-q8")):
        best = costmodel.best_fixed(profile, bw, rtt, slowdown, enc) if profile else None
        if best:
            out.append((name, costmodel.pinnable(best), "cut %s (%s)" % (best["cut"],
                                                                          best["encoding"])))
    if profile:
        out.append(("edgesplit-latency", ["--objective", "latency"] + bound_flags(args), ""))
        if "throughput" in args.objectives:
            out.append(("edgesplit-throughput",
                        ["--objective", "throughput"] + bound_flags(args), ""))
            out.append(("server-jpeg90-pipelined", ["--cut", "input", "--bits", "jpeg90",
                                                    "--in-flight", "4"], ""))
    oracle = []
    if profile and args.oracle_k > 0:
        skipped = []
        for p in costmodel.ranked(profile, bw, rtt, slowdown, max_accuracy_drop=ACCURACY_BOUND):
            flags = costmodel.pinnable(p)
            if flags is None:
                skipped.append(p["encoding"])
                continue
            oracle.append(("oracle:%s:%s" % (p["cut"], p["encoding"]), flags,
                           "predicted %.1f ms" % p["predicted"]["latency_ms"]))
            if len(oracle) >= args.oracle_k:
                break
        if skipped:
            print("  oracle: cannot pin %d better-ranked plan(s) from the command line: %s" %
                  (len(skipped), ", ".join(sorted(set(skipped))[:5])))
    return out, oracle


def slo_for(profile, bw, rtt, slowdown):
    """The latency bound of the cost-objective run without the oracle's screening: halfway between the best predicted latency (within the accuracy bound)
    and the device-only one."""
    r = costmodel.ranked(profile, bw, rtt, slowdown, max_accuracy_drop=ACCURACY_BOUND)
    local = [p for p in r if p["local"]][0]["predicted"]["latency_ms"]
    best = r[0]["predicted"]["latency_ms"]
    return round((best + local) / 2.0, 1)


# ---------------------------------------------------------------------------------------------
# The benchmark


def load_labels(path):
    labels = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.strip().split("\t")
                if len(parts) == 2:
                    labels[parts[0]] = int(parts[1])
    return labels


def prepare_images(args, profile, out_dir):
    """A folder of links to the first --frames scored images (never the profile's calibration
    images), so every contender sees the same frames in the same order."""
    calib = set(os.path.basename(p) for p in (profile or {}).get("calibration_images", []))
    files = sorted(f for f in os.listdir(args.image_source)
                   if os.path.splitext(f)[1].lower() in (".jpg", ".jpeg", ".png") and
                   f not in calib)
    if not files:
        print("bench: every image in %s is a calibration image of the profile: scoring them all "
              "anyway (accuracy is then optimistic)" % args.image_source)
        files = sorted(f for f in os.listdir(args.image_source)
                       if os.path.splitext(f)[1].lower() in (".jpg", ".jpeg", ".png"))
    files = files[-args.image_count:] if args.image_count else files
    folder = os.path.join(out_dir, "images")
    if os.path.isdir(folder):  # a results folder used again: the same frames, freshly linked
        for old in os.listdir(folder):
            os.unlink(os.path.join(folder, old))
    os.makedirs(folder, exist_ok=True)
    for f in files:
        os.symlink(os.path.join(os.path.abspath(args.image_source), f), os.path.join(folder, f))
    return folder, len(files)


def start_server(tb, args, out_dir):
    endpoint_file = os.path.join(out_dir, "server.endpoint")
    argv = [os.path.join(args.bin_dir, "edgesplit-server"), "--bind",
            "tcp://%s:%d" % (netbed.SRV_ADDR, PORT), "--model", args.model, "--workers", "1",
            "--threads", "1", "--engine", args.engine, "--endpoint-file", endpoint_file,
            # a peer that stops answering is dropped after 30 s, in the run's time
            "--heartbeat-timeout-s",
            str(int(30 * max(float(k) for k in args.dilation.split(","))))]
    if args.meta:
        argv += ["--meta", args.meta]
    if args.profile:
        # its tail times for the handshake, and the coding tables of its entropy-coded encodings
        argv += ["--profile", args.profile]
    log = open(os.path.join(out_dir, "server.log"), "a")
    proc = tb.spawn("srv", argv, log, log)
    wait_for_server(proc, endpoint_file, out_dir, "edgesplit-server")
    return proc


def wait_for_server(proc, endpoint_file, out_dir, what, timeout_s=120):
    """Waits until the server wrote its endpoint file; stops the run when it exits or takes longer."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(endpoint_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("%s did not start: see %s/server.log" % (what, out_dir))
        time.sleep(0.1)


def screen(tb, args, profile, conditions, out_dir):
    """The oracle's screening: every feasible profiled plan (interleave.feasible_plans) a device
    process, in batches of --screen-batch loaded at once, each batch kept loaded through every
    condition (slowdown, dilation, scenario) in turn; per condition, each batch takes
    --screen-rounds interleaved rounds of 1 settle frame and --screen-frames measured ones. A
    plan whose turn takes longer than --screen-prune times the best screened median so far (per
    frame; a process's first turn, with its cold first frame, is exempt) is pruned by that
    measurement (its process is stopped, and started again for the next
    condition). Returns {(slowdown, dilation, scenario name): {candidates, unpinnable, median_ms
    (wall time), pruned, keep (the --oracle-keep best), flags, slo_ms, wall_s}}."""
    plans, unpinnable = interleave.feasible_plans(profile, ACCURACY_BOUND)
    # Fewest bytes first, so the first measured plans on a slow link set a low bar for the
    # pruning (the order decides what is measured first, not what is measured).
    plans.sort(key=lambda p: (p["bytes"], p["cut"]))
    names = [interleave.plan_name(p) for p in plans]
    flags = {interleave.plan_name(p): costmodel.pinnable(p) for p in plans}
    key = lambda c: (c[0], c[1], c[2]["name"])  # noqa: E731
    out = {key(c): {"candidates": names,
                    "unpinnable": [interleave.plan_name(p) for p in unpinnable],
                    "median_ms": {}, "pruned": {}, "flags": flags, "wall_s": 0.0}
           for c in conditions}
    print("[%s] screening %d feasible plans (%d more cannot be pinned on the command line) in "
          "%d condition(s), %d processes at a time" % (
              time.strftime("%H:%M:%S"), len(names), len(unpinnable), len(conditions),
              args.screen_batch), flush=True)
    raw_dir = os.path.join(out_dir, "raw", "screening")
    os.makedirs(raw_dir, exist_ok=True)
    per_turn = 1 + args.screen_frames
    k_max = max(c[1] for c in conditions)
    for b in range(0, len(names), args.screen_batch):
        batch = names[b:b + args.screen_batch]
        devs = {}
        with timing_lock(args), contextlib.ExitStack() as done:
            done.callback(lambda: [d.close(kill=True) for d in devs.values()])
            done.callback(tb.set_slowdown, 0)
            for slowdown, dilation, sc in conditions:
                t0 = time.monotonic()
                res = out[(slowdown, dilation, sc["name"])]
                # A plan pruned in the last condition may still owe frames: wait a little for
                # them, else stop it (and start it again below).
                for n in [n for n in batch if n in devs and devs[n].owed]:
                    if not devs[n].drain(args.max_turn_s):
                        devs.pop(n).close(kill=True)
                dead = [n for n in batch if n not in devs]
                if dead:
                    started, failed = turns.start_all(tb, [(
                        n, device_argv(args, flags[n] + timeout_flags(flags[n], k_max,
                                                                      args.timeout_ms)),
                        os.path.join(raw_dir, "%gx-K%g-%s-%s.jsonl" % (
                            slowdown, dilation, sc["name"], n.replace(":", "_"))))
                        for n in dead])
                    devs.update(started)
                    for n, why in failed.items():
                        res["pruned"][n] = "did not start: %s" % why
                link = interleave.dilate_step(sc["steps"][0], dilation)
                tb.set_link(link["rate"], link["rtt"], link["loss"])
                tb.set_slowdown(slowdown)
                lat = {}
                for r in range(args.screen_rounds):
                    for turn in interleave.schedule(batch, 1, args.screen_frames, 1):
                        n = turn["name"]
                        if n not in devs or n in res["pruned"]:
                            continue
                        known = list(res["median_ms"].values()) + [
                            statistics.median(v) for v in lat.values() if v]
                        # A process's first frame is a cold one (its first inference; 0.8-0.9 s
                        # under a 10x quota): its first turn is not held to the pruning limit.
                        cold = devs[n].frames_started == 0
                        limit = args.max_turn_s if not known or cold else min(
                            args.max_turn_s, max(1.0, args.screen_prune * min(known) *
                                                 per_turn / 1000.0))
                        first = devs[n].frames_started + 1
                        got, ok = devs[n].turn(per_turn, limit, stop_late=False)
                        if not ok:
                            res["pruned"][n] = ("turn of %d frames not done within %.1f s (%gx "
                                                "the best screened median per frame)" % (
                                                    per_turn, limit,
                                                    args.screen_prune)
                                                if known else devs[n].dead)
                            if devs[n].proc.poll() is not None:
                                devs.pop(n).close(kill=True)
                            continue
                        lat.setdefault(n, []).extend(
                            j["latency_ms"] for _, j in got if j["frame"] >= first and
                            j["completed"] != "failed")
                tb.set_slowdown(0)
                for n, v in lat.items():
                    if v and n not in res["pruned"]:
                        res["median_ms"][n] = statistics.median(v)
                res["wall_s"] += time.monotonic() - t0
    for slowdown, dilation, sc in conditions:
        res = out[(slowdown, dilation, sc["name"])]
        res["keep"] = interleave.screen_keep(res["median_ms"], args.oracle_keep)
        local = [v for n, v in res["median_ms"].items() if n.endswith(":local")]
        sending = [v for n, v in res["median_ms"].items() if not n.endswith(":local")]
        res["slo_ms"] = round((min(sending) + local[0]) / 2.0, 1) if local and sending else None
        res["wall_s"] = round(res["wall_s"], 1)
        print("  %s/%gx/K%g: kept %s of %d screened (%d pruned), %.0f s" % (
            sc["name"], slowdown, dilation, ", ".join("%s %.1f ms" % (n, res["median_ms"][n] / dilation)
                                  for n in res["keep"]),
            len(res["median_ms"]), len(res["pruned"]), res["wall_s"]), flush=True)
    return out


def scenario_contenders(profile, step, slowdown, dilation, args, screened):
    """(name, flags, note) of a fixed scenario's contenders: the fixed ones and edgesplit's (by
    the cost model at the link as emulated: rate / K, round trip x K), and the oracle's
    candidates that the screening kept (`screened`: {name: screened median ms}, or None)."""
    rate, rtt = step["rate"] / dilation, step["rtt"] * dilation
    cons, oracle = contenders_for(profile, rate, rtt, slowdown, args)
    cons = [c for c in cons if c[0] in args.contenders or c[0].endswith("-pipelined") and
            "edgesplit-throughput" in args.contenders]
    if profile and "edgesplit-cost" in args.contenders:
        slo = slo_for(profile, rate, rtt, slowdown)
        note = "SLO %.1f ms (halfway between the best predicted latency and device-only's)"
        if screened and screened.get("slo_ms"):
            slo = screened["slo_ms"]
            note = ("SLO %.1f ms (halfway between device-only's screened median and the best "
                    "screened median of a plan that sends)")
        cons.append(("edgesplit-cost", ["--objective", "cost", "--max-latency-ms",
                                        "%.1f" % slo] + bound_flags(args),
                     note % (slo / dilation)))
    base = next((c for c in cons if c[0] == "edgesplit-latency"), None)
    for name, extra in getattr(args, "ab_variants", []) if base else []:
        cons.append(("edgesplit-latency+" + name, base[1] + extra,
                     "edgesplit-latency with " + " ".join(extra)))
    if screened is not None:
        oracle = []
        for name in screened["keep"]:
            flags = screened["flags"][name]
            oracle.append(("oracle:" + name, flags, "screened %.1f ms" %
                           (screened["median_ms"][name] / dilation)))
    return cons, oracle


@contextlib.contextmanager
def timing_lock(args):
    """Holds --lock (flock) while a part of the run measures: each screening batch, each
    scenario's rounds, each trace run; between them others sharing the machine may measure."""
    if not args.lock:
        yield
        return
    with open(args.lock, "a") as f:
        t0 = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.monotonic() - t0
        if waited > 1:
            print("  (waited %.0f s for %s)" % (waited, args.lock), flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def rounds_of(args):
    """(rounds, measured frames per contender and round): --frames over at least 2 rounds of at
    most --round-frames (--frames rounded up to a multiple of the rounds)."""
    rounds = max(2, -(-args.frames // args.round_frames))
    return rounds, -(-args.frames // rounds)


def run_fixed(tb, args, profile, labels, sc, slowdown, out_dir, results, dilation=1.0,
              screened=None):
    """One fixed scenario: every contender (and the oracle's candidates) a loaded device process,
    all taking turns in interleaved rounds on the same images (interleave.schedule); metrics per
    contender over its measured frames, and per round the values the ratios' intervals come
    from. Times are reported divided by the dilation."""
    step = sc["steps"][0]
    link = interleave.dilate_step(step, dilation)
    tb.set_link(link["rate"], link["rtt"], link["loss"])
    tag = "%s/%gx/K%g" % (sc["name"], slowdown, dilation)
    print("[%s] %s: %g Mbit/s, RTT %g ms, device %gx slower, dilation %g (link %g Mbit/s, "
          "RTT %g ms)" % (time.strftime("%H:%M:%S"), sc["name"], step["rate"], step["rtt"],
                          slowdown, dilation, link["rate"], link["rtt"]), flush=True)
    cons, oracle = scenario_contenders(profile, step, slowdown, dilation, args, screened)
    raw_dir = os.path.join(out_dir, "raw", "%gx" % slowdown, "K%g" % dilation, sc["name"])
    os.makedirs(raw_dir, exist_ok=True)
    # A plan that several contenders share runs once.
    by_flags, same_as = {}, {}
    for name, flags, note in cons + oracle:
        key = " ".join(flags)
        if key in by_flags:
            same_as[name] = by_flags[key]
        else:
            by_flags[key] = name
    notes = {name: note for name, _, note in cons + oracle}
    flags_of = {name: flags for name, flags, _ in cons + oracle}
    running = [n for n in flags_of if n not in same_as]
    entries = [(n, device_argv(args, flags_of[n] + timeout_flags(flags_of[n], dilation,
                                                                 args.timeout_ms)),
                os.path.join(raw_dir, n.replace(":", "_").replace("/", "-") + ".jsonl"))
               for n in running]
    entry = {"scenario": sc["name"], "kind": "fixed", "slowdown": slowdown, "dilation": dilation,
             "rate_mbit": step["rate"], "rtt_ms": step["rtt"], "link_rate_mbit": link["rate"],
             "link_rtt_ms": link["rtt"], "contenders": {}, "oracle_candidates": {}}
    rounds, per_round_frames = rounds_of(args)
    measured = turns.Turns()
    devs, failed = turns.start_all(tb, entries)
    if not devs and not results["runs"]:
        raise SystemExit("bench: no device process started, stopping: %s" % failed)
    t0 = time.monotonic()
    try:
        tb.set_slowdown(slowdown)
        # Warm-up: every contender its first frames, not measured. One much slower than the
        # fastest (by more than --drop-factor) whose rounds would take more than --drop-after-s
        # takes no further turns (device-only and the JPEG upload excepted, the baselines, and
        # edgesplit's own contenders, what the run measures: their first frames are cold).
        warm = turns.run_rounds(devs, running, 1, args.warmup, 0, args.max_turn_s)
        warm_ms = {n: statistics.median(j["latency_ms"] for _, _, j in f)
                   for n, f in warm.frames.items() if f}
        dropped = dict(warm.dropped)
        if warm_ms:
            fastest = min(warm_ms.values())
            for n, v in warm_ms.items():
                projected_s = v / 1000.0 * rounds * (args.settle + per_round_frames)
                if v > args.drop_factor * fastest and projected_s > args.drop_after_s and \
                        n not in ("device-only", "server-jpeg90") and \
                        not n.startswith("edgesplit-"):
                    dropped[n] = ("%.1f ms in the warm-up, %.1fx the fastest contender's: not "
                                  "measured further" % (v / dilation, v / fastest))
        for n in dropped:
            if n in devs:
                devs.pop(n).close(kill=True)
        taking = [n for n in running if n in devs]
        measured = turns.run_rounds(devs, taking, rounds, per_round_frames, args.settle,
                                    args.max_turn_s)
        dropped.update(measured.dropped)
        dropped.update(failed)
    finally:
        tb.set_slowdown(0)
        for d in devs.values():
            d.close()
    entry["wall_s"] = round(time.monotonic() - t0, 1)
    entry["rounds"] = rounds
    per_round = {}
    for name in running:
        frames = measured.frames.get(name, [])
        run = Run()
        run.lines = [(t, j) for _, t, j in frames]
        run.t_first = run.lines[0][0] if run.lines else None
        run.rc = 0
        d = devs.get(name)
        run.stderr = d.stderr_tail() if d else ""
        slo = None
        if name == "edgesplit-cost":
            slo = float(flags_of[name][flags_of[name].index("--max-latency-ms") + 1])
        if frames:
            m = metrics(run, 0, labels, slo)
            spans = measured.spans.get(name, [])
            m["fps"] = (sum(n for _, _, n in spans) / sum(s for _, s, _ in spans)) if spans \
                else None
            cpu = measured.cpu.get(name)
            m["device_cpu_ms_per_frame"] = 1000.0 * cpu[0] / cpu[1] if cpu and cpu[1] else None
            m["frame_gaps"] = []
        else:
            m = {"frames": 0, "error": dropped.get(name, "no frames measured")}
        if name in dropped:
            m["dropped"] = dropped[name]
        # Per round: the median latency of the contender's measured frames, its frames per
        # second, its mean server time and bytes per frame, in the target system's time.
        by_round, fps = {}, {}
        for r, _, j in frames:
            by_round.setdefault(r, []).append(j)
        for r, s, n in measured.spans.get(name, []):
            fps[r] = n / s * dilation
        per_round[name] = {
            "latency_p50_ms": interleave.per_round(
                {r: statistics.median(j["latency_ms"] for j in v) / dilation
                 for r, v in by_round.items()}, rounds),
            "fps": interleave.per_round(fps, rounds),
            "server_ms": interleave.per_round(
                {r: statistics.mean(j.get("server_unpack_ms", 0) + j.get("server_compute_ms", 0)
                                    for j in v) / dilation for r, v in by_round.items()}, rounds),
            "bytes": interleave.per_round(
                {r: statistics.mean(j.get("bytes_sent", 0) for j in v)
                 for r, v in by_round.items()}, rounds)}
        m = interleave.undilate_metrics(m, dilation)
        m.update(contender=name, flags=flags_of[name], note=notes[name])
        (entry["oracle_candidates"] if name.startswith("oracle:") else
         entry["contenders"])[name] = m
    for name, other in same_as.items():
        m = dict(entry["oracle_candidates"].get(other) or entry["contenders"][other],
                 same_run_as=other, contender=name, flags=flags_of[name], note=notes[name])
        (entry["oracle_candidates"] if name.startswith("oracle:") else
         entry["contenders"])[name] = m
        per_round[name] = per_round[other]
    entry["per_round"] = per_round
    if screened is not None:
        entry["screening"] = {k: screened[k] for k in ("candidates", "unpinnable", "median_ms",
                                                       "pruned", "keep", "wall_s")}
    for name in running:
        m = entry["contenders"].get(name) or entry["oracle_candidates"].get(name)
        print("  %-26s %s" % (name, short(m)), flush=True)
    finish_oracle(entry)
    entry["intervals"] = ratio_intervals(entry)
    for what, iv in entry["intervals"].items():
        if iv:
            print("  %-40s %.3f [%.3f, %.3f] over %d rounds" % (what, iv["point"], iv["lo"],
                                                                iv["hi"], iv["rounds"]))
    results["runs"].append(entry)
    print("  %s done in %.0f s" % (tag, entry["wall_s"]), flush=True)
    return entry


def ratio_intervals(entry):
    """Per-round paired ratios and their bootstrap intervals: edgesplit-latency over the oracle
    and over the best fixed contender within the accuracy bound (each chosen by its median over
    all rounds; a contender that loses more than the bound is no alternative to it), throughput
    mode's fps over device-only's + the pipelined JPEG upload's."""
    c, pr = entry["contenders"], entry["per_round"]
    out = {}
    es = pr.get("edgesplit-latency")
    orc = entry.get("oracle")
    if es and orc and orc["plan"] in pr:
        out["edgesplit-latency/oracle"] = interleave.paired_ratio(
            es["latency_p50_ms"], pr[orc["plan"]]["latency_p50_ms"])
    for name in pr:
        if es and name.startswith("edgesplit-latency+"):
            out[name + "/edgesplit-latency"] = interleave.paired_ratio(
                pr[name]["latency_p50_ms"], es["latency_p50_ms"])
    valid = {k: c[k] for k in FIXED_CONTENDERS if clean(k, c.get(k)) and within_bound(c[k])}
    if es and valid:
        best = min(valid, key=lambda k: valid[k]["latency_p50_ms"])
        entry["best_fixed"] = best
        out["edgesplit-latency/best-fixed"] = interleave.paired_ratio(
            es["latency_p50_ms"], pr[best]["latency_p50_ms"])
    tp, dev, srv = (pr.get("edgesplit-throughput"), pr.get("device-only"),
                    pr.get("server-jpeg90-pipelined"))
    if tp and dev and srv:
        both = [a + b if a is not None and b is not None else None
                for a, b in zip(dev["fps"], srv["fps"])]
        out["edgesplit-throughput/(device-only+server-only) fps"] = interleave.paired_ratio(
            tp["fps"], both)
    return out


def short(m):
    if "error" in m:
        return "ERROR " + m["error"]
    return ("p50 %7.1f ms  p95 %7.1f ms  %6.2f fps  %8.0f B/frame  top1 %s  cpu %s ms/frame  %s"
            % (m["latency_p50_ms"], m["latency_p95_ms"], m["fps"] or 0, m["bytes_per_frame"],
               "%.2f" % m["top1"] if m["top1"] is not None else "-",
               "%.1f" % m["device_cpu_ms_per_frame"] if m["device_cpu_ms_per_frame"] else "-",
               ",".join("%s x%d" % kv for kv in list(m["plans"].items())[:2])))


def within_bound(metrics):
    """Whether a contender's plans are within the accuracy bound by the profile (as edgesplit
    judges it: costmodel.accuracy_drop_pp)."""
    return metrics.get("profile_accuracy_drop_pp_max", 0) <= ACCURACY_BOUND + 1e-9


def feasible_measured(entry):
    """The plans measured in a scenario that the oracle may take: the oracle's candidates and
    every fixed contender (the JPEG upload too), within the accuracy bound by the profile, each
    having finished every frame as itself. {name: metrics}."""
    pool = dict(entry.get("oracle_candidates", {}))
    pool.update({k: v for k, v in entry["contenders"].items() if k in FIXED_CONTENDERS})
    return {k: v for k, v in pool.items()
            if clean("device-only" if k.endswith(":local") else k, v) and within_bound(v)}


def cost_feasible(entry, server_only_ms, slo_ms):
    """Whether a feasible measured plan (feasible_measured) sends, at most halves server-only's
    server time and keeps 95% of frames within the SLO (p95 <= SLO): True; else the plan that
    halves it with the lowest p95 as (name, server ms, p95 ms), or None."""
    halves = {k: v for k, v in feasible_measured(entry).items()
              if 0 < v["server_ms_per_frame"] <= server_only_ms / 2}
    if any(v["latency_p95_ms"] <= slo_ms for v in halves.values()):
        return True
    if not halves:
        return None
    k = min(halves, key=lambda n: halves[n]["latency_p95_ms"])
    return (k, halves[k]["server_ms_per_frame"], halves[k]["latency_p95_ms"])


def finish_oracle(entry):
    """The oracle: the lowest measured p50 latency among the candidate plans and the fixed
    contenders that meet the accuracy bound (by the profile)."""
    pool = feasible_measured(entry)
    if pool:
        best = min(pool, key=lambda k: pool[k]["latency_p50_ms"])
        entry["oracle"] = {"plan": best, "latency_p50_ms": pool[best]["latency_p50_ms"],
                           "latency_p95_ms": pool[best]["latency_p95_ms"],
                           "candidates_tried": sorted(pool)}


LOAD_LEAD_S = 3.0  # edgesplit-load sets up this long before its devices start (it takes ~1.5 s)


class ServerLoad:
    """Other devices at the server: `edgesplit-load` in the server's namespace, N simulated devices
    each keeping one request in flight (closed loop) at the middle cut, 8-bit, none of them
    through the shaped link. A process sets up first (the model's cut shapes, the payloads: about
    1.5 s here), so start() is called LOAD_LEAD_S ahead with the wall-clock time its devices are
    to start; stop_all() ends every one started."""

    def __init__(self, tb, args, log_path):
        self.tb, self.args, self.log_path = tb, args, log_path
        self.procs = []

    def start(self, clients, at_unix_s=None):
        argv = [os.path.join(self.args.bin_dir, "edgesplit-load"),
                "--server", "tcp://%s:%d" % (netbed.SRV_ADDR, PORT),
                "--model", self.args.model, "--clients", str(clients), "--in-flight", "1",
                "--seconds", "3600", "--warmup-s", "0", "--drain-ms", "1000"]
        if at_unix_s is not None:
            argv += ["--start-at-unix-ms", str(int(at_unix_s * 1000))]
        if self.args.meta:
            argv += ["--meta", self.args.meta]
        log = open(self.log_path, "a")
        self.procs.append(self.tb.spawn("srv", argv, log, log))
        self.procs[-1].log_offset = log.tell()
        return self.procs[-1]

    def wait_started(self, proc, timeout_s=30.0):
        """Blocks until `proc` says its devices have started (edgesplit-load prints "N devices
        started" on stderr); raises if it exits or stays silent for timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            with open(self.log_path) as f:
                f.seek(proc.log_offset)
                if "devices started" in f.read():
                    return
            if proc.poll() is not None:
                raise RuntimeError("edgesplit-load exited (%d) before its devices started; see %s"
                                   % (proc.returncode, self.log_path))
            if time.monotonic() > deadline:
                raise RuntimeError("edgesplit-load did not start its devices within %g s; see %s"
                                   % (timeout_s, self.log_path))
            time.sleep(0.05)

    def stop(self, proc):
        if proc is not None:
            self.tb.stop(proc, timeout=5.0)

    def stop_all(self):
        for p in self.procs:
            self.tb.stop(p, timeout=5.0)
        self.procs = []


def load_events(steps, lead_s):
    """The load changes of a trace (its steps, in wall time from the first frame) as a time-ordered
    list of (when, what, step index): ("start", i) lead_s before step i for a load that begins
    there (at once for step 0), ("stop", i) at step i for the load of the step before."""
    events = []
    for i, st in enumerate(steps):
        before = steps[i - 1].get("load", 0) if i > 0 else 0
        if st.get("load", 0) == before:
            continue
        if st.get("load", 0) > 0 and i > 0:
            events.append((max(0.0, st["t"] - lead_s), "start", i))
        if before > 0:
            events.append((st["t"], "stop", i))
    return sorted(events, key=lambda e: (e[0], e[1] == "start"))


def trace_fixed(args, sc):
    """The fixed contenders a trace runs: --trace-contenders, and for a trace that loads the server,
    device-only among them (the plan a loaded server leaves, and the reference after the load
    begins: window_reference)."""
    names = list(args.trace_contenders)
    if names and "device-only" not in names and any(st.get("load", 0) for st in sc["steps"]):
        names.append("device-only")
    return names


def run_trace(tb, args, profile, labels, sc, slowdown, out_dir, results, dilation=1.0):
    """A trace, one contender after another (a trace replays in time, so its runs cannot take
    turns); under dilation K the link changes happen at K x their times, rates / K, round trips
    x K, and the timeline is reported in the target system's time (/ K)."""
    print("[%s] trace %s (%gs), device %gx slower, dilation %g" % (
        time.strftime("%H:%M:%S"), sc["name"], sc["duration"], slowdown, dilation), flush=True)
    raw_dir = os.path.join(out_dir, "raw", "%gx" % slowdown, "K%g" % dilation, sc["name"])
    os.makedirs(raw_dir, exist_ok=True)
    steps = [interleave.dilate_step(st, dilation) for st in sc["steps"]]
    loaded = any(st.get("load", 0) for st in steps)
    cons = [("edgesplit-latency", ["--objective", "latency"] + bound_flags(args))]
    # --ab variants replay the trace too, right after edgesplit-latency (a trace replays in
    # time: the runs cannot take turns; repeat the run and compare run by run).
    for name, extra in getattr(args, "ab_variants", []):
        cons.append(("edgesplit-latency+" + name, cons[0][1] + extra))
    for name in trace_fixed(args, sc):
        if name == "server-jpeg90":
            cons.append((name, ["--cut", "input", "--bits", "jpeg90"]))
        elif name == "device-only":
            cons.append((name, ["--cut", "device"]))
        elif name == "fixed-q8" and profile:
            best = costmodel.best_fixed(profile, steps[0]["rate"], steps[0]["rtt"], slowdown,
                                        "q8")
            cons.append((name, costmodel.pinnable(best)))
    entry = {"scenario": sc["name"], "kind": "trace", "slowdown": slowdown, "dilation": dilation,
             "steps": sc["steps"], "duration_s": sc["duration"], "contenders": {}}
    for name, flags in cons:
        flags = flags + timeout_flags(flags, dilation, args.timeout_ms)
        tb.set_link(steps[0]["rate"], steps[0]["rtt"], steps[0]["loss"])
        load = ServerLoad(tb, args, os.path.join(raw_dir, name + ".load.log"))
        running = {0: None}
        if steps[0]["load"]:
            # A load from the first step is on before the device starts (its handshake already
            # meets a busy server).
            running[0] = load.start(steps[0]["load"])
        changes = []
        stop = threading.Event()

        def replay(t0):
            def loop():
                # Link changes at their times; the load's processes start LOAD_LEAD_S ahead of
                # theirs, their devices at the step's time; the previous load stops then.
                events = [(wall["t"], "link", i) for i, wall in enumerate(steps) if i > 0]
                events += load_events(steps, LOAD_LEAD_S * dilation)
                events.sort(key=lambda e: (e[0], e[1] != "stop"))
                for when, what, i in events:
                    if stop.wait(max(0.0, t0 + when - time.monotonic())):
                        break
                    if what == "start":
                        running[i] = load.start(
                            steps[i]["load"],
                            time.time() + (t0 + steps[i]["t"] - time.monotonic()))
                        continue
                    if what == "stop":
                        prev = max(k for k in running if k < i)
                        load.stop(running.pop(prev))
                        continue
                    st, wall = sc["steps"][i], steps[i]
                    tb.set_link(wall["rate"], wall["rtt"], wall["loss"])
                    changes.append({"t": round((time.monotonic() - t0) / dilation, 4),
                                    "scheduled_t": st["t"], "rate": st["rate"], "rtt": st["rtt"],
                                    "loss": st["loss"], "load": st["load"]})
                    print("    %.2fs: link now %g Mbit/s, RTT %g ms, loss %g%%%s" % (
                        changes[-1]["t"], st["rate"], st["rtt"], st["loss"],
                        "; %d other devices at the server" % st["load"] if loaded else ""),
                        flush=True)
                # Processes started here die with this thread (PR_SET_PDEATHSIG): it lives until
                # the run ends.
                stop.wait()
            th = threading.Thread(target=loop, daemon=True)
            th.start()
            return th

        t0_box, threads = [], []
        try:
            if running[0] is not None:
                load.wait_started(running[0])
            run = run_device(tb, args, flags, os.path.join(raw_dir, name + ".jsonl"),
                             args.warmup, slowdown,
                             duration=interleave.dilate_duration_s(sc["duration"], dilation),
                             on_start=lambda t0: (t0_box.append(t0), threads.append(replay(t0))))
        finally:
            stop.set()
            for th in threads:
                th.join()
            load.stop_all()
        m = interleave.undilate_metrics(metrics(run, args.warmup, labels), dilation)
        m["timeline"] = timeline(run, t0_box[0], dilation) if t0_box else []
        m["changes"] = changes
        m["flags"] = flags
        entry["contenders"][name] = m
        print("  %-26s %s; %d plan changes" % (name, short(m) if "error" not in m else m["error"],
                                               m.get("plan_changes", 0)), flush=True)
    results["runs"].append(entry)
    return entry


# ---------------------------------------------------------------------------------------------
# Targets, as ratios from this run

FIXED_CONTENDERS = ("device-only", "server-raw", "server-jpeg90", "fixed-fp32", "fixed-q8")


def ok_metrics(m):
    return m is not None and "error" not in m and m.get("frames", 0) > 0


def clean(name, m):
    """Measured, nothing failed, and a plan that sends finished every frame on the server (a
    fallback to the device means the contender did not run as itself)."""
    local_plan = name == "device-only" or m is not None and m.get("flags") == ["--cut", "device"]
    return (ok_metrics(m) and m["failed"] == 0 and
            (local_plan or m["completed"].get("local", 0) == 0))


def interval_fields(iv):
    """A ratio's point and 95% interval as target fields."""
    return {"ratio": iv["point"], "lo95": iv["lo"], "hi95": iv["hi"], "rounds": iv["rounds"]}


def inner_cut(plan_name, last_cut):
    """Whether a contender's plan ("oracle:CUT:ENC", or a fixed contender's "CUT:ENC") cuts inside
    the network."""
    try:
        cut = int(plan_name.split(":")[-2])
    except (ValueError, IndexError):
        return False
    return 0 < cut < last_cut


def windows(m, duration_s):
    """A trace contender's frames per window, as ((start s, end s), frames): window 0 before its
    first change, window i from change i-1 to the next (frames by the time they started, in the
    run's own changes)."""
    bounds = [0.0] + [c["t"] for c in m.get("changes", [])] + [duration_s]
    return [((a, b), [f for f in m.get("timeline", [])
                      if a <= f["t"] - f["latency_ms"] / 1000.0 < b])
            for a, b in zip(bounds, bounds[1:])]


def window_medians(m, duration_s):
    """A trace contender's median latency per window (windows(); None: no frame there)."""
    return [statistics.median(f["latency_ms"] for f in seg) if seg else None
            for _, seg in windows(m, duration_s)]


def recovery_s(seg, t, bound_ms):
    """Seconds from `t` to the first of the frames `seg` (those started after it, in order) whose
    window of RECOVERY_WINDOW frames (itself and the next ones) has a median latency within
    `bound_ms` (None: none)."""
    for k, f in enumerate(seg):
        window = [g["latency_ms"] for g in seg[k:k + RECOVERY_WINDOW]]
        if len(window) == RECOVERY_WINDOW and statistics.median(window) <= bound_ms:
            return f["t"] - f["latency_ms"] / 1000.0 - t
    return None


def window_table(e):
    """A trace with server load: per window between changes and contender, frames, p50 and the
    share finished on the device; for edgesplit, the time from the change until it is back within
    10% of the fixed contender fastest in that window (recovery_s, as the trace target)."""
    L = ["Trace %s, device %gx (windows between changes, by each run's own change times):" % (
        e["scenario"], e["slowdown"]), "",
        "| window | load | contender | frames | p50 ms | on the device | within 10% of the "
        "window's best fixed contender after |", "|---" * 7 + "|"]
    steps = e["steps"]
    for name, m in e["contenders"].items():
        if not ok_metrics(m):
            continue
        for w, ((a, b), seg) in enumerate(windows(m, e["duration_s"])):
            if not seg:
                continue
            back = "-"
            best = window_reference(e, w) if w > 0 and name.startswith("edgesplit") else None
            if best:
                r = recovery_s(seg, a, 1.10 * best[1])
                back = "%s (%s, %.1f ms)" % ("%.2f s" % r if r is not None else "never",
                                             best[0], best[1])
            L.append("| %.1f-%.1f s | %d | %s | %d | %.1f | %.0f%% | %s |" % (
                a, b, steps[min(w, len(steps) - 1)].get("load", 0), name, len(seg),
                statistics.median(f["latency_ms"] for f in seg),
                100.0 * sum(1 for f in seg if f["completed"] == "local") / len(seg), back))
    return L + [""]


def window_reference(entry, window):
    """(name, median latency) of the fixed contender fastest in `window` of a trace run."""
    best = None
    for name in FIXED_CONTENDERS:
        m = entry["contenders"].get(name)
        if not ok_metrics(m):
            continue
        med = window_medians(m, entry["duration_s"])
        if window < len(med) and med[window] is not None and (best is None or
                                                               med[window] < best[1]):
            best = (name, med[window])
    return best


def targets(results, profile):
    """The testbed's targets per fixed scenario, each from the paired 95% interval
    over rounds: met only when the whole interval supports it."""
    t = {"latency_vs_oracle": [], "latency_vs_best_fixed": [], "trace_recovery": [],
         "trace_outage": [], "throughput": [], "cost": [], "bytes": [], "prediction": []}
    last_cut = profile["cuts"][-1]["id"] if profile else None
    fixed = [e for e in results["runs"] if e["kind"] == "fixed"]
    for e in fixed:
        c, iv, pr = e["contenders"], e.get("intervals", {}), e.get("per_round", {})
        es = c.get("edgesplit-latency")
        where = {"scenario": e["scenario"], "slowdown": e["slowdown"],
                 "dilation": e.get("dilation", 1.0), "rate_mbit": e["rate_mbit"],
                 "rtt_ms": e["rtt_ms"]}
        if iv.get("edgesplit-latency/oracle"):
            r = iv["edgesplit-latency/oracle"]
            t["latency_vs_oracle"].append(dict(
                where, oracle=e["oracle"]["plan"], met=interleave.supports_at_most(r, 1.10),
                **interval_fields(r)))
        if iv.get("edgesplit-latency/best-fixed"):
            r = iv["edgesplit-latency/best-fixed"]
            valid = {k: c[k] for k in FIXED_CONTENDERS if clean(k, c.get(k))}
            t["latency_vs_best_fixed"].append(dict(
                where, best_fixed=e["best_fixed"], met=interleave.supports_at_most(r, 1.05),
                gain_over={k: v["latency_p50_ms"] / es["latency_p50_ms"] for k, v in valid.items()},
                outside_bound={k: v.get("profile_accuracy_drop_pp_max") for k, v in valid.items()
                               if not within_bound(v)},
                **interval_fields(r)))
        r = iv.get("edgesplit-throughput/(device-only+server-only) fps")
        if e["rate_mbit"] >= 20 and r:
            t["throughput"].append(dict(
                where, fps=c["edgesplit-throughput"]["fps"],
                device_only_fps=c["device-only"]["fps"],
                server_only_fps=c["server-jpeg90-pipelined"]["fps"],
                met=interleave.supports_at_least(r, 0.8), **interval_fields(r)))
        cost = c.get("edgesplit-cost")
        so = [k for k in ("server-raw", "server-jpeg90") if ok_metrics(c.get(k))]
        if ok_metrics(cost) and so:
            ref = min(so, key=lambda k: c[k]["server_ms_per_frame"])
            r = interleave.paired_ratio(pr[ref]["server_ms"], pr["edgesplit-cost"]["server_ms"])
            ms = cost["server_ms_per_frame"]
            row = dict(where, server_ms=ms, server_only_ms=c[ref]["server_ms_per_frame"],
                       slo_ms=cost.get("slo_ms"), slo_met=cost.get("slo_met"))
            if r is None and ms == 0:
                row.update(ratio=None, lo95=None, hi95=None,
                           met=(cost.get("slo_met") or 0) >= 0.95,
                           note="every frame ran on the device")
            elif r:
                row.update(met=interleave.supports_at_least(r, 2.0) and
                           (cost.get("slo_met") or 0) >= 0.95, **interval_fields(r))
            if row.get("met") is False and cost.get("slo_ms"):
                closest = cost_feasible(e, row["server_only_ms"], cost["slo_ms"])
                if closest is not True:
                    del row["met"]
                    row["note"] = (row["note"] + "; " if row.get("note") else "") + (
                        "not a target here: no measured plan within the accuracy bound halves "
                        "server time with 95%% of frames within the SLO (%s)" % (
                            "closest: %s, server %.1f ms, p95 %.1f ms" % closest if closest else
                            "none measured halves it"))
            if "met" in row or "note" in row:
                t["cost"].append(row)
        jpeg = c.get("server-jpeg90")
        orc = e.get("oracle")
        if ok_metrics(es) and ok_metrics(jpeg) and orc and last_cut is not None:
            pool = dict(e.get("oracle_candidates", {}), **c)
            plan = orc["plan"]
            main = next(iter(pool[plan]["plans"])) if pool.get(plan, {}).get("plans") else plan
            if inner_cut(plan, last_cut) or inner_cut("x:" + main, last_cut):
                r = interleave.paired_ratio(pr["server-jpeg90"]["bytes"],
                                            pr["edgesplit-latency"]["bytes"])
                drop = es.get("profile_accuracy_drop_pp_max")
                row = dict(where, oracle=plan, oracle_plan=main, bytes=es["bytes_per_frame"],
                           jpeg_bytes=jpeg["bytes_per_frame"], plans=es["plans"],
                           profile_accuracy_drop_pp=drop)
                if es["bytes_per_frame"] == 0:
                    row.update(ratio=None, lo95=None, hi95=None,
                               met=True, note="edgesplit ran every frame on the device")
                elif r:
                    row.update(met=interleave.supports_at_least(r, 8.0) and drop is not None
                               and drop <= ACCURACY_BOUND, **interval_fields(r))
                if "met" in row:
                    t["bytes"].append(row)
        if ok_metrics(es) and es.get("predicted_over_measured_p50"):
            r = es["predicted_over_measured_p50"]
            t["prediction"].append(dict(where, ratio=r, met=0.85 <= r <= 1.15))
    ref = {(e["slowdown"], e.get("dilation", 1.0), e["rate_mbit"], e["rtt_ms"]): e for e in fixed}
    for e in results["runs"]:
        if e["kind"] != "trace":
            continue
        es = e["contenders"].get("edgesplit-latency")
        if not es or "error" in es:
            continue
        tl = es["timeline"]
        if any(s["loss"] >= 100 for s in e["steps"]):
            t["trace_outage"].append({
                "scenario": e["scenario"], "slowdown": e["slowdown"],
                "dilation": e.get("dilation", 1.0), "frames": len(tl),
                "failed": sum(1 for f in tl if f["completed"] == "failed"),
                "frame_gaps": es.get("frame_gaps", []),
                "local_during_outage": sum(1 for f in tl if f["completed"] == "local"),
                "met": all(f["completed"] != "failed" for f in tl) and not es.get("frame_gaps")})
        after_change = [seg for _, seg in windows(es, e["duration_s"])[1:]]
        loads = [s.get("load", 0) for s in e["steps"]]
        for i, ch in enumerate(es["changes"]):
            loaded = ch.get("load", 0) > 0 or (i + 1 < len(loads) and loads[i] > 0)
            if ch["loss"] >= 100 or loaded:
                ref_e = None
            else:
                ref_e = ref.get((e["slowdown"], e.get("dilation", 1.0), ch["rate"], ch["rtt"]))
            row = {"scenario": e["scenario"], "slowdown": e["slowdown"],
                   "dilation": e.get("dilation", 1.0), "change_t": ch["t"],
                   "rate_mbit": ch["rate"], "rtt_ms": ch["rtt"], "loss": ch["loss"],
                   "load": ch.get("load", 0)}
            seg = after_change[i]
            if ch["loss"] >= 100:
                row["note"] = "outage: frames finish on the device"
                t["trace_recovery"].append(row)
                continue
            if loaded:
                # Other devices' load starts or ends: no fixed scenario has these conditions, so
                # the reference is the best fixed contender in the same window of the same trace.
                best = window_reference(e, i + 1)
                if best is None:
                    row["note"] = "no fixed contender ran this trace"
                    t["trace_recovery"].append(row)
                    continue
                row.update(reference=best[0], local_share=round(
                    sum(1 for f in seg if f["completed"] == "local") / max(1, len(seg)), 3),
                    edgesplit_window_p50_ms=statistics.median(
                        [f["latency_ms"] for f in seg]) if seg else None)
                ref_p50 = best[1]
            elif not ref_e or not ref_e.get("oracle"):
                row["note"] = "no oracle measured for these conditions in this run"
                t["trace_recovery"].append(row)
                continue
            else:
                ref_p50 = ref_e["oracle"]["latency_p50_ms"]
            bound = 1.10 * ref_p50
            # Back: from the first frame started after the change whose window of RECOVERY_WINDOW
            # frames (itself and the next ones) has a median latency within 10% of the oracle's
            # p50. A median, because single frames on this kind of host vary by tens of percent
            # with the plan unchanged (see the server compute column).
            rec = recovery_s(seg, ch["t"], bound)
            row.update(oracle_p50_ms=ref_p50, recovery_s=rec, met=rec is not None and rec <= 1.0)
            t["trace_recovery"].append(row)
    return t


# ---------------------------------------------------------------------------------------------
# Output


def fmt(v, spec="%.1f"):
    return "-" if v is None else spec % v


def fmt_iv(iv, spec="%.2f"):
    """A ratio with its interval: 0.97 [0.93, 1.02]."""
    if not iv:
        return "-"
    return (spec + " [" + spec + ", " + spec + "]") % (iv["point"], iv["lo"], iv["hi"])


TARGET_BOUNDS = {"latency_vs_oracle": "<= 1.10 (95% interval)",
                 "latency_vs_best_fixed": "<= 1.05 (95% interval)",
                 "throughput": ">= 0.8 (95% interval)",
                 "cost": ">= 2 (95% interval), SLO met by >= 95% of frames",
                 "bytes": ">= 8 (95% interval), profile drop <= 1 point",
                 "trace_recovery": "<= 1 s", "trace_outage": "no failed frame, no gap",
                 "prediction": "0.85 .. 1.15"}


def flat_targets(rows):
    """bench/run.sh's contract: one entry per target and place, {value, target, pass} (with the
    interval where there is one), from the rows targets() made."""
    out = {}
    for kind, items in rows.items():
        for r in items:
            if "met" not in r:
                continue
            key = "%s/%s/%gx/K%g" % (kind, r["scenario"], r["slowdown"], r.get("dilation", 1.0))
            if "change_t" in r:
                key += "/t%.1f" % r["change_t"]
            value = r.get("ratio", r.get("recovery_s"))
            entry = {"value": value, "target": TARGET_BOUNDS[kind], "pass": bool(r["met"])}
            if r.get("lo95") is not None:
                entry["ci95"] = [r["lo95"], r["hi95"]]
            out[key] = entry
    return out


def write_outputs(results, out_dir):
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    cols = ["scenario", "kind", "slowdown", "rate_mbit", "rtt_ms", "contender", "frames",
            "latency_p50_ms", "latency_p95_ms", "latency_mean_ms", "fps", "bytes_per_frame",
            "top1", "scored", "device_cpu_ms_per_frame", "server_ms_per_frame",
            "predicted_over_measured_p50", "plan_changes", "failed", "main_plan", "note"]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for e in results["runs"]:
            every = dict(e["contenders"], **e.get("oracle_candidates", {}))
            for name, m in every.items():
                row = dict(m, scenario=e["scenario"], kind=e["kind"], slowdown=e["slowdown"],
                           rate_mbit=e.get("rate_mbit"), rtt_ms=e.get("rtt_ms"),
                           contender=name, main_plan=next(iter(m.get("plans") or {"": 0})))
                w.writerow([row.get(c) for c in cols])
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(markdown(results))


def markdown(results):
    L = ["# edgesplit end-to-end benchmark", ""]
    s = results["settings"]
    judged = ("the upper end of its 95%% interval" if s.get("accuracy_confidence", 0) > 0
              else "its point estimate")
    if s.get("oracle") == "screened":
        oracle = (("the best measured p50 among every feasible profiled plan (within %g point of "
                   "top-1 by the profile, " + judged + ") that the command line can pin, screened "
                   "in %d rounds of "
                   "1 + %d frames each (a plan slower than %gx the best screened median pruned), "
                   "the %d best measured in the rounds, and the fixed contenders") % (
                      ACCURACY_BOUND, s["screening"]["rounds"], s["screening"]["frames"],
                      s["screening"]["prune"], s["oracle_keep"]))
    else:
        oracle = (("the best measured p50 among the %d best plans the cost model predicts "
                   "(within %g point of top-1 by the profile, " + judged + ") and the fixed "
                   "contenders") % (
                      s["oracle_k"], ACCURACY_BOUND))
    L.append("Model `%s`, images `%s`; device and server each run LibTorch on 1 thread; the "
             "device's cgroup quota makes it N times slower than the server; link shaped with tc "
             "tbf (rate) and %s (delay, loss). Contenders interleaved: each a loaded device "
             "process, taking turns in rounds (rotating order) on the same images, %d warm-up "
             "frames each, then per round %d settle + %d measured frames each, %d measured "
             "frames per contender and scenario. Ratios: median of the per-round ratios [95%% "
             "bootstrap interval over rounds]; a target is met only when the interval supports "
             "it. Time dilation K: link rates / K, delays x K; every time below is divided by K "
             "(the target system's time). Oracle: %s. Started %s on %s; wall time %s s."
             % (os.path.basename(s["model"]), s["image_source"], s["delay_by"], s["warmup"],
                s.get("settle", 0), s.get("round_frames", 0), s["frames"], oracle,
                s["started"], s["host"], s.get("wall_s", "-")))
    pieces = s.get("pieces") or []
    if len(pieces) > 1:
        L.append("")
        L.append("Run in %d pieces (`--resume`), each a set of whole conditions: %s." % (
            len(pieces), "; ".join("%s, %s s, %s condition(s)" % (
                p.get("started"), p.get("wall_s", "-"), p.get("conditions", "-"))
                for p in pieces)))
    L.append("")
    fixed = [e for e in results["runs"] if e["kind"] == "fixed"]
    for slowdown, dilation in sorted(set((e["slowdown"], e.get("dilation", 1.0)) for e in fixed)):
        rows = [e for e in fixed if (e["slowdown"], e.get("dilation", 1.0)) == (slowdown,
                                                                                  dilation)]
        names = []
        for e in rows:
            for n in e["contenders"]:
                if n not in names:
                    names.append(n)
        L += ["## Device %gx slower, dilation %g: latency p50 (ms) per contender" % (
            slowdown, dilation), ""]
        L.append("| scenario | " + " | ".join(names) + " | oracle | winner | edgesplit / oracle "
                 "| edgesplit / best fixed |")
        L.append("|---" * (len(names) + 5) + "|")
        for e in rows:
            c = e["contenders"]
            cells = [fmt(c[n].get("latency_p50_ms")) if n in c else "" for n in names]
            valid = {n: c[n]["latency_p50_ms"] for n in FIXED_CONTENDERS
                     if clean(n, c.get(n)) and within_bound(c[n])}
            if ok_metrics(c.get("edgesplit-latency")):
                valid["edgesplit-latency"] = c["edgesplit-latency"]["latency_p50_ms"]
            winner = min(valid, key=valid.get) if valid else "-"
            orc = e.get("oracle")
            for n in names:
                if n in c and n in FIXED_CONTENDERS and not clean(n, c[n]) and ok_metrics(c[n]):
                    cells[names.index(n)] += " (fell back: %d local)" % c[n]["completed"].get(
                        "local", 0)
                if n in c and c[n].get("dropped"):
                    cells[names.index(n)] += " (dropped)"
            iv = e.get("intervals", {})
            L.append("| %s (%g Mbit/s, %g ms) | %s | %s | %s | %s | %s |" % (
                e["scenario"], e["rate_mbit"], e["rtt_ms"], " | ".join(cells),
                "%s (%s)" % (fmt(orc["latency_p50_ms"]), orc["plan"]) if orc else "-", winner,
                fmt_iv(iv.get("edgesplit-latency/oracle")),
                fmt_iv(iv.get("edgesplit-latency/best-fixed"))))
        ab = [(e, n) for e in rows for n in e["contenders"] if n.startswith("edgesplit-latency+")]
        if ab:
            L += ["", "A/B in the same rounds: each variant's latency p50 over edgesplit-latency's "
                  "(median of per-round ratios [95% interval]), device CPU per frame of both, and "
                  "the variant's plans:", ""]
            for e, n in ab:
                c, m = e["contenders"], e["contenders"][n]
                es = c.get("edgesplit-latency", {})
                L.append("- %s, %s (`%s`): %s; CPU %s against %s ms; %s" % (
                    e["scenario"], n, " ".join(m.get("flags", [])[len(es.get("flags", [])):]),
                    fmt_iv(e.get("intervals", {}).get(n + "/edgesplit-latency")),
                    fmt(m.get("device_cpu_ms_per_frame")), fmt(es.get("device_cpu_ms_per_frame")),
                    ", ".join("%s x%d" % kv for kv in m.get("plans", {}).items())))
        L += ["", "Per contender: p95 ms / frames per s / bytes per frame / top-1 / device CPU ms "
              "per frame / server ms per frame (mean over all frames, 0 for local ones) / median "
              "server compute of the frames that reached it (unpack + tail: compare it with the "
              "profile to see a run slowed by the host) / main plan", ""]
        L.append("| scenario | contender | p95 | fps | bytes | top-1 | device CPU | server | "
                 "server p50 | plan |")
        L.append("|---" * 10 + "|")
        for e in rows:
            for n, m in e["contenders"].items():
                if not ok_metrics(m):
                    L.append("| %s | %s | error: %s ||||||||" % (e["scenario"], n,
                                                               m.get("error", "")[:80]))
                    continue
                L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    e["scenario"], n, fmt(m["latency_p95_ms"]), fmt(m["fps"], "%.2f"),
                    fmt(m["bytes_per_frame"], "%.0f"), fmt(m["top1"], "%.3f"),
                    fmt(m["device_cpu_ms_per_frame"]), fmt(m["server_ms_per_frame"]),
                    fmt(m.get("server_compute_p50_ms")), next(iter(m["plans"]))))
        L += ["", "What edgesplit's estimators saw (medians over the measured frames) against the "
              "link and the quota:", ""]
        for e in rows:
            m = e["contenders"].get("edgesplit-latency")
            if ok_metrics(m) and m.get("bandwidth_est_p50_mbps") is not None:
                L.append("- %s: bandwidth %.2f Mbit/s (link %g), RTT %.1f ms (link %g), device "
                         "load %.2f (quota %gx), predicted/measured latency %s" % (
                             e["scenario"], m["bandwidth_est_p50_mbps"], e["rate_mbit"],
                             m["rtt_est_p50_ms"], e["rtt_ms"], m["device_load_p50"], slowdown,
                             fmt(m.get("predicted_over_measured_p50"), "%.2f")))
        L.append("")
    traces = [e for e in results["runs"] if e["kind"] == "trace"]
    if traces:
        L += ["## Traces", "", "| trace | device | contender | frames | p50 | p95 | local | failed "
              "| plan changes |", "|---" * 9 + "|"]
        for e in traces:
            for n, m in e["contenders"].items():
                if ok_metrics(m):
                    L.append("| %s | %gx | %s | %d | %s | %s | %d | %d | %d |" % (
                        e["scenario"], e["slowdown"], n, m["frames"], fmt(m["latency_p50_ms"]),
                        fmt(m["latency_p95_ms"]), m["completed"].get("local", 0), m["failed"],
                        m["plan_changes"]))
        L.append("")
        for e in traces:
            if any(st.get("load", 0) for st in e["steps"]):
                L += window_table(e)
    t = results.get("target_rows", {})
    L += ["## Targets", ""]

    def block(title, rows, render):
        rows = rows or []
        L.append("**%s**: %s" % (title, "no data in this run" if not rows else
                                 "%d of %d met" % (sum(1 for r in rows if r.get("met")),
                                                   sum(1 for r in rows if "met" in r))))
        L.append("")
        for r in rows:
            L.append("- " + render(r))
        L.append("")

    def where(r):
        return "%s %gx K%g" % (r["scenario"], r["slowdown"], r.get("dilation", 1.0))

    def iv(r):
        if r.get("ratio") is None:
            return "- (no server time)"
        return "%.2f [%.2f, %.2f]" % (r["ratio"], r["lo95"], r["hi95"])

    def met(r):
        return "" if r.get("met") or "met" not in r else " NOT MET"

    block("edgesplit (latency, 1 point) within 10% of the oracle (interval <= 1.10)",
          t.get("latency_vs_oracle"),
          lambda r: "%s: %s x oracle (%s)%s" % (where(r), iv(r), r["oracle"], met(r)))
    block("never more than 5% worse than the best fixed contender within the accuracy bound "
          "(interval <= 1.05)",
          t.get("latency_vs_best_fixed"),
          lambda r: "%s: %s x %s; gain over each: %s%s" % (
              where(r), iv(r), r["best_fixed"],
              ", ".join("%s %.2fx%s" % (k, g, " (outside the accuracy bound: %.2f pp, not "
                                        "compared)" % r["outside_bound"][k]
                                        if k in r.get("outside_bound", {}) else "")
                        for k, g in r["gain_over"].items()), met(r)))
    block("traces: within 10% of the oracle within 1 s of each change", t.get("trace_recovery"),
          lambda r: "%s at %.1f s -> %g Mbit/s%s: %s" % (
              where(r), r["change_t"], r["rate_mbit"],
              ", %d other devices at the server" % r["load"] if "reference" in r else "",
              r["note"] if "note" in r else
              ("recovered after %.2f s" % r["recovery_s"] if r["recovery_s"] is not None
               else "not back within 10%% of %.1f ms before the next change" %
               r["oracle_p50_ms"]) + (
                  " (reference: %s in the same window, %.1f ms; edgesplit %s ms, %.0f%% of its "
                  "frames local)" % (r["reference"], r["oracle_p50_ms"],
                                     fmt(r["edgesplit_window_p50_ms"]), 100 * r["local_share"])
                  if "reference" in r else "") + met(r)))
    block("outage: every frame answered", t.get("trace_outage"),
          lambda r: "%s: %d frames, %d failed, %d local, gaps %s" % (
              where(r), r["frames"], r["failed"], r["local_during_outage"], r["frame_gaps"]))
    block("throughput mode >= 80% of device-only + server-only fps (>= 20 Mbit/s; interval "
          ">= 0.8)", t.get("throughput"),
          lambda r: "%s: %.2f fps vs %.2f + %.2f: %s%s" % (
              where(r), r["fps"], r["device_only_fps"], r["server_only_fps"], iv(r), met(r)))
    block("cost objective: server time >= 2x below server-only (interval >= 2), >= 95% of "
          "frames within the SLO", t.get("cost"),
          lambda r: "%s: %.1f ms vs %.1f ms server-only (%sx), SLO %.1f ms met by %.0f%%%s%s" % (
              where(r), r["server_ms"], r["server_only_ms"], iv(r), r["slo_ms"] or 0,
              100 * (r["slo_met"] or 0), "; " + r["note"] if r.get("note") else "", met(r)))
    block("where the oracle's plan is an inner cut: edgesplit's bytes >= 8x below JPEG-90 at <= 1 "
          "point (interval >= 8)", t.get("bytes"),
          lambda r: "%s: oracle %s; edgesplit %.0f B/frame (%s) vs JPEG %.0f B: %sx, profile "
          "drop %s pp%s" % (
              where(r), r["oracle"], r["bytes"], ", ".join("%s x%d" % kv for kv in
                                                          list(r["plans"].items())[:3]),
              r["jpeg_bytes"], iv(r), fmt(r["profile_accuracy_drop_pp"], "%.2f"), met(r)))
    block("predicted latency within 15% of measured (median of predicted/measured)",
          t.get("prediction"),
          lambda r: "%s: %.2f%s" % (where(r), r["ratio"], "" if r["met"] else " NOT MET"))
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------------------------


START_S = 6.0  # wall seconds to load one device process (MobileNetV2 on 2 shared cores: 4-8 s)
CONNECT_PROBE_BYTES = 64 << 10  # a device's first bandwidth probe, sent once it is connected
CONNECT_ROUND_TRIPS = 6  # connection, hello, round-trip probes before a device is ready


def start_s(rate_mbit, rtt_ms, contenders):
    """Seconds until `contenders` devices are ready on a link of `rate_mbit` / `rtt_ms` as
    emulated: loaded together on a fast link; on one under turns.SLOW_LINK_MBIT one at a time,
    each connecting and sending its first bandwidth probe before the next starts
    (turns.start_all)."""
    if rate_mbit >= turns.SLOW_LINK_MBIT:
        return contenders * START_S / 2
    one = (START_S + CONNECT_PROBE_BYTES * 8 / (rate_mbit * 1e6) +
           CONNECT_ROUND_TRIPS * rtt_ms / 1000.0)
    return contenders * one


def estimate_s(profile, fixed_sc, trace_sc, slowdowns, dilations, args, done=frozenset(),
               screened=frozenset()):
    """The run's wall time before it starts, from the profile's predicted latency of each
    contender's plan at the link as emulated (rate / K, round trip x K): frames x latency per
    contender, device starts (one at a time on a slow link: start_s), the screening, and the
    traces' durations; conditions in `done` (condition_key) are left out, and so is the
    screening of those in `screened` (screening_key)."""
    total = 0.0
    rounds, per_round_frames = rounds_of(args)
    per_contender = args.warmup + rounds * (args.settle + per_round_frames)
    for slowdown in slowdowns:
        for k in dilations:
            for sc in fixed_sc:
                if condition_key("fixed", slowdown, k, sc["name"]) in done:
                    continue
                st = sc["steps"][0]
                rate, rtt = st["rate"] / k, st["rtt"] * k
                cons = len(args.contenders) + len(getattr(args, "ab_variants", [])) + (
                    args.oracle_keep if args.oracle == "screened" else args.oracle_k)
                if not profile:
                    total += start_s(rate, rtt, cons) + cons * per_contender * 0.2
                    continue
                r = costmodel.ranked(profile, rate, rtt, slowdown,
                                     max_accuracy_drop=ACCURACY_BOUND)
                best = r[0]["predicted"]["latency_ms"] / 1000.0
                # Contenders are mostly within --drop-factor of the best: take twice the best.
                total += start_s(rate, rtt, cons) + cons * per_contender * 2 * best
            total += sum(sc["duration"] * k * (1 + len(trace_fixed(args, sc)) +
                                               len(getattr(args, "ab_variants", [])))
                         for sc in trace_sc
                         if condition_key("trace", slowdown, k, sc["name"]) not in done)
            if args.oracle == "screened" and profile:
                total += screen_estimate_s(profile, [
                    (slowdown, k, sc) for sc in fixed_sc
                    if condition_key("fixed", slowdown, k, sc["name"]) not in done and
                    screening_key(slowdown, k, sc["name"]) not in screened], args)
    return total


def screen_estimate_s(profile, conditions, args):
    """The screening's wall time for one (slowdown, dilation), as screen() runs it: every
    feasible plan loaded once, at the first condition's link (one at a time on a slow link); per
    condition, a plan the cost model puts within --screen-prune of the best takes every screening
    round, and one beyond it takes one turn cut at the pruning limit and a reload for the next
    condition. For the --full run's 18 conditions at 4x (2026-12-07): 2,562 s predicted, 2,340 s
    measured, where the earlier rule (every plan within the limit, loads once) gave 1,006 s."""
    if not conditions:
        return 0.0
    per_turn = 1 + args.screen_frames
    links = [interleave.dilate_step(sc["steps"][0], k) for _, k, sc in conditions]
    total = start_s(links[0]["rate"], links[0]["rtt"],
                    len(interleave.feasible_plans(profile, ACCURACY_BOUND)[0]))
    for i, (slowdown, _, _) in enumerate(conditions):
        r = costmodel.ranked(profile, links[i]["rate"], links[i]["rtt"], slowdown,
                             max_accuracy_drop=ACCURACY_BOUND)
        best = r[0]["predicted"]["latency_ms"] / 1000.0
        limit = max(1.0, args.screen_prune * best * per_turn)
        restart = START_S / 2 if i + 1 < len(links) else 0.0
        for p in r:
            turn = p["predicted"]["latency_ms"] / 1000.0 * per_turn
            if turn <= args.screen_prune * best * per_turn:
                total += args.screen_rounds * turn
            else:
                total += min(turn, limit) + restart
    return total


def condition_key(kind, slowdown, dilation, name):
    """What identifies one condition of a run in results["runs"]: a fixed scenario or a trace, at
    one slowdown and dilation."""
    return (kind, float(slowdown), float(dilation), name)


def screening_key(slowdown, dilation, name):
    """A fixed condition's screening in results["screenings"] (JSON keys are strings)."""
    return "%gx/K%g/%s" % (slowdown, dilation, name)


def done_conditions(results):
    """The conditions a results folder already holds, finished (a condition is added to
    results["runs"] only when it ends, so one stopped half-way is not among them)."""
    return {condition_key(e["kind"], e["slowdown"], e.get("dilation", 1.0), e["scenario"])
            for e in results.get("runs", [])}


RESUME_ALLOWED = ("lock", "bin_dir", "check", "estimate")


def resumed_args(ap, stored, given):
    """The options a resumed run goes on with: the stored run's own (`stored`, its command line,
    parsed again) with --out the folder resumed, and from the new command line (`given`) only
    what does not change what is measured (RESUME_ALLOWED). Raises ValueError, with what to do,
    when `given` sets anything else."""
    new = ap.parse_args(given)
    changed = [d for d, v in vars(new).items()
               if d not in RESUME_ALLOWED + ("resume",) and v != ap.get_default(d)]
    if changed:
        allowed = ["--" + d.replace("_", "-") for d in RESUME_ALLOWED + ("resume",)]
        raise ValueError("--resume continues the run in %s with the flags it started with; "
                         "beside it give only %s (not %s)" % (
                             new.resume, ", ".join(sorted(allowed[:-1])),
                             " ".join(t for t in given if t.startswith("-") and
                                      t.split("=", 1)[0] not in allowed)))
    args = ap.parse_args(stored)
    for d in RESUME_ALLOWED:
        if getattr(new, d) != ap.get_default(d):
            setattr(args, d, getattr(new, d))
    args.out = args.resume = new.resume
    return args


DEFAULT_SCENARIOS = ["bw2-rtt10", "bw5-rtt10", "bw50-rtt10"]
FULL_SCENARIOS = (["bw%d-rtt%d" % (b, r) for r in (10, 50) for b in (1, 2, 5, 10, 20, 50, 100)] +
                  ["bw0.25-rtt100", "bw0.5-rtt100", "bw1-rtt100"])
DEFAULT_TRACES = ["step-down"]
FULL_TRACES = ["step-down", "step-up", "ramp-down", "outage", "cellular", "server-load"]
ALL_CONTENDERS = ["device-only", "server-raw", "server-jpeg90", "fixed-fp32", "fixed-q8",
                  "edgesplit-latency", "edgesplit-throughput", "edgesplit-cost"]


def parser():
    ap = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true",
                    help="every scenario, both RTTs, every trace, devices 4x and 10x slower")
    ap.add_argument("--scenarios", help="comma-separated fixed scenarios (bench/scenarios/*.scn); "
                    "'none': the traces alone, without the fixed scenarios they visit (no oracle "
                    "to judge their recovery by)")
    ap.add_argument("--traces", help="comma-separated trace scenarios ('none' for none)")
    ap.add_argument("--slowdown", help="comma-separated device slowdowns (default 4; --full 4,10)")
    ap.add_argument("--contenders", help="comma-separated, from: %s (default: the first six; "
                    "--full: all)" % ",".join(ALL_CONTENDERS))
    ap.add_argument("--ab", action="append", default=[], metavar="NAME=FLAGS",
                    help="one more contender in every fixed scenario: edgesplit-latency with these "
                         "extra device flags (e.g. no-explore='--explore-within 0'), named "
                         "edgesplit-latency+NAME and run in the same rounds; its latency over "
                         "edgesplit-latency's is reported with its 95%% interval (repeatable); "
                         "'--bin-dir DIR' among the flags runs DIR's edgesplit-device instead "
                         "(another build, e.g. before='--bin-dir /tmp/old/bin')")
    ap.add_argument("--trace-contenders", default="server-jpeg90",
                    help="run through each trace besides edgesplit-latency: device-only, "
                    "server-jpeg90, fixed-q8")
    ap.add_argument("--lock", default="",
                    help="a file to flock while measuring (each screening batch, each scenario, "
                    "each trace), released between them, e.g. /tmp/edgesplit-timing.lock on a "
                    "machine others measure on too")
    ap.add_argument("--report", metavar="DIR",
                    help="recompute the targets, results.csv and summary.md of DIR/results.json "
                    "(no run, no root)")
    ap.add_argument("--estimate", action="store_true",
                    help="print how long the run would take, and exit (no root needed)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a target is missed (or has no supporting interval)")
    ap.add_argument("--quick", action="store_true",
                    help="fewer frames: 20 measured per contender and scenario")
    ap.add_argument("--frames", type=int, default=None,
                    help="measured frames per contender and fixed scenario (default 50; --full "
                    "100; --quick 20), in rounds of --round-frames")
    ap.add_argument("--round-frames", type=int, default=5,
                    help="measured frames of each contender per round (after --settle)")
    ap.add_argument("--settle", type=int, default=1,
                    help="frames at the start of each turn that are not measured (the first "
                    "after another process ran)")
    ap.add_argument("--max-turn-s", type=float, default=60.0,
                    help="a contender whose turn takes longer (wall seconds) takes no further "
                    "turns in that scenario")
    ap.add_argument("--drop-factor", type=float, default=4.0,
                    help="a contender more than this many times slower than the fastest in the "
                    "warm-up, whose rounds would take more than --drop-after-s, is not measured "
                    "further (device-only, the JPEG upload and edgesplit's contenders always are)")
    ap.add_argument("--drop-after-s", type=float, default=60.0,
                    help="see --drop-factor (wall seconds)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="frames per contender and scenario before the rounds, not measured")
    ap.add_argument("--dilation", default="1",
                    help="comma-separated time dilations K: link rates / K, delays and trace "
                    "times x K; latencies reported / K, throughputs x K (default 1)")
    ap.add_argument("--oracle", choices=("screened", "costmodel"), default="screened",
                    help="screened: every feasible profiled plan, screened by measurement, the "
                    "--oracle-keep best measured in the rounds; costmodel: the --oracle-k plans "
                    "the cost model ranks best (cheaper, but it never tries a plan the cost "
                    "model misranks)")
    ap.add_argument("--oracle-k", type=int, default=None,
                    help="with --oracle costmodel: best predicted plans the oracle tries "
                    "besides the fixed contenders (default 2; --full 4; 0: no oracle)")
    ap.add_argument("--oracle-keep", type=int, default=3,
                    help="with --oracle screened: plans measured in the rounds after screening")
    ap.add_argument("--screen-batch", type=int, default=10,
                    help="screening: device processes loaded at once")
    ap.add_argument("--screen-rounds", type=int, default=2, help="screening: rounds per scenario")
    ap.add_argument("--screen-frames", type=int, default=2,
                    help="screening: measured frames per plan and round (after 1 settle frame)")
    ap.add_argument("--screen-prune", type=float, default=3.0,
                    help="screening: a plan whose turn takes longer than this many times the best "
                    "screened median (per frame) is pruned")
    ap.add_argument("--timeout-ms", type=int, default=30000,
                    help="device --timeout-ms for the fixed contenders (edgesplit keeps 1000)")
    ap.add_argument("--model", default=os.path.join(
        SHARED, "models", "mobilenet_v2_imagenet", "mobilenet_v2_imagenet.pt"))
    ap.add_argument("--meta", default=os.path.join(REPO, "models", "meta",
                                                   "mobilenet_v2_imagenet.json"))
    ap.add_argument("--profile", default=os.path.join(REPO, "bench", "profiles",
                                                      "mobilenet_v2_imagenet.profile.json"))
    ap.add_argument("--accuracy-confidence", type=float, default=0.95,
                    help="judge the accuracy bound at the upper end of the profile's paired 95%% "
                         "interval (0.95, edgesplit-device's default) or by point estimates (0), "
                         "for edgesplit (its --accuracy-confidence) and the oracle alike; profiles "
                         "without intervals are judged by point estimates")
    ap.add_argument("--images", dest="image_source",
                    default=os.path.join(SHARED, "data", "imagenet-val-1300", "images"))
    ap.add_argument("--labels", default=os.path.join(SHARED, "data", "imagenet-val-1300",
                                                     "labels.tsv"))
    ap.add_argument("--image-count", type=int, default=200,
                    help="distinct images (the last N of the sorted scored images; runs loop)")
    ap.add_argument("--engine", default="optimized",
                    help="the engine device and server run (edgesplit-device --engine); time the "
                         "profile with the same one")
    ap.add_argument("--bin-dir", default=os.environ.get("EDGESPLIT_BIN_DIR",
                                                        os.path.join(REPO, "build", "bin")))
    ap.add_argument("--out", help="results folder (default bench/results/<timestamp>)")
    ap.add_argument("--resume", metavar="DIR",
                    help="continue the run whose results folder is DIR (stopped, or one piece of "
                    "a long sweep): its own flags again, the conditions it finished kept, the "
                    "others run; wall time summed over the pieces. Beside it only --lock, "
                    "--bin-dir, --check and --estimate")
    ap.add_argument("--scenario-dir", default=os.path.join(REPO, "bench", "scenarios"))
    return ap


def main(argv):
    ap = parser()
    args = ap.parse_args(argv)
    resumed = None
    if args.resume:
        try:
            with open(os.path.join(args.resume, "results.json")) as f:
                resumed = json.load(f)
            stored = resumed["settings"]["argv"]
        except (OSError, ValueError, KeyError) as e:
            ap.error("--resume %s: not a testbed results folder this version can continue (%s); "
                     "start a new run with --out" % (args.resume, e))
        try:
            args = resumed_args(ap, stored, argv)
        except ValueError as e:
            ap.error(str(e))
    try:
        costmodel.set_accuracy_confidence(args.accuracy_confidence)
    except ValueError as e:
        ap.error(str(e))
    args.ab_variants = []
    for item in args.ab:
        name, eq, flags = item.partition("=")
        extra = shlex.split(flags)
        if not eq or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not extra:
            ap.error("--ab %s: give NAME=FLAGS, a name of letters, digits, '.', '_' or '-' and "
                     "the extra device flags, e.g. --ab no-explore='--explore-within 0'" % item)
        try:
            bin_dir, _ = split_bin_dir(extra, None)
        except ValueError as e:
            ap.error("--ab %s: %s" % (item, e))
        if bin_dir is not None and not os.access(os.path.join(bin_dir, "edgesplit-device"),
                                                 os.X_OK):
            ap.error("--ab %s: %s has no edgesplit-device to run; give the bin folder of a build"
                     % (item, bin_dir))
        args.ab_variants.append((name, extra))

    if args.report:
        with open(os.path.join(args.report, "results.json")) as f:
            results = json.load(f)
        costmodel.set_accuracy_confidence(results["settings"].get("accuracy_confidence", 0.0))
        path = results["settings"].get("profile")
        if path and not os.path.exists(path):  # written in another checkout: this one's copy
            path = os.path.join(REPO, "bench", "profiles", os.path.basename(path))
        profile = costmodel.load_profile(path) if path else None
        for e in results["runs"]:
            if e["kind"] == "fixed" and "per_round" in e:
                finish_oracle(e)
                e["intervals"] = ratio_intervals(e)
        results["target_rows"] = targets(results, profile)
        results["targets"] = flat_targets(results["target_rows"])
        write_outputs(results, args.report)
        print("bench: rewrote %s/{results.json,results.csv,summary.md}" % args.report)
        return 1 if args.check and not all(v["pass"] for v in results["targets"].values()) else 0
    problem = None if args.estimate else netbed.root_problem()
    if problem:
        print("bench: " + problem, file=sys.stderr)
        return 1
    for b in ("edgesplit-device", "edgesplit-server"):
        if not os.access(os.path.join(args.bin_dir, b), os.X_OK):
            print("bench: %s/%s is missing: build it (scripts/setup.sh) or pass --bin-dir" %
                  (args.bin_dir, b), file=sys.stderr)
            return 1
    for what, path in (("model", args.model), ("images", args.image_source)):
        if not os.path.exists(path):
            print("bench: the %s %s is missing (pass --%s)" % (what, path, what), file=sys.stderr)
            return 1
    if args.meta and not os.path.exists(args.meta):
        args.meta = ""
    profile = None
    if args.profile and os.path.exists(args.profile):
        profile = costmodel.load_profile(args.profile)
    else:
        print("bench: no profile at %s: only device-only and the server-only uploads run "
              "(make one with edgesplit-profile, or pass --profile)" % args.profile)
        args.profile = ""
    scen = [] if args.scenarios == "none" else args.scenarios.split(",") if args.scenarios else (
        FULL_SCENARIOS if args.full else DEFAULT_SCENARIOS)
    traces = [] if args.traces == "none" else (args.traces.split(",") if args.traces else (
        FULL_TRACES if args.full else DEFAULT_TRACES))
    slowdowns = [float(x) for x in (args.slowdown or ("4,10" if args.full else "4")).split(",")]
    args.contenders = (args.contenders.split(",") if args.contenders else
                       ALL_CONTENDERS if args.full else ALL_CONTENDERS[:6])
    args.frames = args.frames or (100 if args.full else 20 if args.quick else 50)
    args.oracle_k = args.oracle_k if args.oracle_k is not None else (4 if args.full else 2)
    if args.oracle == "screened" and args.oracle_k == 0:
        args.oracle = "none"
    if args.oracle == "screened":
        args.oracle_k = 0  # contenders_for: no cost-model candidates
    dilations = [float(x) for x in args.dilation.split(",")]
    args.objectives = ["throughput"] if "edgesplit-throughput" in args.contenders else []
    args.trace_contenders = [c for c in args.trace_contenders.split(",") if c]
    fixed_sc = scenario_list(scen, args.scenario_dir)
    trace_sc = scenario_list(traces, args.scenario_dir)
    # Each trace's conditions need an oracle: add the fixed scenarios they visit (not with
    # --scenarios none: the traces alone, their recovery unjudged).
    have = {(s["steps"][0]["rate"], s["steps"][0]["rtt"]) for s in fixed_sc}
    for tsc in trace_sc if args.scenarios != "none" else []:
        for st in tsc["steps"]:
            if st["loss"] < 100 and (st["rate"], st["rtt"]) not in have:
                name = "bw%g-rtt%g" % (st["rate"], st["rtt"])
                path = os.path.join(args.scenario_dir, name + ".scn")
                if os.path.exists(path):
                    fixed_sc.append(parse_scenario(path))
                    have.add((st["rate"], st["rtt"]))
    fixed_sc.sort(key=lambda s: (s["steps"][0]["rtt"], s["steps"][0]["rate"]))

    done = done_conditions(resumed) if resumed else set()
    if args.estimate:
        est = estimate_s(profile, fixed_sc, trace_sc, slowdowns, dilations, args, done,
                         set((resumed or {}).get("screenings", {})))
        print("bench: %d fixed scenarios, %d traces, device %s x slower, dilation %s, %d frames "
              "per contender and scenario: about %.0f min" % (
                  len(fixed_sc), len(trace_sc), "/".join("%g" % s for s in slowdowns),
                  "/".join("%g" % k for k in dilations), args.frames, est / 60.0))
        return 0
    out_dir = args.out or os.path.join(REPO, "bench", "results",
                                       datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    args.images, n_images = prepare_images(args, profile, out_dir)
    labels = load_labels(args.labels)
    netbed.install_signal_handlers()
    started = time.monotonic()
    piece = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
             "bin_dir": args.bin_dir}
    results = {"settings": {
        "model": args.model, "profile": args.profile, "frames": args.frames,
        "accuracy_confidence": args.accuracy_confidence,
        "warmup": args.warmup, "oracle_k": args.oracle_k, "image_source": args.image_source,
        "images": n_images, "slowdowns": slowdowns, "timeout_ms_fixed": args.timeout_ms,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": os.uname().nodename, "threads": 1, "bin_dir": args.bin_dir,
        "scenarios": [s["name"] for s in fixed_sc], "traces": [s["name"] for s in trace_sc],
        "argv": list(argv)},
        "runs": []}
    results["settings"].update(
        dilations=dilations, oracle=args.oracle, oracle_keep=args.oracle_keep,
        round_frames=args.round_frames, settle=args.settle, drop_factor=args.drop_factor,
        screening={"batch": args.screen_batch, "rounds": args.screen_rounds,
                   "frames": args.screen_frames, "prune": args.screen_prune})
    before_s = 0.0
    if resumed:
        # The stored settings and runs go on; this piece is one more entry in "pieces".
        pieces = resumed["settings"].get("pieces") or [{
            "started": resumed["settings"].get("started"),
            "wall_s": resumed["settings"].get("wall_s", 0.0)}]
        results = {"settings": resumed["settings"], "runs": resumed["runs"],
                   "screenings": resumed.get("screenings", {})}
        results["settings"]["bin_dir"] = args.bin_dir
        results["settings"]["pieces"] = pieces
        before_s = sum(p.get("wall_s") or 0.0 for p in pieces)
        print("bench: resuming %s: %d of %d conditions done in %d piece(s), %.0f s" % (
            out_dir, len(done), len(slowdowns) * len(dilations) * (len(fixed_sc) + len(trace_sc)),
            len(pieces), before_s), flush=True)
    else:
        results["settings"]["pieces"] = []
    results["settings"]["pieces"].append(piece)
    # Screenings whose scenario has not run yet ("4x/K1/bw5-rtt10": screen()'s result).
    screenings = results.setdefault("screenings", {})
    est = estimate_s(profile, fixed_sc, trace_sc, slowdowns, dilations, args, done,
                     set(screenings))
    results["settings"]["estimated_s"] = round(est)
    print("bench: %d fixed scenarios, %d traces, device %s x slower, dilation %s, %d measured "
          "frames per contender and scenario in rounds of %d (+%d settle); oracle: %s; results in "
          "%s" % (len(fixed_sc), len(trace_sc), "/".join("%g" % s for s in slowdowns),
                  "/".join("%g" % k for k in dilations), args.frames, args.round_frames,
                  args.settle, args.oracle, out_dir), flush=True)
    print("bench: this run takes about %.0f min (from the profile's predicted latencies, %.0f s "
          "per device start, and on a link under %g Mbit/s its first probe)"
          % (est / 60.0, START_S, turns.SLOW_LINK_MBIT), flush=True)
    try:
        with netbed.Testbed(slowdown=0) as tb:
            results["settings"]["delay_by"] = ("netem" if tb.use_netem else
                                               "a userspace TUN relay (this kernel has no netem)")
            results["settings"]["cgroup"] = tb.cgroup.layout
            server = start_server(tb, args, out_dir)
            for slowdown in slowdowns:
                for k in dilations:
                    # Screened per (slowdown, dilation), just before its scenarios run; kept in
                    # results.json until its scenario has run, so a run stopped half-way
                    # (--resume) screens nothing twice.
                    todo = [sc for sc in fixed_sc
                            if condition_key("fixed", slowdown, k, sc["name"]) not in done]
                    unscreened = [(slowdown, k, sc) for sc in todo
                                  if screening_key(slowdown, k, sc["name"]) not in screenings]
                    if profile and args.oracle == "screened" and unscreened:
                        t0 = time.monotonic()
                        for (s_, k_, name), res in screen(tb, args, profile, unscreened,
                                                          out_dir).items():
                            screenings[screening_key(s_, k_, name)] = res
                        results["settings"]["screening"]["wall_s"] = round(
                            results["settings"]["screening"].get("wall_s", 0.0) +
                            time.monotonic() - t0, 1)
                        write_outputs(results, out_dir)
                    for sc in todo:
                        if server.poll() is not None:
                            server = start_server(tb, args, out_dir)
                        key = screening_key(slowdown, k, sc["name"])
                        with timing_lock(args):
                            run_fixed(tb, args, profile, labels, sc, slowdown, out_dir, results,
                                      k, screenings.get(key))
                        screenings.pop(key, None)  # the run's entry holds it now
                        write_outputs(results, out_dir)
                    for sc in trace_sc:
                        if condition_key("trace", slowdown, k, sc["name"]) in done:
                            continue
                        if server.poll() is not None:
                            server = start_server(tb, args, out_dir)
                        with timing_lock(args):
                            run_trace(tb, args, profile, labels, sc, slowdown, out_dir, results,
                                      k)
                        write_outputs(results, out_dir)
    finally:
        piece["wall_s"] = round(time.monotonic() - started, 1)
        piece["conditions"] = len(done_conditions(results)) - len(done)
        results["settings"]["wall_s"] = round(before_s + piece["wall_s"], 1)
        results["target_rows"] = targets(results, profile)
        results["targets"] = flat_targets(results["target_rows"])
        write_outputs(results, out_dir)
        print("bench: wrote %s/{results.json,results.csv,summary.md} (%.0f s)" %
              (out_dir, results["settings"]["wall_s"]), flush=True)
    missed = [k for k, v in results["targets"].items() if not v["pass"]]
    print("bench: %d of %d targets met%s" % (len(results["targets"]) - len(missed),
                                             len(results["targets"]),
                                             (": missed " + ", ".join(missed)) if missed else ""))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
