"""The engine benchmark: edgesplit's inference engine against PyTorch's best on the same machine.

    bench/run.sh engine [--quick] --out DIR [--check] [--models a,b] [--bin-dir DIR]

For each model and for 1 and 2 intra-op threads it times, on one input of the model's shape:

    plain       edgesplit's plain engine, whole model (the unoptimized reference)
    optimized   edgesplit's optimized engine, whole model
    split:C     edgesplit's optimized engine, head of cut C then tail of cut C (three cuts, at
                about 25%, 50% and 75% of the model's cuts)
    anchor      torch.jit.optimize_for_inference(torch.jit.freeze(model)) under torch.no_grad(),
                in its own Python process (the anchor worker below)

The edgesplit contenders run in edgesplit-bench-engine (bench/engine_worker.cc), the anchor in
this file started with --anchor-worker; both are driven line by line on stdin, so that only one
of them computes at a time. Each side runs in several processes (3; 2 with --quick), used in turn
round by round, because the same binary on the same model runs up to a third faster or slower
from one process to the next. The speed of a shared machine drifts by tens of percent over
minutes, so the contenders are interleaved: R rounds, each timing every contender for a few runs
(after one untimed warm-up run) in a shuffled order. Medians over all runs give the point
estimates; a ratio A/B is the ratio of the two medians, and its 95% interval comes from the
per-round ratios (median of A in the round over median of B in the same round), bootstrapped
over rounds (median of the resampled ratios, 2000 resamples, fixed seed).

Targets, per model and thread count: optimized <= 1.2x anchor, and split:C <= 1.3x optimized at
every cut measured. A target passes when its point estimate meets it; "supported" says whether
the whole 95% interval does. Each measurement also records how many CPUs other work kept busy
meanwhile (from /proc/stat, less this process and the workers): on a machine shared with a build
or another benchmark the numbers, at 2 threads especially, say little.

Writes DIR/results.json, DIR/summary.md (also printed) and DIR/raw.json (every run's
milliseconds, by round). --check exits 1 when a target fails or a model could not be measured.
Needs /usr/bin/python3 with torch and numpy.
"""

import argparse
import datetime
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("EDGESPLIT_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))

TARGET_OPTIMIZED_VS_ANCHOR = 1.2
TARGET_SPLIT_VS_OPTIMIZED = 1.3
CUT_FRACTIONS = (0.25, 0.5, 0.75)
THREADS = (1, 2)
BOOTSTRAP_RESAMPLES = 2000
DISTURBED_CPUS = 0.2  # other work's average CPUs above which the summary flags a measurement
SEED = 0

# Short name -> (model file, fallback input shape); "shared" models live under ../shared.
MODELS = {
    "default": ("models/default/fashion_mnist_cnn.pt", [1, 1, 28, 28]),
    "resnet50": (None, [1, 3, 224, 224]),  # exported by models/export.py (random weights)
    "mobilenet_v2": ("shared:models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt",
                     [1, 3, 224, 224]),
    "mobilenet_v1_0.75": ("shared:models/mobilenet_v1_imagenet/mobilenet_v1_0.75_192.pt",
                          [1, 3, 192, 192]),
    "resnet56": ("shared:models/resnet_cifar10/resnet56_cifar10.pt", [1, 3, 32, 32]),
}

# Rounds and runs per contender per round: full run, and --quick.
FULL = {"rounds": 18, "runs": 3, "plain_runs": 3, "processes": 3}
QUICK = {"rounds": 12, "runs": 2, "plain_runs": 2, "processes": 2}


# ---------------------------------------------------------------------------------------------
# The anchor worker (a separate process, so that its LibTorch threads and allocator are its own)


def anchor_worker(model_path, shape_text):
    """Serves 'threads N', 'time anchor RUNS' and 'quit' on stdin for optimize_for_inference."""
    import torch

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    torch.set_num_interop_threads(1)
    torch.set_num_threads(1)
    try:
        shape = [int(s) for s in shape_text.split(",")]
        t0 = time.perf_counter()
        model = torch.jit.load(model_path, map_location="cpu").eval()
        model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
        load_ms = (time.perf_counter() - t0) * 1e3
        torch.manual_seed(0)
        x = torch.rand(shape)
        with torch.no_grad():
            # The profiling executor specializes the graph over the first calls.
            for _ in range(3):
                out = model(x)
            # The anchor's own correctness: against the unoptimized module on the same input.
            reference = torch.jit.load(model_path, map_location="cpu").eval()(x)
            check = {"max_abs_diff": float((out - reference).abs().max()),
                     "top1_equal": bool(torch.equal(out.argmax(1), reference.argmax(1)))}
    except Exception as e:  # noqa: BLE001 - reported to the driver as one line
        print(f"anchor worker: {model_path}: {e}", file=sys.stderr)
        return 1
    reply({"load_ms": load_ms, "torch": torch.__version__, "check": check})
    gc.disable()
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "quit":
                break
            if parts[0] == "threads":
                torch.set_num_threads(int(parts[1]))
                reply({"threads": int(parts[1])})
            elif parts[0] == "time" and len(parts) == 3 and parts[1] == "anchor":
                runs = int(parts[2])
                ms = []
                with torch.no_grad():
                    model(x)
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        model(x)
                        ms.append((time.perf_counter() - t0) * 1e3)
                reply({"contender": "anchor", "ms": ms})
            else:
                reply({"error": f"unknown command '{line.strip()}'"})
        except Exception as e:  # noqa: BLE001
            reply({"error": str(e)})
    return 0


# ---------------------------------------------------------------------------------------------
# Driving the workers


class WorkerError(RuntimeError):
    pass


class Worker:
    """A worker process speaking the one-line-per-command protocol; stderr goes to a file."""

    def __init__(self, argv, name):
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, bufsize=1)
        self.hello = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            err = self.stderr.read().strip().splitlines()
            raise WorkerError(f"{self.name} exited ({self.proc.returncode}): "
                              + (err[-1] if err else "no message"))
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"{self.name}: {reply['error']}")
        return reply

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def engine_worker(bin_dir, model, shape, cuts=()):
    argv = [os.path.join(bin_dir, "edgesplit-bench-engine"), "--model", model,
            "--input-shape", ",".join(map(str, shape))]
    if cuts:
        argv += ["--cuts", ",".join(map(str, cuts))]
    argv += ["--engines", "xnnpack"]  # timed too where this LibTorch has it (not a target)
    return Worker(argv, "edgesplit-bench-engine")


def spread_cuts(num_cuts):
    """Cut ids at about CUT_FRACTIONS of the model's cuts (ids 0 .. num_cuts-1)."""
    ids = []
    for f in CUT_FRACTIONS:
        c = min(num_cuts - 1, max(0, round(f * (num_cuts - 1))))
        if c not in ids:
            ids.append(c)
    return ids


# ---------------------------------------------------------------------------------------------
# Other work on the machine


def _busy_seconds():
    """CPU seconds the whole machine has spent busy (steal included) since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_seconds(pid):
    """CPU seconds (user + system, every thread) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many CPUs other work kept busy, on average, between start() and stop(): the machine's
    busy time less that of this process and the workers. Well above 0 means the timings are
    disturbed (a build, another benchmark)."""

    def __init__(self, pids):
        self.pids = [os.getpid()] + list(pids)

    def _sample(self):
        try:
            return time.monotonic(), _busy_seconds(), sum(map(_process_seconds, self.pids))
        except (OSError, ValueError, IndexError):
            return None

    def start(self):
        self.begin = self._sample()

    def stop(self):
        end = self._sample()
        if self.begin is None or end is None or end[0] <= self.begin[0]:
            return None
        other = (end[1] - self.begin[1]) - (end[2] - self.begin[2])
        return round(max(0.0, other) / (end[0] - self.begin[0]), 3)


# ---------------------------------------------------------------------------------------------
# Statistics


def median(values):
    import numpy as np

    return float(np.median(values))


def ratio(rounds_a, rounds_b):
    """A/B: ratio of overall medians, and a 95% interval from per-round paired ratios
    bootstrapped over rounds. When other work disturbs some rounds the two can disagree (the
    interval may even exclude the point estimate); median_of_round_ratios shows by how much."""
    import numpy as np

    value = median(sum(rounds_a, [])) / median(sum(rounds_b, []))
    per_round = np.array([median(a) / median(b) for a, b in zip(rounds_a, rounds_b)])
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, len(per_round), size=(BOOTSTRAP_RESAMPLES, len(per_round)))
    boot = np.median(per_round[idx], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"value": round(value, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "median_of_round_ratios": round(float(np.median(per_round)), 4)}


# ---------------------------------------------------------------------------------------------
# Measuring one model


def resolve_model(name, out_dir):
    """(path, input shape) of a model, or (None, reason) when it is not available."""
    rel, shape = MODELS[name]
    if rel is None:  # resnet50: exported once, then cached
        cache = os.path.join(REPO, "build", "models-cache")
        folder = cache if os.path.isdir(cache) else os.path.join(out_dir, "models")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "resnet50.pt")
        if not os.path.exists(path):
            # Exported under another name first, so that an interrupted export leaves no
            # truncated file behind to be taken for the cached model.
            print(f"engine bench: exporting ResNet-50 to {path}", file=sys.stderr)
            partial = os.path.join(folder, "resnet50.partial.pt")
            subprocess.run([sys.executable, os.path.join(REPO, "models", "export.py"),
                            "resnet50", partial], check=True, stdout=subprocess.DEVNULL)
            os.replace(os.path.join(folder, "resnet50.partial.json"),
                       os.path.join(folder, "resnet50.json"))
            os.replace(partial, path)
    elif rel.startswith("shared:"):
        if not os.path.isdir(SHARED):
            return None, "../shared not present"
        path = os.path.join(SHARED, rel[len("shared:"):])
    else:
        path = os.path.join(REPO, rel)
    if not os.path.exists(path):
        return None, f"{path} not present"
    meta = os.path.splitext(path)[0] + ".json"
    if os.path.exists(meta):
        with open(meta) as f:
            shape = json.load(f).get("input_shape", shape)
    return path, shape


def measure_model(name, path, shape, bin_dir, plan, rng, log):
    """Times every contender on one model; returns (results entry, raw runs by round)."""
    probe = engine_worker(bin_dir, path, shape)
    num_cuts = probe.hello["num_cuts"]
    probe.close()
    cuts = spread_cuts(num_cuts)
    # Several processes per side, used in turn round by round: the same binary on the same model
    # runs up to a third faster or slower from one process to the next (where its buffers land in
    # memory), so one process per side would compare two draws of that lottery.
    edges, anchors = [], []
    try:
        for _ in range(plan["processes"]):
            edges.append(engine_worker(bin_dir, path, shape, cuts))
            anchors.append(Worker([sys.executable, os.path.abspath(__file__), "--anchor-worker",
                                   path, ",".join(map(str, shape))], "anchor worker"))
        edge, anchor = edges[0], anchors[0]
        hello = edge.hello
        entry = {
            "path": os.path.relpath(path, REPO),
            "input_shape": shape,
            "engine": hello["engine"],
            "num_cuts": num_cuts,
            "cuts": {f"split:{c['id']}": c["name"] for c in hello["cuts"]},
            "load_ms": {"plain": round(hello["load_ms_plain"], 1),
                        "optimized": round(hello["load_ms_optimized"], 1),
                        "anchor": round(anchor.hello["load_ms"], 1)},
            "check": edge.ask("check"),
            "anchor_check": anchor.hello.get("check"),
            "threads": {},
        }
        splits = [f"split:{c}" for c in cuts]
        extra = ["xnnpack"] if not hello.get("engines", {}).get(
            "xnnpack", "unavailable").startswith("unavailable") else []
        entry["xnnpack"] = hello.get("engines", {}).get("xnnpack")
        contenders = ["anchor", "plain", "optimized"] + splits + extra
        raw = {}
        for threads in THREADS:
            for w in edges + anchors:
                w.ask(f"threads {threads}")
            pair = [0]  # the process pair of the current round

            def timed(contender, runs):
                w = (anchors if contender == "anchor" else edges)[pair[0]]
                return w.ask(f"time {contender} {runs}")["ms"]

            # One untimed pass: first runs at a new thread count build kernels and caches.
            for pair[0] in range(len(edges)):
                for c in contenders:
                    timed(c, 1)
            other = OtherLoad([w.proc.pid for w in edges + anchors])
            other.start()
            time.sleep(0.5)
            busy = other.stop()
            if busy is not None and busy > DISTURBED_CPUS:
                log(f"{name} t{threads}: other work keeps {busy:.1f} CPUs busy: the timings "
                    "will be disturbed (slow at 2 threads)")
            other.start()
            rounds = {c: [] for c in contenders}
            for r in range(plan["rounds"]):
                log(f"{name} t{threads}: round {r + 1}/{plan['rounds']}")
                pair[0] = r % len(edges)
                order = contenders[:]
                rng.shuffle(order)
                for c in order:
                    runs = plan["plain_runs"] if c == "plain" else plan["runs"]
                    rounds[c].append(timed(c, runs))
            raw[str(threads)] = rounds
            entry["threads"][str(threads)] = {
                "median_ms": {c: round(median(sum(rounds[c], [])), 4) for c in contenders},
                "runs": {c: sum(len(x) for x in rounds[c]) for c in contenders},
                "other_load_cpus": other.stop(),
                "ratio_optimized_vs_anchor": ratio(rounds["optimized"], rounds["anchor"]),
                "ratio_split_vs_optimized": {
                    s: ratio(rounds[s], rounds["optimized"]) for s in splits},
            }
        return entry, raw
    finally:
        for w in edges + anchors:
            w.close()


def targets_of(models):
    """The targets of every measured model and thread count (see the module docstring)."""
    targets = {}
    for name, m in models.items():
        for threads, t in m.get("threads", {}).items():
            r = t["ratio_optimized_vs_anchor"]
            targets[f"{name}/t{threads}/optimized_vs_anchor"] = {
                "value": r["value"], "ci95": r["ci95"], "target": TARGET_OPTIMIZED_VS_ANCHOR,
                "pass": r["value"] <= TARGET_OPTIMIZED_VS_ANCHOR,
                "supported": r["ci95"][1] <= TARGET_OPTIMIZED_VS_ANCHOR,
                "other_load_cpus": t["other_load_cpus"]}
            splits = t["ratio_split_vs_optimized"]
            if splits:
                worst = max(splits, key=lambda s: splits[s]["value"])
                targets[f"{name}/t{threads}/split_vs_optimized_max"] = {
                    "value": splits[worst]["value"], "ci95": splits[worst]["ci95"],
                    "cut": worst, "target": TARGET_SPLIT_VS_OPTIMIZED,
                    "pass": splits[worst]["value"] <= TARGET_SPLIT_VS_OPTIMIZED,
                    "supported": all(s["ci95"][1] <= TARGET_SPLIT_VS_OPTIMIZED
                                     for s in splits.values()),
                    "other_load_cpus": t["other_load_cpus"]}
    return targets


# ---------------------------------------------------------------------------------------------
# Report


def fmt_ms(x):
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.1f}"


def fmt_load(x):
    if x is None:
        return "?"
    return f"{x:.2f}" + (" (disturbed)" if x > DISTURBED_CPUS else "")


def fmt_ratio(r):
    return f"{r['value']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"


def summary_markdown(results):
    m = results["machine"]
    lines = [f"# Engine benchmark ({'quick' if results['quick'] else 'full'})", "",
             f"{m['cpu']}, {m['nproc']} CPUs, torch {m['torch']}; {results['date']}, "
             f"{results['elapsed_s']:.0f} s. Medians in ms; ratios with 95% intervals "
             "(per-round ratios bootstrapped over rounds). Other load: CPUs other work kept "
             "busy on average during the rounds; well above 0, the timings are disturbed.", ""]
    for name, e in results["models"].items():
        if "skipped" in e or "error" in e:
            lines += [f"## {name}", "", f"{'Skipped' if 'skipped' in e else 'Failed'}: "
                      f"{e.get('skipped', e.get('error'))}", ""]
            continue
        splits = list(e["cuts"])
        lines += [f"## {name} (input {'x'.join(map(str, e['input_shape']))}, "
                  f"{e['num_cuts']} cuts)", "", f"Engine: {e['engine']}", ""]
        has_xnn = all("xnnpack" in t["median_ms"] for t in e["threads"].values())
        head = (["threads", "plain", "optimized"]
                + [f"{s} ({e['cuts'][s]})" for s in splits]
                + ["anchor", "optimized / anchor"]
                + [f"{s} / optimized" for s in splits]
                + (["xnnpack"] if has_xnn else []) + ["other load (CPUs)"])
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for threads, t in e["threads"].items():
            med = t["median_ms"]
            row = ([threads, fmt_ms(med["plain"]), fmt_ms(med["optimized"])]
                   + [fmt_ms(med[s]) for s in splits]
                   + [fmt_ms(med["anchor"]), fmt_ratio(t["ratio_optimized_vs_anchor"])]
                   + [fmt_ratio(t["ratio_split_vs_optimized"][s]) for s in splits]
                   + ([fmt_ms(med["xnnpack"])] if has_xnn else [])
                   + [fmt_load(t["other_load_cpus"])])
            lines.append("| " + " | ".join(row) + " |")
        runs = e["threads"][next(iter(e["threads"]))]["runs"]
        check = e["check"]
        worst_diff = max(v["max_abs_diff"] for v in check.values())
        top1 = all(v["top1_equal"] for v in check.values())
        lines += ["", f"Runs per contender: {runs['optimized']} (plain {runs['plain']}). "
                  f"Against plain: max |diff| {worst_diff:.2e}, top-1 "
                  f"{'equal' if top1 else 'DIFFERENT'} (optimized and every split)."]
        a = e.get("anchor_check")
        if a:
            lines += [f"The anchor against the unoptimized module: max |diff| "
                      f"{a['max_abs_diff']:.2e}, top-1 {'equal' if a['top1_equal'] else 'DIFFERENT'}"
                      + (" (optimize_for_inference computes wrong values on this model)"
                         if a["max_abs_diff"] > 1e-2 else "") + "."]
        lines += [""]
    if not results["targets"]:
        return "\n".join(lines + ["## Targets", "", "None: no model was measured."]) + "\n"
    lines += ["## Targets", "", "| target | value [95%] | bound | pass | interval supports "
              "| other load |", "|---|---|---|---|---|---|"]
    for key, t in results["targets"].items():
        value = fmt_ratio(t) + (f" at {t['cut']}" if "cut" in t else "")
        lines.append(f"| {key} | {value} | {t['target']} | {'yes' if t['pass'] else 'NO'} | "
                     f"{'yes' if t['supported'] else 'no'} | {fmt_load(t['other_load_cpus'])} |")
    return "\n".join(lines) + "\n"


def machine_info():
    import torch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "torch": torch.__version__,
            "loadavg_at_start": list(os.getloadavg())}


# ---------------------------------------------------------------------------------------------
# Command line


class Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"bench/run.sh engine: {message} (see --help).", file=sys.stderr)
        sys.exit(2)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--anchor-worker":
        if len(sys.argv) != 4:
            print("engine_bench.py --anchor-worker MODEL SHAPE", file=sys.stderr)
            return 2
        return anchor_worker(sys.argv[2], sys.argv[3])

    parser = Parser(prog="bench/run.sh engine", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results folder")
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds; the default model and MobileNetV2 (ResNet-50 "
                             "without ../shared)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target fails or a model could not be measured")
    parser.add_argument("--models", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--bin-dir", default=os.environ.get(
        "EDGESPLIT_BIN_DIR", os.path.join(REPO, "build", "bin")), help="edgesplit binaries")
    args = parser.parse_args()

    if args.models:
        names = [n for n in args.models.split(",") if n]
        unknown = [n for n in names if n not in MODELS]
        if unknown or not names:
            parser.error(f"unknown model '{','.join(unknown)}', expected some of "
                         + ", ".join(MODELS))
    elif args.quick:
        names = ["default", "mobilenet_v2" if os.path.isdir(SHARED) else "resnet50"]
    else:
        names = list(MODELS)
    if not os.access(os.path.join(args.bin_dir, "edgesplit-bench-engine"), os.X_OK):
        parser.error(f"no edgesplit-bench-engine in {args.bin_dir}, build it or pass --bin-dir")
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        parser.error(f"{sys.executable} lacks {e.name}")

    os.makedirs(args.out, exist_ok=True)
    plan = QUICK if args.quick else FULL
    rng = random.Random(SEED)
    started = time.monotonic()

    def log(msg):
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    results = {"bench": "engine", "machine": machine_info(), "quick": args.quick,
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "plan": dict(plan, threads=list(THREADS), cut_fractions=list(CUT_FRACTIONS)),
               "models": {}}
    raw = {}
    for name in names:
        try:
            path, shape = resolve_model(name, args.out)
            if path is None:
                results["models"][name] = {"skipped": shape}
                log(f"{name}: skipped ({shape})")
                continue
            log(f"{name}: {os.path.relpath(path, REPO)}, input {shape}")
            results["models"][name], raw[name] = measure_model(
                name, path, shape, args.bin_dir, plan, rng, log)
        except (WorkerError, subprocess.CalledProcessError, OSError, KeyError,
                ValueError) as e:
            results["models"][name] = {"error": str(e)}
            log(f"{name}: failed: {e}")
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["targets"] = targets_of(results["models"])

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "raw.json"), "w") as f:
        json.dump(raw, f)
    summary = summary_markdown(results)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)
    print(f"bench/run.sh engine: results in {args.out}/results.json", file=sys.stderr)

    if args.check:
        failed = [k for k, t in results["targets"].items() if not t["pass"]]
        failed += [f"{n} ({m['error']})" for n, m in results["models"].items() if "error" in m]
        if failed:
            print("bench/run.sh engine: failed: " + ", ".join(failed), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
