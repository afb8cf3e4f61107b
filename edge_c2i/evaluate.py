"""Scoring a model on a task, as LASER does.

- loss: mean over examples of -log p(gold answer | prompt) / answer tokens;
- accuracy, choice task: the choice with the highest log-probability (sum over
  its tokens) wins;
- accuracy, open answer: the top-1 next token equals the gold first token
  (``first_token_acc``); ``generation_acc`` (gold in a short greedy
  continuation) is computed on request, it needs generation.

Sequences (prompt + each candidate answer) are sorted by length and batched
with right padding.  Only the positions that predict answer tokens go through
the LM head, so a 262k vocabulary costs little.

For the search, ``Scorer`` can cache the hidden states that enter a block and
later run only the blocks from there upward: a reduction of a matrix in block
L changes nothing below L.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from . import arch, threads
from .errors import EdgeC2IError
from .targets import decoder_layers
from .tasks import Example

LM_HEAD_CHUNK = 256  # positions per LM-head call: bounds the logits' memory
MAX_PADDING = 0.15  # a batch is closed before padding passes this share of its tokens
# No token of the packaged tokenizers spans more characters (SmolLM2's longest: 81), so a
# text longer than this many characters per position is refused without tokenizing it.
MAX_CHARS_PER_TOKEN = 256


def split_answer(prompt: str, answer: str) -> tuple[str, str]:
    """Move the space between prompt and answer into the answer (BPE tokens carry their space)."""
    if prompt.endswith(" ") and not answer.startswith(" "):
        return prompt[:-1], " " + answer
    return prompt, answer


def encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the context (with the tokenizer's special tokens) and of the answer."""
    prompt, answer = split_answer(prompt, answer)
    ctx = tokenizer(prompt)["input_ids"]
    if not ctx:  # an empty prompt still needs one token to predict from
        bos = tokenizer.bos_token_id
        ctx = [bos if bos is not None else tokenizer.eos_token_id]
    ans = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return ctx, ans


def context_length(model: nn.Module) -> int | None:
    """The model's context: the positions it was trained with (None if its config has none)."""
    return arch.context_length(model.config)


def _tokenizer_context(tokenizer) -> int | None:
    """The tokenizer's own limit, when it has a real one (unset, transformers says 1e30)."""
    n = getattr(tokenizer, "model_max_length", None)
    return n if isinstance(n, int) and 0 < n < 10**7 else None


def _name(ex: Example, i: int) -> str:
    """Where the user finds it: its file and line, else its index in the list scored."""
    return ex.source or f"example {i}"


def _check_chars(ex: Example, i: int, max_positions: int) -> None:
    """Refuse a text too long for any tokenization to fit, before tokenizing it."""
    chars = len(ex.prompt) + max(len(a) for a in ex.choices or (ex.answer,))
    if chars > max_positions * MAX_CHARS_PER_TOKEN:
        raise EdgeC2IError(f"{_name(ex, i)}: prompt and answer are {chars:,} characters, far more "
                           f"than the model's context of {max_positions} tokens; shorten the prompt")


def _refuse_longer(examples: list[Example], positions: list[int], max_positions: int) -> None:
    """Refuse sequences past the context: the attention mask grows with their square."""
    over = [i for i, n in enumerate(positions) if n > max_positions]
    if over:
        i = max(over, key=positions.__getitem__)
        more = f" ({len(over) - 1} other example(s) too)" if len(over) > 1 else ""
        raise EdgeC2IError(f"{_name(examples[i], i)}: prompt and answer are {positions[i]:,} "
                           f"tokens, more than the model's context of {max_positions}; "
                           f"shorten the prompt{more}")


def check_lengths(tokenizer, examples: list[Example], max_positions: int) -> None:
    """Refuse (EdgeC2IError) any example whose prompt + longest answer passes ``max_positions``.

    Characters are checked first, so a 10 MB prompt is refused without being tokenized.
    """
    for i, ex in enumerate(examples):
        _check_chars(ex, i, max_positions)
    positions = []
    for ex in examples:
        encoded = [encode(tokenizer, ex.prompt, a) for a in ex.choices or (ex.answer,)]
        positions.append(len(encoded[0][0]) + max(len(a) for _, a in encoded))
    _refuse_longer(examples, positions, max_positions)


@dataclass
class Result:
    """Per-example scores and their aggregates."""

    accuracy: float
    loss: float
    choice_logprobs: list[list[float]] | None  # choice tasks
    gold: list[int] | None  # index of the gold choice
    first_token_correct: list[bool] | None  # open tasks
    n: int
    answer_tokens: list[list[int]] | None = None  # choice tasks: tokens of each choice

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss, "n": self.n}

    def __add__(self, other: Result) -> Result:
        """The result on both samples, this one's examples first."""
        def cat(a, b):
            return None if a is None or b is None else list(a) + list(b)

        n = self.n + other.n
        return Result((self.accuracy * self.n + other.accuracy * other.n) / n,
                      (self.loss * self.n + other.loss * other.n) / n,
                      cat(self.choice_logprobs, other.choice_logprobs), cat(self.gold, other.gold),
                      cat(self.first_token_correct, other.first_token_correct), n,
                      cat(self.answer_tokens, other.answer_tokens))


def body(model: nn.Module) -> nn.Module:
    """The transformer under the LM head (returns last_hidden_state)."""
    prefix = getattr(model, model.base_model_prefix, None)
    return prefix if isinstance(prefix, nn.Module) else model.get_decoder()


@contextlib.contextmanager
def _hooks_aside(model: nn.Module):
    """Within the block, no module of ``model`` runs its forward hooks (a probe is not one
    of the batches that the scan's or calibration's hooks count)."""
    kept = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    for m, _, _ in kept:
        m._forward_hooks, m._forward_pre_hooks = type(m._forward_hooks)(), type(
            m._forward_pre_hooks)()
    try:
        yield
    finally:
        for m, hooks, pre_hooks in kept:
            m._forward_hooks, m._forward_pre_hooks = hooks, pre_hooks


def follows_position_ids(model: nn.Module) -> bool:
    """Whether ``model``'s output moves with its position ids (rotary or learned positions),
    which packed answers need; an ALiBi model's does not (its positions are the token
    indices).  Four tokens, the last one's position moved: rotary is relative, so moving all
    of them would change nothing."""
    ids = torch.tensor([[1, 2, 3, 4]])
    out = []
    with torch.no_grad(), warnings.catch_warnings(), _hooks_aside(model):
        warnings.simplefilter("ignore")  # Bloom warns that its position ids do nothing
        for last in (3, 7):
            pos = torch.tensor([[0, 1, 2, last]])
            out.append(body(model)(input_ids=ids, position_ids=pos,
                                   use_cache=False).last_hidden_state[0, -1])
    return not torch.equal(*out)


class _Skip(nn.Module):
    """Stands in for a block below the cached one: passes its input through."""

    def __init__(self, block: nn.Module, tuple_output: bool):
        super().__init__()
        self.tuple_output = tuple_output
        if hasattr(block, "attention_type"):  # Gemma-3 picks the mask by the block's type
            self.attention_type = block.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.tuple_output else hidden_states


def _inputs(batch: dict, model: nn.Module) -> dict:
    """The keyword arguments of a batch's pass through ``body(model)``."""
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"].to(model.dtype),
          "use_cache": False}
    if batch["position_ids"] is not None:  # Bloom warns at any, None included
        kw["position_ids"] = batch["position_ids"]
    return kw


class _Stop(Exception):
    """Ends a caching pass at the deepest block it needs."""


class Scorer:
    """Encodes examples once; scores any model (or a reduced copy) on them.

    All candidate answers of an example share one pass over its prompt: the
    sequence is ``prompt + answer_1 + answer_2 + ...`` with a 4D attention mask
    in which each answer sees the prompt and itself only, and position ids that
    restart after the prompt for every answer.  Same numbers as one sequence per
    answer (a test checks it on every architecture), at a fraction of the cost.

    A model whose positions are not its position ids (ALiBi: Bloom, MPT, Falcon with
    ``alibi``) would see a packed answer as far from its prompt as the answers before it,
    and Bloom takes no 4D mask: ``check_context`` finds such a model by feeding it two
    position ids and getting the same output, and then every answer gets a row of its own
    after its prompt (a 2D padding mask), as an evaluation harness scores them.
    """

    def __init__(self, tokenizer, examples: list[Example], max_batch_tokens: int = 4096,
                 lm_head_chunk: int = LM_HEAD_CHUNK, max_positions: int | None = None,
                 gold_only: bool = False):
        """``max_positions``: the model's context (``context_length(model)``); a longer
        example is refused here.  Without it, the tokenizer's limit if it has one, and
        every run checks against its model before a batch is built.

        ``gold_only``: pack only the gold answer of a choice task, for ``loss_and_backward``
        (the scan): the loss is that of the gold answer, which sees the prompt and itself
        only, so the other choices' tokens change nothing (truthful_qa: most of the tokens).
        Such a scorer cannot ``run``.
        """
        if not examples:
            raise EdgeC2IError("no examples to score")
        self.examples = examples
        self.lm_head_chunk = lm_head_chunk
        self.gold_only = gold_only
        self.is_choice = examples[0].choices is not None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.gold = []
        self.first_tokens = []  # open tasks: accepted first tokens
        max_positions = max_positions or _tokenizer_context(tokenizer)
        packed = []  # (example index, ctx ids, [answer ids, ...])
        for i, ex in enumerate(examples):
            if max_positions:
                _check_chars(ex, i, max_positions)
            answers = ex.choices if self.is_choice and not gold_only else (ex.answer,)
            encoded = [encode(tokenizer, ex.prompt, a) for a in answers]
            packed.append((i, encoded[0][0], [a for _, a in encoded]))
            if self.is_choice:
                self.gold.append(0 if gold_only else ex.choices.index(ex.answer))
            else:
                firsts = {encoded[0][1][0]}
                for alias in ex.aliases:
                    firsts.add(encode(tokenizer, ex.prompt, alias)[1][0])
                self.first_tokens.append(firsts)
        self.n_answers = [len(p[2]) for p in packed]
        self.answer_len = [[len(a) for a in p[2]] for p in packed]
        # the highest position of each example: its prompt and its longest answer
        self.positions = [len(p[1]) + max(map(len, p[2])) for p in packed]
        if max_positions:
            _refuse_longer(examples, self.positions, max_positions)
        packed.sort(key=lambda p: len(p[1]) + sum(map(len, p[2])))
        self.longest = len(packed[-1][1]) + sum(map(len, packed[-1][2]))  # tokens, one example
        self._packed, self._max_batch_tokens = packed, max_batch_tokens
        self._pack = True  # answers after one prompt (check_context decides per model)
        self._follows: bool | None = None
        self._batches: list[dict] | None = None  # built on first use, after the length check
        self._cached: dict[int, list[torch.Tensor]] = {}
        self._tuple_output: bool | None = None
        self._batch_index = 0

    @property
    def batches(self) -> list[dict]:
        """Batches of similar lengths (sorted), closed at max_batch_tokens or when padding
        would pass MAX_PADDING of the batch (short tasks: half the compute was padding)."""
        if self._batches is None:
            self._batches = []
            batch: list = []
            used = 0
            rows = self._packed if self._pack else sorted(
                ((i, ctx, [a], j) for i, ctx, answers, *_ in self._packed
                 for j, a in enumerate(answers)), key=lambda r: len(r[1]) + len(r[2][0]))
            for p in rows:
                length = len(p[1]) + sum(map(len, p[2]))
                area = length * (len(batch) + 1)
                if batch and (area > self._max_batch_tokens
                              or area - used - length > MAX_PADDING * area):
                    self._batches.append(self._collate(batch))
                    batch, used = [], 0
                batch.append(p)
                used += length
            if batch:
                self._batches.append(self._collate(batch))
        return self._batches

    def check_context(self, model: nn.Module) -> None:
        """Refuse examples longer than ``model``'s context before any batch is built:
        a 10 MB prompt would ask for a 4 TB attention mask."""
        limit = context_length(model)
        if limit:
            _refuse_longer(self.examples, self.positions, limit)
        if self._follows is None:  # one architecture per scorer: probed once
            self._follows = follows_position_ids(model)
        if self._follows != self._pack:
            self._pack, self._batches = self._follows, None

    def _collate(self, packed: list) -> dict:
        length = max(len(p[1]) + sum(map(len, p[2])) for p in packed)
        B = len(packed)
        ids = torch.full((B, length), self.pad_id, dtype=torch.long)
        pos = torch.zeros((B, length), dtype=torch.long)
        seg = torch.full((B, length), -1, dtype=torch.long)  # 0 prompt, j+1 answer j, -1 pad
        rows, cols, targets, slots = [], [], [], []  # one entry per answer token
        owner = []  # slot -> (example, answer)
        for b, (i, ctx, answers, *first) in enumerate(packed):
            first = first[0] if first else 0  # a row of one answer says which it is
            P = len(ctx)
            ids[b, :P] = torch.tensor(ctx)
            pos[b, :P] = torch.arange(P)
            seg[b, :P] = 0
            at = P
            for j, ans in enumerate(answers):
                n = len(ans)
                ids[b, at : at + n] = torch.tensor(ans)
                pos[b, at : at + n] = torch.arange(P, P + n)
                seg[b, at : at + n] = j + 1
                for t, tok in enumerate(ans):
                    rows.append(b)
                    cols.append(P - 1 if t == 0 else at + t - 1)  # the position predicting it
                    targets.append(tok)
                    slots.append(len(owner))
                owner.append((i, first + j))
                at += n
        if self._pack:
            q, k = seg[:, :, None], seg[:, None, :]
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            allowed = causal & ((k == 0) | (k == q)) & (q >= 0)
            allowed |= torch.eye(length, dtype=torch.bool)  # pads see themselves: no empty row
            mask = torch.zeros((B, 1, length, length))
            mask.masked_fill_(~allowed[:, None], torch.finfo(torch.float32).min)
        else:  # one answer a row: a causal model needs only to know the padding
            mask = (seg >= 0).float()
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos if self._pack else None,
            "rows": torch.tensor(rows),
            "cols": torch.tensor(cols),
            "targets": torch.tensor(targets),
            "slots": torch.tensor(slots),
            "owner": owner,
            "valid": seg >= 0,  # real tokens (not padding): what hooks that sum inputs keep
        }

    # -------------------------------------------------------------- forward passes

    def _answer_logprobs(self, model: nn.Module, batch: dict):
        """Log-prob of each answer token and the argmax token at its position."""
        hidden = body(model)(**_inputs(batch, model)).last_hidden_state
        h = hidden[batch["rows"], batch["cols"]]
        head = model.get_output_embeddings()
        cap = getattr(model.config, "final_logit_softcapping", None)

        def chunk(hc, tgt):
            logits = head(hc).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logp = torch.log_softmax(logits, dim=-1)
            return logp.gather(1, tgt[:, None])[:, 0], logits.argmax(-1)

        # with autograd and several chunks, each chunk's logits are recomputed in backward
        # instead of kept: only one chunk of (positions x vocabulary) is ever alive (Gemma-3:
        # 262k entries).  A batch of one chunk keeps its logits, which are no more than the
        # recomputation would hold, and saves reading the head a third time (Gemma-3's 671 MB
        # table, for a few answer tokens when a budget makes the batches small)
        step = self.lm_head_chunk
        grad = torch.is_grad_enabled() and h.requires_grad and h.shape[0] > step
        lps, hits = [], []
        for start in range(0, h.shape[0], step):
            args = (h[start : start + step], batch["targets"][start : start + step])
            lp, hit = checkpoint(chunk, *args, use_reentrant=False) if grad else chunk(*args)
            lps.append(lp)
            hits.append(hit)
        return torch.cat(lps), torch.cat(hits)

    def _slot_logprobs(self, model: nn.Module, batch: dict):
        """Summed log-prob of every (example, answer) slot in the batch."""
        lp, argmax = self._answer_logprobs(model, batch)
        per_slot = torch.zeros(len(batch["owner"]), dtype=lp.dtype).index_add(0, batch["slots"], lp)
        return per_slot, argmax

    def run(self, model: nn.Module, start_layer: int | None = None,
            desc: str | None = None, keep: list[int] = ()) -> Result:
        """Score ``model``; with ``start_layer``, run only blocks >= it from cached inputs.

        ``desc`` shows a progress bar over the batches under that name.  ``keep``: blocks
        whose inputs this run caches on the way (``cache_inputs`` without a pass of its own).
        """
        if self.gold_only:
            raise EdgeC2IError("a gold-only scorer (the scan's) cannot score accuracy")
        self.check_context(model)
        n = len(self.examples)
        logprobs = [[0.0] * k for k in self.n_answers]
        first_hit = [False] * n
        ctx = contextlib.ExitStack()
        if start_layer is not None:
            ctx.enter_context(self._start_at(model, start_layer))
        if keep:
            ctx.enter_context(self._grabbing(model, keep))
        with torch.no_grad(), ctx:
            for bi, batch in enumerate(tqdm(self.batches, desc=desc, disable=desc is None,
                                            leave=False)):
                self._batch_index = bi
                threads.rebalance()
                per_slot, argmax = self._slot_logprobs(model, batch)
                first_entry = 0
                for k, (i, j) in enumerate(batch["owner"]):
                    logprobs[i][j] = per_slot[k].item()
                    if not self.is_choice:
                        first_hit[i] = argmax[first_entry].item() in self.first_tokens[i]
                    first_entry += self.answer_len[i][j]
        if self.is_choice:
            gold_lp = [logprobs[i][g] / self.answer_len[i][g] for i, g in enumerate(self.gold)]
            correct = [max(range(len(lp)), key=lp.__getitem__) == g
                       for lp, g in zip(logprobs, self.gold)]
            return Result(sum(correct) / n, -sum(gold_lp) / n, logprobs, list(self.gold), None, n,
                          [list(lens) for lens in self.answer_len])
        loss = -sum(lp[0] / ln[0] for lp, ln in zip(logprobs, self.answer_len)) / n
        return Result(sum(first_hit) / n, loss, None, None, first_hit, n)

    def loss_and_backward(self, model: nn.Module, desc: str | None = None) -> float:
        """Mean task loss over the examples (the gold answer only); backward() per batch."""
        self.check_context(model)
        n = len(self.examples)
        total = 0.0
        for bi, batch in enumerate(tqdm(self.batches, desc=desc, disable=desc is None,
                                        leave=False)):
            self._batch_index = bi  # hooks read the batch in flight (compress.calibrate)
            threads.rebalance()
            per_slot, _ = self._slot_logprobs(model, batch)
            keep, n_ans = [], []
            for k, (i, j) in enumerate(batch["owner"]):
                if not self.is_choice or j == self.gold[i]:
                    keep.append(k)
                    n_ans.append(self.answer_len[i][j])
            loss = -(per_slot[keep] / torch.tensor(n_ans, dtype=per_slot.dtype)).sum() / n
            loss.backward()
            total += loss.item()
        return total

    # -------------------------------------------------------------- cached prefixes

    def cache_inputs(self, model: nn.Module, layers: list[int],
                     start_layer: int | None = None) -> None:
        """Keep the hidden states entering each block in ``layers`` for every batch.

        The pass stops at the deepest of them (the blocks above and the LM head do not
        run), and starts at ``start_layer`` when its inputs are cached already: caches
        taken in depth order each run only the blocks between them.
        """
        self.check_context(model)
        deepest = max(layers)
        blocks = decoder_layers(model)
        ctx = contextlib.ExitStack()
        if start_layer is not None:
            if start_layer > deepest:
                raise ValueError(f"start_layer {start_layer} is above block {deepest}")
            ctx.enter_context(self._start_at(model, start_layer))
        ctx.enter_context(self._grabbing(model, layers))

        def stop(module, args, kwargs):
            raise _Stop

        with torch.no_grad(), ctx:
            hook = blocks[deepest].register_forward_pre_hook(stop, with_kwargs=True)
            try:
                for bi, batch in enumerate(self.batches):
                    self._batch_index = bi
                    threads.rebalance()
                    try:
                        body(model)(**_inputs(batch, model))
                    except _Stop:
                        pass
            finally:
                hook.remove()

    def hidden_bytes(self, model: nn.Module) -> int:
        """Bytes the cached inputs of one block take (every batch, padding included)."""
        self.check_context(model)  # the batches as this model gets them (packed or not)
        width = model.get_input_embeddings().weight.shape[1]
        size = torch.finfo(model.dtype).bits // 8
        return sum(b["input_ids"].numel() for b in self.batches) * width * size

    @contextlib.contextmanager
    def _grabbing(self, model: nn.Module, layers: list[int]):
        """While inside, every batch run stores the hidden states entering ``layers``
        (added to the cache on a clean exit)."""
        blocks = decoder_layers(model)
        store = {i: [] for i in layers}
        hooks = []

        def grab(i):
            def hook(module, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                store[i].append(h.detach().clone())
            return hook

        def output_kind(module, args, output):
            self._tuple_output = isinstance(output, tuple)

        # registered first: the stopping hook of cache_inputs runs after the grab
        for i in layers:
            hooks.append(blocks[i].register_forward_pre_hook(grab(i), with_kwargs=True))
        hooks.append(blocks[0].register_forward_hook(output_kind))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
        self._cached.update(store)

    def drop_cache(self, keep: list[int] = ()) -> None:
        """Forget the cached inputs (but those of ``keep``)."""
        for layer in [k for k in self._cached if k not in keep]:
            del self._cached[layer]

    @contextlib.contextmanager
    def _start_at(self, model: nn.Module, layer: int):
        if layer not in self._cached:
            raise KeyError(f"no cached inputs for block {layer}: call cache_inputs first")
        blocks = decoder_layers(model)
        originals = [blocks[i] for i in range(layer)]

        def feed(module, args, kwargs):
            h = self._cached[layer][self._batch_index]
            if args:
                return (h,) + tuple(args[1:]), kwargs
            kwargs["hidden_states"] = h
            return args, kwargs

        hook = blocks[layer].register_forward_pre_hook(feed, with_kwargs=True)
        for i in range(layer):
            blocks[i] = _Skip(originals[i], bool(self._tuple_output))
        try:
            yield
        finally:
            hook.remove()
            for i, block in enumerate(originals):
                blocks[i] = block


@contextlib.contextmanager
def grad_from(model: nn.Module, layer: int):
    """Within the block, the hidden states entering block ``layer`` are a leaf that needs a
    gradient: with every weight frozen, a backward then runs from the loss down to that
    block, and the blocks below keep no activations."""

    def start_grad(module, args, kwargs):
        if args:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"].detach().requires_grad_(True)
        return args, kwargs

    hook = decoder_layers(model)[layer].register_forward_pre_hook(start_grad, with_kwargs=True)
    try:
        yield
    finally:
        hook.remove()


def evaluate(model: nn.Module, tokenizer, examples: list[Example], generation: bool = False,
             max_new_tokens: int = 8) -> dict:
    """Accuracy and loss of ``model`` on ``examples`` (plus generation accuracy for open tasks)."""
    res = Scorer(tokenizer, examples, max_positions=context_length(model)).run(model)
    out = res.as_dict()
    if not res.choice_logprobs:
        out["first_token_acc"] = res.accuracy
        if generation:
            out["generation_acc"] = generation_accuracy(model, tokenizer, examples, max_new_tokens)
    return out


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


@torch.no_grad()
def generation_accuracy(model, tokenizer, examples: list[Example], max_new_tokens: int = 8,
                        batch_size: int = 16) -> float:
    """Share of open questions whose gold answer (or an alias) is in a greedy continuation."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    hits = 0
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            prompts = [split_answer(e.prompt, e.answer)[0] for e in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
            for e, text in zip(chunk, texts):
                hits += any(_normalize(a) in _normalize(text) for a in (e.answer, *e.aliases))
    finally:
        tokenizer.padding_side = side
    return hits / len(examples)


def calibration_control(examples) -> str | None:
    """Which control ``calibrated_accuracy`` fits for a task's examples.

    ``"label bias"``: every example offers the same choices (true/false, ...), so a
    bias per choice is fitted; ``"length bias"``: the choices differ per question
    (truthful_qa's answer sentences), so one bias per answer token is fitted: the
    summed log-probability of a choice favours short answers, and a reduction can
    raise accuracy by shifting that preference alone; None: open answers.
    """
    if not examples or examples[0].choices is None:
        return None
    labels = examples[0].choices
    return "label bias" if all(e.choices == labels for e in examples) else "length bias"


def _accuracy(res: Result, score) -> float:
    """Accuracy when choice j of example i is scored ``score(i, j, logprob)``."""
    ok = 0
    for i, (lp, g) in enumerate(zip(res.choice_logprobs, res.gold)):
        scores = [score(i, j, s) for j, s in enumerate(lp)]
        ok += max(range(len(scores)), key=scores.__getitem__) == g
    return ok / len(res.gold)


def _between(points) -> list[float]:
    """One value in each interval that ``points`` cut the line into."""
    pts = sorted(set(points))
    if not pts:
        return [0.0]
    return [pts[0] - 1.0, pts[-1] + 1.0, *((a + b) / 2 for a, b in itertools.pairwise(pts))]


def _fit_label_bias(res: Result, n_labels: int) -> list[float]:
    bias = [0.0] * n_labels
    best = _accuracy(res, lambda i, j, s: s)
    for _ in range(3):  # coordinate ascent over the biases of labels 1..C-1
        for c in range(1, n_labels):
            # label c wins where lp[c] + b_c beats every other biased score: the decision
            # only changes where b_c crosses one of these margins, so try between them
            margins = [max(s + bias[k] for k, s in enumerate(lp) if k != c) - lp[c]
                       for lp in res.choice_logprobs]
            for value in _between(margins):
                trial = bias.copy()
                trial[c] = value
                a = _accuracy(res, lambda i, j, s, b=trial: s + b[j])
                if a > best + 1e-12:
                    best, bias = a, trial
    return bias


def _fit_length_bias(res: Result) -> float:
    """The bias per answer token that maximizes accuracy on ``res`` (ties: the smallest)."""
    crossings = []  # where two choices of one example swap places
    for lp, lens in zip(res.choice_logprobs, res.answer_tokens):
        for j, k in itertools.combinations(range(len(lp)), 2):
            if lens[j] != lens[k]:
                crossings.append((lp[k] - lp[j]) / (lens[j] - lens[k]))
    # accuracy at every candidate bias at once: (betas, examples, choices), choices padded
    width = max(map(len, res.choice_logprobs))
    lp = torch.full((len(res.gold), width), float("-inf"), dtype=torch.float64)
    lens = torch.zeros((len(res.gold), width), dtype=torch.float64)
    for i, (row, n_tok) in enumerate(zip(res.choice_logprobs, res.answer_tokens)):
        lp[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        lens[i, : len(row)] = torch.tensor(n_tok, dtype=torch.float64)
    gold = torch.tensor(res.gold)
    betas = torch.tensor([0.0, *_between(crossings)], dtype=torch.float64)
    acc = torch.cat([((lp + b[:, None, None] * lens).argmax(-1) == gold).double().mean(-1)
                     for b in betas.split(256)])
    best = max(range(len(betas)), key=lambda k: (acc[k].item(), -abs(betas[k].item())))
    return betas[best].item()


def calibrated_accuracy(eval_res: Result, test_res: Result, examples_eval,
                        examples_test) -> float | None:
    """Test accuracy of the unmodified model with a bias fitted on the evaluation sample.

    The control the report shows next to any gain: a reduction that only shifts
    the answer preference of a near-chance model is matched by this.  The bias is
    one per choice for tasks with one fixed label set, one per answer token for
    tasks whose choices differ per question (``calibration_control``).
    """
    if eval_res.choice_logprobs is None:
        return None
    control = calibration_control(list(examples_eval) + list(examples_test))
    if control == "label bias":
        bias = _fit_label_bias(eval_res, len(examples_eval[0].choices))
        return _accuracy(test_res, lambda i, j, s: s + bias[j])
    if eval_res.answer_tokens is None or test_res.answer_tokens is None:
        return None
    beta = _fit_length_bias(eval_res)
    return _accuracy(test_res, lambda i, j, s: s + beta * test_res.answer_tokens[i][j])
