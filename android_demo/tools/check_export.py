#!/usr/bin/env python3
"""Run an `edge-c2i export` folder the way the app does, with Python onnxruntime.

    python3 android_demo/tools/check_export.py ONNX_DIR [model.ort|model.onnx|model_int8.onnx ...]

It mirrors OrtDecoder + GreedyGenerator (same inputs, empty past at the first step, presents
fed back as the past, argmax, stop at EOS or max) and compares the greedy ids with
app/src/test/resources/fixtures/generation.json, which were made with the PyTorch model.
A quantized model may differ from the fixtures after a few tokens: the check reports, it
does not judge those.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

FIXTURES = (
    Path(__file__).resolve().parent.parent / "app/src/test/resources/fixtures/generation.json"
)


def spec(folder: Path) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) as ModelSpec reads them: the manifest, then config.json."""
    sources = []
    for name in ("edge_c2i_export.json", "config.json"):
        if (folder / name).is_file():
            data = json.loads((folder / name).read_text())
            sources += (
                [data, data.get("config") or {}, data.get("model") or {}]
                if name.startswith("edge")
                else [data]
            )

    def find(*keys):
        for src in sources:
            for k in keys:
                if isinstance(src, dict) and src.get(k) is not None:
                    return src[k]
        return None

    heads = find("num_attention_heads")
    head_dim = find("head_dim") or find("hidden_size") // heads
    return (
        find("num_layers", "num_hidden_layers"),
        find("num_kv_heads", "num_key_value_heads") or heads,
        head_dim,
    )


def generate(
    sess: ort.InferenceSession, dims, prompt: list[int], eos: set[int], max_new: int
) -> list[int]:
    layers, kv_heads, head_dim = dims
    names = {i.name for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    cache: dict | None = None

    def step(tokens: list[int], past: int) -> np.ndarray:
        nonlocal cache
        total = past + len(tokens)
        feed = {
            "input_ids": np.array([tokens], np.int64),
            "attention_mask": np.ones((1, total), np.int64),
        }
        if "position_ids" in names:
            feed["position_ids"] = np.arange(past, total, dtype=np.int64)[None]
        if "use_cache_branch" in names:
            feed["use_cache_branch"] = np.array([past > 0])
        for i in range(layers):
            for kind in ("key", "value"):
                empty = np.zeros((1, kv_heads, 0, head_dim), np.float32)
                feed[f"past_key_values.{i}.{kind}"] = (
                    empty if cache is None else cache[f"present.{i}.{kind}"]
                )
        cache = dict(zip(outputs, sess.run(None, feed)))
        return cache["logits"][0, -1]

    out: list[int] = []
    logits, past = step(prompt, 0), len(prompt)
    while True:
        out.append(int(np.argmax(logits)))
        if out[-1] in eos or len(out) >= max_new:
            return out
        logits, past = step([out[-1]], past), past + 1


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    folder = Path(sys.argv[1])
    files = sys.argv[2:] or [f for f in ("model.ort", "model.onnx") if (folder / f).is_file()][:1]
    fixtures = json.loads(FIXTURES.read_text())
    dims = spec(folder)
    bad = 0
    for name in files:
        sess = ort.InferenceSession(str(folder / name))
        for case in fixtures["cases"]:
            got = generate(
                sess,
                dims,
                case["prompt_ids"],
                set(fixtures["eos_token_ids"]),
                fixtures["max_new_tokens"],
            )
            same = got == case["generated_ids"]
            bad += not same
            print(f"{name}: {'same' if same else 'DIFFERENT'} {case['prompt']!r} -> {got}")
    print(
        f"{bad} of {len(files) * len(fixtures['cases'])} generations differ from the PyTorch fixtures"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
