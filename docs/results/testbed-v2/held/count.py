#!/usr/bin/python3
"""Per run and link of held/: the frames edgesplit held on its previous plan while a new head
warmed, the first frame at each split cut it moved to without exploring it first (frame, cut,
latency in ms), the frames that built a head (head_build_ms; the build before does not print
it), and the held frames' latencies; for both builds.

    docs/results/testbed-v2/held/count.py docs/results/testbed-v2/held/run*/raw.tar.xz
    docs/results/testbed-v2/held/count.py docs/results/testbed-v2/held/sched-idle/run*/raw.tar.xz
"""
import json
import sys
import tarfile


def frames(member):
    out = []
    for line in member:
        line = line.decode()
        if line.startswith("{"):
            j = json.loads(line)
            if j.get("type") == "frame":
                out.append(j)
    return out


def describe(fr):
    seen, direct = set(), []
    for i, f in enumerate(fr):
        p = f["plan"]
        if p["cut"] not in seen:
            seen.add(p["cut"])
            if i > 0 and "explore" not in p and p["cut"] != 0 and p["encoding"] != "local":
                direct.append((i, p["cut"], round(f["latency_ms"])))
    held = [round(f["latency_ms"]) for f in fr if "held_for_cut" in f["plan"]]
    builds = [(i, round(f["head_build_ms"])) for i, f in enumerate(fr) if "head_build_ms" in f]
    return "held %s; new cut, not explored first: %s; builds in frames: %s" % (
        held or "none", direct or "none", builds or "none")


for path in sys.argv[1:]:
    with tarfile.open(path) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if not m.name.endswith(".jsonl") or "edgesplit-latency" not in m.name:
                continue
            parts = m.name.split("/")
            print("%s %s %s: %s" % (path.split("/")[-2], parts[-2], parts[-1][:-6],
                                    describe(frames(tar.extractfile(m)))))
