"""The scheduler's cost model (DESIGN.md, partitioner/scheduler.cc: Scheduler::predict) evaluated
offline from a profile JSON, to choose the fixed contenders (best fp32 cut, best 8-bit cut) and the
oracle's candidate plans for a scenario's nominal conditions. Standard library only.

A plan is a dict: cut (id), encoding (the profile's encoding name, "local" for device-only),
local (bool), and its per-frame costs from the profile.
"""

import json

BYTES_PER_MS_PER_MBPS = 125.0  # 1e6 bits/s = 125 bytes/ms


def load_profile(path):
    with open(path) as f:
        return json.load(f)


# The confidence at which the accuracy bound is judged, as edgesplit-device's
# --accuracy-confidence: 0.95 (its default) or 0 (point estimates); set_accuracy_confidence.
ACCURACY_CONFIDENCE = 0.95


def set_accuracy_confidence(confidence):
    """Judges the accuracy bound as `edgesplit-device --accuracy-confidence C` does, for C = 0.95
    (the profile stores that interval) or 0 (the point estimate)."""
    global ACCURACY_CONFIDENCE
    if confidence not in (0.0, 0.95):
        raise ValueError("--accuracy-confidence %g: give 0.95 (the device's default; profiles "
                         "store that interval) or 0 (point estimates)" % confidence)
    ACCURACY_CONFIDENCE = confidence


def accuracy_drop_pp(encoding, fp32_top1):
    """The top-1 loss (points) the device's bound judges: at confidence 0.95 (its default) the
    upper end of the profile's paired 95% interval (`drop_pp.high95`) where the profile has one,
    else (older profiles, or confidence 0) the point estimate."""
    d = encoding.get("drop_pp")
    if ACCURACY_CONFIDENCE > 0 and isinstance(d, dict) and "high95" in d:
        return float(d["high95"])
    return (fp32_top1 - encoding["top1"]) * 100.0


def plans(profile):
    """Every (cut, encoding) of the profile plus the device-only plan, as Scheduler::create
    builds them."""
    out = []
    cuts = profile["cuts"]
    fp32_top1 = profile.get("fp32_top1", 0.0)
    for cut in cuts[:-1]:
        for e in cut.get("encodings", []):
            out.append({
                "cut": cut["id"], "cut_name": cut["name"], "encoding": e["name"], "local": False,
                "head_ms": cut["head"]["median_ms"], "pack_ms": e["pack"]["median_ms"],
                "unpack_ms": e["unpack"]["median_ms"], "tail_ms": cut["tail"]["median_ms"],
                "bytes": e["bytes_mean"], "accuracy_drop_pp": accuracy_drop_pp(e, fp32_top1),
                "jpeg_quality": e.get("jpeg_quality", 0), "format": e.get("format"),
                "bits": e.get("bits"), "lossless": e.get("lossless", "none"),
                "per_channel": e.get("per_channel", False),
                "clip_percentile": e.get("clip_percentile", 0), "fixed_range": "range" in e,
            })
    last = cuts[-1]
    out.append({"cut": last["id"], "cut_name": last["name"], "encoding": "local", "local": True,
                "head_ms": last["head"]["median_ms"], "pack_ms": 0, "unpack_ms": 0, "tail_ms": 0,
                "bytes": 0, "accuracy_drop_pp": 0.0})
    return out


def predict(plan, bandwidth_mbps, rtt_ms, device_load=1.0, server_load=1.0, queue_ms=0.0):
    """Predicted latency and pipelined period (ms) of `plan`, as Scheduler::predict."""
    head = plan["head_ms"] * device_load
    if plan["local"]:
        return {"latency_ms": head, "period_ms": head, "server_ms": 0.0, "bytes": 0.0}
    bytes_per_ms = bandwidth_mbps * BYTES_PER_MS_PER_MBPS
    transfer = plan["bytes"] / bytes_per_ms if bytes_per_ms > 0 else float("inf")
    tail = plan["tail_ms"] * server_load
    latency = head + plan["pack_ms"] + transfer + rtt_ms + queue_ms + plan["unpack_ms"] + tail
    period = max(head + plan["pack_ms"], transfer, tail + plan["unpack_ms"])
    return {"latency_ms": latency, "period_ms": period, "server_ms": plan["unpack_ms"] + tail,
            "bytes": plan["bytes"]}


def pinnable(plan):
    """Device flags that pin `plan` (edgesplit-device --plan/--per-channel/--clip-percentile), or
    None when the device cannot be told this encoding on its command line (a calibrated range)."""
    if plan["local"]:
        return ["--cut", "device"]
    if plan.get("jpeg_quality"):
        return ["--cut", "input", "--bits", "jpeg%d" % plan["jpeg_quality"]]
    if plan.get("fixed_range"):
        return None
    fmt = plan.get("format")
    if fmt == "entropy":
        return ["--cut", str(plan["cut"]), "--bits", plan["encoding"]]
    bits = "fp32" if fmt == "fp32" else "fp16" if fmt == "fp16" else str(plan["bits"])
    flags = ["--plan", "cut=%d,bits=%s,lossless=%s" % (plan["cut"], bits, plan["lossless"])]
    if plan.get("per_channel"):
        flags.append("--per-channel")
    if plan.get("clip_percentile"):
        flags += ["--clip-percentile", "%g" % plan["clip_percentile"]]
    return flags


def ranked(profile, bandwidth_mbps, rtt_ms, device_load, objective="latency",
           max_accuracy_drop=None, where=None):
    """Plans sorted by predicted latency (or period for "throughput"), best first, keeping those
    within the accuracy bound and accepted by `where` (a predicate on the plan)."""
    key = "period_ms" if objective == "throughput" else "latency_ms"
    out = []
    for p in plans(profile):
        if max_accuracy_drop is not None and p["accuracy_drop_pp"] > max_accuracy_drop + 1e-9:
            continue
        if where and not where(p):
            continue
        m = predict(p, bandwidth_mbps, rtt_ms, device_load)
        out.append(dict(p, predicted=m))
    out.sort(key=lambda p: p["predicted"][key])
    return out


def best_fixed(profile, bandwidth_mbps, rtt_ms, device_load, encoding):
    """Neurosurgeon-style: the cut (device-only included) with the lowest predicted latency when
    the crossing tensor is sent as `encoding` ("fp32", "q8"; no lossless stage); None when the
    profile has no such encoding."""
    r = ranked(profile, bandwidth_mbps, rtt_ms, device_load,
               where=lambda p: p["local"] or p["encoding"] == encoding)
    return r[0] if r else None
