#!/usr/bin/env python3
"""bench/elastic/budget.py's judging: each round's best member is the most accurate one with >= 90%
of that round's frames within the bound; the family is paired with it on those frames; a round no
member meets does not judge the family; a bound no member meets in any round is not judged; the
family must keep 90% within in the rounds that judge it. Synthetic frames, no processes."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench",
                                "elastic"))
import budget  # noqa: E402

ACCURACY = {"small": 0.80, "large": 0.86}


def frames(latencies, rights, first=0):
    """source -> frame for consecutive sources from `first`."""
    return {f"img{first + i:04d}": {"latency_ms": lat, "right": r, "member": "x"}
            for i, (lat, r) in enumerate(zip(latencies, rights))}


class Judge(unittest.TestCase):
    def setUp(self):
        # Two rounds of 100 frames. "small" takes 4 ms in both; "large" 6 ms in round 0 and 9 ms in
        # round 1 (a slow spell that hits it harder).
        self.round_of = {f"img{i:04d}": (0 if i < 100 else 1) for i in range(200)}
        self.alone = {
            "small": {**frames([4.0] * 100, [1] * 80 + [0] * 20),
                      **frames([4.0] * 100, [1] * 80 + [0] * 20, 100)},
            "large": {**frames([6.0] * 100, [1] * 90 + [0] * 10),
                      **frames([9.0] * 100, [1] * 90 + [0] * 10, 100)},
        }

    def test_each_round_has_its_own_best_member(self):
        # At 7 ms "large" meets the bound in round 0 only: the family is judged against "large"
        # there and against "small" in round 1.
        fam = {**frames([6.0] * 100, [1] * 90 + [0] * 10),
               **frames([4.0] * 100, [1] * 80 + [0] * 20, 100)}
        j = budget.judge(fam, 7.0, self.alone, ACCURACY, self.round_of, 2)
        self.assertEqual(j["best_fixed_by_round"], ["large", "small"])
        self.assertEqual(j["judged_rounds"], 2)
        self.assertEqual(j["paired_frames"], 200)
        self.assertAlmostEqual(j["diff_pp"], 0.0)
        self.assertTrue(j["pass"])
        # Pooled over both rounds "large" keeps only half its frames within: "small" is the best.
        self.assertEqual(j["pooled"]["best_fixed"], "small")

    def test_a_round_no_member_meets_does_not_judge_the_family(self):
        # At 3 ms nobody meets the bound in either round.
        fam = frames([4.0] * 200, [1] * 200)
        j = budget.judge(fam, 3.0, self.alone, ACCURACY, self.round_of, 2)
        self.assertEqual(j["best_fixed_by_round"], [None, None])
        self.assertIsNone(j["pass"])
        self.assertFalse(j["pooled"]["pass"])  # the pooled rule asks the family for 90% alone

    def test_the_family_misses_below_90_percent_within(self):
        # As accurate as "large", but 15 of round 0's frames over the bound.
        fam = {**frames([6.0] * 85 + [8.0] * 15, [1] * 90 + [0] * 10),
               **frames([4.0] * 100, [1] * 80 + [0] * 20, 100)}
        j = budget.judge(fam, 7.0, self.alone, ACCURACY, self.round_of, 2)
        self.assertAlmostEqual(j["family_within_judged"], 185 / 200)
        self.assertTrue(j["pass"])
        fam_worse = {**frames([6.0] * 70 + [8.0] * 30, [1] * 90 + [0] * 10),
                     **frames([4.0] * 95 + [8.0] * 5, [1] * 80 + [0] * 20, 100)}
        j = budget.judge(fam_worse, 7.0, self.alone, ACCURACY, self.round_of, 2)
        self.assertAlmostEqual(j["family_within_judged"], 165 / 200)
        self.assertFalse(j["pass"])

    def test_the_family_misses_when_less_accurate_by_interval(self):
        # Within the bound on every frame, but 10 points less accurate than "large" in round 0
        # and than "small" in round 1.
        fam = {**frames([6.0] * 100, [1] * 80 + [0] * 20),
               **frames([4.0] * 100, [1] * 70 + [0] * 30, 100)}
        j = budget.judge(fam, 7.0, self.alone, ACCURACY, self.round_of, 2)
        self.assertAlmostEqual(j["diff_pp"], -10.0)
        self.assertLess(j["diff_interval_pp"][1], -1)
        self.assertFalse(j["pass"])


if __name__ == "__main__":
    unittest.main()
