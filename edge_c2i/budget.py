"""A memory budget for scan and adapt (``--max-memory``): estimate, plan, refuse early.

What must be resident while the scan runs its forward+backward pass:

    runtime      Python + torch + transformers + tokenizers (RUNTIME_BYTES, measured)
    weights      the model's parameters and buffers
    activations  what autograd keeps for one batch: ``batch_tokens`` x layers x a
                 per-token figure from the config (``activation_bytes_per_token``)
    lm head      one chunk of logits over the vocabulary (LM_HEAD_CHUNK positions, fewer
                 under a budget: at most 2.5% of it; recomputed in backward, so only
                 one chunk lives at a time)
    factors      the p x p sum M (scan.py) of each matrix scanned in one pass (one
                 group of layers)
    svd          the workspace of one decomposition (svd.workspace_bytes)

``plan_scan`` fits these under 92% of the budget (SAFETY): one pass with every factor resident
if a batch of at least the longest example still fits next to them; else a
smaller batch and groups of consecutive layers whose factors fit what is left,
one forward+backward per group (blocks below the group run without autograd).  The
gradients are the same as one unbudgeted pass: only how the sums are split over batches
and passes changes.  When even one example and one layer
cannot fit, ``plan_scan`` raises a EdgeC2IError with the estimated need before any
heavy work.

Without --max-memory, the scan plans for ``default_budget``: the weights plus
DEFAULT_HEADROOM, or less when the machine has less available; one line on stderr
says which plan it took.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .arch import arch
from .errors import EdgeC2IError
from .evaluate import LM_HEAD_CHUNK
from .svd import format_size, workspace_bytes
from .targets import Target, weight_matrix

# RSS of a process that has imported torch, transformers and edge_c2i, before any model is
# loaded ("runtime_rss_bytes" in bench/results/memory.json), rounded up for the allocator's
# arenas.
RUNTIME_BYTES = 320 * 10**6
DEFAULT_BATCH_TOKENS = 2048  # the unbudgeted scan's batch
DEFAULT_EVAL_BATCH_TOKENS = 4096  # scoring without autograd (evaluate.Scorer's default)
BUDGET_EVAL_BATCH_TOKENS = 512
SAFETY = 0.92  # plan within 92% of --max-memory: allocator arenas and estimate error
LM_HEAD_BYTES = 12  # per position and vocabulary entry: logits, softcapped copy, log-softmax
MIN_LM_HEAD_CHUNK = 8
# Without --max-memory the scan plans for the weights plus this (bench/bench_memory.py:
# SmolLM2 and Gemma-3 within it, at the unbudgeted time; #17)
DEFAULT_HEADROOM = 1_500_000_000
CACHE_BYTES = 512 * 2**20  # cached hidden states of the search (search._score_grid)
# RSS of a loaded tokenizer per vocabulary entry (transformers' fast tokenizers, measured:
# SmolLM2 80 MB for 49k entries, Gemma-3 357 MB for 262k; rounded up)
TOKENIZER_BYTES_PER_ENTRY = 1600


def model_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters and buffers (tied weights counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def activation_bytes_per_token(config, max_len: int) -> int:
    """What autograd saves per token over all layers (float32), a deliberate over-estimate.

    Per layer: the residual stream and its norms (8 h), q/k/v/attention outputs
    (4 hq + 4 hkv), the MLP's gate/up/activation/product and its input to the down
    projection (6 i), and the attention probabilities of one token (2 heads x length).
    """
    a = arch(config)
    per_layer = (8 * a.hidden_size + 4 * (a.num_heads + a.num_kv_heads) * a.head_dim
                 + 6 * a.intermediate_size + 2 * a.num_heads * max_len)
    return 4 * per_layer * a.num_layers


def factor_bytes(m: int, n: int) -> int:
    """What the scan holds per matrix during its pass (scan.py): the p x p sum M, float32."""
    p = min(m, n)
    return 4 * p * p


def basis_workspace_bytes(m: int, n: int) -> int:
    """scan.spectral_basis's transient, after the pass: W and its Gram matrix in float64,
    eigh's eigenvectors and workspace, Q and M in float64."""
    p = min(m, n)
    return 8 * m * n + 8 * 6 * p * p + 16 * 2**20


@dataclass
class ScanPlan:
    budget: int | None
    batch_tokens: int
    groups: list[list[Target]]  # one forward+backward pass each
    svd_budget: int | None  # bytes one decomposition may use
    estimate: dict = field(default_factory=dict)  # component -> bytes at the plan's peak
    lm_head_chunk: int = LM_HEAD_CHUNK  # answer positions per LM-head call
    default: str | None = None  # no budget was asked for: the one planned for, and why

    @property
    def passes(self) -> int:
        return len(self.groups)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {format_size(v)}" for k, v in self.estimate.items())
        within = f"{self.default}: " if self.default else ""
        return (f"{within}{self.passes} pass(es), batches of <= {self.batch_tokens} tokens; "
                f"estimated peak {format_size(sum(self.estimate.values()))} ({parts})")


def _by_layer(targets: list[Target]) -> dict[int, list[Target]]:
    layers: dict[int, list[Target]] = {}
    for t in targets:
        layers.setdefault(t.layer, []).append(t)
    return dict(sorted(layers.items()))


def available_bytes() -> int | None:
    """Memory this process could grow to: what it holds now plus the kernel's MemAvailable
    (Linux; None elsewhere)."""
    try:
        info = Path("/proc/meminfo").read_text()
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    avail = re.search(r"^MemAvailable:\s+(\d+) kB", info, re.MULTILINE)
    rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    if not avail or not rss:
        return None
    return (int(avail.group(1)) + int(rss.group(1))) * 1024


def default_budget(model: nn.Module) -> tuple[int, str]:
    """The budget a scan plans for when none is given, and why, in words.

    The model's weights plus DEFAULT_HEADROOM (runtime included), or 90% of what the
    machine has available if that is less: a 4 GB laptop or board runs the defaults.
    """
    weights = model_bytes(model)
    budget = weights + DEFAULT_HEADROOM
    why = f"weights {format_size(weights)} + {format_size(DEFAULT_HEADROOM)}"
    avail = available_bytes()
    if avail is not None and int(0.9 * avail) < budget:
        budget = int(0.9 * avail)
        why = f"90% of the {format_size(avail)} available"
    return budget, why


def _default_plan(model: nn.Module, targets: list[Target], longest: int) -> ScanPlan:
    """The plan for ``default_budget``, raised by 10% steps (within 90% of what is
    available) while the longest example does not fit or would need a second pass (which
    doubles the scan's time: truthful_qa's few-shot prompts); unbudgeted, said so, when
    nothing within the machine fits."""
    default, why = default_budget(model)
    avail = available_bytes()
    cap = max(default, int(0.9 * avail) if avail is not None else 4 * default)
    budget, plan = default, None
    while True:
        try:
            plan = plan_scan(model, targets, longest, budget)
            if plan.passes == 1:
                break
        except EdgeC2IError:
            pass
        if budget >= cap:
            break
        budget = min(cap, int(budget * 1.1))
    if plan is None:
        plan = _plan(model, targets, longest, None, exact_svd=True)
        plan.default = f"unbudgeted: the examples do not fit the machine ({why})"
        return plan
    if plan.budget > default:
        why += f", raised to {format_size(plan.budget)} for the longest example in one pass"
    plan.default = f"default budget {format_size(plan.budget)} ({why})"
    return plan


def plan_scan(model: nn.Module, targets: list[Target], longest: int,
              budget: int | None) -> ScanPlan:
    """Batch size and layer groups for a scan within ``budget`` bytes.

    ``longest`` is the token count of the longest calibration example with its
    answer (no batch can be smaller).  The exact SVD is kept when its workspace
    fits; else the chunked Gram path (same singular values, svd.py).  Without a
    budget, the plan fits ``default_budget`` when it can (``plan.default`` says why),
    raised as far as the machine allows when the longest example would otherwise need a
    second pass (the scan's time doubles: truthful_qa's few-shot prompts on SmolLM2);
    else it runs unbudgeted, as the examples ask.
    """
    if budget is None:
        return _default_plan(model, targets, longest)
    try:
        return _plan(model, targets, longest, budget, exact_svd=True)
    except EdgeC2IError:
        return _plan(model, targets, longest, budget, exact_svd=False)


def _plan(model, targets, longest, budget, exact_svd: bool) -> ScanPlan:
    shapes = {t.key: tuple(weight_matrix(model.get_submodule(t.name)).shape) for t in targets}
    per_layer = {layer: sum(factor_bytes(*shapes[t.key]) for t in ts)
                 for layer, ts in _by_layer(targets).items()}
    # plus what the scan's hooks keep until the backward: the output of every matrix
    # projected on its left side (scan._scan_group), float32
    per_token = (activation_bytes_per_token(model.config, longest)
                 + 4 * sum(m for m, n in shapes.values() if m <= n))
    vocab = model.get_output_embeddings().weight.shape[0]
    lm_chunk = lm_head_chunk_for(model, budget)
    asked = budget
    if budget is not None:
        budget = int(SAFETY * budget)
    fixed = {"runtime": RUNTIME_BYTES, "weights": model_bytes(model),
             "lm head": LM_HEAD_BYTES * lm_chunk * vocab}
    methods = ("exact",) if exact_svd else ("exact", "gram")
    svd_need = max((min(workspace_bytes(m, n, how) for how in methods)
                    for m, n in shapes.values()), default=0)
    svd_need = max(svd_need, max((basis_workspace_bytes(m, n) for m, n in shapes.values()),
                                 default=0))
    if budget is None:
        tokens = max(DEFAULT_BATCH_TOKENS, longest)
        estimate = {**fixed, "activations": tokens * per_token,
                    "factors": sum(per_layer.values()), "svd": svd_need}
        return ScanPlan(None, tokens, [list(targets)], None, estimate, lm_chunk)

    free = budget - sum(fixed.values()) - svd_need
    biggest_layer = max(per_layer.values(), default=0)
    least = {**fixed, "activations": longest * per_token, "factors": biggest_layer,
             "svd": svd_need}
    if free - longest * per_token - biggest_layer < 0:
        need = sum(least.values())
        parts = ", ".join(f"{k} {format_size(v)}" for k, v in least.items())
        raise EdgeC2IError(f"the scan needs at least ~{format_size(need / SAFETY)} ({parts}, "
                           f"and {1 - SAFETY:.0%} headroom); --max-memory is "
                           f"{format_size(asked)}: raise it")
    # one pass when every factor fits next to a batch of at least the longest example.
    # Else passes cost most (each one runs the whole sample): group the layers with the
    # smallest batch (the longest example), then grow the batch into what the largest
    # group leaves free.
    one_pass = (free - sum(per_layer.values())) // per_token
    if one_pass >= longest:
        tokens = int(min(DEFAULT_BATCH_TOKENS, one_pass))
        groups = [list(targets)]
    else:
        groups = _group_layers(targets, per_layer, free - longest * per_token)
        largest = max(sum(per_layer[layer] for layer in {t.layer for t in g}) for g in groups)
        tokens = int(min(DEFAULT_BATCH_TOKENS, max(longest, (free - largest) // per_token)))
    largest_group = max((sum(factor_bytes(*shapes[t.key]) for t in g) for g in groups), default=0)
    estimate = {**fixed, "activations": tokens * per_token, "factors": largest_group,
                "svd": svd_need}
    return ScanPlan(asked, tokens, groups, svd_need, estimate, lm_chunk)


# --------------------------------------------------------------------------- compress

# matrices that read one input share one Gram matrix (compress.calibrate finds the sharing
# from the tensors themselves; the plan assumes only these, which errs on the large side)
SHARED_INPUTS = {"q": "attention input", "k": "attention input", "v": "attention input",
                 "gate": "mlp input", "in": "mlp input"}


def k_star(m: int, n: int) -> int:
    """Ranks below this save parameters: k (m + n) < m n."""
    return -(-m * n // (m + n))


def compress_bytes(shapes: dict[Target, tuple[int, int]], grads: bool) -> dict[str, int]:
    """What ``compress`` holds beyond the model (float32 unless said):

    grams     one n x n Gram matrix per distinct input (calibration -> decompositions,
              each freed once the matrices reading it are decomposed)
    grads     dL/dW of every matrix, with ``grads`` (the ``task`` price)
    factors   every matrix's decomposition up to its k* components: A (m x k*), B (k* x n);
              a trial's factor modules are views of them
    decompose one whitened SVD's float64 transient: W S, S and C, then U, s, V^T and
              LAPACK's workspace
    """
    inputs = {}
    for t, (m, n) in shapes.items():
        inputs[(t.layer, SHARED_INPUTS.get(t.type, t.type), n)] = 4 * n * n
    factors = sum(4 * min(k_star(m, n), min(m, n)) * (m + n) for m, n in shapes.values())
    transient = max((8 * (m * n + 2 * n * n) + 2 * workspace_bytes(m, n, "exact")
                     for m, n in shapes.values()), default=0)
    return {"grams": sum(inputs.values()),
            "grads": sum(4 * m * n for m, n in shapes.values()) if grads else 0,
            "factors": factors, "decompose": transient}


@dataclass
class CompressPlan:
    """``compress``'s memory plan: the batches and, per phase, what it holds."""

    budget: int | None
    batch_tokens: int  # the calibration pass's batches
    lm_head_chunk: int
    eval_batch_tokens: int  # the evaluations' (no-grad) batches
    phases: dict[str, dict[str, int]]  # phase -> component -> bytes
    default: str | None = None  # no budget was asked for: the one planned for, and why

    @property
    def peak(self) -> int:
        return max(sum(p.values()) for p in self.phases.values())

    def describe(self) -> str:
        phase = max(self.phases, key=lambda p: sum(self.phases[p].values()))
        parts = ", ".join(f"{k} {format_size(v)}" for k, v in self.phases[phase].items() if v)
        within = f"{self.default}: " if self.default else ""
        return (f"{within}calibration batches of <= {self.batch_tokens} tokens; estimated "
                f"peak {format_size(self.peak)} in the {phase} ({parts})")


def tokenizer_bytes(model: nn.Module) -> int:
    """What the loaded tokenizer holds: TOKENIZER_BYTES_PER_ENTRY per vocabulary entry."""
    return TOKENIZER_BYTES_PER_ENTRY * model.get_output_embeddings().weight.shape[0]


def plan_compress(model: nn.Module, targets: list[Target], longest: int, budget: int | None,
                  grads: bool = False) -> CompressPlan:
    """The batches of ``compress`` within ``budget`` bytes, or an EdgeC2IError before any
    heavy work.  Its three phases peak apart (budget.release_freed_memory between them):

    calibration   fixed + grams (+ grads) + the pass's activations (its batch)
    decomposition fixed + the larger of grams and factors (+ grads) + one SVD's transient
    evaluation    fixed + factors + a no-grad batch's activations (about one block's)

    (fixed: runtime, tokenizer, weights, one LM-head chunk).  The calibration batch shrinks
    to fit, and the evaluation batches drop to BUDGET_EVAL_BATCH_TOKENS if they must; when
    the phases still do not fit, the message says how much they need.  Without a budget the
    plan fits ``default_budget``, raised in 10% steps within 90% of what the machine has
    available when the longest example needs it (as the scan's), and runs unbudgeted
    (2048-token calibration batches) only when nothing there fits, saying so.
    """
    shapes = {t: tuple(weight_matrix(model.get_submodule(t.name)).shape) for t in targets}
    held = compress_bytes(shapes, grads)
    per_token = activation_bytes_per_token(model.config, longest)
    per_block = per_token // max(1, arch(model.config).num_layers)
    vocab = model.get_output_embeddings().weight.shape[0]

    def phases(cal_tokens: int, eval_tokens: int, lm_chunk: int) -> dict:
        fixed = {"runtime": RUNTIME_BYTES, "tokenizer": tokenizer_bytes(model),
                 "weights": model_bytes(model), "lm head": LM_HEAD_BYTES * lm_chunk * vocab}
        return {"calibration": {**fixed, "grams": held["grams"], "grads": held["grads"],
                                "activations": cal_tokens * per_token},
                "decomposition": {**fixed, "grams or factors": max(held["grams"],
                                                                   held["factors"]),
                                  "grads": held["grads"], "svd": held["decompose"]},
                "evaluation": {**fixed, "factors": held["factors"],
                               "activations": eval_tokens * per_block}}

    def fit(budget: int, eval_tokens: int) -> tuple[bool, CompressPlan]:
        limit = int(SAFETY * budget)
        lm_chunk = lm_head_chunk_for(model, budget)
        room = limit - sum(phases(0, 0, lm_chunk)["calibration"].values())
        tokens = int(min(DEFAULT_BATCH_TOKENS, max(0, room) // per_token))
        for ev in (eval_tokens, BUDGET_EVAL_BATCH_TOKENS):
            plan = CompressPlan(budget, tokens, lm_chunk, ev,
                                phases(max(tokens, longest), ev, lm_chunk))
            if sum(plan.phases["evaluation"].values()) <= limit:
                break
        return tokens >= longest and plan.peak <= limit, plan

    if budget is not None:
        ok, plan = fit(budget, BUDGET_EVAL_BATCH_TOKENS)
        if ok:
            return plan
        parts = ", ".join(f"{k} {format_size(v)}" for k, v in held.items() if v)
        raise EdgeC2IError(f"compress needs at least ~{format_size(plan.peak / SAFETY)} (the "
                           f"model {format_size(model_bytes(model))}; {parts}; "
                           f"{1 - SAFETY:.0%} headroom); --max-memory is "
                           f"{format_size(budget)}: raise it")
    default, why = default_budget(model)
    avail = available_bytes()
    cap = max(default, int(0.9 * avail) if avail is not None else 4 * default)
    budget = default
    while True:
        ok, plan = fit(budget, DEFAULT_EVAL_BATCH_TOKENS)
        if ok:
            raised = (f", raised to {format_size(budget)} for the longest example"
                      if budget > default else "")
            plan.budget, plan.default = None, f"default budget {format_size(budget)} ({why}{raised})"
            return plan
        if budget >= cap:
            break
        budget = min(cap, int(budget * 1.1))
    # nothing asked for and the machine cannot hold a plan: run as the data needs, say so
    tokens = max(DEFAULT_BATCH_TOKENS, longest)
    return CompressPlan(None, tokens, LM_HEAD_CHUNK, DEFAULT_EVAL_BATCH_TOKENS,
                        phases(tokens, DEFAULT_EVAL_BATCH_TOKENS, LM_HEAD_CHUNK),
                        f"unbudgeted: no budget within the machine holds it ({why})")


def release_freed_memory() -> None:
    """Hand the memory a finished phase freed back to the system.

    glibc's malloc keeps freed blocks of the heap for later use, so the resident set of a
    process stays at its high-water mark after a pass frees its activations, and the next
    phase (compress's decompositions) would add on top of it.  ``malloc_trim(0)`` returns
    them; elsewhere (macOS, musl) this does nothing.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def eval_batch_tokens_for(budget: int | None) -> int:
    """Batch tokens of the (no-grad) search and test scoring: smaller under a budget, where
    the transient activations of 4096-token batches pushed a budgeted adapt past its budget
    (bench/results/memory.json)."""
    return DEFAULT_EVAL_BATCH_TOKENS if budget is None else BUDGET_EVAL_BATCH_TOKENS


def cache_bytes_for(budget: int | None) -> int:
    """Bytes of cached hidden states the search holds at once (at least one layer's are
    always held): CACHE_BYTES, or 5% of ``budget``.  More layers per caching pass means
    fewer passes (each re-runs the blocks below)."""
    return CACHE_BYTES if budget is None else min(CACHE_BYTES, budget // 20)


def lm_head_chunk_for(model: nn.Module, budget: int | None) -> int:
    """Answer positions per LM-head call: LM_HEAD_CHUNK, or fewer so that one chunk of
    logits takes at most 2.5% of ``budget`` (Gemma-3 at 2 GB: 14 positions, 44 MB)."""
    if budget is None:
        return LM_HEAD_CHUNK
    vocab = model.get_output_embeddings().weight.shape[0]
    fit = int(SAFETY * budget) // 40 // (LM_HEAD_BYTES * vocab)
    return max(MIN_LM_HEAD_CHUNK, min(LM_HEAD_CHUNK, fit))


def _group_layers(targets: list[Target], per_layer: dict[int, int],
                  room: int) -> list[list[Target]]:
    """Consecutive layers in groups whose factors fit ``room`` bytes."""
    groups: list[list[Target]] = []
    size = room + 1  # start a new group at the first layer
    for layer, ts in _by_layer(targets).items():
        if size + per_layer[layer] > room:
            groups.append([])
            size = 0
        groups[-1].extend(ts)
        size += per_layer[layer]
    return groups


def check_weights_fit(where, budget: int | None) -> None:
    """Before loading: refuse when the runtime plus the stored weights already exceed the budget."""
    if budget is None or not isinstance(where, Path):
        return
    stored = sum(f.stat().st_size for f in where.glob("*.safetensors"))
    need = RUNTIME_BYTES + stored
    if need > budget:
        raise EdgeC2IError(f"the model's weights alone need ~{format_size(stored)} (plus "
                           f"{format_size(RUNTIME_BYTES)} for the runtime); --max-memory is "
                           f"{format_size(budget)}: raise it")
