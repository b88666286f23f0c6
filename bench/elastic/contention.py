#!/usr/bin/python3
"""Contention run: a device with a latency bound while CPU contenders take its core, then leave.

    bench/run.sh elastic contention [--quick] --out DIR [--check]

The device (edgesplit-device, one thread, confined to one core with taskset, as a single-core
board; frames arriving at --fps from the CIFAR-10 test images)
runs the CIFAR-10 family (models/families/cifar10.json) with `--objective accuracy` and a latency
bound of 1.2x the reference's (ResNet-56's) own uncontended median latency, measured first in the
same run. The baseline runs ResNet-56 on the device for every frame (`--cut device`). Each run
goes through four phases of the same length: no contender, one busy process on the device's core
(`stress-ng --cpu 1`, confined to the same core: the device gets about half of it), two (about a
third), none again (Python busy loops when stress-ng is absent; the output says which). With two
threads on this 2-core machine a contender on one core stalls every OpenMP barrier of the device
instead (frames 10-50x slower, a thread-count problem, not a model-size one): core groups
(`docs/energy.md`) answer that. Baseline and family alternate (ABAB), on the same frames; as
root, each is followed by itself at real-time priority (`--realtime 1`, SCHED_FIFO), which the
busy processes, at normal priority, can no longer delay.

Per run and phase: frames within the bound (%), top-1 against the labels, the members used, and
frames to react (after a phase starts: frames until one is back within the bound). Targets
(elastic models): with one contender, >= 95% of frames within the bound, top-1 at most 2
points below the baseline's on the same frames (paired, the interval's upper end), reacting
within 3 frames, for the family at normal priority. The real-time runs are reported beside them
(`realtime` in results.json). `--ab NAME=FLAGS` (repeatable) also runs the family with other
device flags at normal priority, after the family in each repeat, on the same frames (`ab` in
results.json, not a target). Device-only: no server.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

from common import ROOT, parse_ab, parser, report, shared_dir

PHASES = [0, 1, 2, 0]  # busy processes on the device's core
CORE = "0"


def interleaved_images(shared, out, per_class):
    """Links to the CIFAR-10 test images, classes interleaved (the folder is sorted by class)."""
    src = os.path.join(shared, "data", "cifar10-test")
    os.makedirs(out, exist_ok=True)
    labels = {}
    with open(os.path.join(src, "labels.tsv")) as f:
        for line in f:
            name, cls = line.rstrip("\n").split("\t")
            idx = int(name.rsplit("_", 1)[1].split(".")[0])
            if idx >= per_class:
                continue
            link = f"{idx:04d}_{name}"
            path = os.path.join(out, link)
            if not os.path.exists(path):
                os.symlink(os.path.join(src, "images", name), path)
            labels[link] = int(cls)
    return labels


class Contender:
    def __init__(self):
        self.procs = []
        self.kind = "stress-ng" if shutil.which("stress-ng") else "python busy loops"

    def set(self, count):
        self.stop()
        if count == 0:
            return
        pin = ["taskset", "-c", CORE]
        if self.kind == "stress-ng":
            self.procs = [subprocess.Popen(pin + ["stress-ng", "--cpu", str(count), "--quiet"],
                                           start_new_session=True)]
        else:
            self.procs = [subprocess.Popen(pin + [sys.executable, "-c", "while True: pass"],
                                           start_new_session=True) for _ in range(count)]

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.procs = []


def run_device(cmd, frames_per_phase, contender, labels):
    """Runs the device, switching the contender every frames_per_phase frames; returns frames."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frames = []
    phase = 0
    contender.set(PHASES[0])
    try:
        for line in proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("type") != "frame":
                continue
            top = e["top"][0]["index"] if e.get("top") else -1
            name = os.path.basename(e["source"])
            frames.append({"phase": phase, "latency_ms": e["latency_ms"],
                           "within": bool(e.get("within_bound", False)),
                           "right": top == labels.get(name, -2), "source": name,
                           "member": e["plan"].get("member", "resnet56"),
                           "completed": e["completed"]})
            if len(frames) % frames_per_phase == 0 and phase + 1 < len(PHASES):
                phase += 1
                contender.set(PHASES[phase])
    finally:
        contender.stop()
    err = proc.stderr.read()
    rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"device exited {rc}: {err[-2000:]}")
    return frames


def newcombe_upper(n, lost, gained, right_ref, z=1.96):
    """Upper end of the paired loss (points), Newcombe's method 10, as profiles use."""
    if n == 0:
        return float("nan")
    def wilson(k, m):
        p = k / m
        d = 1 + z * z / m
        c = p + z * z / (2 * m)
        h = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
        return (c - h) / d, (c + h) / d
    p1 = right_ref / n
    p2 = (right_ref - lost + gained) / n
    l1, u1 = wilson(right_ref, n)
    l2, u2 = wilson(right_ref - lost + gained, n)
    # correlation of the paired outcomes
    a = right_ref - lost
    b = lost
    c = gained
    d_ = n - a - b - c
    denom = math.sqrt(max((a + b) * (c + d_) * (a + c) * (b + d_), 0))
    phi = (a * d_ - b * c) / denom if denom > 0 else 0
    diff = p1 - p2
    up = diff + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0))
    return 100 * up


def phase_stats(frames, bound_ms):
    out = []
    for ph in range(len(PHASES)):
        fs = [f for f in frames if f["phase"] == ph]
        if not fs:
            continue
        within = sum(f["within"] for f in fs)
        react = next((i for i, f in enumerate(fs) if f["within"]), len(fs))
        members = {}
        for f in fs:
            members[f["member"]] = members.get(f["member"], 0) + 1
        lat = sorted(f["latency_ms"] for f in fs)
        out.append({"phase": ph, "contenders": PHASES[ph], "frames": len(fs),
                    "within_bound_pct": round(100 * within / len(fs), 1),
                    "top1_pct": round(100 * sum(f["right"] for f in fs) / len(fs), 1),
                    "latency_p50_ms": lat[len(lat) // 2], "latency_p95_ms": lat[int(0.95 * (len(lat) - 1))],
                    "members": members, "frames_to_react": react})
    return out


def one_contender(runs, kind, reference):
    """Phase 1 (one contender) of the runs of `kind`, pooled over repeats: % within the bound,
    top-1 points below `reference`'s runs on the same frames (paired) and its interval's upper
    end, the paired frames, and the most frames to react."""
    frames = [f for run in runs if run["kind"] == kind for f in run["frames"] if f["phase"] == 1]
    ref_by = {}
    for run in runs:
        if run["kind"] == reference:
            for f in run["frames"]:
                if f["phase"] == 1:
                    ref_by.setdefault((run["repeat"], f["source"]), f)
    n = lost = gained = right_ref = 0
    for run in runs:
        if run["kind"] != kind:
            continue
        for f in run["frames"]:
            b = ref_by.get((run["repeat"], f["source"]))
            if f["phase"] != 1 or b is None:
                continue
            n += 1
            right_ref += b["right"]
            lost += b["right"] and not f["right"]
            gained += f["right"] and not b["right"]
    within = 100 * sum(f["within"] for f in frames) / max(1, len(frames))
    drop = 100 * (lost - gained) / max(1, n)
    upper = newcombe_upper(n, lost, gained, right_ref)
    react = max(s["frames_to_react"] for run in runs if run["kind"] == kind
                for s in run["phases"] if s["phase"] == 1)
    return within, drop, upper, n, react


def main():
    ap = parser(__doc__)
    ap.add_argument("--fps", type=float, default=30)
    ap.add_argument("--ab", action="append", default=[], metavar="NAME=FLAGS",
                    help="also run the family with these device flags at normal priority, after "
                         "the family in each repeat, on the same frames (reported beside the "
                         "targets, not a target)")
    args = ap.parse_args()
    variants = parse_ab(args.ab, "contention", "share=--bound-share 0.92")
    if variants is None:
        return 2
    shared = shared_dir()
    if not os.path.isdir(os.path.join(shared, "data", "cifar10-test")):
        print("contention: ../shared (models and images) is absent; nothing to measure",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    per_phase = 60 if args.quick else 150
    repeats = 1 if args.quick else 2
    images = os.path.join(args.out, "images")
    labels = interleaved_images(shared, images, per_class=(per_phase * len(PHASES) + 9) // 10)
    device = os.path.join(args.bin_dir, "edgesplit-device")
    family = os.path.join(ROOT, "models", "families", "cifar10.json")
    with open(family) as f:
        manifest = json.load(f)
    ref = next(m for m in manifest["members"] if m["name"] == manifest["reference"])
    ref_model = os.path.normpath(os.path.join(os.path.dirname(family), ref["model"]))
    ref_profile = os.path.normpath(os.path.join(os.path.dirname(family), ref["profile"]))
    total = per_phase * len(PHASES)
    pin = ["taskset", "-c", CORE]
    common = ["--input", images, "--max-frames", str(total), "--threads", "1", "--json",
              "--fps", str(args.fps), "--quiet"]
    contender = Contender()
    # With the right to it (root), each also runs at real-time priority (--realtime 1): the busy
    # processes then no longer delay its frames, and what is left of the contention shows.
    kinds = ["baseline", "family"] + ["ab:" + name for name in variants]
    if os.geteuid() == 0:
        kinds += ["baseline-rt", "family-rt"]
    else:
        print("contention: not root: no real-time priority runs", file=sys.stderr)
    print(f"contention: contender {contender.kind}; {repeats}x ({', '.join(kinds)}), "
          f"{len(PHASES)} phases of {per_phase} frames at {args.fps} fps: about "
          f"{round(repeats * len(kinds) * total / args.fps / 60 + 0.5)} minutes", file=sys.stderr,
          flush=True)

    # The reference's uncontended latency, in this run.
    idle = Contender()
    calib = run_device(pin + [device, "--model", ref_model, "--profile", ref_profile, "--cut",
                              "device", "--input", images, "--max-frames", "90", "--threads", "1",
                              "--json", "--fps", str(args.fps), "--quiet"], 10 ** 9, idle, labels)
    lat = sorted(f["latency_ms"] for f in calib[10:])
    l0 = lat[len(lat) // 2]
    bound = round(1.2 * l0, 3)
    print(f"contention: ResNet-56 alone: median {l0:.2f} ms; bound {bound} ms", file=sys.stderr)

    runs = []
    for r in range(repeats):
        for kind in kinds:
            if kind.startswith("baseline"):
                cmd = pin + [device, "--model", ref_model, "--profile", ref_profile, "--cut", "device",
                       "--max-latency-ms", str(bound)] + common
            else:
                cmd = pin + [device, "--family", family, "--objective", "accuracy",
                       "--max-latency-ms", str(bound), "--max-accuracy-drop", "none"] + common
            if kind.endswith("-rt"):
                cmd += ["--realtime", "1"]
            if kind.startswith("ab:"):
                cmd += variants[kind[3:]]
            frames = run_device(cmd, per_phase, contender, labels)
            stats = phase_stats(frames, bound)
            runs.append({"kind": kind, "repeat": r, "phases": stats, "frames": frames})
            for s in stats:
                print(f"contention: {kind} #{r} phase {s['phase']} ({s['contenders']} contenders): "
                      f"{s['within_bound_pct']}% within, top-1 {s['top1_pct']}%, react "
                      f"{s['frames_to_react']}, p50 {s['latency_p50_ms']} ms, {s['members']}",
                      file=sys.stderr, flush=True)

    # Targets: phase 1 (one contender), pooled over repeats, paired on the same frames, for the
    # family at normal priority against the baseline at normal priority.
    within, drop, upper, n, react = one_contender(runs, "family", "baseline")
    targets = {
        "within_bound_one_contender_pct": {"value": round(within, 1), "target": 95,
                                            "pass": within >= 95},
        "top1_drop_one_contender_pp": {"value": round(drop, 2), "upper_95": round(upper, 2),
                                        "paired_frames": n, "target": 2, "pass": upper <= 2},
        "frames_to_react_one_contender": {"value": react, "target": 3, "pass": react <= 3},
    }
    realtime = {}
    if "family-rt" in kinds:
        for kind in ("baseline-rt", "family-rt"):
            w, d, u, m, k = one_contender(runs, kind, "baseline")
            realtime[kind] = {"within_bound_one_contender_pct": round(w, 1),
                              "top1_drop_vs_baseline_pp": round(d, 2), "upper_95": round(u, 2),
                              "paired_frames": m, "frames_to_react": k}
            print(f"contention: {kind} (real-time priority), one contender: {w:.1f}% within, "
                  f"top-1 {d:+.2f} points below the baseline (upper {u:.2f})", file=sys.stderr)
    ab = {}
    f_w, f_d, _, _, f_k = one_contender(runs, "family", "baseline")
    for name in variants:
        w, d, u, m, k = one_contender(runs, "ab:" + name, "baseline")
        ab[name] = {"flags": " ".join(variants[name]), "within_bound_one_contender_pct": round(w, 1),
                    "top1_drop_vs_baseline_pp": round(d, 2), "upper_95": round(u, 2),
                    "paired_frames": m, "frames_to_react": k,
                    "family_within_bound_one_contender_pct": round(f_w, 1),
                    "family_top1_drop_vs_baseline_pp": round(f_d, 2)}
        print(f"contention: ab:{name} ({' '.join(variants[name])}), one contender: {w:.1f}% "
              f"within (the family {f_w:.1f}%), top-1 {d:+.2f} points below the baseline (upper "
              f"{u:.2f}; the family {f_d:+.2f}), react {k} (the family {f_k})", file=sys.stderr)
    results = {"bench": "elastic-contention", "quick": args.quick, "contender": contender.kind,
               "reference_uncontended_ms": l0, "bound_ms": bound, "fps": args.fps,
               "targets": targets,
               "realtime": realtime,
               "ab": ab,
               "runs": [{k: v for k, v in run.items() if k != "frames"} for run in runs]}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "frames.json"), "w") as f:
        json.dump(runs, f)
    return report("contention", targets, args.check)


if __name__ == "__main__":
    sys.exit(main())
