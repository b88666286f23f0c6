#!/usr/bin/env python3
"""Deadlines under overload: a request whose deadline the server's queue already rules out is
answered DEADLINE_EXCEEDED on arrival (edgesplit-server's default, --expire-at-arrival on) against
the same server that queues it until its own tail no longer fits (--expire-at-arrival off). Both
are started at once and loaded in turn (interleaved rounds, alternating order) with the same
open-loop Poisson arrivals above the server's capacity, 16 simulated devices sending 8-bit
payloads at two cuts of the shared MobileNetV2, each request with a deadline (the device's
timeout). An expired request's device finishes the frame itself once told: how soon it is told is
the time it loses.

Per (setting, offered load): answered req/s, p50/p99 latency of the OK replies, expired replies
and how soon they came (p50), BUSY, late. Targets (bench/run.sh's contract), at 1.5x capacity:
  expired_reply_p50_ratio   on / off, how soon a DEADLINE_EXCEEDED came (p50), <= 0.2; the 95%
                            interval over rounds must clear it
  ok_per_s_ratio            on / off, answered req/s, >= 0.95 (refusing early costs no answers);
                            the interval must clear it
OK replies received after their deadline by edgesplit-load's clock are counted per setting (the
table's `late`): with a 10 ms margin for the transfers on a host whose two cores the servers and
the 16 simulated devices share, a reply can be stamped late on the device's side. `computed too
late` is the server's own count of results finished after their deadline and dropped
(edgesplit_late_dropped_total, per run), `mean batch` its requests per tail. A monitor
(bench/host_stalls.py) records how long the host stalled during each run (`host_stall_ms`); the
table names every run with a stall over 50 ms and its late replies.

With --compare fit the two servers are --fit-deadlines on and off (both expiring at arrival), and
the one target is ok_per_s_ratio on / off >= 1 (fitting batches to deadlines answers more).
With --compare margin they are --fit-margin M (--margin, default 2) and --fit-margin 0: a margin
on the batch times fitted to deadlines is to compute fewer results too late, and the one target
is ok_per_s_ratio >= 0.95 (it costs no answers); `computed too late, on / off` is its effect.

    bench/run.sh expiry [--quick] --out DIR [--check]
"""

import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "elastic"))
import common  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ratio_stats import interval  # noqa: E402
import host_stalls  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import batching_bench  # noqa: E402
from batching_bench import Server  # noqa: E402


def load(args, server, rate, seconds, seed, workdir):
    """One edgesplit-load run of the 16 devices, open loop at `rate` requests/s (0: closed loop)."""
    m = batching_bench.load(args.bin_dir, args.model, server, 16, rate, seconds, args.cuts,
                            args.deadline_ms, seed, workdir)
    keep = ("ok_per_s", "p50_ms", "p99_ms", "sent", "ok", "busy", "expired",
            "expired_reply_p50_ms", "unanswered_by_deadline", "late_ok", "lost")
    return {k: m[k] for k in keep}


def main():
    ap = common.parser(__doc__)
    ap.add_argument("--model", default=os.path.join(common.shared_dir(), "models",
                                                     "mobilenet_v2_imagenet",
                                                     "mobilenet_v2_imagenet.pt"))
    ap.add_argument("--cuts", default="21,45", help="cut ids the devices send (device i the i-th)")
    ap.add_argument("--deadline-ms", type=int, default=100, help="each request's deadline")
    ap.add_argument("--rounds", type=int, default=0, help="default: 3 quick, 8 full")
    ap.add_argument("--seconds", type=float, default=4.0, help="per run")
    ap.add_argument("--compare", choices=("arrival", "fit", "margin"), default="arrival",
                    help="the setting the server runs with and without (on / off): arrival, "
                    "--expire-at-arrival; fit, --fit-deadlines; margin, --fit-margin M and 0")
    ap.add_argument("--margin", type=float, default=2.0, help="--fit-margin of 'on' (margin)")
    args = ap.parse_args()
    if not os.path.exists(args.model):
        print(f"expiry bench: {args.model} is absent (../shared/models); nothing to measure",
              file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 8)
    factors = [1.5] if args.quick else [1.2, 1.5, 2.0]
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="edgesplit-expiry-")
    base = ["--workers", "2", "--threads", "1", "--queue", "64", "--max-in-flight-per-client",
            "1000", "--max-batch", "16", "--log-level", "warn", "--profile",
            os.path.join(common.ROOT, "bench", "profiles",
                         "mobilenet_v2_imagenet-server-batch.profile.json")]
    flag = {"arrival": "--expire-at-arrival", "fit": "--fit-deadlines",
            "margin": "--fit-margin"}[args.compare]
    values = {"on": f"{args.margin:g}", "off": "0"} if args.compare == "margin" else {}
    servers = [Server(name, args.bin_dir, args.model, base + [flag, values.get(name, name)],
                      workdir) for name in ("on", "off")]
    started = time.time()
    runs = []
    monitor = host_stalls.Monitor(os.path.join(workdir, "stalls.txt"))
    try:
        for s in servers:
            s.wait_ready()
            load(args, s, 0.0, 2, 1, workdir)  # warm up
        print(f"expiry bench: {rounds} rounds x {len(factors)} loads x 2 settings x "
              f"{args.seconds:g} s (about "
              f"{rounds * len(factors) * 2 * (args.seconds + 3 + 1) / 60:.0f} min)",
              file=sys.stderr)
        for r in range(rounds):
            # The host's speed drifts between rounds: the offered load is a multiple of what the
            # server answers now (closed loop, both settings alike: no request expires then).
            capacity = statistics.mean(
                load(args, s, 0.0, 3, 100 + r, workdir)["ok_per_s"] for s in servers)
            order = servers if r % 2 == 0 else servers[::-1]
            for f in factors:
                seed = 1000 * r + int(f * 10)
                for s in order:
                    before = s.counters()
                    t0 = time.monotonic()
                    m = load(args, s, f * capacity, args.seconds, seed, workdir)
                    m["host_stall_ms"] = round(monitor.largest_gap_since_ms(t0), 1)
                    after = s.counters()
                    m.update({k: round(after.get(name, 0) - before.get(name, 0), 1) for k, name in (
                        ("late_dropped", "edgesplit_late_dropped_total"),
                        ("batches", "edgesplit_batch_size_count"),
                        ("rows", "edgesplit_batch_size_sum"))})
                    m.update({"setting": s.name, "round": r, "factor": f,
                              "capacity_per_s": round(capacity, 1)})
                    runs.append(m)
                    print(f"  round {r} {f:g}x {s.name:3s}: {m['ok_per_s']:6.1f} ok/s, "
                          f"{m['expired']} expired (p50 {m['expired_reply_p50_ms']:.1f} ms), "
                          f"{m['busy']} BUSY, p99 {m['p99_ms']:.1f} ms, "
                          f"{m['late_dropped']:.0f} computed too late, mean batch "
                          f"{m['rows'] / max(1, m['batches']):.2f}, host stall "
                          f"{m['host_stall_ms']:.0f} ms", file=sys.stderr)
    finally:
        stall_summary, stall_line = monitor.summary(monitor.gaps())
        monitor.stop()
        for s in servers:
            s.stop()

    def pairs(f, key):
        out = []
        for r in range(rounds):
            a = [m[key] for m in runs if m["round"] == r and m["factor"] == f and
                 m["setting"] == "on"]
            b = [m[key] for m in runs if m["round"] == r and m["factor"] == f and
                 m["setting"] == "off"]
            if a and b and b[0] > 0:
                out.append(a[0] / b[0])
        return out

    table = []
    for f in factors:
        row = {"factor": f}
        for key in ("expired_reply_p50_ms", "ok_per_s", "p99_ms", "late_dropped"):
            ratios = pairs(f, key)
            point, lo, hi = interval(ratios)
            row[key + "_ratio"] = {"point": round(point, 4), "lo95": round(lo, 4),
                                   "hi95": round(hi, 4), "rounds": len(ratios)}
        for s in ("on", "off"):
            ms = [m for m in runs if m["factor"] == f and m["setting"] == s]
            row[s] = {k: round(statistics.median(m[k] for m in ms), 2)
                      for k in ("ok_per_s", "p50_ms", "p99_ms", "expired", "expired_reply_p50_ms",
                                "busy", "capacity_per_s")}
            row[s]["late_ok_total"] = sum(m["late_ok"] for m in ms)
            row[s]["late_dropped"] = statistics.median(m["late_dropped"] for m in ms)
            row[s]["mean_batch"] = round(sum(m["rows"] for m in ms) /
                                         max(1, sum(m["batches"] for m in ms)), 2)
        table.append(row)
    main_row = next(r for r in table if r["factor"] == 1.5)
    exp_ratio = main_row["expired_reply_p50_ms_ratio"]
    ok_ratio = main_row["ok_per_s_ratio"]
    # Refusing on arrival, or a margin, must cost no answers; fitting batches to deadlines must
    # answer more.
    ok_target = 1.0 if args.compare == "fit" else 0.95
    targets = {
        "ok_per_s_ratio": {"value": ok_ratio["point"], "lo95": ok_ratio["lo95"],
                           "hi95": ok_ratio["hi95"], "target": f">= {ok_target:g}",
                           "pass": ok_ratio["lo95"] >= ok_target},
    }
    if args.compare == "arrival":
        targets["expired_reply_p50_ratio"] = {
            "value": exp_ratio["point"], "lo95": exp_ratio["lo95"], "hi95": exp_ratio["hi95"],
            "target": "<= 0.2", "pass": 0 < exp_ratio["hi95"] <= 0.2}
    results = {"bench": "expiry", "argv": sys.argv[1:], "compare": flag,
               "settings": {n: values.get(n, n) for n in ("on", "off")}, "rounds": rounds,
               "deadline_ms": args.deadline_ms, "cuts": args.cuts,
               "wall_s": round(time.time() - started), "table": table, "runs": runs,
               "host_stalls": stall_summary,
               "targets": targets}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = ["| load | setting | ok/s | p50 ms | p99 ms | expired | expired reply p50 ms | BUSY "
             "| late (all rounds) | computed too late | mean batch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in table:
        for s in ("on", "off"):
            v = row[s]
            lines.append(f"| {row['factor']:g}x of {v['capacity_per_s']:.0f}/s | {s} | "
                         f"{v['ok_per_s']:.1f} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | "
                         f"{v['expired']:.0f} | {v['expired_reply_p50_ms']:.1f} | "
                         f"{v['busy']:.0f} | {v['late_ok_total']} | {v['late_dropped']:.0f} | "
                         f"{v['mean_batch']:.2f} |")
    lines += ["", "| load | expired reply p50, on / off | ok/s, on / off | p99, on / off "
              "| computed too late, on / off |", "|---|---|---|---|---|"]
    for row in table:
        cells = [f"{row[k]['point']:.3f} [{row[k]['lo95']:.3f}, {row[k]['hi95']:.3f}]"
                 for k in ("expired_reply_p50_ms_ratio", "ok_per_s_ratio", "p99_ms_ratio",
                           "late_dropped_ratio")]
        lines.append(f"| {row['factor']:g}x | " + " | ".join(cells) + " |")
    stalled = ", ".join(f"round {m['round']} {m['factor']:g}x {m['setting']} "
                        f"({m['host_stall_ms']:.0f} ms, {m['late_ok']} late)"
                        for m in runs if m["host_stall_ms"] > 50)
    lines += ["", f"{stall_line}; runs with one over 50 ms: {stalled or 'none'}"]
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)
    return common.report("expiry", targets, args.check)


if __name__ == "__main__":
    sys.exit(main())
