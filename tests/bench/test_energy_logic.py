#!/usr/bin/env python3
"""The energy benchmark's arithmetic (bench/energy/energy_bench.py --from-raw), on JSON lines
written here: ratios are paired by round, so a slow round that scales every governor alike leaves
no width; a ratio target is met only where its interval supports it, and one round claims none;
frames over their bound are counted. No processes, no root, no ../shared."""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "..", "bench", "energy", "energy_bench.py")
WINDOW_S = 20.0  # the full run's windows
CONTENDERS = ["manager", "performance", "schedutil", "ondemand"]


def write_run(path, watts, late_every=0):
    """edgesplit-device's frame lines for one run: MobileNetV2 at 5 fps through four windows,
    ResNet-56 at 10 fps from the third; the meter's total grows at `watts`; every
    `late_every`-th frame is over its bound."""
    lines, n = [], 0
    for stream, fps, start in (("imagenet", 5.0, 0.0), ("cifar", 10.0, 2 * WINDOW_S)):
        frames = int(fps * (4 * WINDOW_S - start))
        for k in range(frames):
            t = start + k / fps
            n += 1
            lines.append({"type": "frame", "stream": stream, "frame": k, "energy_t_s": t,
                          "energy_j": watts * t, "levels": {"little": 600},
                          "within_bound": not (late_every and n % late_every == 0),
                          "latency_ms": 10.0})
    lines.append({"type": "device", "energy": {"joules": watts * 4 * WINDOW_S}})
    with open(path, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def run(raw, out, *extra):
    p = subprocess.run([sys.executable, BENCH, "--from-raw", raw, "--out", out] + list(extra),
                       capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw")
        os.makedirs(raw)
        # Rounds 1x, 2x and 3x as costly for every governor (a slow spell of the host); the
        # manager at 0.7 of performance's power in each, schedutil at 0.69.
        share = {"manager": 0.7, "performance": 1.0, "schedutil": 0.69, "ondemand": 0.8}
        for rnd, slow in enumerate([1.0, 2.0, 3.0]):
            for c in CONTENDERS:
                write_run(os.path.join(raw, "%s-r%d.jsonl" % (c, rnd)), 2.0 * slow * share[c],
                          late_every=50 if c == "manager" else 0)
        rc, text = run(raw, os.path.join(tmp, "out"))
        check(rc == 0, "the three-round recomputation runs: " + text)
        res = json.load(open(os.path.join(tmp, "out", "results.json")))
        t = res["targets"]
        one = t["energy_saving_vs_performance_one_model"]
        # Paired: exactly 30% in every round, so the interval has no width despite the 3x spread.
        check(abs(one["value"] - 0.3) < 1e-9, "saving %s" % one)
        check(abs(one["ci95"][0] - 0.3) < 1e-6 and abs(one["ci95"][1] - 0.3) < 1e-6,
              "interval %s" % one)
        check(one["pass"], "a 30% saving with its interval above 20% passes")
        check(not t["energy_saving_vs_performance_two_models"]["pass"], "30% is not 50%")
        row = res["windows"][1]["manager_over_schedutil"]
        check(abs(row["value"] - 0.7 / 0.69) < 1e-4, "manager / schedutil %s" % row)
        check(t["windows_manager_at_most_schedutil"]["value"] == 0, "manager above schedutil")
        check(abs(t["manager_frames_over_bound"]["value"] - 0.02) < 1e-3,
              "one frame in 50 over: %s" % t["manager_frames_over_bound"])
        check("Paired by round" in open(os.path.join(tmp, "out", "summary.md")).read(),
              "the summary gives the paired table")
        # --check exits 1 on the missed targets.
        rc, _ = run(raw, os.path.join(tmp, "out-check"), "--check")
        check(rc == 1, "--check fails on a missed target")

        # One round: the same saving, but no interval, so no ratio target is claimed.
        rc, text = run(raw, os.path.join(tmp, "out1"), "--rounds", "1")
        check(rc == 0, "one round runs: " + text)
        res1 = json.load(open(os.path.join(tmp, "out1", "results.json")))
        one1 = res1["targets"]["energy_saving_vs_performance_one_model"]
        check(abs(one1["value"] - 0.3) < 1e-9 and not one1["pass"],
              "one round claims nothing: %s" % one1)
        check("no ratio target is claimed" in text, "one round says so")

        # A round that is not there: one sentence, no traceback.
        rc, text = run(raw, os.path.join(tmp, "out4"), "--rounds", "4")
        check(rc != 0 and "--from-raw" in text and "Traceback" not in text,
              "a missing round is said: " + text)

    for f in failures:
        print("FAILED:", f)
    print("%d checks failed" % len(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
