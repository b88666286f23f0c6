"""Device processes that take turns: each contender is one edgesplit-device that stays loaded in
the testbed's device namespace and starts frames only when told (--frames-from-stdin), so
contenders run interleaved in rounds (interleave.schedule) without reloading the model and
without pausing a frame in flight. A process waits in the testbed's idle cgroup (no quota) and
takes its turn in the device cgroup (the quota): what the waiting ones do (probes, timers) does
not take the running one's quota. Standard library only.
"""

import json
import os
import queue
import subprocess
import threading
import time

import interleave


class GatedDevice:
    """One edgesplit-device process run with --frames-from-stdin. A reader thread timestamps
    every JSON line as it arrives (monotonic seconds) and writes it to `raw_path`. Not
    thread-safe: one caller drives it."""

    def __init__(self, tb, argv, raw_path):
        argv = list(argv) + ([] if "--frames-from-stdin" in argv else ["--frames-from-stdin"])
        self.argv = argv
        self.raw = open(raw_path, "w")
        self.raw.write(json.dumps({"type": "argv", "argv": argv}) + "\n")
        self.err_path = raw_path + ".err"
        err = open(self.err_path, "w")
        self.tb = tb
        self.proc = tb.spawn("dev", argv, subprocess.PIPE, err, in_cgroup="idle",
                             stdin=subprocess.PIPE)
        err.close()
        self.q = queue.Queue()
        self.ready = None
        self.frames_started = 0
        self.owed = 0  # frames of a late turn still to come (turn(stop_late=False))
        self.dead = None  # why this contender stopped taking turns
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            now = time.monotonic()
            text = line.decode(errors="replace")
            self.raw.write(text)
            try:
                j = json.loads(text)
            except ValueError:
                continue
            self.q.put((now, j))
        self.q.put((time.monotonic(), None))  # end of output

    def wait_ready(self, timeout_s):
        """Waits for the ready line; False (and `dead` says why) when the process exited or took
        longer."""
        deadline = time.monotonic() + timeout_s
        while self.ready is None:
            try:
                t, j = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.dead = "no ready line within %.0f s" % timeout_s
                return False
            if j is None:
                self.dead = "exited before its ready line: " + self.stderr_tail()
                return False
            if j.get("type") == "ready":
                self.ready = j
        return True

    def turn(self, n, timeout_s, stop_late=True):
        """Lets n more frames start and waits for their n frame lines. Returns (frames, ok):
        frames as (arrival, line) pairs; ok False when they did not all come within timeout_s
        or the process exited. A late process is stopped, or with `stop_late` False left to
        finish its frames (`owed` says how many; drain() waits for them)."""
        self.frames_started += n
        try:
            self.tb.move(self.proc.pid, idle=False)
            self.proc.stdin.write(b"%d\n" % n)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.dead = "exited: " + self.stderr_tail()
            return [], False
        try:
            got, ok = self._collect(n, timeout_s, stop_late)
            if not ok and not stop_late and self.proc.poll() is None:
                self.owed = n - len(got)
            return got, ok
        finally:
            if self.proc.poll() is None:
                try:
                    self.tb.move(self.proc.pid, idle=True)
                except OSError:
                    pass  # it just exited

    def drain(self, timeout_s):
        """Waits (in the device cgroup's place: idle, no quota) for the frames a late turn still
        owes; False when they did not come within timeout_s."""
        if not self.owed:
            return True
        got, ok = self._collect(self.owed, timeout_s, stop_late=False)
        self.owed -= len(got)
        return ok

    def _collect(self, n, timeout_s, stop_late=True):
        got = []
        deadline = time.monotonic() + timeout_s
        while len(got) < n:
            left = deadline - time.monotonic()
            try:
                t, j = self.q.get(timeout=max(0.01, left)) if left > 0 else self.q.get_nowait()
            except queue.Empty:
                self.dead = "%d of %d frames within the turn's %.1f s" % (len(got), n, timeout_s)
                if stop_late:
                    self.close(kill=True)
                return got, False
            if j is None:
                self.dead = "exited: " + self.stderr_tail()
                return got, False
            if j.get("type") == "frame":
                got.append((t, j))
        return got, True

    def cpu_seconds(self):
        """CPU time of the device process so far, every thread (the loop, the local lane,
        ZeroMQ's), in nanoseconds' resolution (the scheduler's own accounting, schedstat)."""
        total = 0
        try:
            tasks = os.listdir("/proc/%d/task" % self.proc.pid)
        except OSError:
            return None
        for t in tasks:
            try:
                with open("/proc/%d/task/%s/schedstat" % (self.proc.pid, t)) as f:
                    total += int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that just ended
        return total / 1e9

    def stderr_tail(self):
        try:
            with open(self.err_path) as f:
                return f.read()[-300:].strip()
        except OSError:
            return ""

    def close(self, kill=False):
        """Ends the process: closing stdin finishes it (frames in flight, summary); `kill` stops it
        at once."""
        if self.proc.poll() is None and not kill:
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, OSError):
                pass
        self.tb.stop(self.proc, timeout=5.0)
        self.raw.flush()


SLOW_LINK_MBIT = 2.0  # below this (on the wire), contenders start one at a time


def start_all(tb, entries, ready_timeout_s=180.0, quiet_timeout_s=120.0):
    """Starts every (name, argv, raw_path) in the idle cgroup (loading is not slowed down) and
    waits until each is ready and the link is quiet again (wait_quiet): a device that connects
    sends a 64 KB bandwidth probe. On a link slower than SLOW_LINK_MBIT the contenders start one
    at a time, each after the previous one's probe is through: started together, their probes
    share the link for a minute or more, the first turns with them, and a probe that takes the
    server's heartbeat timeout (30 s) without arriving whole costs its device the connection.
    Returns {name: GatedDevice} of those that are ready; the others are closed, with their
    reason in `failed` ({name: why})."""
    state = getattr(tb, "link_state", None)
    one_by_one = bool(state) and state[0] < SLOW_LINK_MBIT
    devs, failed = {}, {}
    waited = 0.0

    def settle(batch):
        nonlocal waited
        for name, d in batch.items():
            if d.wait_ready(ready_timeout_s):
                devs[name] = d
            else:
                failed[name] = d.dead
                d.close(kill=True)
        if batch:
            waited += wait_quiet(tb, quiet_timeout_s) or 0.0

    if one_by_one:
        for name, argv, raw in entries:
            settle({name: GatedDevice(tb, argv, raw)})
    else:
        settle({name: GatedDevice(tb, argv, raw) for name, argv, raw in entries})
    if waited >= 1.0:
        print("  (%s: %.0f s waiting for their bandwidth probes to go through)"
              % ("contenders started one at a time" if one_by_one else "contenders started",
                 waited), flush=True)
    return devs, failed


def unsent_bytes(tb):
    """Bytes the device's and the server's TCP connections hold unacknowledged or unsent (the
    Send-Q column of `ss`), or None when ss cannot tell."""
    total = 0
    for ns in (tb.dev_ns, tb.srv_ns):
        try:
            out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tnH", "state", "established"],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 2 and cols[1].isdigit():
                total += int(cols[1])
    return total


def wait_quiet(tb, timeout_s, below=4096, interval_s=0.5):
    """Waits until the connections hold fewer than `below` bytes twice in a row (heartbeats, tens
    of bytes, do not count), at most `timeout_s`. Returns the seconds waited (None when ss cannot
    tell)."""
    t0 = time.monotonic()
    calm = 0
    while time.monotonic() - t0 < timeout_s:
        n = unsent_bytes(tb)
        if n is None:
            return None
        calm = calm + 1 if n < below else 0
        if calm >= 2:
            return time.monotonic() - t0
        time.sleep(interval_s)
    return time.monotonic() - t0


class Turns:
    """What interleaved rounds measured, per contender: its measured frames by round, its CPU
    time over those turns, and the turns' spans (for frames per second)."""

    def __init__(self):
        self.frames = {}  # name -> [(round, arrival, line)]
        self.spans = {}  # name -> [(round, seconds, measured frames)]
        self.cpu = {}  # name -> [seconds of CPU, measured frames]
        self.dropped = {}  # name -> why it stopped taking turns
        self.rounds = 0
        self.wall_s = 0.0


def run_rounds(devs, names, rounds, frames, settle, turn_timeout_s, turns=None,
               on_turn=None):
    """Runs interleave.schedule(names, rounds, frames, settle) on the processes `devs`. A
    contender that fails a turn (not all its frames within turn_timeout_s, or it exited) takes no
    further turns; the others go on. Returns a Turns."""
    out = turns or Turns()
    t0 = time.monotonic()
    for turn in interleave.schedule(names, rounds, frames, settle):
        name = turn["name"]
        d = devs.get(name)
        if d is None or name in out.dropped:
            continue
        cpu0 = d.cpu_seconds()
        # This process's frame numbers go on from its earlier turns (warm-up included): the
        # turn's measured frames are its last `frames`.
        first_measured = d.frames_started + turn["settle"]
        got, ok = d.turn(turn["settle"] + turn["frames"], turn_timeout_s)
        cpu1 = d.cpu_seconds()
        if not ok:
            out.dropped[name] = d.dead
            continue
        measured = [(t, j) for t, j in got if j["frame"] >= first_measured]
        settled = [(t, j) for t, j in got if j["frame"] < first_measured]
        rec = out.frames.setdefault(name, [])
        rec.extend((turn["round"], t, j) for t, j in measured)
        # Frames per second of the turn: measured frames over the time from the last settle
        # frame's reply (or the turn's first reply) to the last reply.
        start = settled[-1][0] if settled else got[0][0]
        span = got[-1][0] - start
        n = len(measured) if settled else len(measured) - 1
        if span > 0 and n > 0:
            out.spans.setdefault(name, []).append((turn["round"], span, n))
        if cpu0 is not None and cpu1 is not None:
            c = out.cpu.setdefault(name, [0.0, 0])
            c[0] += cpu1 - cpu0
            c[1] += turn["settle"] + turn["frames"]
        if on_turn:
            on_turn(turn, measured)
    out.rounds = max(out.rounds, rounds)
    out.wall_s += time.monotonic() - t0
    return out
