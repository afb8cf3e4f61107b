"""How sure we are that a reduction changed accuracy, and the report's verdict.

Two models scored on the same examples are compared PAIRED: only the examples
on which they disagree carry information.  ``wins`` are the examples the
reduced model gets right and the base gets wrong, ``losses`` the reverse; the
accuracy difference is (wins - losses) / n.  The same net difference means
little when hundreds of answers flipped both ways (a reduction that flips the
answer bias of a near-chance model) and a lot when few did, which is why the
report's interval uses these counts rather than the two accuracies alone.

- ``sign_test_p``: one-sided exact sign test (McNemar's exact test) of "the
  reduction is no better than the base": under it each disagreement is a win
  with probability 1/2.  Reported beside the search's decision; the search itself
  asks for a net gain of ``min_net_wins(0.05)`` examples (search.MIN_NET: the full
  test rejected real gains, bench/bench_acceptance.py).
- ``difference_ci``: confidence interval of the paired difference, Agresti and
  Min (2005): add 1/2 to each cell of the 2x2 table, then Wald; it keeps its
  coverage for small n and for few disagreements, where plain Wald does not.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from .errors import EdgeC2IError
from .evaluate import Result

SMALL_TEST = 100  # a test split smaller than this gets a warning in the verdict
LEVEL = 0.95  # of the reported confidence interval


def correct(res: Result) -> list[bool]:
    """Per-example correctness, the same decision as ``Scorer.run`` (first maximum wins)."""
    if res.choice_logprobs is not None:
        return [max(range(len(lp)), key=lp.__getitem__) == g
                for lp, g in zip(res.choice_logprobs, res.gold)]
    if res.first_token_correct is None:
        raise EdgeC2IError("this result has no per-example scores to compare")
    return list(res.first_token_correct)


def paired_counts(base: Result, other: Result) -> tuple[int, int]:
    """(wins, losses) of ``other`` against ``base`` on the same examples."""
    a, b = correct(base), correct(other)
    if len(a) != len(b):
        raise EdgeC2IError(f"cannot pair results on {len(a)} and {len(b)} examples")
    return sum(y and not x for x, y in zip(a, b)), sum(x and not y for x, y in zip(a, b))


def sign_test_p(wins: int, losses: int) -> float:
    """P(at least ``wins`` of the wins + losses disagreements are wins | each is a coin flip)."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def min_net_wins(alpha: float) -> int:
    """The smallest net gain (in examples) the sign test can accept at ``alpha``: with no
    losses at all p = 2**-wins.  Any loss raises the bar (10 wins against 5 losses: p 0.15)."""
    return math.ceil(math.log2(1 / alpha) - 1e-12)


def difference_ci(wins: int, losses: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Confidence interval of the paired accuracy difference (Agresti-Min adjusted Wald)."""
    if n < 1:
        raise EdgeC2IError("no examples to compare")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    w, lo, m = wins + 0.5, losses + 0.5, n + 2
    d = (w - lo) / m
    se = math.sqrt(max(w + lo - (w - lo) ** 2 / m, 0.0)) / m
    return max(-1.0, d - z * se), min(1.0, d + z * se)


def paired_difference(base: Result, adapted: Result, level: float = LEVEL) -> dict:
    """Adapted minus base on the test split, with its paired confidence interval."""
    wins, losses = paired_counts(base, adapted)
    lo, hi = difference_ci(wins, losses, base.n, level)
    return {"accuracy": adapted.accuracy - base.accuracy, "wins": wins, "losses": losses,
            "n": base.n, "level": level, "ci": [lo, hi]}


def _interval(diff: dict) -> str:
    lo, hi = diff["ci"]
    return (f"{diff['accuracy']:+.3f} ({diff['level']:.0%} CI {lo:+.3f} to {hi:+.3f}; "
            f"{diff['wins']} test examples won, {diff['losses']} lost, of {diff['n']})")


def verdict(diff: dict | None, n_test: int, calibrated: float | None, adapted_acc: float,
            control: str | None, acceptance: dict | None) -> str:
    """The one sentence a report ends with.

    A change that is negative on the test split is called WORSE whatever else holds
    (a pick can win on the evaluation sample and lose on the test); a positive one is
    checked against the calibration control and said to be within noise when its
    interval holds 0.  A change measured on a test split under SMALL_TEST examples gets a
    warning: a few examples either way are then several points.
    """
    if diff is None:
        text = "no improvement on the evaluation sample: the model is left as it was"
        if acceptance and acceptance.get("net", 0) > 0:
            text = (f"no reduction beat the unmodified model on the evaluation sample by more "
                    f"than noise (best: {acceptance['net']:+d} examples, "
                    f"{acceptance['min_net']} needed): the model is left as it was")
    elif diff["wins"] < diff["losses"]:
        text = (f"WORSE than the unmodified model on the test split: accuracy {_interval(diff)}; "
                "keep the base model")
    elif diff["wins"] == diff["losses"]:
        text = f"no change of test accuracy: {_interval(diff)}"
    elif calibrated is not None and adapted_acc <= calibrated:
        bias = ("a bias per answer token (a preference for shorter or longer answers)"
                if control == "length bias" else "a per-choice bias")
        text = (f"test accuracy {_interval(diff)}, but the gain does not beat the calibration "
                f"control (the unmodified model with {bias} fitted on the evaluation sample)")
    else:
        text = f"test accuracy {_interval(diff)}"
        if diff["ci"][0] <= 0:
            text += ": the interval includes no change"
    if diff is not None and n_test < SMALL_TEST:
        text += (f". Warning: only {n_test} test examples, too few to tell a change of a few "
                 "points from noise (a larger task, or smaller --samples/--eval-samples)")
    return text
