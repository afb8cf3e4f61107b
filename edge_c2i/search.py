"""The C2I quick scan and LASER's exhaustive search, on one shared evaluator.

Both score a configuration (matrix, rate, clusters) the same way: reduce the
matrix in place, score the evaluation sample running only the blocks from the
reduced one upward (the hidden states entering it are cached), restore it.
The best accuracy wins, ties go to the lower loss; the winner is accepted only
if its gain over the unmodified model on the same sample is more than noise: a
one-sided exact sign test on the examples the two answer differently
(``gate``, ``verdict.sign_test_p``) at ACCEPT_ALPHA.  Beating the base by any
margin was not enough: in bench/results/search.json the picks that won by 2 to 4
of 100 evaluation examples gained nothing or lost up to 11 of 300 test examples,
while every pick known to win by 5 or more gained (bench/bench_acceptance.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import nn
from tqdm import tqdm

from .budget import eval_batch_tokens_for, lm_head_chunk_for
from .config import DEFAULT_CLUSTERS, DEFAULT_RATES, DEFAULT_TOP_K
from .errors import UserError
from .evaluate import Result, Scorer
from .factorize import build_module, cluster_rows, rank_for, swap
from .scan import DEFAULT_SCORE, SCORES, rank_targets, singular_value_gradients
from .targets import LASER_RATES, Target, find_targets, weight_matrix
from .verdict import correct, sign_test_p

# The acceptance test's level.  One-sided, on the search's winner, not corrected for
# the number of trials: a bar against noise, not a guarantee (the winner of 16 trials is
# favoured by its own selection).  Bonferroni over the trials (9+ net wins of 100 for 16
# trials) and 0.01 threw away real test gains in bench_acceptance; 0.05 threw away none.
ACCEPT_ALPHA = 0.05


@dataclass
class Trial:
    layer: int
    type: str
    rate: float
    clusters: int
    accuracy: float
    loss: float
    seconds: float = 0.0  # wall time of this evaluation (the cached prefix included)
    wins: int | None = None  # examples it gets right that the unmodified model gets wrong
    losses: int | None = None  # and the reverse (None: not recorded, e.g. older results)

    def key(self) -> tuple[float, float]:
        return (self.accuracy, -self.loss)


@dataclass
class SearchResult:
    method: str
    base: Result
    best: Trial | None  # None: nothing beat the unmodified model by more than noise (gate)
    trials: list[Trial]
    candidates: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    rankings: dict = field(default_factory=dict)  # score -> all target keys, best first


def check_grid(rates, clusters) -> None:
    for r in rates:
        if not 0 < r <= 1:
            raise UserError(f"rate {r} out of range: rates are fractions of rank kept, in (0, 1]")
    for c in clusters:
        if c < 1:
            raise UserError(f"clusters must be >= 1, got {c}")


def _try_all(model: nn.Module, scorer: Scorer, base: Result, targets: list[Target], rates,
             clusters, clustering: str, svds: dict, desc: str, progress: bool,
             prep: dict | None = None) -> list[Trial]:
    """Score every (target, rate, clusters) against ``base``, restoring the model after each.

    ``prep`` (optional) receives the seconds spent outside the trials: caching the
    hidden states entering each layer ("layer 12") and clustering a matrix
    ("12.out/c4"), so that the cost of any sub-grid can be added up afterwards.
    """
    prep = {} if prep is None else prep
    base_ok = correct(base)
    by_layer: dict[int, list[Target]] = {}
    for t in targets:
        by_layer.setdefault(t.layer, []).append(t)
    trials = []
    bar = tqdm(total=len(targets) * len(rates) * len(clusters), desc=desc, disable=not progress)
    for layer in sorted(by_layer):
        t0 = time.perf_counter()
        scorer.cache_inputs(model, [layer])
        prep[f"layer {layer}"] = time.perf_counter() - t0
        for t in by_layer[layer]:
            original = model.get_submodule(t.name)
            W = weight_matrix(original).detach().float()
            m, n = W.shape
            for c in clusters:
                if c > m:
                    raise UserError(f"{c} clusters for {t.key} with only {m} rows: lower --clusters")
                t0 = time.perf_counter()
                groups = cluster_rows(W, c, clustering) if c > 1 else None
                group_svds = _group_svds(W, groups) if groups else None
                prep[f"{t.key}/c{c}"] = time.perf_counter() - t0
                for rate in rates:
                    rank_for(rate, m, n)  # validates the rate
                    new = build_module(original, rate, c, clustering, svds.get(t.key), groups, group_svds)
                    swap(model, t.name, new)
                    t0 = time.perf_counter()
                    try:
                        res = scorer.run(model, start_layer=layer)
                    finally:
                        swap(model, t.name, original)
                    ok = correct(res)
                    trials.append(Trial(t.layer, t.type, rate, c, res.accuracy, res.loss,
                                        time.perf_counter() - t0,
                                        sum(y and not x for x, y in zip(base_ok, ok)),
                                        sum(x and not y for x, y in zip(base_ok, ok))))
                    bar.update()
        scorer.drop_cache()
    bar.close()
    return trials


def _group_svds(W, groups):
    from .scan import decompose

    return [decompose(W[idx]) for idx in groups]


def gate(base: Result, best: Trial, alpha: float = ACCEPT_ALPHA) -> dict:
    """Whether ``best``'s gain over ``base`` on the evaluation sample is more than noise.

    The one-sided exact sign test on its wins and losses (module doc).  A trial saved
    without them (older results) is judged by its net gain alone, as if it had lost no
    example: the least the test could ask for (``verdict.min_net_wins``, 5 at 0.05).
    A loss criterion was measured and dropped: on truthful_qa the picks that gained on
    the test split had raised the loss.
    """
    net = round((best.accuracy - base.accuracy) * base.n)
    wins, losses = (best.wins, best.losses) if best.wins is not None else (max(net, 0), 0)
    p = sign_test_p(wins, losses)
    return {"rule": "one-sided exact sign test on the evaluation sample", "alpha": alpha,
            "net": net, "wins": best.wins, "losses": best.losses, "p": p,
            "p_is_lower_bound": best.wins is None, "accepted": net > 0 and p <= alpha}


def acceptance(base: Result, trials: list[Trial], alpha: float = ACCEPT_ALPHA) -> dict | None:
    """The gate's decision on the search's winner, for the report (None: no trials)."""
    if not trials:
        return None
    best = max(trials, key=Trial.key)
    return {"candidate": vars(best), **gate(base, best, alpha)}


def pick(base: Result, trials: list[Trial], alpha: float = ACCEPT_ALPHA) -> Trial | None:
    """The best trial (accuracy, then loss) if ``gate`` accepts it; None leaves the model alone.

    Only the winner is tested: testing every trial and taking the best that passes would
    multiply the chances of passing on noise.
    """
    if not trials:
        return None
    best = max(trials, key=Trial.key)
    return best if gate(base, best, alpha)["accepted"] else None


def c2i_search(model: nn.Module, tokenizer, calib, evals, top_k: int = DEFAULT_TOP_K,
               rates=DEFAULT_RATES, clusters=DEFAULT_CLUSTERS, score: str = DEFAULT_SCORE,
               clustering: str = "kmeans", layers=None, types=None,
               progress: bool = True, max_memory: int | None = None) -> SearchResult:
    """Scan once, then try the top-K matrices x rates x clusterings on the evaluation sample.

    ``max_memory`` (bytes) runs the scan within that budget (budget.plan_scan).
    """
    check_grid(rates, clusters)
    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    t0 = time.perf_counter()
    targets = find_targets(model, layers, types)
    fewest = min(weight_matrix(model.get_submodule(t.name)).shape[0] for t in targets)
    if max(clusters) > fewest:  # refused now, not after the scan
        raise UserError(f"clusters {max(clusters)} is more than the {fewest} rows of the "
                        f"smallest candidate matrix: use 1..{fewest}")
    svds: dict = {}
    scans, scan_t = singular_value_gradients(model, tokenizer, calib, targets, progress, svds,
                                             max_memory)
    ranked = rank_targets(scans, score)
    top = ranked[:top_k]
    keep = {sc.target.key for sc in top}
    svds = {k: v for k, v in svds.items() if k in keep}
    t_scan = time.perf_counter() - t0

    t1 = time.perf_counter()
    scorer = Scorer(tokenizer, evals, eval_batch_tokens_for(max_memory),
                    lm_head_chunk_for(model, max_memory))
    base = scorer.run(model)
    t_base = time.perf_counter() - t1
    prep: dict = {}
    trials = _try_all(model, scorer, base, [sc.target for sc in top], rates, clusters,
                      clustering, svds, "c2i search", progress, prep)
    t_search = time.perf_counter() - t1
    candidates = [{"layer": sc.target.layer, "type": sc.target.type, "score": sc.benefit(score),
                   "best_rate": sc.best_rate(score)} for sc in ranked]
    rankings = {name: [sc.target.key for sc in rank_targets(scans, name)] for name in SCORES}
    return SearchResult("c2i", base, pick(base, trials), trials, candidates,
                        {"scan_s": t_scan, "search_s": t_search, "base_eval_s": t_base,
                         "prep_s": prep, **scan_t}, rankings)


def laser_search(model: nn.Module, tokenizer, evals, rates=LASER_RATES, layers=None, types=None,
                 progress: bool = True) -> SearchResult:
    """LASER: every (layer, type, rate), single subspace, scored on the validation split."""
    check_grid(rates, (1,))
    t0 = time.perf_counter()
    targets = find_targets(model, layers, types)
    scorer = Scorer(tokenizer, evals)
    base = scorer.run(model)
    t_base = time.perf_counter() - t0
    prep: dict = {}
    trials = _try_all(model, scorer, base, targets, rates, (1,), "none", {}, "laser search",
                      progress, prep)
    return SearchResult("laser", base, pick(base, trials), trials, [],
                        {"scan_s": 0.0, "search_s": time.perf_counter() - t0,
                         "base_eval_s": t_base, "prep_s": prep})
