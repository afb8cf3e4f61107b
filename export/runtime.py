"""Run an exported decoder in ONNX Runtime: tokenizer, KV cache, greedy generation, task scores.

Torch-free on purpose (onnxruntime, tokenizers and numpy only), so this is what a device or
a server without PyTorch runs.  The graph is a decoder with past: inputs ``input_ids``,
``attention_mask``, ``past_key_values.{i}.key/value`` (and ``position_ids`` in optimum's
layout, export --graph optimum); outputs ``logits`` and ``present.{i}.key/value``, which
become the next step's past.

``evaluate_onnx`` scores a task as ``edge_c2i.evaluate`` does (LASER's metrics): a choice
task takes the choice with the highest summed log-probability, the loss is
-log p(gold) / answer tokens, an open task counts top-1 first tokens.  The prompt goes
through the model once per example; every answer continues from its cached keys/values.

``OnnxLM.tokens`` yields greedy tokens as they are computed and stops at EOS or at the
model's context length; ``TextStream`` turns them into printable pieces.  A damaged export
(manifest, tokenizer, model file) or a prompt that cannot run is a EdgeC2IError, found before
the graph loads where possible.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
from tokenizers import Tokenizer

from edge_c2i.arch import context_length, token_ids
from edge_c2i.errors import EdgeC2IError
from edge_c2i.tasks import Example

from .files import data_path
from .graph import KEEP_INPUT

MANIFEST = "edge_c2i_export.json"
MODEL_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx", "int4": "model_int4.onnx"}
PREFILL_CHUNK = 512  # prompt tokens per pass: memory grows with chunk x context, not context^2
# what InferenceSession raises for a file it cannot load (they derive from Exception only)
_ORT_ERRORS = tuple(getattr(_ort_state, n) for n in (
    "Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
    "RuntimeException"))
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# transformers' clean_up_tokenization: no space before these pieces
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def model_file(onnx_dir: str | Path, precision: str = "fp32") -> str:
    """The model file to run for ``precision`` (fp32, int8, int4): .onnx, else .ort."""
    onnx_name = MODEL_FILES[precision]
    ort_name = onnx_name.replace(".onnx", ".ort")
    return ort_name if not (Path(onnx_dir) / onnx_name).is_file() and \
        (Path(onnx_dir) / ort_name).is_file() else onnx_name


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; a corrupt or truncated file is a EdgeC2IError, not a traceback."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EdgeC2IError(f"cannot read {what} {path}: {e}; export the model again") from None
    if not isinstance(data, dict):
        raise EdgeC2IError(f"{what} {path} is not a JSON object; export the model again")
    return data


def read_spec(onnx_dir: str | Path) -> dict:
    """The export manifest, with the context length from config.json if it does not hold it.

    Only edge-c2i exports are run: a bare optimum export has no manifest to say whether the
    tokenizer adds a BOS, and guessing wrong gives silently wrong outputs.
    """
    folder = Path(onnx_dir)
    if not folder.is_dir():
        raise EdgeC2IError(f"no such folder: {folder}")
    if not (folder / MANIFEST).is_file():
        raise EdgeC2IError(f"{folder} is not an edge-c2i export (no {MANIFEST}); "
                           "write one with `edge-c2i export MODEL --out FOLDER`")
    spec = _read_json(folder / MANIFEST, "the export manifest")
    missing = [k for k in ("num_kv_heads", "head_dim") if not isinstance(spec.get(k), int)]
    if missing:
        raise EdgeC2IError(f"the export manifest {folder / MANIFEST} lacks {', '.join(missing)}; "
                           "export the model again")
    if spec.get("max_position_embeddings") is None and (folder / "config.json").is_file():
        config = _read_json(folder / "config.json", "the model config")
        spec["max_position_embeddings"] = context_length(config)
    return spec


def check_prompt(prompt: str) -> None:
    """Refuse text the tokenizer cannot take: argv bytes that are not UTF-8 arrive as lone
    surrogates (Python's surrogateescape), on which tokenizers raises a bare TypeError."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        char = ord(prompt[e.start])
        byte = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"U+{char:04X}"
        raise EdgeC2IError(f"the prompt is not valid UTF-8 ({byte} at character {e.start}); "
                           "pass it as UTF-8 text") from None


def split_answer(prompt: str, answer: str) -> tuple[str, str]:
    """Move the space between prompt and answer into the answer (BPE tokens carry their space)."""
    if prompt.endswith(" ") and not answer.startswith(" "):
        return prompt[:-1], " " + answer
    return prompt, answer


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class KVCache:
    """The keys and values of ``length`` positions, in the order of the graph's past inputs."""

    arrays: list[np.ndarray]
    length: int


def clean_up_spaces(text: str) -> str:
    """transformers' clean_up_tokenization (what decode does when the tokenizer asks for it)."""
    for old, new in _CLEANUP:
        text = text.replace(old, new)
    return text


# what a later piece can turn into a clean-up pattern: the patterns themselves, and those
# that " ' " -> "'" forms by joining the quote to what follows (" ' s" -> " 's" -> "'s")
_HOLD = (*(old for old, _ in _CLEANUP), " n ' t",
         *(f"{space}' {end}" for space in (" ", "  ") for end in ("s", "m", "ve", "re")))


def _pattern_start(text: str) -> int:
    """Length of the longest end of ``text`` that a later piece could make part of a
    clean-up pattern (a space before "." or "n't", ...): it must not be printed yet."""
    for k in range(min(len(text), 5), 0, -1):
        if any(p.startswith(text[-k:]) and p != text[-k:] for p in _HOLD):
            return k
    return 0


class TextStream:
    """The text of a growing token sequence, piece by piece, for printing as tokens come.

    Decoding one token alone is wrong for byte-level BPE (a character split over two tokens)
    and for SentencePiece (the leading space of a piece depends on what precedes it), so
    each new token is decoded with the few before it and only the new text is returned,
    held back while it ends in an incomplete character (text-generation-inference's scheme).
    With ``clean_up`` (transformers' clean_up_tokenization_spaces), a trailing space that
    a later "." or "n't" would remove is held back too, so the pieces add up to what
    decoding the whole sequence gives.
    """

    def __init__(self, decode: Callable[[list[int]], str], clean_up: bool = False):
        self.decode, self.clean_up = decode, clean_up
        self.ids: list[int] = []
        self.start = self.done = 0  # the window of ids decoded as context for the new ones
        self.raw, self.printed = "", 0  # with clean_up: raw text so far, cleaned chars given

    def push(self, token: int) -> str:
        """The text that ``token`` completes ("" while a character is incomplete)."""
        self.ids.append(token)
        return self._release(self._piece(final=False), final=False)

    def flush(self) -> str:
        """What is still held back (an incomplete last character shows as U+FFFD)."""
        return self._release(self._piece(final=True), final=True)

    def _piece(self, final: bool) -> str:
        before = self.decode(self.ids[self.start:self.done])
        after = self.decode(self.ids[self.start:])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.start, self.done = self.done, len(self.ids)
        return after[len(before):]

    def _release(self, piece: str, final: bool) -> str:
        if not self.clean_up:
            return piece
        self.raw += piece
        text = clean_up_spaces(self.raw)
        end = max(len(text) - (0 if final else _pattern_start(self.raw)), self.printed)
        piece, self.printed = text[self.printed:end], end
        return piece


class OnnxLM:
    """A causal LM exported by ``edge-c2i export``, run with its KV cache (batch size 1).

    The manifest, tokenizer and model file are checked first; with ``load=False`` the graph
    is only loaded by ``load()``, so that a command can check its input (the prompt's length
    against the context) before spending seconds and memory on the graph.
    """

    def __init__(self, onnx_dir: str | Path, threads: int = 1, model_file: str = "model.onnx",
                 load: bool = True):
        self.folder = Path(onnx_dir)
        self.spec = read_spec(self.folder)
        self.path = self.folder / model_file
        if not self.path.is_file():
            files = self.spec.get("files")
            wrote = isinstance(files, dict) and model_file in files
            flag = next((f"--{p}" for p in ("int8", "int4") if p in model_file), None)
            hint = (f" (it was exported without {flag}): drop {flag} or export again with {flag}"
                    if flag and not wrote else ", though the export wrote it: export the model again")
            raise EdgeC2IError(f"no {model_file} in {self.folder}{hint}")
        if not (self.folder / "tokenizer.json").is_file():
            raise EdgeC2IError(f"no tokenizer.json in {self.folder}; export the model again")
        try:
            self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception)
            raise EdgeC2IError(f"cannot read {self.folder / 'tokenizer.json'}: {e}; "
                               "export the model again") from None
        self.threads = threads
        self.context = self.spec.get("max_position_embeddings")  # None: no known limit
        self.kv_heads, self.head_dim = self.spec["num_kv_heads"], self.spec["head_dim"]
        self.eos_ids = set(token_ids(self.spec.get("eos_token_id")))
        self.session = None
        if load:
            self.load()

    def load(self) -> None:
        """Load the graph; a corrupt, truncated or foreign model file is a EdgeC2IError."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: stderr is for the user's notes
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])
        except _ORT_ERRORS as e:
            reason = str(e).split(" failed:")[-1].strip().rstrip(".") or type(e).__name__
            wrote = self.spec.get("files")
            for part in (self.path, data_path(self.path)):  # the graph, its weights
                size = part.stat().st_size if part.is_file() else None
                expected = wrote.get(part.name) if isinstance(wrote, dict) else None
                if expected is not None and expected != size:
                    reason += (f"; {part.name} is {size} bytes, the export wrote {expected}"
                               if size is not None else f"; {part.name} is missing")
            raise EdgeC2IError(f"cannot load {self.path}: {reason} (corrupt or truncated?); "
                               "export the model again") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        if "input_ids" not in inputs or not self.past_names:
            raise EdgeC2IError(f"{self.path} is not a decoder with KV cache (inputs "
                               f"{', '.join(inputs)}); export it with `edge-c2i export`")
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.has_position_ids = "position_ids" in inputs
        # the fused graph's logits_to_keep: an input with a default (ONNX Runtime lists it
        # among the overridable initializers), the last position only unless fed 0 (all)
        self.has_keep = KEEP_INPUT in inputs or KEEP_INPUT in {
            i.name for i in self.session.get_overridable_initializers()}
        self.kv_dtype = _NUMPY_TYPES.get(inputs[self.past_names[0]].type, np.float32)

    # ------------------------------------------------------------------ tokens

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids; with ``special`` the tokenizer's template, plus a BOS if the manifest asks."""
        ids = self.tokenizer.encode(text, add_special_tokens=special).ids
        bos = self.spec.get("bos_token_id")
        if special and self.spec.get("add_bos_token") and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def decode(self, ids: list[int], clean_up: bool | None = None) -> str:
        """Text of ``ids`` without special tokens, spaces cleaned up if the tokenizer asks."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if self.spec.get("clean_up_tokenization_spaces") if clean_up is None else clean_up:
            text = clean_up_spaces(text)
        return text

    def text_stream(self) -> TextStream:
        """A TextStream that adds up to ``decode`` of the whole sequence."""
        return TextStream(lambda ids: self.decode(ids, clean_up=False),
                          bool(self.spec.get("clean_up_tokenization_spaces")))

    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids generation starts from; EdgeC2IError for a prompt that cannot be run.

        An empty prompt starts from the BOS token, as transformers' ``generate`` and llama.cpp
        do without input; a model without a BOS has nothing to start from.  A prompt must leave
        room in the context for at least one new token.
        """
        check_prompt(prompt)
        ids = self.encode(prompt)
        if not ids:
            bos = self.spec.get("bos_token_id")
            if bos is None:
                raise EdgeC2IError("the prompt is empty and the model has no BOS token to start "
                                   "from; give a prompt")
            ids = [bos]
        if self.context is not None and len(ids) >= self.context:
            raise EdgeC2IError(f"the prompt is {len(ids)} tokens; the model's context is "
                               f"{self.context} tokens, so it must be shorter")
        return ids

    # ------------------------------------------------------------------ forward

    def empty_cache(self) -> KVCache:
        shape = (1, self.kv_heads, 0, self.head_dim)
        return KVCache([np.zeros(shape, self.kv_dtype) for _ in self.past_names], 0)

    def step(self, ids: list[int], cache: KVCache | None = None,
             last: bool = False) -> tuple[np.ndarray, KVCache]:
        """Logits (len(ids) x vocab; with ``last``, of the last position only where the graph
        can skip the others: 1 x vocab) of ``ids`` following ``cache``, and the extended
        cache."""
        if self.session is None:  # made with load=False
            self.load()
        cache = cache or self.empty_cache()
        total = cache.length + len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64),
                "attention_mask": np.ones((1, total), dtype=np.int64)}
        if self.has_position_ids:
            feed["position_ids"] = np.arange(cache.length, total, dtype=np.int64)[None]
        if self.has_keep:
            feed[KEEP_INPUT] = np.array([1 if last else 0], dtype=np.int64)
        feed.update(zip(self.past_names, cache.arrays))
        logits, *present = self.session.run(["logits", *self.present_names], feed)
        return logits[0], KVCache(present, total)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ``ids`` (one pass, empty cache)."""
        return self.step(ids)[0]

    def prefill(self, ids: list[int]) -> tuple[np.ndarray, KVCache]:
        """Last-position logits and cache of ``ids``, fed PREFILL_CHUNK tokens at a time so a
        long prompt never holds full logits or a len(ids)^2 attention."""
        cache = None
        for start in range(0, len(ids), PREFILL_CHUNK):
            logits, cache = self.step(ids[start:start + PREFILL_CHUNK], cache, last=True)
        return logits[-1], cache

    def room(self, ids: list[int]) -> int | None:
        """How many tokens can follow ``ids`` within the context (None: no known limit)."""
        return None if self.context is None else max(self.context - len(ids), 0)

    def tokens(self, ids: list[int], max_new_tokens: int = 16) -> Iterator[int]:
        """Greedy continuation of ``ids``, one token as soon as it is computed.

        Stops after EOS (which is yielded), after ``max_new_tokens``, or when prompt and new
        tokens fill the context: positions past it were never trained.
        """
        room = self.room(ids)
        limit = max_new_tokens if room is None else min(max_new_tokens, room)
        if limit < 1:
            return
        last, cache = self.prefill(ids)
        for n in range(1, limit + 1):
            token = int(last.argmax())
            yield token
            if token in self.eos_ids or n == limit:
                return
            logits, cache = self.step([token], cache)
            last = logits[-1]

    def greedy(self, ids: list[int], max_new_tokens: int = 16) -> list[int]:
        """Greedy continuation of ``ids``: prefill once, then one token a step; stops at EOS."""
        return list(self.tokens(ids, max_new_tokens))

    def generate(self, prompt: str, max_new_tokens: int = 16) -> str:
        """Greedy continuation of ``prompt`` as text (special tokens dropped)."""
        return self.decode(self.greedy(self.prompt_ids(prompt), max_new_tokens))

    # ------------------------------------------------------------------ scoring

    def context_and_answer(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """As edge_c2i.evaluate.encode: a trailing prompt space moves into the answer."""
        prompt, answer = split_answer(prompt, answer)
        ctx = self.encode(prompt)
        if not ctx:  # an empty prompt still needs one token to predict from
            bos = self.spec.get("bos_token_id")
            if bos is None and not self.eos_ids:
                raise EdgeC2IError("an example has an empty prompt and the model has no BOS or "
                                   "EOS token to start from")
            ctx = [bos if bos is not None else min(self.eos_ids)]
        return ctx, self.encode(answer, special=False)

    def answer_logprob(self, last_logits: np.ndarray, cache: KVCache, answer: list[int]) -> float:
        """log p(answer | context) from the context's last logits and cache."""
        if not answer:
            raise EdgeC2IError("an answer encodes to no tokens; cannot score it")
        total = float(log_softmax(last_logits)[answer[0]])
        if len(answer) > 1:
            logits, _ = self.step(answer[:-1], cache)
            total += float(log_softmax(logits)[np.arange(len(answer) - 1), answer[1:]].sum())
        return total


def score_examples(lm: OnnxLM, examples: list[Example]) -> dict:
    """Accuracy, loss and n of ``lm`` on ``examples`` (edge_c2i.evaluate's metrics)."""
    if not examples:
        raise EdgeC2IError("no examples to evaluate")
    correct, loss = 0, 0.0
    for ex in examples:
        answers = ex.choices if ex.choices is not None else (ex.answer,)
        ctx, _ = lm.context_and_answer(ex.prompt, answers[0])
        encoded = [lm.context_and_answer(ex.prompt, a)[1] for a in answers]
        longest = len(ctx) + max(map(len, encoded))
        if lm.context is not None and longest > lm.context:
            raise EdgeC2IError(f"the example {ex.prompt[:40]!r}... is {longest} tokens with its "
                               f"answer; the model's context is {lm.context}: shorten it")
        last, cache = lm.prefill(ctx)
        logprobs = [lm.answer_logprob(last, cache, ans) for ans in encoded]
        if ex.choices is not None:
            gold = ex.choices.index(ex.answer)
            correct += int(np.argmax(logprobs)) == gold
        else:
            gold = 0
            firsts = {encoded[0][0]} | {lm.context_and_answer(ex.prompt, a)[1][0] for a in ex.aliases}
            correct += int(last.argmax()) in firsts
        loss -= logprobs[gold] / len(encoded[gold])
    n = len(examples)
    return {"accuracy": correct / n, "loss": loss / n, "n": n}


def evaluate_onnx(onnx_dir: str | Path, examples: list[Example], model_file: str = "model.onnx",
                  threads: int = 1) -> dict:
    """Accuracy, loss and n of an exported model on ``examples``."""
    return score_examples(OnnxLM(onnx_dir, threads, model_file), examples)
