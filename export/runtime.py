"""Run an exported decoder in ONNX Runtime: tokenizer, KV cache, greedy generation, task scores.

Torch-free on purpose (onnxruntime, tokenizers and numpy only), so this is what a device or
a server without PyTorch runs.  The graph is optimum's decoder-with-past layout: inputs
``input_ids``, ``attention_mask``, ``position_ids`` and ``past_key_values.{i}.key/value``;
outputs ``logits`` and ``present.{i}.key/value``, which become the next step's past.

``evaluate_onnx`` scores a task as ``edge_c2i.evaluate`` does (LASER's metrics): a choice
task takes the choice with the highest summed log-probability, the loss is
-log p(gold) / answer tokens, an open task counts top-1 first tokens.  The prompt goes
through the model once per example; every answer continues from its cached keys/values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from edge_c2i.errors import UserError
from edge_c2i.tasks import Example

MANIFEST = "edge_c2i_export.json"
MODEL_FILES = {False: "model.onnx", True: "model_int8.onnx"}  # keyed by int8
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# transformers' clean_up_tokenization: no space before these pieces
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def model_file(onnx_dir: str | Path, int8: bool = False) -> str:
    """The model file to run: the .onnx file, or the .ort file if there is no .onnx."""
    onnx_name = MODEL_FILES[int8]
    ort_name = onnx_name.replace(".onnx", ".ort")
    return ort_name if not (Path(onnx_dir) / onnx_name).is_file() and \
        (Path(onnx_dir) / ort_name).is_file() else onnx_name


def read_spec(onnx_dir: str | Path) -> dict:
    """The export manifest, or the fields it would hold read from config.json."""
    folder = Path(onnx_dir)
    if (folder / MANIFEST).is_file():
        return json.loads((folder / MANIFEST).read_text())
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not an edge-c2i export (no {MANIFEST} or config.json)")
    config = json.loads((folder / "config.json").read_text())
    heads = config["num_attention_heads"]
    eos = config.get("eos_token_id")
    return {
        "num_layers": config["num_hidden_layers"],
        "num_kv_heads": config.get("num_key_value_heads", heads),
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "eos_token_id": eos if isinstance(eos, list) else [eos] if eos is not None else [],
        "bos_token_id": config.get("bos_token_id"),
        "add_bos_token": None,
    }


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


class OnnxLM:
    """A causal LM exported by ``edge-c2i export``, run with its KV cache (batch size 1)."""

    def __init__(self, onnx_dir: str | Path, threads: int = 1, model_file: str = "model.onnx"):
        self.folder = Path(onnx_dir)
        path = self.folder / model_file
        if not path.is_file():
            raise UserError(f"no {model_file} in {self.folder}; export with `edge-c2i export`")
        if not (self.folder / "tokenizer.json").is_file():
            raise UserError(f"no tokenizer.json in {self.folder}")
        self.spec = read_spec(self.folder)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.has_position_ids = "position_ids" in inputs
        first = inputs[self.past_names[0]]
        self.kv_dtype = _NUMPY_TYPES.get(first.type, np.float32)
        self.kv_heads, self.head_dim = self.spec["num_kv_heads"], self.spec["head_dim"]
        eos = self.spec.get("eos_token_id")
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    # ------------------------------------------------------------------ tokens

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids; with ``special`` the tokenizer's template, plus a BOS if the manifest asks."""
        ids = self.tokenizer.encode(text, add_special_tokens=special).ids
        bos = self.spec.get("bos_token_id")
        if special and self.spec.get("add_bos_token") and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if self.spec.get("clean_up_tokenization_spaces"):
            for old, new in _CLEANUP:
                text = text.replace(old, new)
        return text

    # ------------------------------------------------------------------ forward

    def empty_cache(self) -> KVCache:
        shape = (1, self.kv_heads, 0, self.head_dim)
        return KVCache([np.zeros(shape, self.kv_dtype) for _ in self.past_names], 0)

    def step(self, ids: list[int], cache: KVCache | None = None) -> tuple[np.ndarray, KVCache]:
        """Logits (len(ids) x vocab) of ``ids`` following ``cache``, and the extended cache."""
        cache = cache or self.empty_cache()
        total = cache.length + len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64),
                "attention_mask": np.ones((1, total), dtype=np.int64)}
        if self.has_position_ids:
            feed["position_ids"] = np.arange(cache.length, total, dtype=np.int64)[None]
        feed.update(zip(self.past_names, cache.arrays))
        logits, *present = self.session.run(["logits", *self.present_names], feed)
        return logits[0], KVCache(present, total)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ``ids`` (one pass, empty cache)."""
        return self.step(ids)[0]

    def greedy(self, ids: list[int], max_new_tokens: int = 16) -> list[int]:
        """Greedy continuation of ``ids``: prefill once, then one token a step; stops at EOS."""
        logits, cache = self.step(ids)
        out: list[int] = []
        while True:
            out.append(int(logits[-1].argmax()))
            if out[-1] in self.eos_ids or len(out) >= max_new_tokens:
                return out
            logits, cache = self.step(out[-1:], cache)

    def generate(self, prompt: str, max_new_tokens: int = 16) -> str:
        """Greedy continuation of ``prompt`` as text (special tokens dropped)."""
        return self.decode(self.greedy(self.encode(prompt), max_new_tokens))

    # ------------------------------------------------------------------ scoring

    def context_and_answer(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """As edge_c2i.evaluate.encode: a trailing prompt space moves into the answer."""
        prompt, answer = split_answer(prompt, answer)
        ctx = self.encode(prompt)
        if not ctx:  # an empty prompt still needs one token to predict from
            bos = self.spec.get("bos_token_id")
            ctx = [bos if bos is not None else min(self.eos_ids)]
        return ctx, self.encode(answer, special=False)

    def answer_logprob(self, last_logits: np.ndarray, cache: KVCache, answer: list[int]) -> float:
        """log p(answer | context) from the context's last logits and cache."""
        if not answer:
            raise UserError("an answer encodes to no tokens; cannot score it")
        total = float(log_softmax(last_logits)[answer[0]])
        if len(answer) > 1:
            logits, _ = self.step(answer[:-1], cache)
            total += float(log_softmax(logits)[np.arange(len(answer) - 1), answer[1:]].sum())
        return total


def score_examples(lm: OnnxLM, examples: list[Example]) -> dict:
    """Accuracy, loss and n of ``lm`` on ``examples`` (edge_c2i.evaluate's metrics)."""
    if not examples:
        raise UserError("no examples to evaluate")
    correct, loss = 0, 0.0
    for ex in examples:
        answers = ex.choices if ex.choices is not None else (ex.answer,)
        ctx, _ = lm.context_and_answer(ex.prompt, answers[0])
        logits, cache = lm.step(ctx)
        last = logits[-1]
        encoded = [lm.context_and_answer(ex.prompt, a)[1] for a in answers]
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
