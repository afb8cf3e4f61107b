#!/usr/bin/env python3
"""Write the JVM-test fixtures of android_demo from the real model (re-runnable).

    python3 android_demo/tools/make_fixtures.py [MODEL_DIR]

MODEL_DIR defaults to $EDGE_C2I_HOME/models/smollm2-135m (EDGE_C2I_HOME defaults
to ~/.cache/edge-c2i). It writes, under app/src/test/resources/fixtures/:

- tokenizer_cases.json: texts with the ids of `tok(text)["input_ids"]` and their decodes;
- generation.json: for a few prompts, the prompt ids, the greedy ids of
  `model.generate(..., do_sample=False, use_cache=True)` and, for each generation
  step, the top-5 (token id, logit) pairs of the logits that chose the token.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "app" / "src" / "test" / "resources" / "fixtures"
MAX_NEW_TOKENS = 16
TOP_K = 5


def chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = [
    "The capital of France is",
    chat("What is the capital of France? Answer in one word."),  # ends with EOS
    chat("What is 2+2?"),  # ends with EOS
    "def add(a, b):",
    "1, 2, 3, 4,",
]

TEXTS = [
    "",
    "Hello",
    "Hello world",
    "Hello, world!",
    " leading space",
    "trailing space ",
    "  two leading and two trailing  ",
    "   ",
    "line one\nline two\n",
    "\n\nblank lines\n\n\n",
    "tabs\tand\r\nwindows newlines\r\n",
    "numbers 0 12 345 6789 3.14159 -42 1,000,000",
    "2024-01-31T12:34:56Z",
    "I'm sure it's fine, we'll see; they'd've LIKED it. DON'T SHOUT'S",
    "Héllo wörld, ça va? Ünïcödé ñ",
    "日本語のテキストと中文文本",
    "Привет, мир! Γειά σου κόσμε",
    "مرحبا بالعالم",
    "emoji 🙂👍🏽 👨‍👩‍👧 🇫🇷",
    "non\u00a0breaking\u2009thin\u3000ideographic spaces",
    "zero\u200bwidth and combining e\u0301",
    "def f(x):\n    return x ** 2  # square\n",
    '{"json": [1, 2, {"a": null}], "s": "q\\"uote"}',
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "special<|im_end|>inline<|endoftext|>tokens",
    "<|im_sta partial special <repo_name>",
    "a" * 40 + " " + "ab" * 20,
    "$%^&*()_+-=[]{}|;:',.<>/?`~",
    "spaces before punctuation , . ? ! and is n't , I 'm , it 's",  # clean_up_tokenization_spaces
] + PROMPTS


def model_dir() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    home = Path(os.environ.get("EDGE_C2I_HOME", Path.home() / ".cache" / "edge-c2i"))
    return home / "models" / "smollm2-135m"


def tokenizer_cases(tok) -> list[dict]:
    cases = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        cases.append(
            {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    return cases


@torch.no_grad()
def generation_cases(tok, model, eos_ids: list[int]) -> list[dict]:
    cases = []
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(
            **enc,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            use_cache=True,
            eos_token_id=eos_ids,
            pad_token_id=eos_ids[0],
            output_logits=True,
            return_dict_in_generate=True,
        )
        prompt_ids = enc["input_ids"][0].tolist()
        generated = out.sequences[0, len(prompt_ids) :].tolist()
        steps = []
        for logits, chosen in zip(out.logits, generated):
            values, ids = torch.topk(logits[0].float(), TOP_K)
            pairs = [[int(i), round(float(v), 5)] for i, v in zip(ids, values)]
            assert pairs[0][0] == chosen and pairs[0][1] > pairs[1][1], (prompt, pairs, chosen)
            steps.append(pairs)
        assert len(steps) == len(generated)
        cases.append(
            {
                "prompt": prompt,
                "prompt_ids": prompt_ids,
                "generated_ids": generated,
                "text": tok.decode(generated, skip_special_tokens=True),
                "steps": steps,
            }
        )
        print(f"  {prompt!r} -> {tok.decode(generated)!r}")
    return cases


def write(path: Path, data: dict) -> None:
    """JSON with one case per line: small, and readable in a diff."""
    head = {k: v for k, v in data.items() if k != "cases"}
    lines = [json.dumps(case, ensure_ascii=False) for case in data["cases"]]
    text = (
        json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
    )
    assert json.loads(text) == data
    path.write_text(text)


def main() -> None:
    folder = model_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos)
    OUT.mkdir(parents=True, exist_ok=True)

    tok_out = {
        "model": folder.name,
        "clean_up_tokenization_spaces": bool(tok.clean_up_tokenization_spaces),
        "cases": tokenizer_cases(tok),
    }
    write(OUT / "tokenizer_cases.json", tok_out)

    gen_out = {
        "model": folder.name,
        "vocab_size": model.config.vocab_size,
        "eos_token_ids": eos_ids,
        "max_new_tokens": MAX_NEW_TOKENS,
        "cases": generation_cases(tok, model, eos_ids),
    }
    write(OUT / "generation.json", gen_out)
    print(f"wrote {OUT}/tokenizer_cases.json and generation.json")


if __name__ == "__main__":
    main()
