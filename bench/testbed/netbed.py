"""The network testbed: two network namespaces joined by a veth pair, a shaped link between them
(tc: netem for delay and loss, tbf for the rate, on both directions) and a cgroup CPU quota that
makes the device process N times slower than the server. Real kernel mechanisms, real processes.

Everything created here is named after the owning process id (es-<pid>-dev, es-<pid>-srv, cgroup
es-<pid>-dev), so two runs never collide, and `cleanup_stale()` can remove what a crashed run left
behind (names whose process is gone). Needs root. Standard library only (/usr/bin/python3).
"""

import ctypes
import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import time

CGROUP_ROOT = "/sys/fs/cgroup"
NAME_RE = re.compile(r"^es-(\d+)-(dev|srv|idle)$")
# Addresses exist only inside the two namespaces (a private /30).
DEV_ADDR = "10.77.0.1"
SRV_ADDR = "10.77.0.2"
IFACE = "es0"
MTU = 1500
CFS_PERIOD_US = 10000  # short period: a throttled device stalls for at most a few ms at a time


class TestbedError(RuntimeError):
    """A testbed step failed (a command, a missing privilege); the message says which and why."""


def sh(args, check=True, capture=True, input_text=None):
    """Runs a command (a list) and returns its CompletedProcess; raises TestbedError on failure."""
    r = subprocess.run(args, capture_output=capture, text=True, input=input_text)
    if check and r.returncode != 0:
        raise TestbedError("command failed (%d): %s\n%s" % (r.returncode, " ".join(args),
                                                           (r.stderr or "").strip()))
    return r


def root_problem():
    """None when the testbed can run here; otherwise one sentence saying what is missing."""
    if os.geteuid() != 0:
        return ("the testbed needs root (network namespaces, tc and cgroups): run it as root or "
                "with sudo")
    for tool in ("/usr/sbin/ip", "/usr/sbin/tc"):
        if not os.path.exists(tool):
            return "%s is missing: install iproute2" % tool
    return None


def cgroup_layout():
    """'v1' when the cpu controller is mounted on its own (cpu.cfs_quota_us), 'v2' when
    /sys/fs/cgroup is the unified hierarchy (cpu.max), None when neither is usable."""
    if os.path.exists(os.path.join(CGROUP_ROOT, "cpu", "cpu.cfs_quota_us")):
        return "v1"
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        with open(os.path.join(CGROUP_ROOT, "cgroup.controllers")) as f:
            if "cpu" in f.read().split():
                return "v2"
    return None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def _read(path):
    with open(path) as f:
        return f.read()


class DeviceCgroup:
    """A cgroup holding the device process, with a CPU quota of 1/slowdown of one core (the device
    runs LibTorch on one thread). Reads the CPU time its processes used. v1 (cpu + cpuacct) or v2
    (cpu.max, cpu.stat)."""

    def __init__(self, name, slowdown):
        self.layout = cgroup_layout()
        if self.layout is None:
            raise TestbedError("no usable cgroup cpu controller under %s" % CGROUP_ROOT)
        self.name = name
        self.paths = []
        if self.layout == "v1":
            self.cpu = os.path.join(CGROUP_ROOT, "cpu", name)
            self.acct = os.path.join(CGROUP_ROOT, "cpuacct", name)
            if not os.path.isdir(os.path.join(CGROUP_ROOT, "cpuacct")):
                self.acct = self.cpu  # cpu,cpuacct co-mounted
            for p in dict.fromkeys([self.cpu, self.acct]):
                os.makedirs(p, exist_ok=True)
                self.paths.append(p)
        else:
            root_ctl = _read(os.path.join(CGROUP_ROOT, "cgroup.subtree_control")).split()
            if "cpu" not in root_ctl:
                _write(os.path.join(CGROUP_ROOT, "cgroup.subtree_control"), "+cpu")
            self.cpu = self.acct = os.path.join(CGROUP_ROOT, name)
            os.makedirs(self.cpu, exist_ok=True)
            self.paths.append(self.cpu)
        self.set_slowdown(slowdown)

    def set_slowdown(self, slowdown):
        """slowdown <= 0 removes the quota (the device runs at full speed)."""
        if slowdown and slowdown > 0:
            quota = max(1000, int(round(CFS_PERIOD_US / float(slowdown))))
        else:
            quota = -1
        if self.layout == "v1":
            _write(os.path.join(self.cpu, "cpu.cfs_period_us"), CFS_PERIOD_US)
            _write(os.path.join(self.cpu, "cpu.cfs_quota_us"), quota)
        else:
            _write(os.path.join(self.cpu, "cpu.max"),
                   "%s %d" % ("max" if quota < 0 else quota, CFS_PERIOD_US))

    def procs_files(self):
        """The cgroup.procs files a new process must join (one per hierarchy)."""
        return [os.path.join(p, "cgroup.procs") for p in self.paths]

    def cpu_seconds(self):
        """CPU time used by every process that ran in the cgroup so far, in seconds."""
        if self.layout == "v1":
            return int(_read(os.path.join(self.acct, "cpuacct.usage"))) / 1e9
        for line in _read(os.path.join(self.cpu, "cpu.stat")).splitlines():
            k, v = line.split()
            if k == "usage_usec":
                return int(v) / 1e6
        return 0.0

    def throttled(self):
        """(periods throttled, total periods) from cpu.stat."""
        stat = dict(line.split() for line in _read(os.path.join(self.cpu, "cpu.stat")).splitlines()
                    if len(line.split()) == 2)
        return int(stat.get("nr_throttled", 0)), int(stat.get("nr_periods", 0))

    def remove(self):
        for p in reversed(self.paths):
            remove_cgroup_dir(p)


def remove_cgroup_dir(path):
    """Kills what is left in a cgroup of ours and removes it (retrying while processes exit)."""
    if not os.path.isdir(path):
        return
    for _ in range(50):
        try:
            pids = [int(x) for x in _read(os.path.join(path, "cgroup.procs")).split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.05)


def _pdeathsig():
    """In the child: die with SIGKILL when the testbed process dies, whatever killed it."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setpgid(0, 0)


class Link:
    """The shaping of one direction of the link, on the sending side's interface: tbf (the rate)
    as root qdisc, and below it netem (delay, loss) when the kernel has netem; otherwise delay and
    loss are applied by the userspace Wire that joins the two TUN interfaces."""

    def __init__(self, netns, wire=None, direction=None):
        self.netns = netns
        self.wire = wire
        self.direction = direction
        self.state = None

    @staticmethod
    def _tbf(rate_mbit):
        rate_bps = rate_mbit * 1e6
        # Bucket: 4 ms of traffic and at least two full-size packets; queue: one second of traffic.
        burst = max(int(rate_bps / 8 * 0.004), 2 * (MTU + 14))
        limit = max(int(rate_bps / 8 * 1.0), 256 * 1024)
        return ["tbf", "rate", "%dbit" % int(rate_bps), "burst", str(burst), "limit", str(limit)]

    @staticmethod
    def _netem(delay_ms, loss_pct):
        args = ["netem", "delay", "%.3fms" % delay_ms, "limit", "100000"]
        if loss_pct > 0:
            args += ["loss", "%g%%" % loss_pct]
        return args

    def apply(self, rate_mbit, delay_ms, loss_pct):
        """Sets (first call) or changes (`tc change`, live) the shaping of this direction."""
        verb = "add" if self.state is None else "change"
        base = ["ip", "netns", "exec", self.netns, "tc", "qdisc", verb, "dev", IFACE]
        if self.state is None or self.state[0] != rate_mbit:
            sh(base + ["root", "handle", "1:"] + self._tbf(rate_mbit))
        if self.state is None or self.state[1:] != (delay_ms, loss_pct):
            if self.wire:
                self.wire.set(self.direction, delay_ms, loss_pct)
            else:
                sh(base + ["parent", "1:1", "handle", "10:"] + self._netem(delay_ms, loss_pct))
        self.state = (rate_mbit, delay_ms, loss_pct)

    def show(self):
        return sh(["ip", "netns", "exec", self.netns, "tc", "-s", "qdisc", "show", "dev",
                   IFACE]).stdout


def netem_available():
    """Whether the kernel has the netem qdisc (tried in a throwaway namespace)."""
    ns = "es-%d-probe" % os.getpid()
    sh(["ip", "netns", "add", ns])
    try:
        return sh(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                   "delay", "1ms"], check=False).returncode == 0
    finally:
        sh(["ip", "netns", "del", ns], check=False)


TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name):
    """Creates a TUN interface `name` in this namespace; returns its file descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Wire:
    """The cable between two TUN interfaces when the kernel has no netem: a separate process
    (`netbed.py wire`) that moves every IP packet from one TUN to the other after the one-way
    delay of its direction, dropping the fraction `loss` of them. Packets leave in the order they
    came. Settings change live through its stdin."""

    def __init__(self, dev_fd, srv_fd):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "wire", str(dev_fd), str(srv_fd)],
            stdin=subprocess.PIPE, text=True, pass_fds=(dev_fd, srv_fd), preexec_fn=_pdeathsig)
        self.settings = {"up": (0.0, 0.0), "down": (0.0, 0.0)}

    def set(self, direction, delay_ms, loss_pct):
        self.settings[direction] = (delay_ms, loss_pct)
        up, down = self.settings["up"], self.settings["down"]
        self.proc.stdin.write("%f %f %f %f\n" % (up[0], up[1], down[0], down[1]))
        self.proc.stdin.flush()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_wire(dev_fd, srv_fd):
    """The Wire process's loop: select on both TUN fds and stdin, forward packets when due."""
    import collections
    import random
    import select

    # direction -> [delay_s, loss_fraction, source fd, destination fd, queue of (due, packet)]
    dirs = {"up": [0.0, 0.0, dev_fd, srv_fd, collections.deque()],
            "down": [0.0, 0.0, srv_fd, dev_fd, collections.deque()]}
    by_fd = {dev_fd: dirs["up"], srv_fd: dirs["down"]}
    stdin = sys.stdin.fileno()
    buffered = ""
    rng = random.Random(7)
    os.set_blocking(dev_fd, False)
    os.set_blocking(srv_fd, False)
    while True:
        now = time.monotonic()
        due = [d[4][0][0] for d in dirs.values() if d[4]]
        timeout = max(0.0, min(due) - now) if due else None
        readable, _, _ = select.select([dev_fd, srv_fd, stdin], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                chunk = os.read(stdin, 4096).decode()
                if not chunk:
                    return
                buffered += chunk
                while "\n" in buffered:
                    line, buffered = buffered.split("\n", 1)
                    v = [float(x) for x in line.split()]
                    dirs["up"][0], dirs["up"][1] = v[0] / 1000.0, v[1] / 100.0
                    dirs["down"][0], dirs["down"][1] = v[2] / 1000.0, v[3] / 100.0
                continue
            d = by_fd[fd]
            for _ in range(64):  # drain what is there, without starving the other side
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if d[1] > 0 and (d[1] >= 1.0 or rng.random() < d[1]):
                    continue
                q = d[4]
                t = now + d[0]
                if q and q[-1][0] > t:
                    t = q[-1][0]  # keep the order when the delay shrinks
                q.append((t, packet))
        for d in dirs.values():
            q = d[4]
            while q and q[0][0] <= now:
                try:
                    os.write(d[3], q.popleft()[1])
                except OSError:
                    pass


class Testbed:
    """Owns two namespaces (device, server) joined by a veth pair, the shaping of both directions,
    and the device's cgroup. Use as a context manager: everything is removed on exit, on an
    exception and (through the signal handlers installed by install_signal_handlers) on Ctrl-C or
    SIGTERM. Not thread-safe except set_link(), which the trace replayer calls."""

    def __init__(self, slowdown=1.0, tag=None, use_netem=None):
        self.tag = tag or str(os.getpid())
        self.dev_ns = "es-%s-dev" % self.tag
        self.srv_ns = "es-%s-srv" % self.tag
        self.slowdown = slowdown
        self.cgroup = None
        self.idle_cgroup = None
        self.children = []
        self.up_links = None
        self.down_links = None
        self.link_state = None
        self.wire = None
        self.use_netem = use_netem  # None: netem when the kernel has it, else the userspace wire

    def __enter__(self):
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc):
        self.destroy()
        return False

    def create(self):
        problem = root_problem()
        if problem:
            raise TestbedError(problem)
        # Leftovers under our own name can only be from a crashed run whose pid we now hold.
        remove_named(self.tag)
        sh(["ip", "netns", "add", self.dev_ns])
        sh(["ip", "netns", "add", self.srv_ns])
        self.use_netem = netem_available() if self.use_netem is None else self.use_netem
        if self.use_netem:
            sh(["ip", "-n", self.dev_ns, "link", "add", IFACE, "type", "veth", "peer", "name",
                IFACE, "netns", self.srv_ns])
        else:
            fds = []
            for ns, side in ((self.dev_ns, "d"), (self.srv_ns, "s")):
                tmp = "es%s%s" % (self.tag, side)
                fds.append(open_tun(tmp))
                sh(["ip", "link", "set", tmp, "netns", ns])
                sh(["ip", "-n", ns, "link", "set", tmp, "name", IFACE])
            self.wire = Wire(fds[0], fds[1])
            for fd in fds:
                os.close(fd)  # the wire process holds them now
        for ns, addr in ((self.dev_ns, DEV_ADDR), (self.srv_ns, SRV_ADDR)):
            sh(["ip", "-n", ns, "addr", "add", addr + "/30", "dev", IFACE])
            sh(["ip", "-n", ns, "link", "set", IFACE, "mtu", str(MTU), "up"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        self.up_links = Link(self.dev_ns, self.wire, "up")  # device -> server
        self.down_links = Link(self.srv_ns, self.wire, "down")  # server -> device
        self.cgroup = DeviceCgroup("es-%s-dev" % self.tag, self.slowdown)
        # Device processes waiting for their turn (bench/testbed/turns.py) wait here, without
        # a quota, so that what they do while idle does not take the running one's quota.
        self.idle_cgroup = DeviceCgroup("es-%s-idle" % self.tag, 0)

    def set_link(self, rate_mbit, rtt_ms, loss_pct=0.0):
        """Shapes both directions: `rate_mbit` each way, half the round trip on each, `loss_pct`
        packet loss on each (100: an outage). Live while processes run."""
        self.up_links.apply(rate_mbit, rtt_ms / 2.0, loss_pct)
        self.down_links.apply(rate_mbit, rtt_ms / 2.0, loss_pct)
        self.link_state = (rate_mbit, rtt_ms, loss_pct)

    def set_slowdown(self, slowdown):
        self.slowdown = slowdown
        self.cgroup.set_slowdown(slowdown)

    def spawn(self, side, argv, stdout, stderr, in_cgroup=False, stdin=None):
        """Starts argv in the device or server namespace ("dev"/"srv"); with `in_cgroup` the
        process is in the device cgroup (with "idle": the idle one, see move()) before it
        executes anything. Returns the Popen; the process dies with the testbed."""
        ns = self.dev_ns if side == "dev" else self.srv_ns
        cmd = ["ip", "netns", "exec", ns] + list(argv)
        if in_cgroup:
            group = self.idle_cgroup if in_cgroup == "idle" else self.cgroup
            joins = " ".join("echo $$ > %s &&" % f for f in group.procs_files())
            cmd = ["/bin/sh", "-c", joins + ' exec "$@"', "sh"] + cmd
        p = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr,
                             preexec_fn=_pdeathsig)
        self.children.append(p)
        return p

    def move(self, pid, idle):
        """Moves a device process (every thread) into the quota'd device cgroup, or out of it
        into the idle one (no quota)."""
        for f in (self.idle_cgroup if idle else self.cgroup).procs_files():
            _write(f, pid)

    def stop(self, proc, timeout=5.0):
        """SIGTERM, then SIGKILL after `timeout`, for a process started by spawn()."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if proc in self.children:
            self.children.remove(proc)

    def destroy(self):
        for p in list(self.children):
            try:
                self.stop(p, timeout=3.0)
            except Exception:  # keep cleaning up
                pass
        for group in (self.cgroup, self.idle_cgroup):
            if group:
                group.remove()
        self.cgroup = self.idle_cgroup = None
        if self.wire:
            self.wire.stop()
            self.wire = None
        remove_named(self.tag)


def install_signal_handlers():
    """Turns SIGINT/SIGTERM/SIGHUP into SystemExit so `with Testbed()` blocks clean up."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def _netns_names():
    r = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def remove_named(tag):
    """Removes the namespaces (killing what runs in them) and cgroups of run `tag`."""
    for ns in ("es-%s-dev" % tag, "es-%s-srv" % tag):
        if ns in _netns_names():
            pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", ns], check=False)
    for sub in ("cpu", "cpuacct", ""):
        for name in ("es-%s-dev" % tag, "es-%s-idle" % tag):
            remove_cgroup_dir(os.path.join(CGROUP_ROOT, sub, name))


def cleanup_stale(everything=False):
    """Removes namespaces and cgroups of testbed runs whose process is gone (all of them with
    `everything`, which also stops live runs). Returns the run tags removed."""
    tags = set()
    for ns in _netns_names():
        m = NAME_RE.match(ns)
        if m:
            tags.add(m.group(1))
    for sub in ("cpu", "cpuacct", ""):
        d = os.path.join(CGROUP_ROOT, sub)
        if os.path.isdir(d):
            for name in os.listdir(d):
                m = NAME_RE.match(name)
                if m:
                    tags.add(m.group(1))
    removed = []
    for tag in sorted(tags):
        if everything or not (tag.isdigit() and pid_alive(int(tag))):
            remove_named(tag)
            removed.append(tag)
    return removed


def main(argv):
    import argparse

    ap = argparse.ArgumentParser(prog="netbed.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cleanup", help="remove namespaces and cgroups left by crashed runs")
    c.add_argument("--all", action="store_true", help="also those of runs still going on")
    w = sub.add_parser("wire", help=argparse.SUPPRESS)
    w.add_argument("dev_fd", type=int)
    w.add_argument("srv_fd", type=int)
    s = sub.add_parser("check", help="say whether the testbed can run here, and how")
    args = ap.parse_args(argv)
    if args.cmd == "wire":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner stops the wire
        run_wire(args.dev_fd, args.srv_fd)
        return 0
    problem = root_problem()
    if problem:
        print("netbed: " + problem, file=sys.stderr)
        return 1
    if args.cmd == "cleanup":
        removed = cleanup_stale(everything=args.all)
        print("netbed: removed %d leftover run(s)%s" % (len(removed),
              (": " + ", ".join(removed)) if removed else ""))
        return 0
    print("netbed: root ok; cgroup %s; delay and loss by %s" % (
        cgroup_layout(), "netem" if netem_available() else "the userspace wire (no netem)"))
    del s
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
