"""Host side (PyTorch): the reference outputs a device run is checked against.

    python device_tests/make_reference.py ONNX_DIR --model ADAPTED_OR_MODEL [--examples 100]

Writes ONNX_DIR/device_reference.json: for fixed prompts, the prompt ids, the
PyTorch greedy tokens (KV cache) and the logits at the last prompt position;
and the PyTorch accuracy and loss on the first N test examples of the task.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edge_c2i.evaluate import evaluate
from edge_c2i.models import load_model
from edge_c2i.tasks import load_task, split

PROMPTS = ["The capital of France is",
           ("On June 2017, the following claim was made: The Eiffel Tower is in Paris.\n"
            "Q: Was this claim true or false?\nA:"), "One, two, three,"]
TASK = "bundled:continents"
NEW_TOKENS = 12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx_dir")
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default=TASK)
    ap.add_argument("--examples", type=int, default=100)
    args = ap.parse_args()
    model, tok = load_model(args.model)
    eos = model.generation_config.eos_token_id
    refs = []
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            last = model(torch.tensor([ids])).logits[0, -1]
            out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id)
        refs.append({"prompt": prompt, "ids": ids, "greedy": out[0, len(ids):].tolist(),
                     "last_logits": [round(x, 5) for x in last.tolist()]})
    examples = split(load_task(args.task)).test[: args.examples]
    host = evaluate(model, tok, examples)
    out = Path(args.onnx_dir) / "device_reference.json"
    out.write_text(json.dumps({"task": args.task, "examples": args.examples, "host": host,
                               "prompts": refs}))
    print(f"reference written: {out}")


if __name__ == "__main__":
    main()
