#!/usr/bin/python3
"""Early exits on the device (or on the server): latency and top-1 with exits at a threshold
against the same model without them, paired on the same images.

    bench/run.sh elastic exits [--quick] [--threshold 0.9] --out DIR [--check]
    bench/run.sh elastic exits --side server [--cut relu_17] [--threshold 0.9] --out DIR [--check]

ResNet-56 (../shared/models/resnet_cifar10) with its exit heads after layer1 and layer2
(models/exits/resnet56_cifar10_exits.json) on the CIFAR-10 test JPEGs (../shared/data/cifar10-test,
classes interleaved). The images are split into rounds (20: a host whose speed drifts hits both
settings alike); each round runs both settings on its images (edgesplit-device --cut device, one
thread, with and without --exits --exit-threshold T), alternating which goes first. Per image:
the frame's latency (from when it is taken: preprocessing, head, exit heads, tail), its compute
(head, exit heads, tail) and its class. Reported: mean and median latency, mean compute, the
ratios of the means with a 95% paired bootstrap interval over images; top-1 of both, and the loss
with Newcombe's paired interval (lost / gained images, as profiles use); the fraction of frames
that left at each exit. Targets (bench/run.sh's contract): the upper end of the latency ratio's
95% interval below 1, and the upper end of the loss's at most 1 point (the device's default
bound).

With --side server: one edgesplit-server (loopback, one worker, one thread) runs ResNet-56 with
--exits; the device sends every frame at the early --cut (8 bits) with and without
--exits --exit-threshold T, in the same alternating rounds. Per image: the server's compute for
the request (the reply's compute time: the tail, to the exit and its head for a frame answered
there) and the class. Reported as above, with the server's compute in place of the device's;
targets: the upper end of the server compute ratio's 95% interval below 1, the loss's upper end at
most 1 point.
"""

import json
import os
import random
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contention as c  # noqa: E402  (the interleaved image folder, Newcombe's interval)
from common import ROOT, parser, report, shared_dir  # noqa: E402


def run_device(binary, model, profile, images, threads, extra, save, cut="device"):
    cmd = [binary, "--model", model, "--profile", profile, "--cut", cut, "--input", images,
           "--json", "--quiet", "--threads", str(threads)] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    with open(save, "w") as f:
        f.write(out)
    lines = [json.loads(line) for line in out.splitlines()]
    return {os.path.basename(j["source"]): j for j in lines if j.get("type") == "frame"}


def bootstrap_ratio(a, b, reps=2000, seed=1):
    """Ratio of means sum(a)/sum(b) and its 95% percentile interval, resampling paired items."""
    rng = random.Random(seed)
    n = len(a)
    ratios = []
    for _ in range(reps):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(sum(a[i] for i in idx) / sum(b[i] for i in idx))
    ratios.sort()
    return sum(a) / sum(b), ratios[int(0.025 * reps)], ratios[int(0.975 * reps) - 1]


def main():
    ap = parser(__doc__)
    ap.add_argument("--threshold", default="0.9")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--side", choices=["device", "server"], default="device",
                    help="where the exits run (server: the device cuts at --cut and sends)")
    ap.add_argument("--cut", default="relu_17", help="--side server: the device's cut (before the "
                    "first exit)")
    args = ap.parse_args()
    per_class = 50 if args.quick else args.per_class
    shared = shared_dir()
    model = os.path.join(shared, "models", "resnet_cifar10", "resnet56_cifar10.pt")
    profile = os.path.join(ROOT, "bench", "profiles", "cifar10", "resnet56.profile.json")
    exits = os.path.join(ROOT, "models", "exits", "resnet56_cifar10_exits.json")
    binary = os.path.join(args.bin_dir, "edgesplit-device")
    os.makedirs(args.out, exist_ok=True)
    labels = c.interleaved_images(shared, os.path.join(args.out, "all"), per_class)
    names = sorted(labels)
    # Rounds of disjoint images, each a folder of links.
    rounds = []
    for r in range(args.rounds):
        d = os.path.join(args.out, f"round{r}")
        os.makedirs(d, exist_ok=True)
        for name in names[r::args.rounds]:
            link = os.path.join(d, name)
            if not os.path.exists(link):
                os.symlink(os.path.realpath(os.path.join(args.out, "all", name)), link)
        rounds.append(d)
    server = None
    cut = "device"
    remote = []
    if args.side == "server":
        server, endpoint = start_server(args.bin_dir, model, exits, args.threads, args.out)
        cut = args.cut
        remote = ["--server", endpoint, "--require-server", "--bits", "8"]
    base, with_exits = {}, {}
    try:
        for r, d in enumerate(rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            for exits_on in order:
                extra = remote + (["--exits", exits, "--exit-threshold", args.threshold]
                                  if exits_on else [])
                save = os.path.join(args.out,
                                    f"round{r}-{'exits' if exits_on else 'plain'}.jsonl")
                frames = run_device(binary, model, profile, d, args.threads, extra, save, cut)
                (with_exits if exits_on else base).update(frames)
                print(f"round {r}: {'exits' if exits_on else 'plain'} {len(frames)} frames",
                      file=sys.stderr)
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
    if args.side == "server":
        return summarize_server(args, labels, base, with_exits)
    return summarize_device(args, labels, base, with_exits)


def start_server(bin_dir, model, exits, threads, out):
    """edgesplit-server on a loopback port with the exits; returns (process, endpoint)."""
    endpoint_file = os.path.join(out, "server-endpoint.txt")
    if os.path.exists(endpoint_file):
        os.remove(endpoint_file)
    log = open(os.path.join(out, "server.log"), "w")
    proc = subprocess.Popen([os.path.join(bin_dir, "edgesplit-server"), "--bind",
                             "tcp://127.0.0.1:*", "--endpoint-file", endpoint_file, "--model",
                             model, "--exits", exits, "--workers", "1", "--threads",
                             str(threads)], stdout=log, stderr=log)
    for _ in range(600):
        if os.path.exists(endpoint_file):
            text = open(endpoint_file).read().strip()
            if text:
                return proc, text
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("edgesplit-server did not start: see " + log.name)


def paired_accuracy(labels, common, base, with_exits):
    """Top-1 of both settings on the same images, the loss and Newcombe's interval."""
    right_b = [base[n]["top"][0]["index"] == labels[n] for n in common]
    right_e = [with_exits[n]["top"][0]["index"] == labels[n] for n in common]
    n = len(common)
    lost = sum(1 for a, b in zip(right_b, right_e) if a and not b)
    gained = sum(1 for a, b in zip(right_b, right_e) if b and not a)
    high = c.newcombe_upper(n, lost, gained, sum(right_b))
    low = -c.newcombe_upper(n, gained, lost, sum(right_e))
    return {"top1": {"plain": sum(right_b) / n, "exits": sum(right_e) / n},
            "loss_pp": {"value": 100.0 * (lost - gained) / n, "low95": low, "high95": high,
                        "lost": lost, "gained": gained}}


def summarize_server(args, labels, base, with_exits):
    common = sorted(set(base) & set(with_exits))
    n = len(common)
    comp_b = [base[k]["server_compute_ms"] for k in common]
    comp_e = [with_exits[k]["server_compute_ms"] for k in common]
    lat_b = [base[k]["latency_ms"] for k in common]
    lat_e = [with_exits[k]["latency_ms"] for k in common]
    ratio = bootstrap_ratio(comp_e, comp_b)
    lat_ratio = bootstrap_ratio(lat_e, lat_b)
    acc = paired_accuracy(labels, common, base, with_exits)
    result = {
        "model": "resnet56_cifar10", "side": "server", "cut": args.cut,
        "threshold": float(args.threshold), "images": n, "rounds": args.rounds,
        "threads": args.threads,
        "server_compute_ms_mean": {"plain": sum(comp_b) / n, "exits": sum(comp_e) / n},
        "server_compute_ms_median": {"plain": statistics.median(comp_b),
                                     "exits": statistics.median(comp_e)},
        "server_compute_ratio": {"value": ratio[0], "low95": ratio[1], "high95": ratio[2]},
        "latency_ms_mean": {"plain": sum(lat_b) / n, "exits": sum(lat_e) / n},
        "latency_ratio": {"value": lat_ratio[0], "low95": lat_ratio[1], "high95": lat_ratio[2]},
        **acc,
        "left_at": left_at(common, with_exits, "server_exit"),
    }
    # Targets: exits on the server save its compute (the interval of the ratio lies below 1)
    # within the device's default accuracy bound.
    return finish(args, result, "server_exit_compute_ratio", ratio)


def left_at(common, with_exits, completed):
    """The fraction of the frames that left at each exit."""
    at = {}
    for name in common:
        f = with_exits[name]
        if f["completed"] == completed:
            at[f["exit"]["position"]] = at.get(f["exit"]["position"], 0) + 1
    return {k: v / len(common) for k, v in sorted(at.items())}


def finish(args, result, ratio_name, ratio):
    """The targets (the ratio's interval below 1, the loss's upper end at most 1 point), written
    to results.json and reported."""
    high = result["loss_pp"]["high95"]
    result["targets"] = {
        ratio_name: {"value": round(ratio[0], 3), "target": 1.0,
                     "interval95": [round(ratio[1], 3), round(ratio[2], 3)],
                     "pass": ratio[2] < 1.0},
        "exit_loss_upper95": {"value": round(high, 3), "target": 1.0, "pass": high <= 1.0},
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return report("exits", result["targets"], args.check)


def summarize_device(args, labels, base, with_exits):
    common = sorted(set(base) & set(with_exits))
    lat_b = [base[n]["latency_ms"] for n in common]
    lat_e = [with_exits[n]["latency_ms"] for n in common]
    n = len(common)
    ratio = bootstrap_ratio(lat_e, lat_b)

    # The device's compute alone: head (+ exit heads) + local tail.
    def compute(f):
        return f["head_ms"] + f.get("exit", {}).get("ms", 0) + f.get("local_tail_ms", 0)
    comp_b = [compute(base[k]) for k in common]
    comp_e = [compute(with_exits[k]) for k in common]
    comp_ratio = bootstrap_ratio(comp_e, comp_b)
    # Newcombe's interval of the loss (points): the upper end as profiles use, the lower from the
    # mirrored counts.
    acc = paired_accuracy(labels, common, base, with_exits)
    result = {
        "model": "resnet56_cifar10", "threshold": float(args.threshold), "images": n,
        "rounds": args.rounds, "threads": args.threads,
        "latency_ms_mean": {"plain": sum(lat_b) / n, "exits": sum(lat_e) / n},
        "latency_ms_median": {"plain": statistics.median(lat_b),
                              "exits": statistics.median(lat_e)},
        "latency_ratio": {"value": ratio[0], "low95": ratio[1], "high95": ratio[2]},
        "compute_ms_mean": {"plain": sum(comp_b) / n, "exits": sum(comp_e) / n},
        "compute_ratio": {"value": comp_ratio[0], "low95": comp_ratio[1],
                          "high95": comp_ratio[2]},
        **acc,
        "left_at": left_at(common, with_exits, "exit"),
    }
    # Targets: exits make the device's frames faster (the interval of the latency ratio lies
    # below 1) within the device's default accuracy bound (the loss's upper end <= 1 point).
    return finish(args, result, "exit_latency_ratio", ratio)


if __name__ == "__main__":
    sys.exit(main())
