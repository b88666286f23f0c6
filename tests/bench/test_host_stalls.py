#!/usr/bin/env python3
"""bench/host_stalls.py: a monitor that was kept from running for 200 ms (SIGSTOP) reports a gap of
about that length within the interval that holds it, and not in an interval that ended before.
Real processes, no root needed (as root the monitor runs at SCHED_FIFO)."""
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import host_stalls  # noqa: E402


def main():
    with tempfile.TemporaryDirectory() as tmp:
        m = host_stalls.Monitor(os.path.join(tmp, "stalls.txt"), threshold_ms=20)
        try:
            time.sleep(0.5)  # started and sleeping
            t_before = time.monotonic()
            time.sleep(0.2)
            t_stop = time.monotonic()
            os.kill(m.proc.pid, signal.SIGSTOP)
            time.sleep(0.2)
            os.kill(m.proc.pid, signal.SIGCONT)
            time.sleep(0.3)  # it wakes, writes the gap
            t_after = time.monotonic()
            during = m.largest_gap_ms(t_stop, t_after)
            before = m.largest_gap_ms(t_before, t_stop - 0.05)
        finally:
            m.stop()
    print(f"stopped 200 ms: gap {during:.0f} ms within; {before:.0f} ms in the interval before",
          file=sys.stderr)
    if not 150 <= during <= 1000:
        print("FAIL: the stop was not seen as a gap of about 200 ms", file=sys.stderr)
        return 1
    if before >= 150:
        print("FAIL: the gap was reported in an interval that ended before it", file=sys.stderr)
        return 1
    print("ok: " + m.describe(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
