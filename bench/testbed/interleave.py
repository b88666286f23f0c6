"""The testbed's measurement plan, without processes: interleaved rounds (which contender runs which
frames when), paired bootstrap intervals of ratios over rounds, time dilation (Gupta et al., "To
Infinity and Beyond: Time-Warped Network Emulation", NSDI'06) and the oracle's candidate set (every
feasible profiled plan). bench.py runs what these functions decide; tests/bench checks them.
Standard library only.
"""

import random
import statistics

import costmodel

# ---------------------------------------------------------------------------------------------
# Rounds


def schedule(names, rounds, frames, settle):
    """The turns of `rounds` interleaved rounds: per round, every contender once, the order
    rotating by one place each round (contender i opens round i mod n), so no contender always
    follows the same one or always runs first. A turn is a dict: round, name, and the frame
    numbers of that contender's own stream it starts (`first` .. `first + settle + frames - 1`);
    the first `settle` of them are not measured. Every contender starts the same frame numbers in
    the same round, and each device process reads the same images in the same order, so every
    contender sees the same images in every round."""
    if rounds < 1 or frames < 1 or settle < 0 or not names:
        raise ValueError("schedule needs contenders, rounds >= 1, frames >= 1 and settle >= 0")
    per_turn = settle + frames
    n = len(names)
    out = []
    for r in range(rounds):
        for i in range(n):
            out.append({"round": r, "name": names[(r + i) % n], "first": r * per_turn,
                        "settle": settle, "frames": frames})
    return out


def image_of(frame, n_images):
    """The image (index in the sorted folder) a device reading the folder in a loop takes for its
    frame number `frame`."""
    return frame % n_images


def measured_frames(turn):
    """The frame numbers of a turn that are measured (after its settle frames)."""
    start = turn["first"] + turn["settle"]
    return list(range(start, start + turn["frames"]))


# ---------------------------------------------------------------------------------------------
# Intervals


def paired_ratio(num, den, resamples=2000, seed=1, level=0.95):
    """The ratio of two contenders measured in the same rounds: `num[r]` and `den[r]` are their
    values in round r (None where a contender has no value in that round). Point: the median of
    the per-round ratios; interval: the percentile bootstrap of that median over rounds (rounds
    drawn with replacement, a fixed seed, so a result can be recomputed). Returns dict(point, lo,
    hi, rounds) or None when fewer than 2 rounds have both values."""
    ratios = [a / b for a, b in zip(num, den) if a is not None and b is not None and b > 0]
    n = len(ratios)
    if n < 2:
        return None
    rng = random.Random(seed)
    boots = sorted(statistics.median(rng.choice(ratios) for _ in range(n))
                   for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    lo = boots[int(tail * resamples)]
    hi = boots[min(resamples - 1, int((1.0 - tail) * resamples))]
    return {"point": statistics.median(ratios), "lo": lo, "hi": hi, "rounds": n}


def supports_at_most(interval, bound):
    """A target "ratio <= bound" is met when the whole 95% interval lies at or below it."""
    return interval is not None and interval["hi"] <= bound


def supports_at_least(interval, bound):
    """A target "ratio >= bound" is met when the whole 95% interval lies at or above it."""
    return interval is not None and interval["lo"] >= bound


def per_round(values_by_round, rounds):
    """A list indexed by round from {round: value}, None where a round has no value."""
    return [values_by_round.get(r) for r in range(rounds)]


# ---------------------------------------------------------------------------------------------
# Time dilation: the emulated network runs K times slower, so that compute on this machine,
# K times slower than on the target hardware, keeps its ratio to the network.

# Fields of a run's metrics that are durations (divided by K) or rates (multiplied by K).
DURATION_KEYS = ("latency_p50_ms", "latency_p95_ms", "latency_mean_ms", "device_cpu_ms_per_frame",
                 "server_ms_per_frame", "server_compute_p50_ms", "rtt_est_p50_ms", "slo_ms")
RATE_KEYS = ("fps", "bandwidth_est_p50_mbps")


def dilate_step(step, k):
    """A link change as the testbed applies it under dilation K: rate / K, round trip x K, time
    of the change x K; loss unchanged."""
    return dict(step, rate=step["rate"] / k, rtt=step["rtt"] * k, t=step["t"] * k)


def dilate_duration_s(seconds, k):
    return seconds * k


def undilate_ms(ms, k):
    """A measured duration in the target system's time (measured / K)."""
    return None if ms is None else ms / k


def undilate_metrics(m, k):
    """A run's metrics in the target system's time: durations / K, rates x K (bytes, accuracy
    and counts unchanged); says the dilation."""
    out = dict(m, dilation=k)
    for key in DURATION_KEYS:
        if out.get(key) is not None:
            out[key] = out[key] / k
    for key in RATE_KEYS:
        if out.get(key) is not None:
            out[key] = out[key] * k
    return out


def dilation_for(measured_tail_ms, target_tail_ms):
    """K for a target deployment: this server's measured tail time over the target server's
    (each the same network, the same input)."""
    if not (measured_tail_ms > 0 and target_tail_ms > 0):
        raise ValueError("tail times must be positive")
    return measured_tail_ms / target_tail_ms


# ---------------------------------------------------------------------------------------------
# The oracle's candidates


def feasible_plans(profile, max_accuracy_drop):
    """Every profiled plan (cut, encoding; device-only included) whose profile loss is within the
    bound, as the device judges it by default (costmodel.accuracy_drop_pp: the upper end of the
    profile's paired 95% interval, or the point estimate where the profile has no interval).
    Returns (pinnable, unpinnable): plans the device can be told on its command line, and those it
    cannot (a calibrated range), which the oracle cannot run."""
    pinnable, unpinnable = [], []
    for p in costmodel.plans(profile):
        if p["accuracy_drop_pp"] > max_accuracy_drop + 1e-9:
            continue
        (pinnable if costmodel.pinnable(p) is not None else unpinnable).append(p)
    return pinnable, unpinnable


def plan_name(p):
    return "%s:%s" % (p["cut"], p["encoding"])


def screen_keep(screened, keep):
    """After the screening rounds: the names to measure properly, the `keep` best by their
    screened median latency. `screened` maps name -> median latency (None: pruned or failed)."""
    valid = sorted((v, n) for n, v in screened.items() if v is not None)
    return [n for _, n in valid[:keep]]
