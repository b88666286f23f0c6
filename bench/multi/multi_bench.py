"""The multi-model benchmark: three model streams at once on one slow device with a memory bound,
edgesplit-device's multi-stream runtime against three uncoordinated single-model processes and
against everything on the device.

    bench/run.sh multi [--quick] [--scenario half-speed|contended] --out DIR [--check]

Scenario (bench/multi/README.md): a device of 2 cores at half speed (the device cgroup's CPU quota
is 1 CPU over the 2 cores; `--scenario contended`: 8x slower, a quota of 0.25 CPU, so the streams
compete for the CPU), a 5 Mbit/s link with a 20 ms RTT (netbed.Testbed), one edgesplit-server
serving the three models in the server namespace, and three streams:

    imagenet  MobileNetV2 on ImageNet images      5 fps, latency bound 400 ms
    cifar     ResNet-56 on CIFAR-10 images       20 fps, latency bound 100 ms
    fashion   the default Fashion-MNIST CNN      50 fps, latency bound  30 ms

The device's memory bound (README, "Memory bound"): the process's base RSS plus 60% of what the
three models add to a process in a device-only run (each model alone, `edgesplit-device --cut
device --threads 1 --max-frames 20 --json`, measured first: peak_rss_mb - base_rss_mb of its
`device` line). The literal reading, 60% of the sum of the three processes' peak RSS, is reported
beside it; it never binds one process.

Contenders, interleaved in rounds (every round runs each contender for one slice, in an order
that rotates from round to round, because this machine's speed drifts by tens of percent):

    runtime      ONE edgesplit-device --config FILE process running the three streams, with
                 max_device_memory_mb = the bound
    independent  three single-model edgesplit-device processes, no coordination, in the same
                 device cgroup (sharing its quota)
    device-only  the runtime's config with every stream "cut": "device" (and no memory bound:
                 it is the unconstrained fp32 reference for top-1)

Besides the measurements, an exhaustive search over static per-stream plans (cost model from the
profiles, not measured: README) says for which streams ">= 95% of frames within the bound" is
reachable at all. Writes DIR/results.json (with `targets`; the contended scenario has `figures`
instead: the targets are set for the half-speed scenario), DIR/summary.md and the raw JSON lines
under DIR/raw/. --check exits 1 when a target misses. Standard library only; needs root.
"""

import argparse
import datetime
import itertools
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench", "testbed"))
import costmodel  # noqa: E402
import netbed  # noqa: E402
from bench import fmt, load_labels, percentile, wait_for_server  # noqa: E402  (bench/testbed/bench.py)

SHARED = os.environ.get("EDGESPLIT_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))
PORT = 5555
SEED = 0
BOOTSTRAP_RESAMPLES = 2000

# The scenario.
CORES = 2
# Each core at 1/slowdown speed: a CPU quota of CORES / slowdown CPUs. "half-speed" is the
# reference device (the targets apply); "contended" the same streams on a device 8x slower, where they compete for the CPU.
SCENARIOS = {
    "half-speed": {"slowdown": 2.0, "targets": True, "skew_s": 5.0,
                   "about": "2 cores at half speed (the reference device)"},
    # Under 0.25 CPU the three independent processes become ready up to ~9 s apart.
    "contended": {"slowdown": 8.0, "targets": False, "skew_s": 12.0,
                  "about": "2 cores at 1/8 speed: the streams compete for the CPU"},
}
LINK_MBIT = 5.0
LINK_RTT_MS = 20.0
# The bound: base RSS + this fraction of what the models add to a process (README).
MEMORY_FRACTION = 0.6
MAX_ACCURACY_DROP = 1.0  # points of top-1, the runtime's constraint per stream

# Targets.
TARGET_WITHIN = 0.95
TARGET_VS_INDEPENDENT = 1.5
TARGET_TOP1_DROP_PP = 1.0
RUNNING_FRACTION = 0.5  # "keeps running": answered (not failed) >= this share of offered frames

# Static search: a stream counts as served when its predicted latency is within this share of
# its bound (headroom for the 95th percentile over the mean the model predicts), and no resource
# may be loaded above MAX_UTILIZATION.
STATIC_LATENCY_MARGIN = 0.8
MAX_UTILIZATION = 0.9

CONTENDERS = ["runtime", "independent", "device-only"]

# Run lengths (seconds): warm-up after the last stream is ready, measured window (the allowance
# for streams becoming ready at different times is the scenario's skew_s).
FULL = {"rounds": 6, "warmup_s": 5.0, "measure_s": 40.0}
QUICK = {"rounds": 2, "warmup_s": 4.0, "measure_s": 15.0}
LOAD_TIMEOUT_S = 90.0
EXIT_GRACE_S = 10.0
FOOTPRINT_RUNS = 3  # device-only runs per model alone; the medians make the bound


def default_streams():
    d_in = os.path.join(SHARED, "data", "imagenet-val-1300")
    d_c = os.path.join(SHARED, "data", "cifar10-test")
    return [
        {"name": "imagenet", "fps": 5.0, "bound_ms": 400.0,
         "model": os.path.join(SHARED, "models", "mobilenet_v2_imagenet",
                               "mobilenet_v2_imagenet.pt"),
         "images": os.path.join(d_in, "images"), "labels": os.path.join(d_in, "labels.tsv"),
         "profile": os.path.join(REPO, "bench", "profiles", "mobilenet_v2_imagenet.profile.json")},
        {"name": "cifar", "fps": 20.0, "bound_ms": 100.0,
         "model": os.path.join(SHARED, "models", "resnet_cifar10", "resnet56_cifar10.pt"),
         "images": os.path.join(d_c, "images"), "labels": os.path.join(d_c, "labels.tsv"),
         "profile": os.path.join(REPO, "bench", "profiles", "resnet56_cifar10.profile.json")},
        {"name": "fashion", "fps": 50.0, "bound_ms": 30.0,
         "model": os.path.join(REPO, "models", "default", "fashion_mnist_cnn.pt"),
         "images": os.path.join(REPO, "models", "default", "samples"),
         "labels": os.path.join(REPO, "models", "default", "samples", "labels.tsv"),
         "profile": os.path.join(REPO, "models", "default", "fashion_mnist_cnn.profile.json")},
    ]


# ---------------------------------------------------------------------------------------------
# Small helpers


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def is_image(name):
    return os.path.splitext(name)[1].lower() in (".jpg", ".jpeg", ".png")


def prepare_images(stream, profile, folder, count):
    """Links to the stream's images in `folder`, never the profile's calibration images, in an
    order that mixes the classes (CIFAR's files are sorted by class), at most `count` of them.
    Returns {link name: label} (labels looked up by the original file name)."""
    calib = set(os.path.basename(p) for p in (profile or {}).get("calibration_images", [])
                if isinstance(p, str))
    if isinstance((profile or {}).get("calibration_images"), int):
        calib = set(sorted(f for f in os.listdir(stream["images"]) if is_image(f))
                    [:profile["calibration_images"]])
    labels = load_labels(stream["labels"])
    files = sorted(f for f in os.listdir(stream["images"]) if is_image(f))
    # Calibration images are excluded by name; the profile of ResNet-56 was made from links
    # named NNNN_<original> (bench/profiles/README.md), so compare original names too.
    calib_orig = {c.split("_", 1)[1] if c[:4].isdigit() and "_" in c else c for c in calib}
    fresh = [f for f in files if f not in calib and f not in calib_orig]
    if not fresh:
        log("%s: every image is a calibration image of its profile: scoring them anyway "
            "(top-1 then optimistic, for every contender alike)" % stream["name"])
        fresh = files
    # Interleave classes: group by label, then round-robin, so a short slice sees all classes.
    by_label = {}
    for f in fresh:
        by_label.setdefault(labels.get(f), []).append(f)
    mixed = []
    groups = [by_label[k] for k in sorted(by_label, key=lambda k: (k is None, k or 0))]
    for i in range(max(len(g) for g in groups)):
        for g in groups:
            if i < len(g):
                mixed.append(g[i])
    mixed = mixed[:count] if count else mixed
    if os.path.isdir(folder):
        for old in os.listdir(folder):
            os.unlink(os.path.join(folder, old))
    os.makedirs(folder, exist_ok=True)
    out = {}
    for i, f in enumerate(mixed):
        name = "%05d_%s" % (i, f)
        os.symlink(os.path.join(os.path.abspath(stream["images"]), f), os.path.join(folder, name))
        if f in labels:
            out[name] = labels[f]
    return out


def device_help(bin_dir):
    r = subprocess.run([os.path.join(bin_dir, "edgesplit-device"), "--help"], capture_output=True,
                       text=True)
    text = r.stdout + r.stderr
    return {"config": "--config" in text, "fps": "--fps" in text, "stream": "--stream" in text,
            "priority": "--priority" in text, "json": "--json" in text}


def vm_hwm_mb(pid):
    """VmHWM (peak RSS) of a process in MiB, None when it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def find_device_pid(pid):
    """The edgesplit-device process at or below `pid` (spawn's sh and ip exec into it; when a
    wrapper forks instead, its child)."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            with open("/proc/%d/comm" % p) as f:
                if f.read().strip().startswith("edgesplit-devi"):
                    return p
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return None


# ---------------------------------------------------------------------------------------------
# Footprints: peak RSS of one device-only process per model


def measure_footprint(args, stream, folder, raw_path):
    """Runs `edgesplit-device --cut device --threads 1 --max-frames 20 --json` on the model alone
    (no server, no namespace, no quota: memory does not depend on speed) and returns what its
    `device` line reports (peak_rss_mb, base_rss_mb: the process before any model) and what the
    model adds (the difference), checked against the kernel's ru_maxrss of the exited process
    and VmHWM polled every 2 ms; plus the median preprocessing and head time of its frames."""
    argv = [os.path.join(args.bin_dir, "edgesplit-device"), "--model", stream["model"],
            "--input", folder, "--cut", "device", "--threads", "1", "--max-frames", "20",
            "--loop", "0", "--top-k", "1", "--json", "--quiet"]
    with open(raw_path, "w") as raw:
        raw.write(json.dumps({"type": "argv", "argv": argv}) + "\n")
        raw.flush()
        proc = subprocess.Popen(argv, stdout=raw, stderr=subprocess.PIPE)
        polled = 0.0
        rusage = None
        while True:
            v = vm_hwm_mb(proc.pid)
            if v is not None:
                polled = max(polled, v)
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rusage = ru
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.002)
        err = proc.stderr.read().decode(errors="replace")
    frames, device = [], None
    with open(raw_path) as f:
        for line in f:
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("type") == "frame":
                frames.append(j)
            elif j.get("type") == "device":
                device = j
    if proc.returncode != 0 or not frames:
        raise SystemExit("multi: the footprint run of %s failed (exit %s): %s" %
                         (stream["name"], proc.returncode, err.strip()[-400:]))
    ru_mb = rusage.ru_maxrss / 1024.0
    if device is None or device.get("peak_rss_mb") is None or device.get("base_rss_mb") is None:
        raise SystemExit("multi: the footprint run of %s printed no `device` line with "
                         "peak_rss_mb and base_rss_mb (this edgesplit-device is older than the "
                         "runtime)" % stream["name"])
    return {"peak_rss_mb": device["peak_rss_mb"], "base_rss_mb": device["base_rss_mb"],
            "model_mb": device["peak_rss_mb"] - device["base_rss_mb"],
            "ru_maxrss_mb": ru_mb, "vmhwm_polled_mb": polled, "frames": len(frames),
            "preprocess_ms_p50": percentile([j.get("preprocess_ms", 0.0) for j in frames], 50),
            "head_ms_p50": percentile([j.get("head_ms", 0.0) for j in frames], 50)}


# ---------------------------------------------------------------------------------------------
# The static allocation search (a cost model over the profiles; nothing is measured here)


def stream_plans(stream, profile, footprint):
    """Candidate fixed plans of one stream from its profile (within the accuracy constraint),
    each with what it costs per frame on the device, the link and the server, and the device
    memory it needs (MiB, beyond the process's base: what the model added in its footprint run,
    scaled by the share of its weight and activation bytes before the cut)."""
    cuts = {c["id"]: c for c in profile["cuts"]}
    last = profile["cuts"][-1]
    full_bytes = (last.get("head_weight_bytes", 0) + last.get("head_activation_bytes", 0)) or 1
    model_mb = max(0.0, footprint["model_mb"])
    pre = footprint.get("preprocess_ms_p50") or 0.0
    out = []
    for p in costmodel.plans(profile):
        if p["accuracy_drop_pp"] > MAX_ACCURACY_DROP + 1e-9:
            continue
        c = cuts[p["cut"]]
        share = (c.get("head_weight_bytes", 0) + c.get("head_activation_bytes", 0)) / full_bytes
        out.append({
            "cut": p["cut"], "encoding": p["encoding"], "local": p["local"],
            "device_ms": pre + p["head_ms"] + p["pack_ms"],
            "link_ms": 0.0 if p["local"] else p["bytes"] * 8.0 / (LINK_MBIT * 1e3),
            "server_ms": 0.0 if p["local"] else p["unpack_ms"] + p["tail_ms"],
            "bytes": p["bytes"], "memory_mb": model_mb * share,
            "accuracy_drop_pp": p["accuracy_drop_pp"]})
    # Drop dominated plans (no better on any resource, memory or accuracy).
    keys = ("device_ms", "link_ms", "server_ms", "memory_mb", "accuracy_drop_pp")
    kept = []
    for p in sorted(out, key=lambda p: tuple(p[k] for k in keys)):
        if any(all(q[k] <= p[k] + 1e-12 for k in keys) for q in kept):
            continue
        kept.append(p)
    return kept


def predict_allocation(streams, combo, speed):
    """Predicted mean latency per stream of one static allocation: each resource (the device at
    `speed` profile-cores, the uplink, the one-thread server) is a FIFO queue shared by the
    streams that use it, with the Pollaczek-Khinchine mean wait (Poisson arrivals: pessimistic
    for periodic streams); latency = waits + service times + RTT when the frame is sent.
    Returns (latencies, utilizations), latencies None when a resource is overloaded."""
    util = {}
    waits = {}
    for res, key, scale in (("device", "device_ms", 1.0 / speed), ("link", "link_ms", 1.0),
                            ("server", "server_ms", 1.0)):
        rho = sum(s["fps"] / 1000.0 * p[key] * scale for s, p in zip(streams, combo))
        second = sum(s["fps"] / 1000.0 * (p[key] * scale) ** 2 for s, p in zip(streams, combo))
        util[res] = rho
        waits[res] = second / (2 * (1 - rho)) if rho < 1 else float("inf")
    if max(util.values()) > MAX_UTILIZATION:
        return None, util
    lat = []
    for p in combo:
        t = waits["device"] + p["device_ms"] / speed
        if not p["local"]:
            t += waits["link"] + p["link_ms"] + LINK_RTT_MS + waits["server"] + p["server_ms"]
        lat.append(t)
    return lat, util


def static_search(streams, profiles, footprints, bound_mb, base_rss_mb, speed):
    """Every combination of per-stream fixed plans: the one that serves the most streams within
    STATIC_LATENCY_MARGIN of their bounds (ties: the lowest worst latency/bound ratio), with the
    device memory of one process holding all heads within the bound."""
    cands = [stream_plans(s, profiles[s["name"]], footprints[s["name"]])
             for s in streams]
    best = None
    evaluated = 0
    for combo in itertools.product(*cands):
        evaluated += 1
        memory = base_rss_mb + sum(p["memory_mb"] for p in combo)
        if memory > bound_mb:
            continue
        lat, util = predict_allocation(streams, combo, speed)
        if lat is None:
            continue
        ratios = [l / s["bound_ms"] for l, s in zip(lat, streams)]
        served = [r <= STATIC_LATENCY_MARGIN for r in ratios]
        key = (sum(served), -max(ratios))
        if best is None or key > best[0]:
            best = (key, combo, lat, util, memory, served)
    alone = {}
    for s, c in zip(streams, cands):
        ok = []
        for p in c:
            lat, _ = predict_allocation([s], [p], speed)
            if lat and lat[0] <= STATIC_LATENCY_MARGIN * s["bound_ms"] and \
                    base_rss_mb + p["memory_mb"] <= bound_mb:
                ok.append(p)
        alone[s["name"]] = bool(ok)
    out = {"evaluated": evaluated, "candidates": {s["name"]: len(c) for s, c in
                                                  zip(streams, cands)},
           "device_speed_cores": speed, "base_rss_mb": base_rss_mb,
           "latency_margin": STATIC_LATENCY_MARGIN, "max_utilization": MAX_UTILIZATION,
           "reachable_alone": alone}
    if best is None:
        out.update({"feasible": False, "reachable": {s["name"]: False for s in streams}})
        return out
    _, combo, lat, util, memory, served = best
    out.update({
        "feasible": True, "memory_mb": memory, "utilization": util,
        "allocation": {s["name"]: {"cut": p["cut"], "encoding": p["encoding"],
                                   "predicted_latency_ms": l, "bound_ms": s["bound_ms"],
                                   "served": ok, "memory_mb": p["memory_mb"],
                                   "accuracy_drop_pp": p["accuracy_drop_pp"]}
                       for s, p, l, ok in zip(streams, combo, lat, served)},
        "reachable": {s["name"]: ok for s, ok in zip(streams, served)}})
    return out


# ---------------------------------------------------------------------------------------------
# One slice: one contender's processes, their JSON lines, their peak RSS


class Proc:
    """One device process of a slice: its Popen, the streams it runs, its JSON lines (arrival
    time, dict) and its polled VmHWM."""

    def __init__(self, popen, streams, raw_path):
        self.popen = popen
        self.streams = streams
        self.raw_path = raw_path
        self.lines = []
        self.vmhwm_mb = 0.0
        self.device_pid = None
        self.reader = None


def read_lines(proc, default_stream):
    with open(proc.raw_path, "w") as raw:
        for line in proc.popen.stdout:
            now = time.monotonic()
            text = line.decode(errors="replace")
            raw.write(text)
            try:
                j = json.loads(text)
            except ValueError:
                continue
            if default_stream and "stream" not in j:
                j["stream"] = default_stream  # a single-stream device without --stream
            proc.lines.append((now, j))


def stop_proc(tb, p):
    """SIGINT (the device prints its summaries), then the testbed's SIGTERM/SIGKILL."""
    if p.popen.poll() is None:
        try:
            os.killpg(p.popen.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            p.popen.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
    tb.stop(p.popen, timeout=5.0)


def run_slice(tb, args, contender, launches, streams, timing, raw_prefix):
    """Starts the processes of one contender (`launches`: (argv, [stream names]) each), waits
    for every stream's ready line, lets it run warm-up + measured window (+ the allowance for
    streams ready at different times), then stops what is still running. Returns the Procs and
    the window: {stream: (first frame index, frame count)} of the common measured window."""
    procs = []
    for i, (argv, names) in enumerate(launches):
        suffix = "" if len(launches) == 1 else "-" + names[0]
        raw_path = "%s%s.jsonl" % (raw_prefix, suffix)
        with open(raw_path + ".err", "w") as err:
            popen = tb.spawn("dev", argv, subprocess.PIPE, err, in_cgroup=True)
        p = Proc(popen, names, raw_path)
        p.reader = threading.Thread(target=read_lines,
                                    args=(p, names[0] if len(names) == 1 else None), daemon=True)
        p.reader.start()
        procs.append(p)
    with open(raw_prefix + ".argv.json", "w") as f:
        json.dump([a for a, _ in launches], f, indent=1)
    t_spawn = time.monotonic()
    by_name = {s["name"]: s for s in streams}
    ready = {}

    def poll_rss():
        for p in procs:
            if p.device_pid is None:
                p.device_pid = find_device_pid(p.popen.pid)
            if p.device_pid is not None:
                v = vm_hwm_mb(p.device_pid)
                if v is not None:
                    p.vmhwm_mb = max(p.vmhwm_mb, v)

    # Ready: a stream's ready line, or its first frame (a device without per-stream ready lines).
    while len(ready) < len(streams):
        poll_rss()
        for p in procs:
            for t, j in list(p.lines):
                name = j.get("stream") if j.get("type") in ("ready", "frame") else None
                if name is None and j.get("type") == "ready" and len(p.streams) > 1:
                    # A runtime that prints one ready line for all its streams.
                    for n in p.streams:
                        ready.setdefault(n, t)
                elif name in by_name:
                    ready.setdefault(name, t)
        if all(p.popen.poll() is not None for p in procs):
            break
        if time.monotonic() - t_spawn > LOAD_TIMEOUT_S:
            break
        time.sleep(0.02)
    missing = [s["name"] for s in streams if s["name"] not in ready]
    t0 = (max(ready.values()) if ready else time.monotonic()) + timing["warmup_s"]
    deadline = t0 + timing["measure_s"] + timing["skew_s"] + max(s["bound_ms"] for s in streams) / 1000.0 \
        + EXIT_GRACE_S
    while time.monotonic() < deadline and any(p.popen.poll() is None for p in procs):
        poll_rss()
        time.sleep(0.05)
    for p in procs:
        stop_proc(tb, p)
        p.reader.join(10.0)
    window = {}
    for s in streams:
        if s["name"] not in ready:
            continue
        first = int(math.ceil((t0 - ready[s["name"]]) * s["fps"]))
        last = min(first + int(round(timing["measure_s"] * s["fps"])), timing["max_frames"][
            s["name"]])
        window[s["name"]] = (first, max(0, last - first))
    return procs, window, missing, {n: t - t_spawn for n, t in ready.items()}


def stream_entry(s, folder, args, timing, cut=None, priority=1):
    e = {"name": s["name"], "model": s["model"], "input": folder, "fps": s["fps"],
         "priority": priority, "max_frames": timing["max_frames"][s["name"]], "loop": 0,
         "constraints": {"max_latency_ms": s["bound_ms"],
                         "max_accuracy_drop": MAX_ACCURACY_DROP},
         "top_k": 1}
    if s.get("device_profile"):
        e["profile"] = s["device_profile"]
    if cut:
        e["cut"] = cut
    return e


def launches_for(contender, args, streams, folders, timing, bound_mb, out_dir, feats):
    """(argv, [stream names]) per process of `contender`, or a string saying why it cannot run
    with this device binary."""
    dev = os.path.join(args.bin_dir, "edgesplit-device")
    server = "tcp://%s:%d" % (netbed.SRV_ADDR, PORT)
    if contender in ("runtime", "device-only"):
        if not feats["config"]:
            return "this edgesplit-device has no --config (the multi-stream runtime)"
        cfg = {"server": server, "threads": args.runtime_threads, "engine": args.engine,
               "streams": [stream_entry(s, folders[s["name"]], args, timing,
                                        cut="device" if contender == "device-only" else None)
                           for s in streams]}
        if contender == "runtime":
            cfg["max_device_memory_mb"] = int(math.floor(bound_mb))
        path = os.path.join(out_dir, "config-%s.json" % contender)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)
        return [([dev, "--config", path] + (["--json"] if feats["json"] else []),
                 [s["name"] for s in streams])]
    out = []
    threads = [int(x) for x in args.independent_threads.split(",")]
    for s, th in zip(streams, threads):
        argv = [dev, "--server", server, "--model", s["model"], "--input", folders[s["name"]],
                "--max-frames", str(timing["max_frames"][s["name"]]), "--loop", "0",
                "--threads", str(th), "--top-k", "1", "--engine", args.engine, "--quiet",
                "--max-latency-ms", "%g" % s["bound_ms"],
                "--max-accuracy-drop", "%g" % MAX_ACCURACY_DROP]
        if s.get("device_profile"):
            argv += ["--profile", s["device_profile"]]
        argv += args.independent_args.split()
        if feats["fps"]:
            argv += ["--fps", "%g" % s["fps"]]
        if feats["stream"]:
            argv += ["--stream", s["name"]]
        out.append((argv, [s["name"]]))
    return out


# ---------------------------------------------------------------------------------------------
# Metrics


def slice_metrics(procs, window, streams, labels):
    """Per stream: offered frames in the window, answered, within the bound, top-1 on scored
    images (per source image: frames and correct ones, for the paired comparison), plans,
    latency percentiles; and the slice's device memory."""
    out = {"streams": {}}
    frames = {s["name"]: [] for s in streams}
    arrivals = {}
    device_lines = []
    summaries, readies = {}, {}
    for p in procs:
        for _t, j in p.lines:
            t = j.get("type")
            if t == "frame" and j.get("stream") in frames:
                frames[j["stream"]].append(j)
                arrivals.setdefault(j["stream"], []).append(_t)
            elif t == "device":
                device_lines.append(j)
            elif t in ("summary", "ready"):
                name = j.get("stream", p.streams[0] if len(p.streams) == 1 else "?")
                (summaries if t == "summary" else readies)[name] = j
    holds_log = {}  # the runtime's stderr: 'stream "NAME" holds ...' (one line per stream)
    for p in procs:
        try:
            with open(p.raw_path + ".err", errors="replace") as f:
                for line in f:
                    m = re.search(r'stream "([^"]+)"(:? holds .*|: measured memory leaves .*)',
                                  line)
                    if m:
                        holds_log.setdefault(m.group(1), []).append(m.group(2).lstrip(": "))
        except OSError:
            pass
    for s in streams:
        name = s["name"]
        first, count = window.get(name, (0, 0))
        inwin = [j for j in frames[name] if first <= j.get("frame", -1) < first + count]
        answered = [j for j in inwin if j.get("completed") != "failed"]
        # Within the bound: the device's own verdict (`within_bound`, latency from the frame's
        # arrival) where the frame line carries it, else latency <= the stream's bound.
        within = [j for j in answered if j.get("within_bound",
                                                j.get("latency_ms", float("inf")) <=
                                                s["bound_ms"])]
        per_image = {}
        for j in answered:
            lab = labels[name].get(os.path.basename(j.get("source", "")))
            if lab is None or not j.get("top"):
                continue
            c = per_image.setdefault(os.path.basename(j["source"]), [0, 0])
            c[0] += 1
            c[1] += int(j["top"][0]["index"] == lab)
        plans, completed = {}, {}
        for j in inwin:
            pl = j.get("plan", {})
            k = "failed" if j.get("completed") == "failed" else "%s:%s" % (
                pl.get("cut"), pl.get("encoding", "?"))
            plans[k] = plans.get(k, 0) + 1
            completed[j.get("completed")] = completed.get(j.get("completed"), 0) + 1
        lat = [j["latency_ms"] for j in answered if "latency_ms" in j]
        # The rate the frames' lines came at, after the first second: a device that does not
        # pace its input to the stream's fps shows here (latencies then mean something else).
        ts = sorted(arrivals.get(name, []))
        ts = [t for t in ts if ts and t >= ts[0] + 1.0]
        observed = (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 2 and ts[-1] > ts[0] else None
        summ, ready = summaries.get(name) or {}, readies.get(name) or {}
        out["streams"][name] = {
            "holds": ready.get("holds"), "retain_cut": ready.get("retain_cut"),
            "refused": ready.get("refused"), "holds_log": holds_log.get(name, []),
            "within_flag_from_device": bool(inwin) and all("within_bound" in j for j in inwin),
            "summary_frames": summ.get("frames"),
            "summary_within_bound_fraction": summ.get("within_bound_fraction"),
            "summary_plans": summ.get("plans"),
            "observed_fps": observed,
            "paced": observed is None or observed <= 1.2 * s["fps"],
            "offered": count, "lines": len(frames[name]), "frames": len(inwin),
            "answered": len(answered), "within": len(within),
            "within_ratio": len(within) / count if count else None,
            "running": bool(count) and len(answered) >= RUNNING_FRACTION * count,
            "scored": sum(c[0] for c in per_image.values()),
            "correct": sum(c[1] for c in per_image.values()),
            "per_image": per_image, "plans": dict(sorted(plans.items(), key=lambda kv: -kv[1])),
            "completed": completed,
            "latency_p50_ms": percentile(lat, 50), "latency_p95_ms": percentile(lat, 95),
            "summary": summaries.get(name)}
    # Per process: the peak RSS its own `device` line reports, else the VmHWM polled; the
    # contender's device memory is the sum over its processes.
    reported = []
    for p in procs:
        r = [j.get("peak_rss_mb") for _, j in p.lines
             if j.get("type") == "device" and j.get("peak_rss_mb") is not None]
        reported.append(max(r) if r else None)
    out["peak_rss_reported_per_process_mb"] = reported
    out["vmhwm_polled_per_process_mb"] = [round(p.vmhwm_mb, 1) for p in procs]
    out["vmhwm_polled_mb"] = sum(p.vmhwm_mb for p in procs)
    out["device_lines"] = device_lines
    out["peak_rss_mb"] = sum(r if r is not None else p.vmhwm_mb for r, p in zip(reported, procs))
    out["peak_rss_source"] = ("device line" if all(r is not None for r in reported) else
                              "VmHWM polled" if all(r is None for r in reported) else "mixed")
    # The runtime's own verdict on its bound (the device line's memory_bound_held), and its base.
    held = [j.get("memory_bound_held") for j in device_lines if "memory_bound_held" in j]
    out["memory_bound_held_by_device"] = all(held) if held else None
    out["base_rss_mb_reported"] = [j.get("base_rss_mb") for j in device_lines]
    out["rc"] = [p.popen.returncode for p in procs]
    errors = []
    for p in procs:
        answered = sum(out["streams"][n]["answered"] for n in p.streams if n in out["streams"])
        if p.popen.returncode not in (0, None, -signal.SIGINT) or not answered:
            try:
                with open(p.raw_path + ".err", errors="replace") as f:
                    tail = f.read().strip()[-300:]
            except OSError:
                tail = ""
            errors.append("%s: exit %s: %s" % (",".join(p.streams), p.popen.returncode,
                                              tail or "no output"))
    if errors:
        out["error"] = "; ".join(errors)
    return out


def memory_bounds(footprints):
    """The memory bound from the footprint runs (README, "Memory bound"). Primary: the process's
    base RSS (what a device reports before any model: LibTorch, the allocator, the binary; the
    median over the runs) plus MEMORY_FRACTION of what the three models add to it. Literal:
    MEMORY_FRACTION of the sum of the three processes' peak RSS, which counts the base three
    times and so exceeds one process holding all three models whole."""
    base = statistics.median(f["base_rss_mb"] for f in footprints.values())
    models = sum(max(0.0, f["model_mb"]) for f in footprints.values())
    procs = sum(f["peak_rss_mb"] for f in footprints.values())
    return {
        "footprints": footprints, "fraction": MEMORY_FRACTION,
        "base_rss_mb": base, "models_sum_mb": models, "processes_sum_mb": procs,
        "bound_mb": base + MEMORY_FRACTION * models,
        "bound_definition": "base_rss_mb + %g x sum over models of (peak_rss_mb - base_rss_mb) "
                            "of its device-only run" % MEMORY_FRACTION,
        "literal_bound_mb": MEMORY_FRACTION * procs,
        "literal_bound_definition": "%g x sum over models of the device-only process's "
                                    "peak_rss_mb" % MEMORY_FRACTION,
        "footprint_runs": FOOTPRINT_RUNS,
        "one_process_whole_models_mb": base + models,
        "literal_binds_one_process": base + models > MEMORY_FRACTION * procs}


def memory_figures(results):
    """Each contender's device peak RSS (max over rounds; summed over its processes) against the
    primary and the literal bound."""
    m = results["memory"]
    out = {}
    for c, a in results.get("aggregate", {}).items():
        peak = a.get("peak_rss_mb_max")
        out[c] = {"peak_rss_mb": peak, "vmhwm_polled_mb": a.get("vmhwm_polled_mb_max"),
                  "processes": {"runtime": 1, "device-only": 1}.get(c, 3),
                  "within_bound": None if peak is None else peak <= m["bound_mb"],
                  "within_literal_bound": None if peak is None else peak <= m["literal_bound_mb"]}
    m["contenders"] = out


def bootstrap(values_fn, n_units, rng):
    """95% interval of values_fn(indices) over resamples of n_units units (with replacement)."""
    if n_units < 2:
        return None
    vals = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        v = values_fn([rng.randrange(n_units) for _ in range(n_units)])
        if v is not None and not math.isinf(v) and not math.isnan(v):
            vals.append(v)
    if len(vals) < BOOTSTRAP_RESAMPLES // 2:
        return None
    return [percentile(vals, 2.5), percentile(vals, 97.5)]


def aggregate(results, streams):
    """Per contender and stream: sums over rounds; top-1 from the per-image counts."""
    agg = {}
    for c in results["settings"]["contenders"]:
        slices = [r["contenders"][c] for r in results["rounds"] if c in r["contenders"] and
                  "streams" in r["contenders"][c]]
        a = {"slices": len(slices), "streams": {}}
        for s in streams:
            n = s["name"]
            ss = [x["streams"][n] for x in slices if n in x["streams"]]
            offered = sum(x["offered"] for x in ss)
            within = sum(x["within"] for x in ss)
            per_image = {}
            plans, completed, device_plans = {}, {}, {}
            for x in ss:
                for k, v in (x.get("summary_plans") or {}).items():
                    device_plans[k] = device_plans.get(k, 0) + v
                for img, (k, ok) in x["per_image"].items():
                    c2 = per_image.setdefault(img, [0, 0])
                    c2[0] += k
                    c2[1] += ok
                for k, v in x["plans"].items():
                    plans[k] = plans.get(k, 0) + v
                for k, v in x["completed"].items():
                    completed[str(k)] = completed.get(str(k), 0) + v
            scored = sum(v[0] for v in per_image.values())
            a["streams"][n] = {
                "offered": offered, "frames": sum(x["frames"] for x in ss),
                "answered": sum(x["answered"] for x in ss), "within": within,
                "within_ratio": within / offered if offered else None,
                "within_ratio_per_round": [x["within_ratio"] for x in ss],
                "running_every_round": bool(ss) and all(x["running"] for x in ss),
                "paced": all(x.get("paced", True) for x in ss),
                "observed_fps_per_round": [x.get("observed_fps") for x in ss],
                "scored": scored, "images": len(per_image),
                "top1": sum(v[1] for v in per_image.values()) / scored if scored else None,
                "plans": dict(sorted(plans.items(), key=lambda kv: -kv[1])),
                "device_plans": dict(sorted(device_plans.items(), key=lambda kv: -kv[1])),
                "completed": completed,
                "latency_p50_ms_per_round": [x["latency_p50_ms"] for x in ss],
                "latency_p95_ms_per_round": [x["latency_p95_ms"] for x in ss],
                "holds_per_round": [x.get("holds") for x in ss],
                "summary_within_bound_fraction_per_round": [
                    x.get("summary_within_bound_fraction") for x in ss],
                "within_flag_from_device": bool(ss) and all(
                    x.get("within_flag_from_device") for x in ss),
                "_per_image": per_image}
        peaks = [x["peak_rss_mb"] for x in slices if x.get("peak_rss_mb")]
        a["peak_rss_mb_max"] = max(peaks) if peaks else None
        a["peak_rss_mb_per_round"] = [x.get("peak_rss_mb") for x in slices]
        a["peak_rss_source"] = sorted(set(x.get("peak_rss_source") for x in slices))
        polled = [x.get("vmhwm_polled_mb") for x in slices if x.get("vmhwm_polled_mb")]
        a["vmhwm_polled_mb_max"] = max(polled) if polled else None
        held = [x.get("memory_bound_held_by_device") for x in slices]
        a["memory_bound_held_by_device_per_round"] = held
        a["base_rss_mb_reported_per_round"] = [x.get("base_rss_mb_reported") for x in slices]
        agg[c] = a
    return agg


def paired_top1(agg, contender, reference, stream, rng):
    """Top-1 of `reference` minus `contender` in points on the images both scored (per image:
    share of its frames right), with a 95% bootstrap interval over images."""
    a = agg.get(contender, {}).get("streams", {}).get(stream, {}).get("_per_image", {})
    b = agg.get(reference, {}).get("streams", {}).get(stream, {}).get("_per_image", {})
    common = sorted(set(a) & set(b))
    if not common:
        return None
    diffs = [100.0 * (b[i][1] / b[i][0] - a[i][1] / a[i][0]) for i in common]
    value = statistics.mean(diffs)
    ci = bootstrap(lambda idx: statistics.mean(diffs[k] for k in idx), len(diffs), rng)
    return {"value": value, "ci95": ci, "images": len(common),
            "reference_top1": statistics.mean(b[i][1] / b[i][0] for i in common),
            "contender_top1": statistics.mean(a[i][1] / a[i][0] for i in common)}


def targets(results, streams):
    rng = random.Random(SEED)
    agg = results["aggregate"]
    bound = results["memory"]["bound_mb"]
    reach = results["static_search"].get("reachable", {})
    t = {}
    rt = agg.get("runtime", {})
    running = all(rt.get("streams", {}).get(s["name"], {}).get("running_every_round")
                  for s in streams) if rt.get("slices") else False
    peak = rt.get("peak_rss_mb_max")
    held = rt.get("memory_bound_held_by_device_per_round") or []
    t["memory_bound_held"] = {
        "value": peak, "target": bound, "unit": "MiB (runtime's peak RSS, max over rounds)",
        "bound": "base + %g x what the models add (results.json memory)" % MEMORY_FRACTION,
        "every_stream_running": running,
        "device_says_held_per_round": held,
        "pass": bool(peak is not None and peak <= bound and running and
                     all(h is not False for h in held))}
    for s in streams:
        n = s["name"]
        x = rt.get("streams", {}).get(n, {})
        v = x.get("within_ratio")
        per_round = [r for r in x.get("within_ratio_per_round", []) if r is not None]
        ci = bootstrap(lambda idx: statistics.mean(per_round[k] for k in idx), len(per_round),
                       rng)
        applies = bool(reach.get(n))
        t["within_bound_%s" % n] = {
            "value": v, "target": TARGET_WITHIN, "ci95": ci,
            "reachable_by_static_search": applies,
            "pass": (v is not None and v >= TARGET_WITHIN) if applies else None,
            "note": None if applies else "no static allocation reaches it (cost model): "
                                         "reported, not required"}
    # Frames within bound, runtime over independent: total over streams, per round.
    ind = agg.get("independent", {})
    rounds = []
    for r in results["rounds"]:
        a, b = r["contenders"].get("runtime", {}), r["contenders"].get("independent", {})
        if "streams" in a and "streams" in b:
            rounds.append((sum(x["within"] for x in a["streams"].values()),
                           sum(x["within"] for x in b["streams"].values())))
    num = sum(x for x, _ in rounds)
    den = sum(y for _, y in rounds)
    ratio = num / den if den else (float("inf") if num else None)

    def ratio_of(idx):
        d = sum(rounds[k][1] for k in idx)
        return sum(rounds[k][0] for k in idx) / d if d else None

    t["frames_within_bound_ratio_vs_independent"] = {
        "value": None if ratio is None or math.isinf(ratio) else ratio,
        "infinite": ratio is not None and math.isinf(ratio),
        "runtime_within": num, "independent_within": den, "rounds": len(rounds),
        "ci95": bootstrap(ratio_of, len(rounds), rng), "target": TARGET_VS_INDEPENDENT,
        "pass": ratio is not None and ratio >= TARGET_VS_INDEPENDENT}
    if ind.get("paced") is False or rt.get("paced") is False:
        t["frames_within_bound_ratio_vs_independent"]["note"] = (
            "a contender's frames came faster than its streams' fps (no pacing): not comparable")
    for s in streams:
        n = s["name"]
        d = paired_top1(agg, "runtime", "device-only", n, rng)
        t["top1_drop_%s" % n] = {
            "value": d["value"] if d else None, "ci95": d["ci95"] if d else None,
            "images": d["images"] if d else 0, "unit": "points (device-only minus runtime)",
            "target": TARGET_TOP1_DROP_PP,
            "pass": bool(d) and d["value"] <= TARGET_TOP1_DROP_PP}
    results["paired_top1"] = {c: {s["name"]: paired_top1(agg, c, "device-only", s["name"], rng)
                                  for s in streams} for c in ("runtime", "independent")}
    return t


# ---------------------------------------------------------------------------------------------
# Output


def public(agg):
    return {c: dict(a, streams={n: {k: v for k, v in x.items() if not k.startswith("_")}
                                for n, x in a["streams"].items()})
            for c, a in agg.items()}


def markdown(results, streams):
    st = results["settings"]
    L = ["# Multi-model benchmark: scenario `%s`" % st["scenario"], "",
         "%s; device %d cores at 1/%g speed (quota %.2f CPU; %s), link %g Mbit/s / %g ms RTT; %d "
         "round(s) x %d contenders, %.0f s measured per slice (after %.0f s warm-up); wall %s s."
         % (st["started"], CORES, st["slowdown"], st["quota_cpus"], st["scenario_about"],
            LINK_MBIT, LINK_RTT_MS, st["rounds"], len(st["contenders"]), st["measure_s"],
            st["warmup_s"], st.get("wall_s")), ""]
    if st.get("device_features"):
        f = st["device_features"]
        if not f["config"] or not f["fps"]:
            L += ["**This device binary lacks %s**: %s." % (
                ", ".join(k for k in ("config", "fps", "stream") if not f[k]),
                "the runtime and device-only contenders did not run; the independent one ran "
                "unpaced (as fast as it could), so its latencies say nothing about the streams' "
                "rates"), ""]
    unpaced = ["%s/%s (%.0f fps for %g)" % (c, n, max(v for v in x["observed_fps_per_round"]
                                                        if v is not None), s["fps"])
               for c, a in results["aggregate"].items() for s in streams
               for n, x in a.get("streams", {}).items()
               if n == s["name"] and not x.get("paced", True)]
    if unpaced:
        L += ["**Not paced**: these streams' frames came faster than their fps, so their "
              "latencies and within-bound shares do not describe the scenario: %s." %
              ", ".join(unpaced), ""]
    m = results["memory"]
    L += ["## Memory", "",
          "Each model alone, device-only (`--cut device --threads 1 --max-frames 20`), from its "
          "`device` line:", "",
          "| model | peak RSS (MiB) | base RSS | the model adds | ru_maxrss | VmHWM polled |",
          "|---|---|---|---|---|---|"]
    for n, fp in m["footprints"].items():
        L.append("| %s | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
            n, fp["peak_rss_mb"], fp["base_rss_mb"], fp["model_mb"], fp["ru_maxrss_mb"],
            fp["vmhwm_polled_mb"]))
    L += ["", "**Bound: %.1f MiB** = base %.1f + %.0f%% of the %.1f MiB the three models add "
          "(one process holding all three whole: about %.1f MiB). The literal reading, %.0f%% of "
          "the three processes' summed peak RSS (%.1f MiB), is %.1f MiB: it counts LibTorch's "
          "base three times, so %s; the primary bound is the one that makes one process choose "
          "what it holds." % (
              m["bound_mb"], m["base_rss_mb"], 100 * MEMORY_FRACTION, m["models_sum_mb"],
              m["one_process_whole_models_mb"], 100 * MEMORY_FRACTION, m["processes_sum_mb"],
              m["literal_bound_mb"],
              "it binds one process too" if m["literal_binds_one_process"] else
              "one process holding all three models whole stays under it and it never binds "
              "one process"), ""]
    if m.get("contenders"):
        L += ["| contender | processes | device peak RSS MiB (the `device` lines; max over "
              "rounds, summed over processes) | VmHWM polled | <= bound %.1f | <= literal %.1f |"
              % (m["bound_mb"], m["literal_bound_mb"]), "|---|---|---|---|---|---|"]
        yn = {True: "yes", False: "**no**", None: "-"}
        for c, x in m["contenders"].items():
            L.append("| %s | %d | %s | %s | %s | %s |" % (
                c, x["processes"], fmt(x["peak_rss_mb"]), fmt(x.get("vmhwm_polled_mb")),
                yn[x["within_bound"]], yn[x["within_literal_bound"]]))
        L.append("")
    L += ["## Per contender and stream", "",
          "Frames of the measured window; within bound from the frames' `within_bound` (the "
          "device's verdict, latency from arrival); the device's own summary fraction covers "
          "the whole run (warm-up included), as do its plans (cut:encoding -> frames, summed "
          "over rounds; `0:` with no encoding: frames not run); holds: what the process held of "
          "the model (its `ready` line, per round).", "",
          "| contender | stream | bound ms | offered | answered | within bound | device summary "
          "(rounds) | top-1 | p50 ms (rounds) | p95 ms (rounds) | plans | holds | device peak "
          "RSS MiB |",
          "|---" * 13 + "|"]
    for c, a in results["aggregate"].items():
        errs = [r["contenders"][c].get("error") for r in results["rounds"]
                if c in r["contenders"] and r["contenders"][c].get("error")]
        if a["slices"] and errs and not any(x["answered"] for x in a["streams"].values()):
            a = dict(a, slices=0)  # ran, answered nothing: say why instead of empty rows
        if not a["slices"]:
            err = errs[0] if errs else "not run"
            L.append("| %s | - | | | | | | | | | %s | | |" % (c, err.replace("|", "/").replace(
                "\n", " ")))
            continue
        for s in streams:
            x = a["streams"][s["name"]]
            plans = ", ".join("%s %d" % kv for kv in list(
                (x.get("device_plans") or x["plans"]).items())[:4])
            holds = [str(h) for h in x.get("holds_per_round", [])]
            L.append("| %s | %s | %g | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                c, s["name"], s["bound_ms"], x["offered"], x["answered"],
                fmt(None if x["within_ratio"] is None else 100 * x["within_ratio"], "%.1f%%"),
                "/".join(fmt(None if v is None else 100 * v, "%.0f%%")
                         for v in x.get("summary_within_bound_fraction_per_round", [])),
                fmt(x["top1"], "%.3f"),
                "/".join(fmt(v, "%.0f") for v in x["latency_p50_ms_per_round"]),
                "/".join(fmt(v, "%.0f") for v in x["latency_p95_ms_per_round"]), plans,
                " / ".join(holds) or "-", fmt(a["peak_rss_mb_max"])))
    pt = results.get("paired_top1", {})
    if pt:
        L += ["", "## Top-1 against the unconstrained reference (device-only, fp32 on the device)",
              "", "Paired by source image (per image: the share of its frames right), 95% "
              "bootstrap interval over images.", "",
              "| contender | stream | images | unconstrained top-1 | contender top-1 | drop "
              "(points) | 95% interval |", "|---" * 7 + "|"]
        for c, per in pt.items():
            for n, d in per.items():
                if d:
                    L.append("| %s | %s | %d | %.3f | %.3f | %.2f | %s |" % (
                        c, n, d["images"], d["reference_top1"], d["contender_top1"], d["value"],
                        "-" if not d["ci95"] else "[%.2f, %.2f]" % tuple(d["ci95"])))
    ss = results["static_search"]
    L += ["", "## Static allocation (cost model, not measured)", ""]
    if ss.get("feasible"):
        L.append("Best fixed per-stream plans (%d combinations; device memory %.1f MiB; "
                 "utilization device %.2f, link %.2f, server %.2f):" % (
                     ss["evaluated"], ss["memory_mb"], ss["utilization"]["device"],
                     ss["utilization"]["link"], ss["utilization"]["server"]))
        L.append("")
        for n, a in ss["allocation"].items():
            L.append("- %s: cut %s %s, predicted %.1f ms of %g ms: %s" % (
                n, a["cut"], a["encoding"], a["predicted_latency_ms"], a["bound_ms"],
                "reachable" if a["served"] else "NOT reachable"))
    else:
        L.append("No static allocation fits the memory bound and the resources.")
    if "figures" in results:
        L += ["", "## Figures (not targets)", "",
              "The targets are set for the reference scenario (`--scenario half-speed`); here the "
              "same figures, each with whether it holds.", "",
              "| figure | value | 95% interval | reference target | holds |", "|---|---|---|---|---|"]
        rows, key = results["figures"], "holds"
    else:
        L += ["", "## Targets", "", "| target | value | 95% interval | target | pass |",
              "|---|---|---|---|---|"]
        rows, key = results.get("targets", {}), "pass"
    for k, v in rows.items():
        ci = v.get("ci95")
        L.append("| %s | %s | %s | %s | %s |" % (
            k, fmt(v.get("value"), "%.3f"), "-" if not ci else "[%.3f, %.3f]" % tuple(ci),
            v.get("target"), {True: "yes", False: "**no**", None: "n/a"}[v.get(key)]))
    return "\n".join(L) + "\n"


def write_outputs(results, streams, out_dir):
    rounds = []
    for r in results["rounds"]:
        cs = {}
        for name, c in r["contenders"].items():
            c = dict(c)
            if "streams" in c:
                c["streams"] = {n: {k: v for k, v in x.items() if k != "per_image"}
                                for n, x in c["streams"].items()}
            cs[name] = c
        rounds.append(dict(r, contenders=cs))
    res = dict(results, aggregate=public(results["aggregate"]), rounds=rounds)
    # per_image lives in raw/per_image.json (the paired comparison's input), not results.json.
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(markdown(results, streams))


# ---------------------------------------------------------------------------------------------


def start_server(tb, args, streams, out_dir):
    endpoint_file = os.path.join(out_dir, "server.endpoint")
    if os.path.exists(endpoint_file):
        os.unlink(endpoint_file)
    argv = [os.path.join(args.bin_dir, "edgesplit-server"), "--bind",
            "tcp://%s:%d" % (netbed.SRV_ADDR, PORT), "--workers", "1", "--threads", "1",
            "--engine", args.engine, "--endpoint-file", endpoint_file]
    for s in streams:
        argv += ["--model", s["model"]]
        if s.get("device_profile"):
            argv += ["--profile", s["device_profile"]]
    log_f = open(os.path.join(out_dir, "server.log"), "a")
    log_f.write(json.dumps({"argv": argv}) + "\n")
    log_f.flush()
    proc = tb.spawn("srv", argv, log_f, log_f)
    wait_for_server(proc, endpoint_file, out_dir, "multi: edgesplit-server")
    return proc


def main(argv):
    ap = argparse.ArgumentParser(prog="bench/run.sh multi", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 15 s slices (minutes)")
    ap.add_argument("--scenario", default="half-speed", choices=sorted(SCENARIOS),
                    help="half-speed: the reference device, 2 cores at half speed (the targets apply); "
                    "contended: the same streams on a device 8x slower (quota 0.25 CPU), where "
                    "they compete for the CPU (the same figures, reported, not targets)")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target misses")
    ap.add_argument("--rounds", type=int, help="rounds (default 6; --quick 2)")
    ap.add_argument("--measure-s", type=float, help="measured seconds per slice (40; quick 15)")
    ap.add_argument("--warmup-s", type=float, help="warm-up seconds per slice (5; quick 4)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help="comma-separated, from %s" % ",".join(CONTENDERS))
    ap.add_argument("--runtime-threads", type=int, default=CORES,
                    help="`threads` of the runtime's and device-only's config (default %d, the "
                    "device's cores)" % CORES)
    ap.add_argument("--independent-threads", default="1,1,1",
                    help="--threads of the independent processes (imagenet,cifar,fashion); "
                    "three processes need at least 3 in all, the runtime gets %d" % CORES)
    ap.add_argument("--no-warmup-slice", action="store_true",
                    help="skip the unrecorded slice that warms the server's tails up")
    ap.add_argument("--footprint-only", action="store_true",
                    help="measure the footprints, the bound and the static search, then stop "
                    "(no testbed)")
    ap.add_argument("--set", action="append", default=[], metavar="STREAM.KEY=VALUE",
                    help="change a stream: KEY one of model, images, labels, profile, fps, "
                    "bound_ms (e.g. fashion.fps=25); repeatable")
    ap.add_argument("--no-device-profile", action="store_true",
                    help="do not pass the profiles to the device processes and the server (for "
                    "a device build that cannot load them; the static search still uses them)")
    ap.add_argument("--independent-args", default="",
                    help="extra flags for every independent device process, e.g. '--cut device' "
                    "or '--cut input --bits jpeg90' to pin a plan")
    ap.add_argument("--engine", default="optimized")
    ap.add_argument("--bin-dir", default=os.environ.get("EDGESPLIT_BIN_DIR",
                                                        os.path.join(REPO, "build", "bin")))
    args = ap.parse_args(argv)
    # The device resolves a config's relative paths against the config's folder: keep every path
    # the bench writes absolute.
    args.out = os.path.abspath(args.out)
    timing = dict(QUICK if args.quick else FULL)
    for k in ("rounds", "measure_s", "warmup_s"):
        if getattr(args, k) is not None:
            timing[k] = getattr(args, k)
    contenders = [c for c in args.contenders.split(",") if c]
    for c in contenders:
        if c not in CONTENDERS:
            ap.error("unknown contender %s" % c)
    if not args.footprint_only:
        problem = netbed.root_problem()
        if problem:
            print("multi: " + problem, file=sys.stderr)
            return 1
    for b in ("edgesplit-device", "edgesplit-server"):
        if not os.access(os.path.join(args.bin_dir, b), os.X_OK):
            print("multi: %s/%s is missing: build it or pass --bin-dir" % (args.bin_dir, b),
                  file=sys.stderr)
            return 1
    streams = default_streams()
    for item in args.set:
        try:
            key, value = item.split("=", 1)
            name, field = key.split(".", 1)
            s = next(x for x in streams if x["name"] == name)
            if field not in ("model", "images", "labels", "profile", "fps", "bound_ms"):
                raise ValueError(field)
        except (ValueError, StopIteration):
            ap.error("--set %s: expected STREAM.KEY=VALUE with STREAM in %s and KEY in model, "
                     "images, labels, profile, fps, bound_ms" % (
                         item, ",".join(x["name"] for x in streams)))
        s[field] = float(value) if field in ("fps", "bound_ms") else value
    for s in streams:
        s["device_profile"] = None if args.no_device_profile else s["profile"]
    for s in streams:
        for k in ("model", "images", "profile"):
            if not os.path.exists(s[k]):
                print("multi: %s's %s %s is missing" % (s["name"], k, s[k]), file=sys.stderr)
                return 1
    feats = device_help(args.bin_dir)
    scenario = SCENARIOS[args.scenario]
    slowdown = scenario["slowdown"]
    timing["skew_s"] = scenario["skew_s"]
    slice_s = timing["warmup_s"] + timing["measure_s"] + timing["skew_s"]
    timing["max_frames"] = {s["name"]: int(math.ceil(s["fps"] * slice_s)) for s in streams}
    # Loading under the quota (the models' optimisation passes: about 3 CPU-seconds at full
    # speed, so seconds at 1 CPU and more at 0.25), stopping, the exit grace.
    per_slice = slice_s + 8.0 + 1.5 * slowdown
    expected = 20 + 15 + (timing["rounds"] * len(contenders) + 1) * per_slice
    print("multi: expected wall time about %.0f min (%d rounds x %d contenders x ~%.0f s, plus "
          "footprints and set-up)" % (expected / 60.0, timing["rounds"], len(contenders),
                                      per_slice), flush=True)
    out_dir = args.out
    raw_dir = os.path.join(out_dir, "raw")
    os.makedirs(raw_dir, exist_ok=True)
    profiles = {s["name"]: costmodel.load_profile(s["profile"]) for s in streams}
    folders, labels = {}, {}
    for s in streams:
        folders[s["name"]] = os.path.join(out_dir, "images", s["name"])
        labels[s["name"]] = prepare_images(s, profiles[s["name"]], folders[s["name"]],
                                           timing["max_frames"][s["name"]])
    started = time.monotonic()
    results = {"settings": {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "scenario": args.scenario, "scenario_about": scenario["about"],
        "host": os.uname().nodename, "cores": CORES, "slowdown": slowdown,
        "quota_cpus": CORES / slowdown, "link_mbit": LINK_MBIT, "rtt_ms": LINK_RTT_MS,
        "rounds": timing["rounds"], "warmup_s": timing["warmup_s"],
        "measure_s": timing["measure_s"], "skew_allowance_s": timing["skew_s"],
        "max_frames": timing["max_frames"], "contenders": contenders, "engine": args.engine,
        "independent_threads": args.independent_threads, "bin_dir": args.bin_dir,
        "runtime_threads": args.runtime_threads,
        "device_profiles": not args.no_device_profile, "overrides": args.set,
        "independent_args": args.independent_args,
        "device_features": feats, "quick": args.quick,
        "streams": [{k: s[k] for k in ("name", "fps", "bound_ms", "model", "profile",
                                        "images")} for s in streams],
        "images": {n: len(os.listdir(f)) for n, f in folders.items()},
        "scored_images": {n: len(v) for n, v in labels.items()}},
        "rounds": [], "aggregate": {}}

    # 1. Footprints and the bound.
    fps_ = {}
    for s in streams:
        # Runs interleaved by model would not help: each is a fresh process. The median of a few
        # (a model's addition varies by about 10 MiB from run to run).
        runs = [measure_footprint(args, s, folders[s["name"]],
                                  os.path.join(raw_dir, "footprint-%s-%d.jsonl" % (s["name"], k)))
                for k in range(FOOTPRINT_RUNS)]
        f = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        f["model_mb_runs"] = [r["model_mb"] for r in runs]
        fps_[s["name"]] = f
        log("footprint %s: peak RSS %.1f MiB, base %.1f MiB, the model adds %.1f MiB (device "
            "line; ru_maxrss %.1f, VmHWM polled %.1f), preprocess %.2f ms, head %.2f ms" % (
                s["name"], f["peak_rss_mb"], f["base_rss_mb"], f["model_mb"], f["ru_maxrss_mb"],
                f["vmhwm_polled_mb"], f["preprocess_ms_p50"], f["head_ms_p50"]))
    results["memory"] = memory_bounds(fps_)
    mem = results["memory"]
    bound = mem["bound_mb"]
    log("memory bound: base %.1f + %.0f%% of %.1f MiB the models add = %.1f MiB (all three whole "
        "in one process: about %.1f); literal reading, %.0f%% of the processes' summed %.1f MiB "
        "= %.1f MiB" % (mem["base_rss_mb"], 100 * MEMORY_FRACTION, mem["models_sum_mb"], bound,
                        mem["one_process_whole_models_mb"], 100 * MEMORY_FRACTION,
                        mem["processes_sum_mb"], mem["literal_bound_mb"]))
    # 2. The static search.
    results["static_search"] = static_search(streams, profiles, fps_, bound, mem["base_rss_mb"],
                                             CORES / slowdown)
    ss = results["static_search"]
    log("static search: %s" % ", ".join("%s %s" % (n, "reachable" if ok else "not reachable")
                                         for n, ok in ss["reachable"].items()))
    if args.footprint_only:
        results["settings"]["wall_s"] = round(time.monotonic() - started, 1)
        results["targets"] = {}
        memory_figures(results)
        write_outputs(results, streams, out_dir)
        print(json.dumps({"memory": results["memory"], "static_search": ss}, indent=1,
                         default=str))
        return 0

    # 3. The rounds.
    netbed.install_signal_handlers()
    if not feats["config"]:
        log("this edgesplit-device has no --config: runtime and device-only cannot run")
    if not feats["fps"]:
        log("this edgesplit-device has no --fps: the independent processes run unpaced "
            "(a smoke test of the harness, not a measurement)")
    rc = 0
    try:
        with netbed.Testbed(slowdown=0) as tb:
            results["settings"]["delay_by"] = "netem" if tb.use_netem else "userspace wire"
            results["settings"]["cgroup"] = tb.cgroup.layout
            tb.set_link(LINK_MBIT, LINK_RTT_MS)
            server = start_server(tb, args, streams, out_dir)
            # The quota: CORES / slowdown CPUs; DeviceCgroup counts slowdown against one core.
            tb.set_slowdown(slowdown / CORES)
            # One unrecorded slice first: the server builds each tail the first time a device
            # asks for its cut (a second or more), which would count against whoever came first.
            if not args.no_warmup_slice:
                for c in contenders:
                    launches = launches_for(c, args, streams, folders, timing, bound, out_dir,
                                            feats)
                    if isinstance(launches, str):
                        continue
                    log("warm-up slice (not recorded): %s" % c)
                    warm = dict(timing, measure_s=min(5.0, timing["measure_s"]))
                    run_slice(tb, args, c, launches, streams, warm,
                              os.path.join(raw_dir, "warmup-%s" % c))
                    break
            for r in range(timing["rounds"]):
                k = r % len(contenders)
                order = contenders[k:] + contenders[:k]
                entry = {"round": r, "order": order, "contenders": {}}
                results["rounds"].append(entry)
                for c in order:
                    if server.poll() is not None:
                        tb.set_slowdown(0)
                        server = start_server(tb, args, streams, out_dir)
                        tb.set_slowdown(slowdown / CORES)
                    launches = launches_for(c, args, streams, folders, timing, bound, out_dir,
                                            feats)
                    if isinstance(launches, str):
                        entry["contenders"][c] = {"error": launches}
                        continue
                    log("round %d/%d: %s (%d process%s)" % (r + 1, timing["rounds"], c,
                                                            len(launches),
                                                            "" if len(launches) == 1 else "es"))
                    cpu0 = tb.cgroup.cpu_seconds()
                    thr0 = tb.cgroup.throttled()
                    t_start = time.monotonic()
                    procs, window, missing, ready_s = run_slice(
                        tb, args, c, launches, streams, timing,
                        os.path.join(raw_dir, "r%d-%s" % (r, c)))
                    m = slice_metrics(procs, window, streams, labels)
                    m.update({"missing_ready": missing, "ready_after_s": ready_s,
                              "window": window, "wall_s": round(time.monotonic() - t_start, 1),
                              "device_cpu_s": tb.cgroup.cpu_seconds() - cpu0,
                              "throttled_periods": tb.cgroup.throttled()[0] - thr0[0],
                              "paced": c != "independent" or feats["fps"]})
                    entry["contenders"][c] = m
                    if m.get("error"):
                        log("  %s" % m["error"])
                    log("  %s; peak RSS %s MiB (bound %.1f)%s" % (
                        "; ".join("%s %d/%d within, top-1 %s" % (
                            n, x["within"], x["offered"],
                            fmt(x["correct"] / x["scored"] if x["scored"] else None, "%.3f"))
                            for n, x in m["streams"].items()),
                        fmt(m["peak_rss_mb"]), bound,
                        ("; never ready: " + ",".join(missing)) if missing else ""))
                results["aggregate"] = aggregate(results, streams)
                write_outputs(results, streams, out_dir)
    finally:
        results["settings"]["wall_s"] = round(time.monotonic() - started, 1)
        results["aggregate"] = aggregate(results, streams)
        for c, a in results["aggregate"].items():
            a["paced"] = (c != "independent" or feats["fps"]) and all(
                x["paced"] for x in a["streams"].values())
        per_image = {c: {n: x["_per_image"] for n, x in a["streams"].items()}
                     for c, a in results["aggregate"].items()}
        with open(os.path.join(raw_dir, "per_image.json"), "w") as f:
            json.dump(per_image, f)
        figures = targets(results, streams)
        memory_figures(results)
        if scenario["targets"]:
            results["targets"] = figures
        else:
            # The targets are set for the reference scenario: here the same figures, each saying
            # whether it holds, none claimed as a target.
            results["targets"] = {}
            results["figures"] = {k: dict({kk: vv for kk, vv in v.items() if kk != "pass"},
                                          holds=v.get("pass"))
                                  for k, v in figures.items()}
        write_outputs(results, streams, out_dir)
        print(open(os.path.join(out_dir, "summary.md")).read())
        print("multi: wrote %s/{results.json,summary.md,raw/} (%.0f s)" %
              (out_dir, results["settings"]["wall_s"]), flush=True)
    if args.check and not scenario["targets"]:
        print("multi: --check: the %s scenario has no targets (figures only)" % args.scenario)
    elif args.check:
        missed = [k for k, v in results["targets"].items() if v.get("pass") is False]
        if missed:
            print("multi: targets missed: %s" % ", ".join(missed), file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
