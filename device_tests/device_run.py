"""Device side: run an exported model the way a phone or a board runs it.

    python device_tests/device_run.py ONNX_DIR MODEL_FILE [--threads 1] [--max-memory-mb N]
        [--examples N]

ONNX Runtime only (this process never imports torch), a hard address-space cap
(RLIMIT_AS) set before anything loads, one thread by default. Prints one JSON
object: the outputs for the reference prompts, latency, peak RSS, task accuracy.

It imports edge_c2i.export.runtime and edge_c2i.tasks: edge-c2i installed (on a board,
``pip install --no-deps`` plus onnxruntime, tokenizers and numpy: see the README), or the
package layout on PYTHONPATH (arm64/run_arm64.sh stages one).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx_dir")
    ap.add_argument("model_file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-memory-mb", type=int, default=0)
    ap.add_argument("--examples", type=int, default=0,
                    help="score only the first N of the reference's task examples "
                         "(default 0: all of them, as many as the reference has)")
    args = ap.parse_args()
    if args.max_memory_mb:
        cap = args.max_memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    import numpy as np

    from edge_c2i.export.runtime import OnnxLM, score_examples
    from edge_c2i.tasks import load_task, split

    with open(f"{args.onnx_dir}/device_reference.json") as f:
        ref = json.load(f)
    t = time.perf_counter()
    lm = OnnxLM(args.onnx_dir, args.threads, args.model_file)
    load_s = time.perf_counter() - t
    prompts = []
    for r in ref["prompts"]:
        last = lm.logits(r["ids"])[-1]
        greedy = lm.greedy(r["ids"], len(r["greedy"]))
        want = np.array(r["last_logits"], dtype=np.float32)
        corr = float(np.corrcoef(last, want)[0, 1])
        # where the host's first greedy token stands in this model's logits (1 = its argmax)
        rank = int((last > last[r["greedy"][0]]).sum()) + 1
        prompts.append({"prompt": r["prompt"], "greedy": list(map(int, greedy)),
                        "max_abs_diff": float(np.abs(last - want).max()), "corr": corr,
                        "host_first_token_rank": rank})
    # latency: prefill of 128 tokens, then one token a step
    ids = (ref["prompts"][0]["ids"] * 64)[:128]
    t = time.perf_counter()
    logits, cache = lm.step(ids)
    prefill_s = time.perf_counter() - t
    t = time.perf_counter()
    steps = 16
    for _ in range(steps):
        logits, cache = lm.step([int(logits[-1].argmax())], cache)
    per_token_s = (time.perf_counter() - t) / steps
    n = min(args.examples, ref["examples"]) if args.examples > 0 else ref["examples"]
    examples = split(load_task(ref["task"])).test[:n]
    task = score_examples(lm, examples)
    print(json.dumps({
        "model_file": args.model_file, "threads": args.threads, "cap_mb": args.max_memory_mb,
        "load_s": load_s, "prefill_128_s": prefill_s, "per_token_s": per_token_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_imported": "torch" in sys.modules, "task": task, "prompts": prompts,
    }))


if __name__ == "__main__":
    main()
