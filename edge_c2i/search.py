"""The C2I quick scan and LASER's exhaustive search, on one shared evaluator.

Both score a configuration (matrix, rate, clusters) the same way: reduce the
matrix in place, score the evaluation sample running only the blocks from the
reduced one upward (the hidden states entering it are cached, in depth order, by
the base evaluation and by passes that stop at the deepest block needed), restore
it.  C2I screens its configurations on a quarter of the sample first (successive
halving, SearchConfig.screen); LASER scores each on all of it.
The best accuracy wins, ties go to the lower loss; the winner is accepted only
if it beats the unmodified model on the same sample by at least MIN_NET examples
(net: right where the base was wrong, minus the reverse).  Beating the base by any
margin was not enough, and a sign test on the flipped answers was too strict; both
measured by bench/bench_acceptance.py (README, "Acceptance").
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from torch import nn
from tqdm import tqdm

from .budget import cache_bytes_for, eval_batch_tokens_for, lm_head_chunk_for
from .config import (
    DEFAULT_CLUSTERS,
    DEFAULT_RATES,
    DEFAULT_TOP_K,
    Candidate,
    Reduction,
    SearchConfig,
    Trial,
)
from .errors import EdgeC2IError
from .evaluate import Result, Scorer
from .factorize import factorization, reduced
from .scan import SCORES, rank_targets, singular_value_gradients
from .svd import release_freed_memory
from .targets import LASER_RATES, Target, find_targets, weight_matrix
from .tasks import Splits, Task, load_task, split
from .verdict import min_net_wins, paired_counts, sign_test_p

__all__ = ["DEFAULT_CLUSTERS", "DEFAULT_RATES", "DEFAULT_TOP_K", "SearchResult", "Trial",
           "acceptance", "c2i_search", "gate", "laser_search", "pick", "search"]

# The acceptance margin, in examples of the evaluation sample: the smallest net gain a
# one-sided sign test at 0.05 could ever accept (verdict.min_net_wins).  Measured on the
# 100-example samples of bench/results/search_grid.json (bench_acceptance): no pick that won by
# 5 or more lost on the test split, while the full sign test on the flipped answers also
# rejected real test gains where answers flipped both ways.  The sign test's p stays in
# the report as information.
MIN_NET = min_net_wins(0.05)


@dataclass
class SearchResult:
    method: str
    base: Result  # the unmodified model on the evaluation sample
    best: Trial | None  # None: nothing beat the unmodified model by more than noise (gate)
    trials: list[Trial]
    candidates: list[Candidate] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    rankings: dict = field(default_factory=dict)  # score -> all target keys, best first
    svd_budget: int | None = None  # bytes one decomposition may use (the scan's plan)
    splits: Splits | None = None  # set by ``search``: the samples it used

    @property
    def finalists(self) -> list[Trial]:
        """The trials scored on the whole evaluation sample: those the pick is made from
        (the others were screened out on part of it)."""
        return [t for t in self.trials if t.n is None or t.n == self.base.n]

    def to_dict(self) -> dict:
        """Plain JSON (the splits left out): bench/bench_search.py saves its stages so."""
        return {"method": self.method, "base": asdict(self.base),
                "best": self.best and self.best.to_dict(),
                "trials": [t.to_dict() for t in self.trials],
                "candidates": [c.to_dict() for c in self.candidates],
                "timings": self.timings, "rankings": self.rankings,
                "svd_budget": self.svd_budget}

    @classmethod
    def from_dict(cls, d: dict) -> SearchResult:
        return cls(d["method"], Result(**d["base"]), d["best"] and Trial.from_dict(d["best"]),
                   [Trial.from_dict(t) for t in d["trials"]],
                   [Candidate.from_dict(c) for c in d["candidates"]], d["timings"],
                   d["rankings"], d.get("svd_budget"))


def search(model: nn.Module, tokenizer, task: str | Task | Splits,
           config: SearchConfig | None = None, progress: bool = True) -> SearchResult:
    """Search the reduction of ``model`` that best fits ``task``; the model is left unchanged.

    ``task`` is a task name, a loaded Task (split by ``config``'s sizes and seed; LASER uses
    its own protocol, the first 20% as validation) or Splits already made.
    ``result.best.reduction`` (None: nothing beat the base) goes to ``apply_``.
    """
    config = config or SearchConfig()
    if isinstance(task, str):
        task = load_task(task)
    splits = task if isinstance(task, Splits) else split(
        task, config.n_calib, config.n_eval, config.n_test, config.seed, config.method)
    if config.method == "laser":
        found = laser_search(model, tokenizer, splits.eval, config, progress)
    else:
        found = c2i_search(model, tokenizer, splits.calib, splits.eval, config, progress)
    found.splits = splits
    return found


def _score_grid(model: nn.Module, scorer: Scorer, grid: list[tuple[Target, int, float]],
                clustering: str, budget: int | None, cache_bytes: int, prep: dict,
                bar) -> tuple[Result, dict]:
    """The unmodified model and every (target, clusters, rate) of ``grid`` on ``scorer``'s sample.

    Returns the base Result and {(target key, clusters, rate): (applied Reduction, Result,
    seconds)}.  A trial runs the blocks from its matrix's up, on the hidden states entering
    that block: the base evaluation caches them for the lowest layers, and each later
    caching pass starts at the deepest block cached before and stops at the deepest it
    needs, holding at most ``cache_bytes`` of them (always at least one layer).  Each
    matrix (and clustering of it) is decomposed once for all its rates, within ``budget``
    bytes (svd.svd), one matrix's factors resident at a time.  ``prep`` adds up the seconds
    spent outside the trials ("base", "cache", "decompose").
    """
    by_layer: dict[int, dict[tuple[Target, int], list[float]]] = {}
    for t, c, rate in grid:
        by_layer.setdefault(t.layer, {}).setdefault((t, c), []).append(rate)
    layers = sorted(by_layer)
    per_pass = max(1, cache_bytes // max(1, scorer.hidden_bytes(model)))
    groups = [layers[i:i + per_pass] for i in range(0, len(layers), per_pass)]
    t0 = time.perf_counter()
    base = scorer.run(model, keep=groups[0] if groups else ())
    prep["base"] = prep.get("base", 0.0) + time.perf_counter() - t0
    results = {}
    for gi, group in enumerate(groups):
        if gi:
            t0 = time.perf_counter()
            scorer.drop_cache(keep=[groups[gi - 1][-1]])
            scorer.cache_inputs(model, group, start_layer=groups[gi - 1][-1])
            scorer.drop_cache(keep=group)
            prep["cache"] = prep.get("cache", 0.0) + time.perf_counter() - t0
        for layer in group:
            for (t, c), rates in by_layer[layer].items():
                W = weight_matrix(model.get_submodule(t.name))
                if c > W.shape[0]:
                    raise EdgeC2IError(f"{c} clusters for {t.key} with only {W.shape[0]} rows: "
                                       "lower clusters")
                t0 = time.perf_counter()
                fact = factorization(W, c, clustering, budget)
                prep["decompose"] = prep.get("decompose", 0.0) + time.perf_counter() - t0
                for rate in rates:
                    with reduced(model, Reduction(t.layer, t.type, rate, c, clustering),
                                 fact) as red:
                        t0 = time.perf_counter()
                        res = scorer.run(model, start_layer=layer)
                    results[(t.key, c, rate)] = Trial(
                        red, res.accuracy, res.loss, time.perf_counter() - t0,
                        *paired_counts(base, res), res.n), res
                    bar.update()
                del fact  # one matrix's factors resident at a time (the memory plan)
    scorer.drop_cache()
    return base, results


def _try_all(model: nn.Module, tokenizer, evals, targets: list[Target], rates, clusters,
             clustering: str, budget: int | None, desc: str, progress: bool,
             screen: float | None = None, batch_tokens: int = 4096,
             lm_head_chunk: int | None = None,
             cache_bytes: int = 0) -> tuple[Result, list[Trial], list[Trial], dict]:
    """Score every (target, rate, clusters) on the evaluation sample ``evals``.

    With ``screen`` (successive halving), every configuration is scored on the first
    ``screen`` share of the sample, and the best ``screen`` share of them (at least one;
    by accuracy, then loss) on the rest too.  Returns the base Result on the whole sample,
    the trials on the whole sample (those to pick from), the screened-out trials (scored
    on the screen only) and the seconds spent outside the trials.
    """
    grid = [(t, c, r) for t in targets for c in clusters for r in rates]
    kw = {"lm_head_chunk": lm_head_chunk} if lm_head_chunk else {}
    first = max(1, round(screen * len(evals))) if screen else len(evals)
    first = min(len(evals), first)
    prep: dict = {}
    keep = max(1, round(screen * len(grid))) if screen and first < len(evals) else len(grid)
    bar = tqdm(total=len(grid) + (keep if keep < len(grid) else 0), desc=desc,
               disable=not progress)
    head = Scorer(tokenizer, evals[:first], batch_tokens, **kw)
    base, screened = _score_grid(model, head, grid, clustering, budget, cache_bytes, prep, bar)
    if keep == len(grid):
        bar.close()
        return base, [t for t, _ in screened.values()], [], prep
    order = sorted(grid, key=lambda g: screened[(g[0].key, g[1], g[2])][0].key(), reverse=True)
    survivors = order[:keep]
    tail = Scorer(tokenizer, evals[first:], batch_tokens, **kw)
    tail_base, rest = _score_grid(model, tail, survivors, clustering, budget, cache_bytes,
                                  prep, bar)
    bar.close()
    whole_base = base + tail_base
    trials = []
    for t, c, r in survivors:
        key = (t.key, c, r)
        (t1, r1), (t2, r2) = screened[key], rest[key]
        res = r1 + r2
        trials.append(Trial(t1.reduction, res.accuracy, res.loss, t1.seconds + t2.seconds,
                            *paired_counts(whole_base, res), res.n))
    dropped = [screened[(t.key, c, r)][0] for t, c, r in order[keep:]]
    return whole_base, trials, dropped, prep


def gate(base: Result, best: Trial, min_net: int = MIN_NET) -> dict:
    """Whether ``best`` beats ``base`` on the evaluation sample by at least ``min_net`` examples.

    Reports the wins, losses and the one-sided sign test's p beside the decision.  A loss
    criterion was measured and dropped: on truthful_qa the picks that gained on the test
    split had raised the loss.
    """
    net = round((best.accuracy - base.accuracy) * base.n)
    p = None if best.wins is None else sign_test_p(best.wins, best.losses)
    return {"rule": f"net gain of at least {min_net} evaluation examples", "min_net": min_net,
            "net": net, "wins": best.wins, "losses": best.losses, "p": p,
            "accepted": net >= min_net}


def acceptance(base: Result, trials: list[Trial], min_net: int = MIN_NET) -> dict | None:
    """The gate's decision on the search's winner, for the report (None: no trials)."""
    if not trials:
        return None
    best = max(trials, key=Trial.key)
    return {"candidate": best.to_dict(), **gate(base, best, min_net)}


def pick(base: Result, trials: list[Trial], min_net: int = MIN_NET) -> Trial | None:
    """The best trial (accuracy, then loss) if ``gate`` accepts it; None leaves the model alone.

    Only the winner is judged: judging every trial and taking the best that passes would
    multiply the chances of passing on noise.
    """
    if not trials:
        return None
    best = max(trials, key=Trial.key)
    return best if gate(base, best, min_net)["accepted"] else None


def c2i_search(model: nn.Module, tokenizer, calib, evals, config: SearchConfig | None = None,
               progress: bool = True) -> SearchResult:
    """Scan once, then try the top-K matrices x rates x clusterings on the evaluation sample
    (successive halving with ``config.screen``).

    ``config.max_memory`` (bytes) runs the scan within that budget (budget.plan_scan), and
    the search's decompositions within the plan's budget for one.
    """
    config = config or SearchConfig()
    rates = config.rates or DEFAULT_RATES
    t0 = time.perf_counter()
    targets = find_targets(model, config.layers, config.types)
    fewest = min(weight_matrix(model.get_submodule(t.name)).shape[0] for t in targets)
    if max(config.clusters) > fewest:  # refused now, not after the scan
        raise EdgeC2IError(f"clusters {max(config.clusters)} is more than the {fewest} rows of "
                           f"the smallest candidate matrix: use 1..{fewest}")
    scans, scan_t = singular_value_gradients(model, tokenizer, calib, targets, progress,
                                             config.max_memory)
    budget = scan_t.pop("svd_budget")
    planned = scan_t["budget"]  # --max-memory, or the default the scan planned for
    release_freed_memory()  # the scan's activations: not resident under the search's
    ranked = rank_targets(scans, config.score)
    top = ranked[:config.top_k]
    t_scan = time.perf_counter() - t0

    t1 = time.perf_counter()
    base, trials, dropped, prep = _try_all(
        model, tokenizer, evals, [sc.target for sc in top], rates, config.clusters,
        config.clustering, budget, "c2i search", progress, config.screen,
        eval_batch_tokens_for(config.max_memory), lm_head_chunk_for(model, planned),
        cache_bytes_for(planned))
    t_search = time.perf_counter() - t1
    candidates = [Candidate(sc.target.layer, sc.target.type, sc.benefit(config.score),
                            sc.best_rate(config.score)) for sc in ranked]
    rankings = {name: [sc.target.key for sc in rank_targets(scans, name)] for name in SCORES}
    return SearchResult("c2i", base, pick(base, trials), trials + dropped, candidates,
                        {"scan_s": t_scan, "search_s": t_search,
                         "base_eval_s": prep.get("base", 0.0), "prep_s": prep,
                         "screened_out": len(dropped), **scan_t}, rankings, budget)


def laser_search(model: nn.Module, tokenizer, evals, config: SearchConfig | None = None,
                 progress: bool = True) -> SearchResult:
    """LASER: every (layer, type, rate), single subspace, scored on the validation split."""
    config = config or SearchConfig(method="laser")
    t0 = time.perf_counter()
    targets = find_targets(model, config.layers, config.types)
    base, trials, _, prep = _try_all(model, tokenizer, evals, targets,
                                     config.rates or LASER_RATES, (1,), "none", None,
                                     "laser search", progress, cache_bytes=cache_bytes_for(None))
    return SearchResult("laser", base, pick(base, trials), trials, [],
                        {"scan_s": 0.0, "search_s": time.perf_counter() - t0,
                         "base_eval_s": prep.get("base", 0.0), "prep_s": prep})
