"""What the scripts here that compare builds share: NAME=BINARY arguments, rounds that alternate
the builds' order (so that the machine's drift hits each alike), per-round ratios, a free loopback
port, a server's readiness and the frame lines of a device's --json output."""
import json
import os
import socket
import statistics
import subprocess
import time
import urllib.request


def parse_builds(ap, items, binary):
    """[(name, path)] from NAME=BINARY items; an item that is not one is an argparse error."""
    builds = []
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not os.access(path, os.X_OK):
            ap.error("%s: give NAME=BINARY, an %s to run" % (item, binary))
        builds.append((name, path))
    return builds


def in_round(builds, r):
    """The builds in round r's order: as given in even rounds, reversed in odd ones."""
    return builds if r % 2 == 0 else list(reversed(builds))


def ratio(runs, builds, key):
    """With two builds, the second's `key` over the first's per round: median, min and max."""
    (a, _), (b, _) = builds
    ratios = sorted(y[key] / x[key] for x, y in zip(runs[a], runs[b]) if x[key] > 0)
    if not ratios:
        return None
    return {"of": "%s / %s" % (b, a), "median": statistics.median(ratios), "min": ratios[0],
            "max": ratios[-1]}


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frames_in(lines):
    """The frame lines (type "frame") of an edgesplit-device --json output, parsed."""
    out = []
    for line in lines:
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("type") == "frame":
            out.append(j)
    return out


def wait_ready(http_port, server, timeout_s):
    """Seconds until the server's /readyz answers 200; raises when it exits or times out."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if server.poll() is not None:
            raise RuntimeError("the server exited (%d) before it was ready" % server.returncode)
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % http_port, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("the server was not ready within %d s" % timeout_s)


def start_server(server_cmd, scratch):
    """Starts an edgesplit-server (`server_cmd`, --bind and --http-port added on free loopback
    ports; its output to scratch/server.log): (process, endpoint, http port)."""
    endpoint = "tcp://127.0.0.1:%d" % free_port()
    http_port = free_port()
    with open(os.path.join(scratch, "server.log"), "w") as log:
        server = subprocess.Popen(server_cmd + ["--bind", endpoint, "--http-port", str(http_port)],
                                  stdout=log, stderr=subprocess.STDOUT)
    return server, endpoint, http_port
