#!/usr/bin/env python3
"""Host stalls: times when the whole machine stopped running what it should.

A monitor process sleeps 2 ms at a time and records every wake-up that came more than
`threshold_ms` late, on CLOCK_MONOTONIC. As root it runs at SCHED_FIFO priority 50, above
everything a benchmark starts, so that a late wake-up means the machine itself was away (a
virtual machine descheduled by its host, a long interrupt or kernel stall), not that the
benchmark's own processes held the cores; without root it runs at normal priority and its gaps
also count CPU contention, which the report says.

A benchmark asks for the largest gap within the interval of each of its runs, and can measure a
run again when that gap would decide a tail statistic (docs/results/batching/README.md). Run as a
script it is the monitor itself:

    host_stalls.py OUT_FILE THRESHOLD_MS
"""

import os
import subprocess
import sys
import time

SLEEP_S = 0.002


class Monitor:
    """Starts the monitor process; gaps() and largest_gap_ms(t0, t1) read what it has recorded
    (times in time.monotonic() seconds, the clock the monitor uses)."""

    def __init__(self, path, threshold_ms=20.0):
        self.path = path
        self.threshold_ms = threshold_ms
        open(path, "w").close()
        cmd = [sys.executable, os.path.abspath(__file__), path, str(threshold_ms)]
        self.realtime = False
        self.proc = None
        if os.geteuid() == 0:
            # chrt fails where root may not set real-time priorities (a container without
            # CAP_SYS_NICE, a cgroup without a real-time budget): the monitor then runs as below.
            proc = subprocess.Popen(["chrt", "-f", "50"] + cmd, stderr=subprocess.DEVNULL)
            time.sleep(0.2)
            if proc.poll() is None:
                self.proc, self.realtime = proc, True
        if self.proc is None:
            self.proc = subprocess.Popen(cmd)

    def gaps(self):
        """[(monotonic time the gap ended, gap ms)] so far."""
        out = []
        try:
            with open(self.path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2:
                        out.append((float(parts[0]), float(parts[1])))
        except OSError:
            pass
        return out

    def largest_gap_ms(self, t0, t1):
        """The largest late wake-up overlapping [t0, t1] (0 when none over the threshold)."""
        best = 0.0
        for end, ms in self.gaps():
            if end >= t0 and end - ms / 1000.0 <= t1:
                best = max(best, ms)
        return best

    def largest_gap_since_ms(self, t0):
        """largest_gap_ms from t0 to now, after a moment for the monitor's last wake-ups."""
        time.sleep(0.05)
        return self.largest_gap_ms(t0, time.monotonic())

    def summary(self, gaps):
        """What results.json records of `gaps` (from gaps()), and the sentence a table prints."""
        largest = max((ms for _, ms in gaps), default=0.0)
        line = (f"Host stalls ({self.describe()}): {len(gaps)} wake-ups over "
                f"{self.threshold_ms:g} ms late, the largest {largest:.0f} ms")
        record = {"monitor": self.describe(), "gaps_over_20ms": len(gaps), "largest_ms": largest}
        return record, line

    def describe(self):
        return ("a SCHED_FIFO monitor at priority 50, whose late wake-ups are the machine's own stalls"
                if self.realtime else
                "a normal-priority monitor, not root, whose late wake-ups include CPU contention")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run(path, threshold_ms):
    threshold = threshold_ms / 1000.0
    last = time.monotonic()
    with open(path, "a") as f:
        while True:
            time.sleep(SLEEP_S)
            now = time.monotonic()
            late = now - last - SLEEP_S
            if late > threshold:
                f.write(f"{now:.6f} {late * 1000:.1f}\n")
                f.flush()
            last = now


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: host_stalls.py OUT_FILE THRESHOLD_MS", file=sys.stderr)
        sys.exit(2)
    try:
        run(sys.argv[1], float(sys.argv[2]))
    except KeyboardInterrupt:
        pass
