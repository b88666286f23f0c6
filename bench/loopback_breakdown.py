#!/usr/bin/env python3
"""End-to-end latency breakdown on loopback: edgesplit-server and edgesplit-device on this machine,
fixed plans (cut x precision), medians per plan of every stage the device reports, and the
framework's own overhead per frame (latency minus head, pack, wire, server unpack and tail, and
preprocessing). Baselines in the same run: device-only and server-only (fp32 input). With
--engines plain,optimized both engines run (one server each), plan by plan in turn, so that the
machine's drift falls on both alike.

  bench/loopback_breakdown.py [--model M --meta J --images DIR] [--frames N] [--plans 0:fp32,10:8,...]
                              [--threads 1] [--engines optimized] [--json OUT]

Standard library only (run with /usr/bin/python3)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_model():
    shared = os.path.join(os.path.dirname(ROOT), "shared")
    m = os.path.join(shared, "models", "mobilenet_v2_imagenet", "mobilenet_v2_imagenet.pt")
    if os.path.exists(m):
        return (m, os.path.join(ROOT, "models", "meta", "mobilenet_v2_imagenet.json"),
                os.path.join(shared, "data", "imagenet-val-1300", "images"),
                "input:fp32,device:fp32,13:8,13:4,28:8,28:4,44:8,44:4,54:8")
    print("note: ../shared is absent: using the default Fashion-MNIST model", file=sys.stderr)
    return (os.path.join(ROOT, "models", "default", "fashion_mnist_cnn.pt"), "",
            os.path.join(ROOT, "models", "default", "samples"),
            "input:fp32,device:fp32,4:8,4:4,8:8,8:4,10:4")


def run_plan(bin_dir, endpoint, model, meta, images, frames, cut, bits, threads, engine, out):
    cmd = [os.path.join(bin_dir, "edgesplit-device"), "--server", endpoint, "--model", model,
           "--input", images, "--max-frames", str(frames), "--cut", cut, "--bits", bits,
           "--threads", str(threads), "--engine", engine, "--quiet", "--output", out,
           "--timeout-ms", "30000"]
    if meta:
        cmd += ["--meta", meta]
    subprocess.run(cmd, check=True)
    rows = [json.loads(l) for l in open(out) if l.strip()]
    return [r for r in rows if r.get("type") == "frame"]


def med(rows, key):
    vals = [r.get(key, 0.0) for r in rows]
    return statistics.median(vals) if vals else 0.0


def main():
    m, j, imgs, plans = default_model()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=m)
    ap.add_argument("--meta", default=j)
    ap.add_argument("--images", default=imgs)
    ap.add_argument("--plans", default=plans, help="cut:bits,... (cut: id, input or device)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3, help="frames per plan not counted")
    ap.add_argument("--threads", type=int, default=1, help="LibTorch threads on each side")
    ap.add_argument("--engines", default="optimized",
                    help="comma-separated engines (plain, optimized) run plan by plan in turn")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="es-breakdown-")
    engines = a.engines.split(",")
    servers, endpoints = {}, {}
    for engine in engines:
        ep_file = os.path.join(work, "endpoint-" + engine)
        server_cmd = [os.path.join(a.bin_dir, "edgesplit-server"), "--model", a.model, "--bind",
                      "tcp://127.0.0.1:*", "--endpoint-file", ep_file, "--threads",
                      str(a.threads), "--engine", engine, "--log-level", "warn"]
        if a.meta:
            server_cmd += ["--meta", a.meta]
        servers[engine] = subprocess.Popen(server_cmd)
    results = []
    try:
        for engine, server in servers.items():
            ep_file = os.path.join(work, "endpoint-" + engine)
            for _ in range(1200):
                if os.path.exists(ep_file) and open(ep_file).read().strip():
                    break
                if server.poll() is not None:
                    sys.exit("edgesplit-server --engine %s did not start" % engine)
                time.sleep(0.1)
            endpoints[engine] = open(ep_file).read().split()[0]
        for spec in a.plans.split(","):
            cut, bits = spec.split(":")
            for engine in engines:
                rows = run_plan(a.bin_dir, endpoints[engine], a.model, a.meta, a.images,
                                a.frames + a.warmup, cut, bits, a.threads, engine,
                                os.path.join(work, "out.jsonl"))[a.warmup:]
                on_server = [r for r in rows if r["completed"] == "server"]
                local = cut == "device"
                use = rows if local else on_server
                r = {
                    "engine": engine, "cut": cut, "bits": bits, "frames": len(rows),
                    "on_server": len(on_server),
                    "cut_name": rows[0]["plan"]["cut_name"] if rows else "",
                    "bytes": med(use, "bytes_sent"),
                    "preprocess_ms": med(use, "preprocess_ms"), "head_ms": med(use, "head_ms"),
                    "pack_ms": med(use, "pack_ms"), "wire_ms": med(use, "wire_ms"),
                    "server_queue_ms": med(use, "server_queue_ms"),
                    "server_unpack_ms": med(use, "server_unpack_ms"),
                    "server_tail_ms": med(use, "server_compute_ms"),
                    "local_tail_ms": med(use, "local_tail_ms"),
                    "latency_ms": med(use, "latency_ms"),
                }
                # What the framework adds: everything that is not preprocessing, model compute,
                # packing, unpacking or the wire (queue hand-offs, protobuf, JSON, bookkeeping).
                over = [x["latency_ms"] - x.get("preprocess_ms", 0) - x.get("head_ms", 0) -
                        x.get("pack_ms", 0) - x.get("wire_ms", 0) - x.get("server_queue_ms", 0) -
                        x.get("server_unpack_ms", 0) - x.get("server_compute_ms", 0) -
                        x.get("local_tail_ms", 0) for x in use]
                r["overhead_ms"] = statistics.median(over) if over else 0.0
                r["server_queue_and_handoff_ms"] = r["server_queue_ms"]
                results.append(r)
    finally:
        for server in servers.values():
            server.terminate()
        for server in servers.values():
            server.wait(timeout=30)

    hdr = ("engine", "cut", "name", "bits", "bytes", "head", "pack", "wire", "queue", "unpack", "tail",
           "latency", "overhead")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in results:
        tail = r["local_tail_ms"] if r["cut"] == "device" else r["server_tail_ms"]
        print("| %s | %s | %s | %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f |" % (
            r["engine"], r["cut"], r["cut_name"], r["bits"], r["bytes"], r["head_ms"], r["pack_ms"],
            r["wire_ms"], r["server_queue_ms"], r["server_unpack_ms"], tail, r["latency_ms"],
            r["overhead_ms"]))
    out = {"model": a.model, "frames": a.frames, "threads": a.threads, "engines": engines,
           "note": "medians in ms on loopback; overhead = latency - preprocess - head - pack - "
                   "wire - server queue - unpack - tail", "plans": results}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    print("ran in %s" % work, file=sys.stderr)


if __name__ == "__main__":
    main()
