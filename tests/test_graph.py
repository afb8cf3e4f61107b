"""The fused decoder graph (export/graph.py) against PyTorch, architecture by architecture.

Tiny random configs cover what the packaged models do not (an untied head, q/k/v biases,
Qwen3's q/k norms, a sliding window shorter than the prompt, local and global rotary tables,
reduced matrices); the real SmolLM2 and Gemma-3 exports are checked by test_export.py and by every
export's parity check.  Each graph runs a 12-token prompt in two chunks and then decodes
token by token from its own cache, and must give PyTorch's logits at every position.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge_c2i.errors import EdgeC2IError
from edge_c2i.export import graph as fused

PROMPT = 12


def _tiny(kind: str, **extra):
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        GraniteConfig,
        GraniteForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Olmo2Config,
        Olmo2ForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        SmolLM3Config,
        SmolLM3ForCausalLM,
    )

    torch.manual_seed(0)
    common = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
              "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 128}
    common.update({k: extra.pop(k) for k in list(extra) if k in common})  # sizes overridden
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, **extra))
    elif kind == "qwen2":  # q/k/v biases
        model = Qwen2ForCausalLM(Qwen2Config(**common, **extra))
    elif kind == "qwen3":  # per-head q/k norms; a head size other than hidden / heads
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=32, **extra))
    elif kind == "olmo2":  # norms after the attention and the MLP, q/k normed over all heads
        model = Olmo2ForCausalLM(Olmo2Config(**common, pad_token_id=0, **extra))
    elif kind == "smollm3":  # no rotary on every fourth layer (here: the last of three)
        model = SmolLM3ForCausalLM(SmolLM3Config(**common, pad_token_id=0,
                                                 no_rope_layer_interval=3, **extra))
    elif kind == "granite":  # scalars on the embeddings, residual branches, logits, attention
        model = GraniteForCausalLM(GraniteConfig(
            **common, embedding_multiplier=6.0, residual_multiplier=0.3, logits_scaling=4.0,
            attention_multiplier=0.06, **extra))
    elif kind == "mistral":  # Llama's layout; a sliding window off the config, every layer
        model = MistralForCausalLM(MistralConfig(**common, **extra))
    elif kind == "phi3":  # q/k/v in one matrix, gate/up in another
        model = Phi3ForCausalLM(Phi3Config(**common, pad_token_id=0, **extra))
    elif kind == "gemma3":
        cfg = Gemma3TextConfig(**common, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
                               layer_types=["sliding_attention", "full_attention",
                                            "sliding_attention"],
                               rope_local_base_freq=100.0, rope_theta=10000.0, **extra)
        model = Gemma3ForCausalLM(cfg)
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4))
    with torch.no_grad():  # norms away from 1 (and Gemma's from 0), so a wrong weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _reduce(model, layer: int, kind: str, rate: float, clusters: int = 1):
    """One matrix replaced by its factors, as adapt and compress do (factorize.reduce)."""
    from edge_c2i.factorize import reduce
    from edge_c2i.targets import get_target

    return reduce(model, get_target(model, layer, kind), rate, clusters=clusters)


def _session(model, tmp_path) -> ort.InferenceSession:
    """The fused graph of ``model`` in ONNX Runtime, one thread."""
    path = tmp_path / "model.onnx"
    fused.write(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(model, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX Runtime's logits, PyTorch's) over the prompt (2 chunks) and 4 decoded tokens."""
    session = _session(model, tmp_path)
    cfg = model.config
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = model.model.layers[0].self_attn.head_dim
    ids = torch.randint(3, cfg.vocab_size, (1, PROMPT + 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits[0].numpy()
    names = [o.name for o in session.get_outputs()]
    past = {f"past_key_values.{i}.{k}": np.zeros((1, kv, 0, head_dim), np.float32)
            for i in range(cfg.num_hidden_layers) for k in ("key", "value")}
    got, done = [], 0
    for chunk in (7, PROMPT - 7, 1, 1, 1, 1):
        feed = {"input_ids": ids[:, done:done + chunk].numpy(),
                "attention_mask": np.ones((1, done + chunk), np.int64),
                fused.KEEP_INPUT: np.array([0], np.int64), **past}  # every position
        logits, *present = session.run(None, feed)
        past = {n.replace("present.", "past_key_values."): p for n, p in zip(names[1:], present)}
        got.append(logits[0])
        done += chunk
    # not fed, the input keeps the last position only (as onnxruntime-genai runs the graph)
    empty = {n: np.zeros((1, kv, 0, head_dim), np.float32) for n in past}
    last, *_ = session.run(None, {"input_ids": ids[:, :PROMPT].numpy(),
                                  "attention_mask": np.ones((1, PROMPT), np.int64), **empty})
    assert last.shape == (1, 1, cfg.vocab_size)
    np.testing.assert_allclose(last[0, 0], want[PROMPT - 1], atol=1e-4, rtol=0)
    return np.concatenate(got), want


@pytest.mark.parametrize("kind, extra", [("llama", {}), ("llama", {"tie_word_embeddings": False}),
                                         ("qwen2", {}), ("qwen3", {}),
                                         ("qwen3", {"attention_bias": True}), ("gemma3", {}),
                                         ("granite", {}),
                                         ("granite", {"tie_word_embeddings": True}),
                                         ("gemma3", {"final_logit_softcapping": 5.0}),
                                         ("gemma3", {"attn_logit_softcapping": 3.0}),
                                         ("mistral", {"sliding_window": 4}),
                                         ("smollm3", {}), ("olmo2", {}),
                                         ("phi3", {}),
                                         ("phi3", {"sliding_window": 4}),
                                         ("phi3", {"partial_rotary_factor": 0.5,  # Phi-4-mini's
                                                   "num_attention_heads": 2,
                                                   "num_key_value_heads": 1})])
def test_fused_graph_matches_pytorch(kind, extra, tmp_path):
    model = _tiny(kind, **extra)
    assert fused.unsupported(model) is None
    got, want = _run(model, tmp_path)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_granite_multipliers_matter(tmp_path):
    """The match above would not see a multiplier left out if it changed nothing: with all of
    them at 1 (and the attention's at 1/sqrt(head size)) the logits move."""
    model = _tiny("granite")
    got, _ = _run(model, tmp_path)
    config = model.config
    config.embedding_multiplier = config.residual_multiplier = config.logits_scaling = 1.0
    model.model.embedding_multiplier = 1.0
    for layer in model.model.layers:
        layer.residual_multiplier = 1.0  # transformers reads the modules' copies
        layer.self_attn.scaling = layer.self_attn.head_dim ** -0.5
    plain, want = _run(model, tmp_path)
    assert np.abs(plain - got).max() > 1e-2
    np.testing.assert_allclose(plain, want, atol=1e-4, rtol=0)


def test_smollm3_layers_without_rotary_matter(tmp_path):
    """SmolLM3's NoPE layers: with rotary on every layer the logits move (and match PyTorch)."""
    model = _tiny("smollm3")
    assert [layer.self_attn.use_rope for layer in model.model.layers] == [1, 1, 0]
    got, _ = _run(model, tmp_path)
    model.model.layers[2].self_attn.use_rope = 1
    rotated, want = _run(model, tmp_path)
    assert np.abs(rotated - got).max() > 10 * 1e-4  # ten times the tolerance of the match
    np.testing.assert_allclose(rotated, want, atol=1e-4, rtol=0)


def test_phi3_sliding_window_matters(tmp_path):
    """Phi-3 reads its window off the config, for every layer: without it the logits move
    (and still match PyTorch)."""
    model = _tiny("phi3", sliding_window=4)
    got, _ = _run(model, tmp_path)
    model.config.sliding_window = None
    wider, want = _run(model, tmp_path)
    assert np.abs(wider - got).max() > 1e-2
    np.testing.assert_allclose(wider, want, atol=1e-4, rtol=0)


def test_mistral_sliding_window_matters(tmp_path):
    """Mistral's attention has no window of its own: the config's applies to every layer
    (without it the logits move, and still match PyTorch)."""
    model = _tiny("mistral", sliding_window=4)
    assert not hasattr(model.model.layers[0].self_attn, "sliding_window")
    got, _ = _run(model, tmp_path)
    model.config.sliding_window = None
    wider, want = _run(model, tmp_path)
    assert np.abs(wider - got).max() > 1e-2
    np.testing.assert_allclose(wider, want, atol=1e-4, rtol=0)


def test_gemma3_sliding_window_matters(tmp_path):
    """The check above would not see a wrong window if the window made no difference: with
    one as long as the prompt, the logits must change (and still match PyTorch)."""
    model = _tiny("gemma3")
    got, _ = _run(model, tmp_path)
    model.config.sliding_window = 64  # transformers builds the mask from the config
    for layer in model.model.layers:
        layer.self_attn.sliding_window = 64
    wider, want = _run(model, tmp_path)
    assert np.abs(wider - got).max() > 1e-2
    np.testing.assert_allclose(wider, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_a_batch_padded_on_the_right_gives_each_sequence_its_own_logits(kind, tmp_path):
    """Two prompts (12 and 7 tokens) in one batch, the shorter padded on the right as
    onnxruntime-genai pads it, then 3 decoded tokens each: every step's logits (the default,
    one position per sequence) are those of each sequence alone in PyTorch, the shorter
    one's from its own last token, not from the pad in the input's last column."""
    model = _tiny(kind)
    session = _session(model, tmp_path)
    cfg = model.config
    head_dim = model.model.layers[0].self_attn.head_dim
    rng = np.random.default_rng(2)
    seqs = [list(rng.integers(3, cfg.vocab_size, n)) for n in (PROMPT, 7)]
    new = [list(rng.integers(3, cfg.vocab_size, 3)) for _ in seqs]
    ids = np.array([seqs[0], seqs[1] + [0] * (PROMPT - 7)], np.int64)
    mask = np.array([[1] * PROMPT, [1] * 7 + [0] * (PROMPT - 7)], np.int64)
    names = [o.name for o in session.get_outputs()]
    past = {f"past_key_values.{i}.{k}": np.zeros((2, cfg.num_key_value_heads, 0, head_dim),
                                                   np.float32)
            for i in range(cfg.num_hidden_layers) for k in ("key", "value")}
    for step in range(4):
        logits, *present = session.run(None, {"input_ids": ids, "attention_mask": mask, **past})
        assert logits.shape == (2, 1, cfg.vocab_size)
        for row, seq in enumerate(seqs):
            full = seq + new[row][:step]
            with torch.no_grad():
                want = model(torch.tensor([full])).logits[0, -1].numpy()
            np.testing.assert_allclose(logits[row, 0], want, atol=1e-4, rtol=0,
                                       err_msg=f"sequence {row}, step {step}")
        past = {n.replace("present.", "past_key_values."): p for n, p in zip(names[1:], present)}
        if step < 3:
            ids = np.array([[new[0][step]], [new[1][step]]], np.int64)
            mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)


def test_reduced_matrices_stay_factored_and_exact(tmp_path):
    import onnx

    model = _tiny("llama")
    _reduce(model, 1, "out", 0.125)  # down_proj 64 x 96 at rank 8
    _reduce(model, 1, "q", 0.1875, clusters=2)  # q_proj: two groups of rows, rank 6 each
    got, want = _run(model, tmp_path)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    graph = onnx.load(tmp_path / "model.onnx").graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    down = sorted(shapes[i] for n in graph.node if n.name.startswith("/model/layers.1/mlp/down_proj/")
                  for i in n.input if i in shapes and len(shapes[i]) == 2)
    assert down == [(8, 64), (96, 8)]
    q_nodes = [n for n in graph.node if n.name.startswith("/model/layers.1/self_attn/q_proj/")]
    assert [n.op_type for n in q_nodes].count("MatMul") == 3 and "Gather" in {n.op_type for n in q_nodes}
    # the other layers' q/k/v are one product
    assert any(n.name == "/model/layers.0/self_attn/qkv_proj/MatMul" for n in graph.node)


def test_an_architecture_without_a_fused_graph_is_named():
    assert "gpt2" in fused.unsupported(_tiny("gpt2"))
    # a head size ONNX Runtime's attention kernel refuses (test_runtime_cli exports such a
    # model with graph="auto": it goes through optimum)
    assert "multiple of 16" in fused.unsupported(_tiny("llama", head_dim=8))
    # Phi-4-mini rotates part of each head: 8 of 16 dimensions is not a size the kernel takes
    # (16 of 32, tested above, is)
    partial = _tiny("phi3", partial_rotary_factor=0.5)
    assert partial.model.rotary_emb.inv_freq.numel() == 4
    assert "multiples of 16, not 8" in fused.unsupported(partial)


def test_export_refuses_a_fused_graph_it_cannot_build(tmp_path):
    from edge_c2i.export.onnx_export import export_graph

    model = _tiny("gpt2")
    with pytest.raises(EdgeC2IError, match="--graph optimum"):
        export_graph(model, None, tmp_path, graph="fused")


def test_factors_reading_one_input_share_their_first_product(tmp_path):
    """q/k/v all reduced (and gate/up, one of them multi-subspace): their B's are one MatMul
    split among them, then each its own A's; the logits still match PyTorch."""
    import onnx

    model = _tiny("llama")
    for kind, rate in (("q", 0.125), ("k", 0.125), ("v", 0.1875), ("gate", 0.15625)):
        _reduce(model, 2, kind, rate)  # ranks 8 of 64, 4 and 6 of 32, 10 of 64
    _reduce(model, 2, "in", 0.15625, clusters=2)  # up_proj: two groups of 48 rows, rank 7 each
    got, want = _run(model, tmp_path)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    graph = onnx.load(tmp_path / "model.onnx").graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}

    def first(prefix):
        node = next(n for n in graph.node if n.name == prefix + "factors/MatMul")
        return shapes[node.input[1]]

    assert first("/model/layers.2/self_attn/qkv_proj/") == (64, 8 + 4 + 6)
    assert first("/model/layers.2/mlp/gate_up_proj/") == (64, 10 + 7 + 7)
    assert not any(n.name.startswith("/model/layers.2/self_attn/q_proj/MatMul") and
                   n.name.endswith("/MatMul") for n in graph.node)


def _adapted_folder(model, tmp_path, reduce: list[tuple] = ()):
    """``model`` saved as adapt saves it: a tokenizer trained for it (BOS 0, no EOS: every
    greedy run gives all its tokens), ``reduce``'s matrices as factors.  (folder, reductions)"""
    from conftest import byte_bpe_tokenizer

    from edge_c2i.adapted import save_adapted

    tokenizer = byte_bpe_tokenizer("The capital of France is Paris. Grüße aus Köln.")
    model.resize_token_embeddings(len(tokenizer))
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id = 0, None
    reductions = [_reduce(model, *args) for args in reduce]
    src = tmp_path / "model"
    save_adapted(model, tokenizer, src, reductions, info={"base_model": "tiny", "task": "-",
                                                          "method": "c2i"})
    return src, reductions


def _export_and_decode(model, tmp_path, reduce: list[tuple] = ()) -> dict:
    """``model`` saved as a folder (a tokenizer trained for it, ``reduce``'s matrices as
    factors, as adapt saves them), exported with int8 and int4 (parity checked); every file
    must decode in onnxruntime-genai as edge-c2i does.  Returns the manifest."""
    import json

    import onnxruntime_genai as og
    from conftest import genai_greedy

    from edge_c2i.export.onnx_export import export_model
    from edge_c2i.export.runtime import OnnxLM

    src, _ = _adapted_folder(model, tmp_path, reduce)
    manifest = export_model(str(src), tmp_path / "onnx", int8=True, int4=True)
    for filename in ("model.onnx", "model_int8.onnx", "model_int4.onnx"):
        config = og.Config(str(tmp_path / "onnx"))
        config.overlay(json.dumps({"model": {"decoder": {"filename": filename}}}))
        genai = og.Model(config)
        lm = OnnxLM(tmp_path / "onnx", 1, filename)
        ids = lm.prompt_ids("The capital of France")
        assert genai_greedy(genai, ids, 8) == lm.greedy(ids, 8), filename
    return manifest


def test_qwen3_exports_fused_and_runs_in_onnxruntime_genai(tmp_path):
    """Qwen3 (no packaged one: a tiny random model) through the whole `export`, its reduced
    q/k/v as factors; onnxruntime-genai, told its type by genai_config.json, decodes it."""
    manifest = _export_and_decode(_tiny("qwen3"), tmp_path, [(1, "k", 0.25)])
    assert manifest["graph"]["kind"] == "fused" and manifest["model_type"] == "qwen3"


def test_granite_exports_fused_and_runs_in_onnxruntime_genai(tmp_path):
    """Granite's multipliers in the fused graph, its down_proj reduced; onnxruntime-genai
    (type granite) decodes every file with edge-c2i's greedy tokens."""
    manifest = _export_and_decode(_tiny("granite"), tmp_path, [(1, "out", 0.25)])
    assert manifest["graph"]["kind"] == "fused" and manifest["model_type"] == "granite"


@pytest.mark.parametrize("kind", ["olmo2", "smollm3"])
def test_types_onnxruntime_genai_does_not_name_export_fused_and_run_as_its_decoder(kind,
                                                                                   tmp_path):
    """OLMo2 and SmolLM3 (not in onnxruntime-genai 0.18's list): fused, a matrix reduced, and
    decoded by its generic decoder with edge-c2i's greedy tokens, every file."""
    import json

    manifest = _export_and_decode(_tiny(kind), tmp_path, [(1, "q", 0.25)])
    assert manifest["graph"]["kind"] == "fused" and manifest["model_type"] == kind
    genai = json.loads((tmp_path / "onnx" / "genai_config.json").read_text())
    assert genai["model"]["type"] == "decoder"


def test_phi3_exports_fused_with_its_packed_matrices_reduced(tmp_path):
    """Phi-3's packed q/k/v (two groups of rows) and gate/up reduced to factors (the scan's
    "qkv" and "in" types) stay factored in the fused graph, parity checked; onnxruntime-genai
    decodes every file."""
    from edge_c2i.factorize import LowRankLinear

    model = _tiny("phi3")
    manifest = _export_and_decode(model, tmp_path, [(1, "qkv", 0.25, 2), (0, "in", 0.25)])
    assert manifest["graph"]["kind"] == "fused" and manifest["model_type"] == "phi3"
    assert isinstance(model.model.layers[0].mlp.gate_up_proj, LowRankLinear)
    assert manifest["parity"]["model.onnx"]["max_abs_logit_diff"] < 1e-3


@pytest.mark.parametrize("name, reduce", [
    ("falcon", [(1, "qkv", 0.25, 2), (0, "out", 0.25)]),  # packed q/k/v, one key/value head
    ("olmo2", [(1, "k", 0.25), (0, "gate", 0.25)]),  # norms after q/k, before the rotary
])
def test_an_architecture_outside_the_table_adapts_and_exports(name, reduce, tmp_path):
    """A type no table names (its layout read off its modules): reduced as adapt does, saved,
    exported by optimum with parity; ONNX Runtime's greedy tokens are PyTorch's."""
    import json

    import onnxruntime_genai as og
    import transformers
    from conftest import TINY, genai_greedy

    from edge_c2i.adapted import FACTOR_TYPES, load_adapted
    from edge_c2i.export.onnx_export import export_model
    from edge_c2i.export.runtime import OnnxLM
    from edge_c2i.targets import get_target

    torch.manual_seed(0)
    cls_name, kw = TINY[name]
    hf_config = getattr(transformers, cls_name)(**kw, initializer_range=0.2)  # tokens that vary
    model = transformers.AutoModelForCausalLM.from_config(hf_config)
    src, reductions = _adapted_folder(model.eval(), tmp_path, reduce)
    loaded = load_adapted(src)
    for r in reductions:  # the factors back where the inferred layout puts them
        assert isinstance(loaded.get_submodule(get_target(loaded, r.layer, r.type).name),
                          FACTOR_TYPES)
    manifest = export_model(str(src), tmp_path / "onnx", int8=True)
    assert manifest["graph"]["kind"] == "optimum" and manifest["model_type"] == name
    assert manifest["parity"]["model.onnx"]["max_abs_logit_diff"] < 1e-3
    lm = OnnxLM(tmp_path / "onnx", 1, "model.onnx")
    ids = lm.prompt_ids("The capital of France")
    with torch.no_grad():
        want = loaded.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert lm.greedy(ids, 8) == want[0, len(ids):].tolist()
    # onnxruntime-genai knows neither type: its generic decoder runs the export
    genai = json.loads((tmp_path / "onnx" / "genai_config.json").read_text())
    assert genai["model"]["type"] == "decoder"
    config = og.Config(str(tmp_path / "onnx"))
    config.overlay(json.dumps({"model": {"decoder": {"filename": "model.onnx"}}}))
    assert genai_greedy(og.Model(config), ids, 8) == lm.greedy(ids, 8)


def _logits(path, model, ids: np.ndarray) -> np.ndarray:
    """Every position's logits of the graph at ``path`` on ``ids`` (1, n), from an empty cache."""
    cfg = model.config
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = model.model.layers[0].self_attn.head_dim
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            fused.KEEP_INPUT: np.array([0], np.int64),
            **{f"past_key_values.{i}.{k}": np.zeros((1, kv, 0, head_dim), np.float32)
               for i in range(cfg.num_hidden_layers) for k in ("key", "value")}}
    return session.run(["logits"], feed)[0][0]


@pytest.mark.parametrize("kind, extra", [("granite", {"tie_word_embeddings": True}),
                                         ("gemma3", {"final_logit_softcapping": 5.0})])
def test_a_tied_head_before_scaling_shares_one_8_bit_table(kind, extra, tmp_path):
    """int8 and int4 find a tied head by the table it reads, not by its writing ``logits``:
    Granite scales the logits after the head, Gemma soft-caps them.  The head and the
    embedding then share one 8-bit table (no fp32 copy of it is left)."""
    import onnx

    from edge_c2i.export.int4 import quantize_int4
    from edge_c2i.export.postprocess import quantize_int8

    model = _tiny(kind, **extra)
    fused.write(model, tmp_path / "model.onnx")
    ids = torch.randint(3, model.config.vocab_size, (1, PROMPT),
                        generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(ids).logits[0].numpy()
    vocab = model.config.vocab_size
    for quantize, name, corr in ((quantize_int8, "model_int8.onnx", 0.999),
                                 (quantize_int4, "model_int4.onnx", 0.9)):
        info = quantize(tmp_path / "model.onnx", tmp_path / name)
        assert info["lm_head_and_embedding"].startswith("shared 8-bit table"), info
        graph = onnx.load(tmp_path / name, load_external_data=False).graph
        table = sorted([vocab, model.config.hidden_size])
        assert not [t.name for t in graph.initializer
                    if t.data_type == onnx.TensorProto.FLOAT and sorted(t.dims) == table]
        got = _logits(tmp_path / name, model, ids.numpy())
        assert np.mean([np.corrcoef(g, w)[0, 1] for g, w in zip(got, want)]) > corr
