"""Checks the testbed's measurement logic without processes or root (bench/testbed): the
interleaved rounds give every contender its share of rounds and the same images, the paired
bootstrap intervals, the time dilation arithmetic, and that the oracle's candidates are every
feasible profiled plan."""

import json
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench", "testbed"))

import bench  # noqa: E402
import costmodel  # noqa: E402
import interleave  # noqa: E402
import turns  # noqa: E402

PROFILE = os.path.join(ROOT, "bench", "profiles", "mobilenet_v2_imagenet.profile.json")


class FakeDevice:
    """A gated device that answers `n` frames per turn with a latency set per contender, and
    fails the turn given in `fail_on`."""

    def __init__(self, name, latency_ms, log, fail_on=None):
        self.name, self.latency_ms, self.log, self.fail_on = name, latency_ms, log, fail_on
        self.frames_started = 0
        self.clock = 0.0
        self.cpu = 0.0
        self.dead = None

    def turn(self, n, timeout_s):
        first = self.frames_started
        self.frames_started += n
        self.log.append((self.name, first, n))
        if self.fail_on is not None and len([e for e in self.log if e[0] == self.name]) == \
                self.fail_on:
            self.dead = "failed on purpose"
            return [], False
        got = []
        for f in range(first, first + n):
            self.clock += self.latency_ms / 1000.0
            self.cpu += 0.001
            got.append((self.clock, {"frame": f, "latency_ms": self.latency_ms,
                                     "source": "img%03d.jpg" % (f % 7)}))
        return got, True

    def cpu_seconds(self):
        return self.cpu


class Rounds(unittest.TestCase):
    def test_each_contender_gets_one_turn_per_round_in_rotating_order(self):
        names = ["a", "b", "c"]
        plan = interleave.schedule(names, rounds=6, frames=4, settle=1)
        self.assertEqual(len(plan), 18)
        for r in range(6):
            turn_names = [t["name"] for t in plan if t["round"] == r]
            self.assertEqual(sorted(turn_names), names)
            self.assertEqual(turn_names[0], names[r % 3])  # rotation: each leads in turn
        leads = [next(t["name"] for t in plan if t["round"] == r) for r in range(6)]
        self.assertEqual({n: leads.count(n) for n in names}, {"a": 2, "b": 2, "c": 2})

    def test_every_contender_sees_the_same_images_in_each_round(self):
        plan = interleave.schedule(["x", "y"], rounds=5, frames=3, settle=2)
        for r in range(5):
            imgs = {t["name"]: [interleave.image_of(f, 4) for f in
                                interleave.measured_frames(t)]
                    for t in plan if t["round"] == r}
            self.assertEqual(imgs["x"], imgs["y"])
            self.assertEqual(len(imgs["x"]), 3)

    def test_bad_schedules_are_refused(self):
        for kw in ({"rounds": 0, "frames": 1, "settle": 0}, {"rounds": 1, "frames": 0,
                                                               "settle": 0}):
            with self.assertRaises(ValueError):
                interleave.schedule(["a"], **kw)

    def test_run_rounds_gives_every_contender_its_share_and_same_frames(self):
        log = []
        devs = {n: FakeDevice(n, ms, log) for n, ms in (("a", 10), ("b", 20), ("c", 40))}
        out = turns.run_rounds(devs, ["a", "b", "c"], rounds=4, frames=3, settle=1,
                               turn_timeout_s=1)
        for n in ("a", "b", "c"):
            self.assertEqual(len(out.frames[n]), 12)  # 4 rounds x 3 measured frames
            self.assertEqual(sorted({r for r, _, _ in out.frames[n]}), [0, 1, 2, 3])
            self.assertEqual(out.cpu[n][1], 16)  # settle frames count for CPU
        # The same frame numbers (so the same images) for every contender, round by round.
        frames_of = {n: [j["frame"] for _, _, j in out.frames[n]] for n in devs}
        self.assertEqual(frames_of["a"], frames_of["b"])
        self.assertEqual(frames_of["a"], frames_of["c"])
        self.assertNotIn(0, frames_of["a"])  # each turn's first frame settles
        # Turns alternate: no contender takes two turns in a row within a round.
        self.assertEqual([e[0] for e in log[:6]], ["a", "b", "c", "b", "c", "a"])
        # Frames per second from each turn's span: 3 frames after the settle frame.
        r, span, n = out.spans["c"][0]
        self.assertAlmostEqual(n / span, 25.0)

    def test_a_contender_that_fails_a_turn_takes_no_further_turns(self):
        log = []
        devs = {"a": FakeDevice("a", 10, log), "b": FakeDevice("b", 10, log, fail_on=2)}
        out = turns.run_rounds(devs, ["a", "b"], rounds=4, frames=2, settle=0, turn_timeout_s=1)
        self.assertIn("b", out.dropped)
        self.assertEqual(len([e for e in log if e[0] == "b"]), 2)
        self.assertEqual(len(out.frames["a"]), 8)
        self.assertEqual(len(out.frames["b"]), 2)


class Intervals(unittest.TestCase):
    def test_paired_ratio_point_interval_and_seed(self):
        num = [110, 120, 100, 130, 115, 105, 125, 118]
        den = [100] * 8
        a = interleave.paired_ratio(num, den)
        b = interleave.paired_ratio(num, den)
        self.assertEqual(a, b)  # fixed seed
        self.assertAlmostEqual(a["point"], 1.165)
        self.assertLessEqual(a["lo"], a["point"])
        self.assertGreaterEqual(a["hi"], a["point"])
        self.assertGreater(a["hi"] - a["lo"], 0.0)
        self.assertEqual(a["rounds"], 8)

    def test_rounds_with_a_missing_value_are_left_out(self):
        r = interleave.paired_ratio([2, None, 4, 6], [1, 1, None, 2])
        self.assertEqual(r["rounds"], 2)
        self.assertIsNone(interleave.paired_ratio([1], [1]))

    def test_drift_shared_by_both_contenders_cancels(self):
        drift = [1.0, 1.6, 0.8, 2.2, 1.1, 1.9]
        r = interleave.paired_ratio([50 * d for d in drift], [100 * d for d in drift])
        self.assertAlmostEqual(r["lo"], 0.5)
        self.assertAlmostEqual(r["hi"], 0.5)

    def test_a_target_is_met_only_when_the_interval_supports_it(self):
        iv = {"point": 1.05, "lo": 0.98, "hi": 1.14}
        self.assertFalse(interleave.supports_at_most(iv, 1.10))
        self.assertTrue(interleave.supports_at_most(iv, 1.15))
        self.assertTrue(interleave.supports_at_least(iv, 0.95))
        self.assertFalse(interleave.supports_at_least(iv, 1.0))
        self.assertFalse(interleave.supports_at_most(None, 10))


class Dilation(unittest.TestCase):
    def test_link_and_trace_times(self):
        st = {"t": 10.0, "rate": 5.0, "rtt": 20.0, "loss": 100.0}
        d = interleave.dilate_step(st, 10)
        self.assertEqual(d, {"t": 100.0, "rate": 0.5, "rtt": 200.0, "loss": 100.0})
        self.assertEqual(interleave.dilate_duration_s(25, 4), 100)

    def test_reported_times_and_rates(self):
        m = {"latency_p50_ms": 500.0, "fps": 2.0, "bytes_per_frame": 3000.0,
             "device_cpu_ms_per_frame": 40.0, "top1": 0.7, "latency_p95_ms": None}
        u = interleave.undilate_metrics(m, 10)
        self.assertEqual(u["latency_p50_ms"], 50.0)
        self.assertEqual(u["fps"], 20.0)
        self.assertEqual(u["device_cpu_ms_per_frame"], 4.0)
        self.assertEqual(u["bytes_per_frame"], 3000.0)
        self.assertEqual(u["top1"], 0.7)
        self.assertIsNone(u["latency_p95_ms"])
        self.assertEqual(u["dilation"], 10)

    def test_a_plan_keeps_its_latency_share_under_dilation(self):
        # Compute 10x slower here, network 10x slower by dilation: the whole frame is 10x.
        plan = {"local": False, "head_ms": 4.0, "pack_ms": 1.0, "unpack_ms": 1.0,
                "tail_ms": 2.0, "bytes": 12500.0}
        target = costmodel.predict(plan, 10.0, 20.0)["latency_ms"]
        slow = dict(plan, head_ms=40.0, pack_ms=10.0, unpack_ms=10.0, tail_ms=20.0)
        st = interleave.dilate_step({"t": 0, "rate": 10.0, "rtt": 20.0, "loss": 0}, 10)
        here = costmodel.predict(slow, st["rate"], st["rtt"])["latency_ms"]
        self.assertAlmostEqual(interleave.undilate_ms(here, 10), target)

    def test_dilation_from_tail_times(self):
        self.assertAlmostEqual(interleave.dilation_for(12.3, 1.23), 10.0)
        with self.assertRaises(ValueError):
            interleave.dilation_for(0, 1)

    def test_timeouts_scale_with_dilation(self):
        self.assertEqual(bench.timeout_flags(["--cut", "device"], 10, 30000),
                         ["--handshake-timeout-ms", "20000", "--timeout-ms", "300000"])
        self.assertEqual(bench.timeout_flags(["--objective", "latency"], 10, 30000),
                         ["--handshake-timeout-ms", "20000", "--timeout-ms", "10000"])
        self.assertEqual(bench.timeout_flags(["--objective", "latency"], 1, 30000), [])
        self.assertEqual(bench.timeout_flags(["--timeout-ms", "5"], 2, 30000),
                         ["--handshake-timeout-ms", "4000"])


class StartTime(unittest.TestCase):
    def test_slow_links_start_devices_one_at_a_time_behind_their_probes(self):
        fast = bench.start_s(5.0, 10.0, 4)
        self.assertAlmostEqual(fast, 4 * bench.START_S / 2)
        # 0.025 Mbit/s, 1 s round trips (0.25 Mbit/s at dilation 10): each device's 64 KB probe
        # alone holds the link for 21 s.
        slow = bench.start_s(0.025, 1000.0, 4)
        probe_s = bench.CONNECT_PROBE_BYTES * 8 / 0.025e6
        self.assertGreater(slow, 4 * probe_s)
        self.assertAlmostEqual(slow, 4 * (bench.START_S + probe_s + bench.CONNECT_ROUND_TRIPS))
        self.assertGreater(bench.start_s(0.05, 1000.0, 4), fast)
        self.assertLess(bench.start_s(0.05, 1000.0, 4), slow)


class Oracle(unittest.TestCase):
    def setUp(self):
        with open(PROFILE) as f:  # shipped in the repository
            self.profile = json.load(f)

    def test_candidates_cover_every_feasible_profiled_plan(self):
        fp32 = self.profile["fp32_top1"]
        expected = set()
        for cut in self.profile["cuts"][:-1]:
            for e in cut.get("encodings", []):
                if costmodel.accuracy_drop_pp(e, fp32) <= bench.ACCURACY_BOUND + 1e-9:
                    expected.add("%d:%s" % (cut["id"], e["name"]))
        expected.add("%d:local" % self.profile["cuts"][-1]["id"])
        pinnable, unpinnable = interleave.feasible_plans(self.profile, bench.ACCURACY_BOUND)
        got = {interleave.plan_name(p) for p in pinnable + unpinnable}
        self.assertEqual(got, expected)
        self.assertGreater(len(got), 50)
        for p in pinnable:
            self.assertIsNotNone(costmodel.pinnable(p))

    def test_the_accuracy_bound_judges_the_interval_s_upper_end_as_the_device_does(self):
        point_only = {"top1": 0.765}
        with_interval = {"top1": 0.765, "drop_pp": {"point": 0.5, "low95": -0.6, "high95": 1.6}}
        self.assertAlmostEqual(costmodel.accuracy_drop_pp(point_only, 0.77), 0.5)
        self.assertAlmostEqual(costmodel.accuracy_drop_pp(with_interval, 0.77), 1.6)
        profile = {"fp32_top1": 0.77, "cuts": [
            {"id": 5, "name": "a", "head": {"median_ms": 1.0}, "tail": {"median_ms": 1.0},
             "encodings": [dict(with_interval, name="ecsq1", format="entropy", bytes_mean=900,
                                pack={"median_ms": 0.1}, unpack={"median_ms": 0.1}),
                           dict(point_only, name="q8", format="quantized", bits=8,
                                bytes_mean=4000, pack={"median_ms": 0.1},
                                unpack={"median_ms": 0.1})]},
            {"id": 9, "name": "out", "head": {"median_ms": 2.0}, "tail": {"median_ms": 0.0}}]}
        pinnable, unpinnable = interleave.feasible_plans(profile, bench.ACCURACY_BOUND)
        self.assertEqual({interleave.plan_name(p) for p in pinnable + unpinnable},
                         {"5:q8", "9:local"})

    def test_best_fixed_is_the_fastest_fixed_contender_within_the_accuracy_bound(self):
        def metrics(p50, drop, where):
            return {"frames": 10, "failed": 0, "latency_p50_ms": p50, "completed": {where: 10},
                    "profile_accuracy_drop_pp_max": drop}
        entry = {"contenders": {"device-only": metrics(100.0, 0.0, "local"),
                                "server-jpeg90": metrics(50.0, 2.4, "server"),
                                "edgesplit-latency": metrics(80.0, 0.9, "server")},
                 "per_round": {"device-only": {"latency_p50_ms": [100.0, 104.0, 98.0]},
                               "server-jpeg90": {"latency_p50_ms": [50.0, 52.0, 49.0]},
                               "edgesplit-latency": {"latency_p50_ms": [80.0, 82.0, 79.0]}}}
        iv = bench.ratio_intervals(entry)
        self.assertEqual(entry["best_fixed"], "device-only")
        self.assertAlmostEqual(iv["edgesplit-latency/best-fixed"]["point"], 0.8, places=2)
        entry["contenders"]["server-jpeg90"]["profile_accuracy_drop_pp_max"] = 0.3
        bench.ratio_intervals(entry)
        self.assertEqual(entry["best_fixed"], "server-jpeg90")

    def test_an_ab_variant_is_paired_with_edgesplit_round_by_round(self):
        es = {"frames": 10, "failed": 0, "latency_p50_ms": 80.0, "completed": {"server": 10}}
        entry = {"contenders": {"edgesplit-latency": es,
                                "edgesplit-latency+no-explore": dict(es, latency_p50_ms=88.0)},
                 "per_round": {"edgesplit-latency": {"latency_p50_ms": [80.0, 100.0, 60.0]},
                               "edgesplit-latency+no-explore": {
                                   "latency_p50_ms": [88.0, 110.0, 66.0]}}}
        iv = bench.ratio_intervals(entry)["edgesplit-latency+no-explore/edgesplit-latency"]
        # the rounds drift by 40% both ways, the ratio does not
        self.assertAlmostEqual(iv["point"], 1.1, places=6)
        self.assertAlmostEqual(iv["lo"], 1.1, places=6)
        self.assertAlmostEqual(iv["hi"], 1.1, places=6)

    def test_an_ab_variant_may_run_another_build_of_the_device(self):
        class Args:
            bin_dir = "/opt/new/bin"
            model, images, engine, meta, profile = "m.pt", "imgs", "optimized", "", ""
            accuracy_confidence = 0.95
        argv = bench.device_argv(Args, ["--objective", "latency", "--bin-dir", "/opt/old/bin"])
        self.assertEqual(argv[0], "/opt/old/bin/edgesplit-device")
        self.assertNotIn("--bin-dir", argv)
        self.assertEqual(argv[-2:], ["--objective", "latency"])
        self.assertEqual(bench.device_argv(Args, ["--objective", "latency"])[0],
                         "/opt/new/bin/edgesplit-device")
        with self.assertRaises(ValueError):
            bench.split_bin_dir(["--bin-dir"], "/opt/new/bin")

    def test_a_trace_alone_takes_its_duration_per_contender_and_ab_variant(self):
        class Args:
            frames, round_frames, warmup, settle = 20, 5, 1, 1
            oracle, oracle_k = "screened", 0
            trace_contenders = ["device-only"]
            ab_variants = [("before", ["--bin-dir", "/opt/old/bin"])]
        trace = {"name": "step-down-2", "duration": 25.0, "steps": []}
        # No fixed scenario (--scenarios none): no screening, no rounds; edgesplit-latency, the
        # trace contender and the variant each replay the trace, K times slower.
        self.assertAlmostEqual(bench.estimate_s(None, [], [trace], [10.0], [2.0], Args),
                               25.0 * 2 * 3)

    def test_screening_keeps_the_best_measured(self):
        keep = interleave.screen_keep({"a": 30.0, "b": 10.0, "c": None, "d": 20.0, "e": 50.0}, 3)
        self.assertEqual(keep, ["b", "d", "a"])
        self.assertEqual(interleave.screen_keep({"c": None}, 3), [])


def measured(p50, p95, server_ms, drop=0.0, local=0):
    """A contender's metrics as bench.metrics() gives them (only what the oracle reads)."""
    return {"frames": 30, "frames_total": 33, "rc": 0, "latency_p50_ms": p50,
            "latency_p95_ms": p95, "server_ms_per_frame": server_ms, "failed": 0,
            "completed": {"server": 30 - local, "local": local},
            "profile_accuracy_drop_pp_max": drop}


class OracleAndCost(unittest.TestCase):
    def entry(self):
        return {"contenders": {"device-only": measured(80, 85, 0),
                               "server-jpeg90": measured(50, 60, 16, drop=0.3),
                               "fixed-q8": measured(70, 90, 7)},
                "oracle_candidates": {"oracle:21:q3": measured(65, 75, 8),
                                      "oracle:0:q2": measured(40, 45, 16, drop=3.0)}}

    def test_the_jpeg_upload_is_an_oracle_plan(self):
        e = self.entry()
        bench.finish_oracle(e)
        self.assertEqual(e["oracle"]["plan"], "server-jpeg90")  # oracle:0:q2 loses 3 points
        self.assertIn("server-jpeg90", e["oracle"]["candidates_tried"])

    def test_cost_target_only_where_a_measured_plan_can_meet_it(self):
        e = self.entry()
        self.assertIs(bench.cost_feasible(e, 16.0, 80.0), True)  # oracle:21:q3: 8 ms, p95 75
        self.assertEqual(bench.cost_feasible(e, 16.0, 70.0), ("oracle:21:q3", 8, 75))
        self.assertIsNone(bench.cost_feasible(e, 12.0, 200.0))  # nothing sends 6 ms or less
        e["oracle_candidates"]["oracle:21:q3"]["completed"]["local"] = 3  # fell back: not itself
        self.assertEqual(bench.cost_feasible(e, 16.0, 80.0), ("fixed-q8", 7, 90))


class ServerLoadTraces(unittest.TestCase):
    """Traces that load the server (`load=N`): how they parse, and the recovery target after a
    load change, judged against the fastest fixed contender in the same window of the trace."""

    def write(self, text):
        import tempfile
        f = tempfile.NamedTemporaryFile("w", suffix=".scn", delete=False)
        f.write(text)
        f.close()
        self.addCleanup(os.remove, f.name)
        return f.name

    def test_load_steps_parse_and_carry_through_dilation(self):
        sc = bench.parse_scenario(os.path.join(ROOT, "bench", "scenarios", "server-load.scn"))
        self.assertEqual(sc["kind"], "trace")
        self.assertEqual([st["load"] for st in sc["steps"]], [0, 16, 0])
        self.assertEqual([st["rate"] for st in sc["steps"]], [50, 50, 50])  # carried over
        self.assertEqual(interleave.dilate_step(sc["steps"][1], 10)["load"], 16)
        self.assertEqual(bench.parse_scenario(os.path.join(
            ROOT, "bench", "scenarios", "step-down.scn"))["steps"][1]["load"], 0)

    def test_a_loaded_trace_runs_device_only_among_its_fixed_contenders(self):
        import types
        loaded = bench.parse_scenario(os.path.join(ROOT, "bench", "scenarios", "server-load.scn"))
        link = bench.parse_scenario(os.path.join(ROOT, "bench", "scenarios", "step-down.scn"))
        args = types.SimpleNamespace(trace_contenders=["server-jpeg90"])
        self.assertEqual(bench.trace_fixed(args, loaded), ["server-jpeg90", "device-only"])
        self.assertEqual(bench.trace_fixed(args, link), ["server-jpeg90"])
        args.trace_contenders = ["device-only", "server-jpeg90"]
        self.assertEqual(bench.trace_fixed(args, loaded), ["device-only", "server-jpeg90"])
        args.trace_contenders = []  # none asked for: none added
        self.assertEqual(bench.trace_fixed(args, loaded), [])

    def test_bad_loads_are_refused_with_the_line(self):
        for bad in ("load=1.5", "load=-2", "load=x"):
            path = self.write("duration 5\n0 rate=5 rtt=10\n2 %s\n" % bad)
            with self.assertRaises(SystemExit) as e:
                bench.parse_scenario(path)
            self.assertIn(":3: expected", str(e.exception))
        with self.assertRaises(SystemExit) as e:
            bench.parse_scenario(self.write("0 rate=5 rtt=10 load=4\n"))
        self.assertIn("fixed scenario", str(e.exception))

    def test_load_processes_start_ahead_and_stop_at_their_steps(self):
        steps = [{"t": 0, "load": 16}, {"t": 8, "load": 0}, {"t": 16, "load": 16},
                 {"t": 17, "load": 8}, {"t": 20, "rate": 5, "load": 8}, {"t": 24, "load": 0}]
        self.assertEqual(bench.load_events(steps, 3.0), [
            (8, "stop", 1),    # the first load (started before the run) ends at 8 s
            (13.0, "start", 2),  # set up 3 s ahead of 16 s
            (14.0, "start", 3),  # 16 -> 8 devices at 17 s: the 8 set up ahead,
            (17, "stop", 3),     # the 16 stop then
            (24, "stop", 5)])    # (20 s changes the link only)

    @staticmethod
    def run_of(windows, changes=(10.0, 20.0), completed=None):
        """A trace contender: frames every 0.1 s over 30 s, latency per window (a function of
        the time from the window's start, or a number)."""
        bounds = [0.0] + list(changes) + [30.0]
        timeline = []
        for i in range(300):
            start = i * 0.1
            w = max(k for k in range(len(windows)) if start >= bounds[k])
            lat = windows[w](start - bounds[w]) if callable(windows[w]) else windows[w]
            timeline.append({"t": start + lat / 1000.0, "frame": i, "latency_ms": lat,
                             "plan": "x", "completed": completed or "server"})
        return {"frames": len(timeline), "timeline": timeline,
                "changes": [{"t": t, "rate": 50, "rtt": 10, "loss": 0,
                             "load": 16 if k == 0 else 0} for k, t in enumerate(changes)]}

    def test_recovery_after_a_load_change_is_against_the_window_s_best_fixed_contender(self):
        steps = [{"t": 0, "rate": 50, "rtt": 10, "loss": 0, "load": 0},
                 {"t": 10, "rate": 50, "rtt": 10, "loss": 0, "load": 16},
                 {"t": 20, "rate": 50, "rtt": 10, "loss": 0, "load": 0}]
        e = {"scenario": "server-load", "kind": "trace", "slowdown": 4, "dilation": 1.0,
             "steps": steps, "duration_s": 30.0, "contenders": {
                 "server-jpeg90": self.run_of([24, 80, 24]),
                 "device-only": self.run_of([40, 40, 40], completed="local"),
                 # on the device 0.5 s after the load began; back 3 s after it ended
                 "edgesplit-latency": self.run_of(
                     [24, lambda dt: 80 if dt < 0.5 else 41, lambda dt: 41 if dt < 3 else 24])}}
        rows = bench.targets({"runs": [e]}, None)["trace_recovery"]
        self.assertEqual(len(rows), 2)
        on, off = rows
        self.assertEqual((on["reference"], on["oracle_p50_ms"]), ("device-only", 40))
        # The first frame whose 5 (itself and the next 4, 0.1 s apart) have a median within 10%:
        # two frames before the change of plan.
        self.assertAlmostEqual(on["recovery_s"], 0.3, places=6)
        self.assertTrue(on["met"])
        self.assertEqual((off["reference"], off["oracle_p50_ms"]), ("server-jpeg90", 24))
        self.assertAlmostEqual(off["recovery_s"], 2.8, places=6)
        self.assertFalse(off["met"])
        table = "\n".join(bench.window_table(e))
        self.assertIn("| 20.0-30.0 s | 0 | edgesplit-latency | 100 | 24.0 | 0% | 2.80 s "
                      "(server-jpeg90, 24.0 ms) |", table)


class Resume(unittest.TestCase):
    """A long sweep run in pieces (--resume DIR): which conditions a results folder holds, the
    command line the next piece parses, and its estimate without the finished conditions."""

    def test_finished_conditions_are_the_runs_entries(self):
        results = {"runs": [{"kind": "fixed", "slowdown": 4, "dilation": 1, "scenario": "bw5"},
                            {"kind": "trace", "slowdown": 10.0, "scenario": "outage"}]}
        self.assertEqual(bench.done_conditions(results),
                         {("fixed", 4.0, 1.0, "bw5"), ("trace", 10.0, 1.0, "outage")})
        self.assertEqual(bench.done_conditions({"runs": []}), set())

    def test_the_stored_flags_run_again_with_only_lock_bin_dir_and_check_from_the_new_call(self):
        ap = bench.parser()
        stored = ["--full", "--dilation", "1", "--lock", "/tmp/a.lock", "--out", "/tmp/old",
                  "--ab", "x=--explore-within 0"]
        args = bench.resumed_args(ap, stored, ["--resume", "/r", "--lock=/tmp/b.lock", "--check"])
        self.assertEqual(vars(args), dict(
            vars(ap.parse_args(stored)), lock="/tmp/b.lock", check=True, out="/r", resume="/r"))
        self.assertTrue(args.full)
        self.assertEqual(args.ab, ["x=--explore-within 0"])
        # Nothing new given: the stored run's own --lock stays.
        args = bench.resumed_args(ap, stored, ["--resume", "/r"])
        self.assertEqual(vars(args), dict(vars(ap.parse_args(stored)), out="/r", resume="/r"))
        self.assertEqual(args.lock, "/tmp/a.lock")
        for changes_what_is_measured in (["--frames", "20"], ["--quick"], ["--full"],
                                         ["--out", "/elsewhere"]):
            with self.assertRaises(ValueError) as e:
                bench.resumed_args(ap, stored, ["--resume", "/r"] + changes_what_is_measured)
            self.assertIn("(not %s)" % changes_what_is_measured[0], str(e.exception))

    def test_the_estimate_leaves_out_finished_conditions(self):
        class Args:
            frames, round_frames, warmup, settle = 20, 5, 1, 1
            oracle, oracle_k = "screened", 0
            trace_contenders = ["device-only"]
            ab_variants = []
        a = {"name": "a", "duration": 25.0, "steps": []}
        b = {"name": "b", "duration": 40.0, "steps": []}
        whole = bench.estimate_s(None, [], [a, b], [4.0, 10.0], [1.0], Args)
        self.assertAlmostEqual(whole, (25.0 + 40.0) * 2 * 2)
        left = bench.estimate_s(None, [], [a, b], [4.0, 10.0], [1.0], Args,
                                {bench.condition_key("trace", 4, 1, "b"),
                                 bench.condition_key("trace", 10, 1, "a")})
        self.assertAlmostEqual(left, (25.0 + 40.0) * 2)



class ScreeningEstimate(unittest.TestCase):
    """The run time printed up front: the oracle's screening, as screen() runs it."""

    def test_the_screening_estimate_cuts_pruned_plans_at_the_limit(self):
        with open(PROFILE) as f:
            profile = json.load(f)
        sc = {"name": "slow", "steps": [{"t": 0.0, "rate": 1.0, "rtt": 100.0, "loss": 0.0}]}

        class Args:
            screen_frames, screen_rounds, max_turn_s = 2, 2, 60.0
            screen_prune = float("inf")  # nothing pruned: every plan takes every round
        ranked = costmodel.ranked(profile, 1.0, 100.0, 4.0,
                                  max_accuracy_drop=bench.ACCURACY_BOUND)
        load = bench.start_s(1.0, 100.0, len(ranked))
        every_round = sum(2 * 3 * p["predicted"]["latency_ms"] / 1000.0 for p in ranked)
        self.assertAlmostEqual(bench.screen_estimate_s(profile, [(4.0, 1.0, sc)], Args),
                               load + every_round)
        # Pruning at 3x the best: a plan beyond it costs at most the limit's turn, and reloads
        # for a next condition only.
        Args.screen_prune = 3.0
        one = bench.screen_estimate_s(profile, [(4.0, 1.0, sc)], Args)
        self.assertLess(one, load + every_round)
        pruned = sum(p["predicted"]["latency_ms"] > 3 * ranked[0]["predicted"]["latency_ms"]
                     for p in ranked)
        self.assertGreater(pruned, 0)
        two = bench.screen_estimate_s(profile, [(4.0, 1.0, sc), (4.0, 1.0, sc)], Args)
        self.assertAlmostEqual(two - load, 2 * (one - load) + pruned * bench.START_S / 2)
        self.assertEqual(bench.screen_estimate_s(profile, [], Args), 0.0)

    def test_a_screening_kept_from_an_earlier_piece_is_not_estimated_again(self):
        with open(PROFILE) as f:
            profile = json.load(f)
        sc = {"name": "slow", "steps": [{"t": 0.0, "rate": 1.0, "rtt": 100.0, "loss": 0.0}]}

        class Args:
            frames, round_frames, warmup, settle = 20, 5, 1, 1
            screen_frames, screen_rounds, screen_prune, max_turn_s = 2, 2, 3.0, 60.0
            oracle, oracle_k, oracle_keep = "screened", 0, 3
            contenders, trace_contenders, ab_variants = ["device-only"], [], []
        whole = bench.estimate_s(profile, [sc], [], [4.0], [1.0], Args)
        kept = bench.estimate_s(profile, [sc], [], [4.0], [1.0], Args, set(),
                                {bench.screening_key(4.0, 1.0, "slow")})
        self.assertAlmostEqual(whole - kept,
                               bench.screen_estimate_s(profile, [(4.0, 1.0, sc)], Args))
        self.assertEqual(bench.screening_key(4.0, 1.0, "slow"), "4x/K1/slow")


if __name__ == "__main__":
    unittest.main(verbosity=2)
