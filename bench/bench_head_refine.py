"""Where a 4-bit ranking puts the best logits: what ``export --head-refine N`` computes exactly.

    python bench/bench_head_refine.py   # writes bench/results/head_refine.json, prints a table

``--head-refine N`` (export/int4.py, _refined_head_nodes) ranks the vocabulary with a 4-bit
product of the high halves of the 8-bit table a tied LM head and the embedding share, and
computes the N best logits of that ranking exactly; every other logit keeps the ranking's
value.  So greedy decoding is exact wherever the exact best logit is among the ranking's N,
and sampling sees exact values wherever its candidates are.  For the dense packaged
SmolLM2-135M and Gemma-3-270M, at every position of the first CHUNKS x CHUNK tokens of this
checkout's README (English prose and tables, no download; the sha256 of the text is kept:
the README changes as the project does), teacher forced through the PyTorch model:

- the exact logits: the final hidden states times the 8-bit table as export writes it
  (int4._q8_table, blocks of HEAD_BLOCK), in float64;
- the refined head: the same hidden states through the head export writes with
  ``--head-refine N`` (int4.quantize_tied_head on a graph of the tied head alone), in ONNX
  Runtime, one thread: its logits and the ids of its ranking's best N;
- per N: the share of positions where the exact best 1, 4 and 16 tokens are all among the
  ranking's best N, and the perplexity of the text's next tokens under the refined head's
  logits against the exact 8-bit table's (what scoring given text reads: the refined head
  is for generation).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_result

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("smollm2-135m", "gemma3-270m")
CHUNKS, CHUNK = 6, 256
REFINES = (16, 32, 64, 128)
BEST = (1, 4, 16)
COLUMNS = [("model", "model"), ("refine", "N (--head-refine)"), ("positions", "positions"),
           *((f"best{b}_in", f"exact best {b} among the ranking's N") for b in BEST),
           ("ppl_8bit_head", "perplexity, 8-bit head"), ("ppl_refined", "perplexity, refined")]


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row (float64)."""
    top = logits.max(1, keepdims=True)
    norm = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
    return norm - logits[np.arange(len(targets)), targets]


def head_session(table: np.ndarray, refine: int):
    """ONNX Runtime session of the export's own tied head (int4.quantize_tied_head, blocks of
    HEAD_BLOCK) with ``refine``: outputs the logits, the ranking's values and its best ids."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edge_c2i.export.int4 import HEAD_BLOCK, quantize_tied_head

    vocab, h = table.shape
    head = "/lm_head/FusedMatMul"  # as export/graph.py writes a tied head
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["embedded"], name="/embed/Gather"),
         helper.make_node("FusedMatMul", ["x", "table"], ["logits"], name=head,
                          domain="com.microsoft", alpha=1.0, transB=1)],
        "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, h]),
                 helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, vocab])],
        [numpy_helper.from_array(table, "table")])
    block = quantize_tied_head(graph, HEAD_BLOCK, refine)
    graph.output.extend([
        helper.make_tensor_value_info(f"{head}_coarse", TensorProto.FLOAT, [1, None, vocab]),
        helper.make_tensor_value_info(f"{head}_ids", TensorProto.INT64, [1, None, refine])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options), block


def measure(name: str) -> tuple[list[dict], str]:
    import torch

    from edge_c2i.export.int4 import _q8_table
    from edge_c2i.models import load_model

    torch.set_num_threads(1)
    model, tok = load_model(name)
    ids = tok((ROOT / "README.md").read_text(encoding="utf-8"))["input_ids"][:CHUNKS * CHUNK + 1]
    table_ = model.get_output_embeddings().weight.detach().numpy()
    sessions = {}
    for n in REFINES:
        sessions[n], block = head_session(table_, n)
    codes, scale = _q8_table(table_, block)
    exact_table = ((codes.astype(np.float64) - 128) * scale[..., None]).reshape(table_.shape)
    hits = {(n, b): [] for n in REFINES for b in BEST}
    nll = {n: [] for n in (0, *REFINES)}  # 0: the 8-bit head
    for start in range(0, CHUNKS * CHUNK, CHUNK):
        print(f"{name}: positions {start}-{start + CHUNK}", file=sys.stderr)
        with torch.no_grad():
            out = model(torch.tensor([ids[start:start + CHUNK]]), output_hidden_states=True)
        hidden = out.hidden_states[-1][0].float().numpy()  # after the final norm
        exact = hidden.astype(np.float64) @ exact_table.T
        best = np.argsort(-exact, axis=1)[:, :max(BEST)]
        targets = np.array(ids[start + 1:start + CHUNK + 1])  # the next tokens of the text
        nll[0].append(_nll(exact, targets))
        feed = {"x": hidden[None], "ids": np.zeros((1, len(hidden)), np.int64)}
        for n, session in sessions.items():
            refined, _, ranked = (a[0] for a in session.run(None, feed))
            for b in BEST:
                hits[n, b] += [set(best[i, :b]) <= set(ranked[i]) for i in range(len(best))]
            nll[n].append(_nll(refined.astype(np.float64), targets))
    ppl = {n: float(np.exp(np.concatenate(v).mean())) for n, v in nll.items()}
    rows = [{"model": name, "refine": n, "positions": len(hits[n, 1]), "block": block,
             **{f"best{b}_in": float(np.mean(hits[n, b])) for b in BEST},
             "ppl_8bit_head": ppl[0], "ppl_refined": ppl[n]} for n in REFINES]
    return rows, hashlib.sha256(tok.decode(ids[:CHUNKS * CHUNK]).encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args()
    rows, texts, t0 = [], {}, time.perf_counter()
    for name in args.models:
        found, texts[name] = measure(name)
        rows += found
        write_result("head_refine", {"text": "README.md", "chunks": CHUNKS,
                                     "chunk_tokens": CHUNK, "text_sha256": texts,
                                     "threads": 1, "seconds": round(time.perf_counter() - t0),
                                     "rows": rows})
    print(table(rows, COLUMNS))


if __name__ == "__main__":
    main()
