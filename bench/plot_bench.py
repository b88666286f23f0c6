#!/usr/bin/python3
"""Plots of an end-to-end benchmark run (bench/run.sh): latency vs bandwidth per contender,
throughput vs bandwidth, and each trace's latency over time with the link changes and the plan
changes marked. Reads RESULTS_DIR/results.json, writes PNG and SVG files into RESULTS_DIR.

Usage: /usr/bin/python3 bench/plot_bench.py bench/results/<timestamp>
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"edgesplit-latency": dict(color="black", lw=2.5, marker="o"),
         "edgesplit-throughput": dict(color="black", lw=2.5, marker="s"),
         "edgesplit-cost": dict(color="grey", lw=1.5, marker="^"),
         "device-only": dict(color="tab:blue", marker="v"),
         "server-raw": dict(color="tab:red", marker="x"),
         "server-jpeg90": dict(color="tab:orange", marker="D"),
         "server-jpeg90-pipelined": dict(color="tab:orange", marker="D", ls="--"),
         "fixed-fp32": dict(color="tab:purple", marker="P"),
         "fixed-q8": dict(color="tab:green", marker="*"),
         "oracle": dict(color="tab:cyan", lw=1, ls=":", marker=".")}


def save(fig, out_dir, name):
    for ext in ("png", "svg"):
        fig.savefig(os.path.join(out_dir, "%s.%s" % (name, ext)), dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name + ".png"


def valid(m):
    return m and "error" not in m and m.get("frames", 0) > 0


def by_bandwidth(runs, metric, names):
    """{(slowdown, rtt): {contender: [(rate, value)]}}"""
    out = {}
    for e in runs:
        series = out.setdefault((e["slowdown"], e["rtt_ms"]), {})
        for n in names:
            m = e["contenders"].get(n)
            if n == "oracle" and e.get("oracle") and metric == "latency_p50_ms":
                series.setdefault(n, []).append((e["rate_mbit"], e["oracle"]["latency_p50_ms"]))
            elif valid(m) and m.get(metric) is not None:
                # A server plan whose frames fell back to the device is not that contender.
                fell_back = (n != "device-only" and not n.startswith("edgesplit") and
                             m["completed"].get("local", 0) > 0)
                if not fell_back:
                    series.setdefault(n, []).append((e["rate_mbit"], m[metric]))
    return out


def plot_vs_bandwidth(runs, out_dir, metric, ylabel, names, name, logy):
    made = []
    for (slowdown, rtt), series in sorted(by_bandwidth(runs, metric, names).items()):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for n in names:
            pts = sorted(series.get(n, []))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=n, **STYLE.get(n, {}))
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("bandwidth (Mbit/s each way)")
        ax.set_ylabel(ylabel)
        ax.set_title("MobileNetV2 split, device %gx slower than the server, RTT %g ms" %
                     (slowdown, rtt) if "mobilenet" in name else
                     "device %gx slower than the server, RTT %g ms" % (slowdown, rtt))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        made.append(save(fig, out_dir, "%s-%gx-rtt%g" % (name, slowdown, rtt)))
    return made


def plot_trace(e, out_dir):
    fig, (ax, axp) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    es_plans = []
    for n, m in e["contenders"].items():
        tl = m.get("timeline", [])
        if not tl:
            continue
        style = dict(STYLE.get(n, {}))
        style.pop("marker", None)
        ax.plot([f["t"] for f in tl], [f["latency_ms"] for f in tl], label=n, **style)
        local = [f for f in tl if f["completed"] == "local" and "local" not in f["plan"]]
        if local:
            ax.scatter([f["t"] for f in local], [f["latency_ms"] for f in local], s=12,
                       color=style.get("color"), marker="x")
        if n == "edgesplit-latency":
            es_plans = tl
        for ch in m.get("changes", []):
            ax.axvline(ch["t"], color="red", ls="--", lw=1)
            axp.axvline(ch["t"], color="red", ls="--", lw=1)
    for ch in next(iter(e["contenders"].values())).get("changes", []):
        label = "outage" if ch["loss"] >= 100 else "%g Mbit/s" % ch["rate"]
        ax.annotate(label, (ch["t"], 1), xycoords=("data", "axes fraction"), color="red",
                    fontsize=8, xytext=(2, -12), textcoords="offset points")
    if es_plans:
        names = []
        for f in es_plans:
            if f["plan"] not in names:
                names.append(f["plan"])
        axp.step([f["t"] for f in es_plans], [names.index(f["plan"]) for f in es_plans],
                 where="post", color="black")
        axp.set_yticks(range(len(names)))
        axp.set_yticklabels(names, fontsize=7)
        switches = [b for a, b in zip(es_plans, es_plans[1:]) if a["plan"] != b["plan"]]
        ax.scatter([f["t"] for f in switches], [f["latency_ms"] for f in switches], s=40,
                   facecolors="none", edgecolors="black", label="edgesplit plan change")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_title("trace %s, device %gx slower (dashed: link changes; x: finished locally)" %
                 (e["scenario"], e["slowdown"]))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    axp.set_ylabel("edgesplit plan")
    axp.set_xlabel("time (s)")
    return save(fig, out_dir, "trace-%s-%gx" % (e["scenario"], e["slowdown"]))


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = argv[0]
    with open(os.path.join(out_dir, "results.json")) as f:
        results = json.load(f)
    fixed = [e for e in results["runs"] if e["kind"] == "fixed"]
    made = []
    made += plot_vs_bandwidth(fixed, out_dir, "latency_p50_ms", "latency p50 (ms)",
                              ["device-only", "server-raw", "server-jpeg90", "fixed-fp32",
                               "fixed-q8", "oracle", "edgesplit-latency"], "latency", True)
    made += plot_vs_bandwidth(fixed, out_dir, "fps", "frames per second",
                              ["device-only", "server-raw", "server-jpeg90",
                               "server-jpeg90-pipelined", "fixed-fp32", "fixed-q8",
                               "edgesplit-latency", "edgesplit-throughput"], "throughput", False)
    for e in results["runs"]:
        if e["kind"] == "trace":
            made.append(plot_trace(e, out_dir))
    print("plot_bench: wrote %s in %s" % (", ".join(made), out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
