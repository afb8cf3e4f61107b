import random

import pytest

from edge_c2i.api import make_report
from edge_c2i.config import Reduction
from edge_c2i.errors import EdgeC2IError
from edge_c2i.evaluate import Result
from edge_c2i.search import SearchResult, Trial
from edge_c2i.tasks import Example, Splits
from edge_c2i.verdict import (
    correct,
    difference_ci,
    min_net_wins,
    paired_counts,
    paired_difference,
    sign_test_p,
    verdict,
)


def choice_result(right: list[bool]) -> Result:
    """A two-choice result, gold 0, right where ``right`` says."""
    lps = [[0.0, -1.0] if r else [-1.0, 0.0] for r in right]
    return Result(sum(right) / len(right), 1.0, lps, [0] * len(right), None, len(right), None)


def test_sign_test_and_its_floor():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == pytest.approx(1 / 32)
    assert sign_test_p(6, 1) == pytest.approx(8 / 128)  # net 5 with one loss: not at 0.05
    assert sign_test_p(10, 5) == pytest.approx(0.1509, abs=1e-4)
    assert sign_test_p(2000, 1900) < 0.06  # large counts stay exact (no float overflow)
    assert [min_net_wins(a) for a in (0.5, 0.05, 0.01)] == [1, 5, 7]


def test_per_example_correctness_and_pairing():
    base, other = choice_result([True, True, False, False]), choice_result([True, False, True, True])
    assert correct(base) == [True, True, False, False]
    assert paired_counts(base, other) == (2, 1)
    open_res = Result(0.5, 1.0, None, None, [True, False], 2)
    assert correct(open_res) == [True, False]
    with pytest.raises(EdgeC2IError):
        paired_counts(base, open_res)


def test_difference_ci_contains_the_estimate_and_covers():
    lo, hi = difference_ci(10, 4, 100)
    assert lo < 0.06 < hi and hi - lo < 0.2
    assert difference_ci(0, 0, 100)[0] == pytest.approx(-difference_ci(0, 0, 100)[1])
    # coverage of the paired difference (wins 10%, losses 5%) at n = 50, seeded
    rng, n, covered = random.Random(0), 50, 0
    for _ in range(2000):
        u = [rng.random() for _ in range(n)]
        lo, hi = difference_ci(sum(x < 0.10 for x in u), sum(0.10 <= x < 0.15 for x in u), n)
        covered += lo <= 0.05 <= hi
    assert covered / 2000 > 0.93


def test_verdict_says_worse_and_warns_on_a_small_test_split():
    # the case of issue 13, item 9: 19 test examples, 0.526 -> 0.474
    base = choice_result([True] * 10 + [False] * 9)
    adapted = choice_result([True] * 8 + [False] * 2 + [True] + [False] * 8)
    diff = paired_difference(base, adapted)
    assert (diff["wins"], diff["losses"], diff["n"]) == (1, 2, 19)
    assert diff["ci"][0] < diff["accuracy"] < 0 < diff["ci"][1]
    text = verdict(diff, 19, 0.5, adapted.accuracy, "label bias", None)
    assert text.startswith("WORSE") and "Warning: only 19 test examples" in text
    assert "calibration control" not in text


def test_verdict_gain_control_and_no_pick():
    base = choice_result([True] * 50 + [False] * 150)
    adapted = choice_result([True] * 50 + [True] * 30 + [False] * 120)
    diff = paired_difference(base, adapted)
    assert verdict(diff, 200, None, adapted.accuracy, None, None).startswith("test accuracy +0.150")
    assert "Warning" not in verdict(diff, 200, None, adapted.accuracy, None, None)
    assert "calibration control" in verdict(diff, 200, 0.45, adapted.accuracy, "label bias", None)
    small = paired_difference(base, choice_result([True] * 51 + [False] * 149))
    assert "includes no change" in verdict(small, 200, None, 0.255, None, None)
    rejected = {"net": 3, "p": 0.125, "min_net": 5}
    assert "3 examples, 5 needed" in verdict(None, 200, None, 0.25, None, rejected)
    assert verdict(None, 200, None, 0.25, None, {"net": 0}).startswith("no improvement")
    assert "Warning" not in verdict(None, 19, None, 0.25, None, None)  # nothing was measured


def test_make_report_carries_the_interval_and_the_gate():
    ex = [Example("q", "a", ("a", "b"))] * 19
    splits = Splits(ex[:4], ex[:4], ex, "c2i", {"calib": 4, "eval": 4, "test": 19})
    eval_base = choice_result([True, False, False, False])
    trial = Trial(Reduction(3, "out", 0.2), 0.75, 0.9, 0.0, 2, 0)
    found = SearchResult("c2i", eval_base, trial, [trial])
    base = choice_result([True] * 10 + [False] * 9)
    adapted = choice_result([True] * 8 + [False] * 2 + [True] + [False] * 8)
    report = make_report("m", "t", "c2i", splits, found, [Reduction(3, "out", 0.2, ranks=[1])],
                         base, adapted, None, 10, 9, {}, "first_order")
    assert report["verdict"].startswith("WORSE")
    assert report["test_difference"]["n"] == 19 and len(report["test_difference"]["ci"]) == 2
    assert report["acceptance"]["wins"] == 2 and report["acceptance"]["candidate"]["layer"] == 3
