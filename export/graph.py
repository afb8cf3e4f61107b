"""A fused decoder graph, built from the model's own modules with ONNX Runtime's operators.

optimum traces the PyTorch model into ~7,400 nodes for SmolLM2 (every rotary product, mask
and KV concatenation spelled out); ONNX Runtime GenAI's model builder writes ~340, with
fused attention and norms, and decodes 1.4x faster at int8.  This module writes the same
kind of graph, reading each layer's modules, so that a reduced matrix stays the MatMuls of
its factors (``LowRankLinear``: two; ``MultiSubspaceLinear``: the stacked B, one per group,
a Gather back to the original row order) and int8/int4 quantize them like any weight.

Per layer: ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` (RMS norm,
with the residual add fused), q/k/v MatMuls, ``GroupQueryAttention`` (rotary embedding,
causal and sliding-window masks, and a KV cache that can share one buffer between past and
present, as onnxruntime-genai runs it), the output MatMul, the gated MLP (SiLU or tanh-GELU).
The cos/sin tables are computed in the graph from the model's own ``inv_freq`` up to the
current length (no 16-64 MB tables in the file).  A tied LM head reads the embedding table
transposed in place (``FusedMatMul``), as postprocess.share_tied_weights does for optimum's.

Inputs and outputs keep optimum's names without ``position_ids`` (positions follow from the
attention mask, batch entries left-aligned): ``input_ids``, ``attention_mask``,
``past_key_values.{i}.key/value`` -> ``logits``, ``present.{i}.key/value``; export.runtime and
onnxruntime-genai run either layout.  One more input, ``logits_to_keep`` (KEEP_INPUT, below),
with a default: the logits of the last position only unless it is fed (0: every position).

Architectures: Llama-style (``llama``, and the same layout under ``mistral``, ``qwen2``),
Qwen3 (``qwen3``: the Llama layout with per-head RMS norms of q and k before the rotary) and
Gemma-3 text (``gemma3_text``: q/k norms, sandwich norms, scaled embeddings, local and global
rotary tables, sliding-window layers).  ``unsupported(model)`` says why another model (or a
rotary scaling that depends on the length) goes through optimum instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17
LLAMA_LIKE = ("llama", "mistral", "qwen2",
              "smollm3")  # SmolLM3: every fourth layer without rotary (use_rope, "NoPE")
# Llama-style with scalars on the embeddings, on each block's two outputs before they join
# the residual, and on the logits (embedding_multiplier, residual_multiplier,
# logits_scaling; its attention_multiplier is the attention's scaling)
GRANITE = ("granite",)
# q/k/v in one matrix (qkv_proj, packed as GroupQueryAttention takes them) and gate/up in
# another (gate_up_proj, split), a sliding window on every layer where the config sets one
PACKED = ("phi3",)
# no norm before the attention or the MLP: each block's two outputs are normed before they
# join the residual, and q and k are normed over their whole width before the rotary
POST_NORM = ("olmo2",)
QK_NORM = ("qwen3",)  # Llama-style, with q_norm and k_norm over each head (Gemma-3 has them too)
GEMMA3 = ("gemma3_text",)
CONFIG_WINDOW = ("mistral",)  # a sliding window off the config, on every layer (as Phi-3)
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
STATIC_ROPE = ("default", "linear", "llama3", "yarn", "longrope_static")
# The LM head runs on each sequence's last KEEP_INPUT positions (transformers'
# ``logits_to_keep``; 0: all of them), 1 when the input is not fed: a prompt's logits are what
# sets a large vocabulary's peak memory (Gemma-3: 1 MB per prompt token), and
# onnxruntime-genai reads one row per sequence (it allocates that when the graph declares that
# length, which it does).  A batch is padded on the right (_last_positions).  export.runtime
# feeds 0 where it scores every position.
KEEP_INPUT = "logits_to_keep"


def unsupported(model) -> str | None:
    """Why ``model`` cannot be built as a fused graph (None: it can)."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_LIKE + GRANITE + PACKED + POST_NORM + QK_NORM + GEMMA3:
        return f"no fused graph for model type {model_type!r}"
    decoder = getattr(model, "model", None)
    if decoder is None or not hasattr(decoder, "layers") or not hasattr(model, "lm_head"):
        return "not a decoder with model.layers and lm_head"
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if act not in ACTIVATIONS:
        return f"no fused graph for the activation {act!r}"
    head_dim = decoder.layers[0].self_attn.head_dim
    if head_dim % 16:  # ONNX Runtime's CPU kernel refuses others at run time
        return f"GroupQueryAttention needs a head size that is a multiple of 16, not {head_dim}"
    for rotary in _rotaries(model).values():
        if getattr(rotary, "rope_type", "default") not in STATIC_ROPE:
            return f"rotary scaling {rotary.rope_type!r} depends on the length"
        half = rotary.inv_freq.numel()  # rotary_dim / 2: all of the head, or part (Phi-4-mini)
        if half < head_dim // 2 and half % 8:  # ONNX Runtime's kernel refuses others
            return f"GroupQueryAttention rotates part of a head only in multiples of 16, not {2 * half}"
    if getattr(config, "attn_logit_softcapping", None) and model_type not in GEMMA3:
        return "attention soft-capping outside Gemma"
    if any(_window(config, layer.self_attn) for layer in decoder.layers) \
            and model_type not in GEMMA3 + PACKED + CONFIG_WINDOW:
        return "sliding-window attention outside Gemma-3, Phi-3 and Mistral"
    return None


def _window(config, attn) -> int | None:
    """A layer's sliding window (None: it sees the whole past).  Gemma-3, Qwen2/3 and SmolLM3
    keep it on each layer's attention (None on full layers); Mistral and Phi-3 apply the
    config's to every layer (their attention has no such attribute)."""
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window if getattr(attn, "is_sliding", True) else None
    return getattr(config, "sliding_window", None)


def _rotaries(model) -> dict[str, object]:
    """The model's rotary modules: "global", and "local" for Gemma-3's sliding layers."""
    found = {"global": model.model.rotary_emb}
    if getattr(model.model, "rotary_emb_local", None) is not None:
        found["local"] = model.model.rotary_emb_local
    return found


class _Builder:
    """Nodes and initializers under unique names."""

    def __init__(self):
        self.nodes, self.inits, self.names = [], [], set()

    def _unique(self, name: str) -> str:
        base, n = name, 1
        while name in self.names:
            name, n = f"{base}_{n}", n + 1
        self.names.add(name)
        return name

    def const(self, name: str, array) -> str:
        from onnx import numpy_helper

        name = self._unique(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int | list[str] = 1,
           domain: str | None = None, **attrs) -> list[str]:
        from onnx import helper

        name = self._unique(name)
        if isinstance(outputs, int):
            outputs = [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name,
                                           domain=domain or "", **attrs))
        return outputs

    def one(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        return self.op(op_type, inputs, name, 1, **attrs)[0]


def _last_positions(b: _Builder, h: str, keep: str, mask_sum: str, total: str,
                    hidden: int) -> str:
    """Each sequence's last ``keep`` real positions of ``h`` (B x S x hidden; 0: all S).

    A batch of prompts of different lengths is padded on the right, as onnxruntime-genai pads
    it and as GroupQueryAttention reads it (a sequence's positions end at its mask's sum), so
    a shorter prompt's last token is not the input's last column: with P = total - S cached
    positions, sequence i's real tokens end at min(max(sum(mask_i) - P, 1), S).  A batch of
    one, or of prompts of one length, gets the last columns, as a plain slice would."""
    from onnx import TensorProto

    c = lambda name, value: b.const(f"model.last.{name}", np.array(value, np.int64))
    n = lambda op, ins, name, **kw: b.one(op, ins, f"/model/last/{name}", **kw)
    scalar = lambda x, name: n("Squeeze", [x, c("axes0", [0])], f"Squeeze_{name}")
    # every count below has shape [1], every per-sequence value shape [B]
    shape = n("Shape", ["input_ids"], "Shape")
    length = n("Gather", [shape, c("index1", [1])], "Gather_S", axis=0)  # S
    batch = n("Gather", [shape, c("index0", [0])], "Gather_B", axis=0)
    past = n("Sub", [total, length], "Sub_past")
    end = n("Sub", [mask_sum, past], "Sub_end")
    end = n("Min", [n("Max", [end, c("one", [1])], "Max_end"), length], "Min_end")
    some = n("Cast", [n("Greater", [keep, c("zero", [0])], "Greater")], "Cast_some",
             to=TensorProto.INT64)  # 1: the last keep positions; 0: all of them
    count = n("Add", [keep, n("Mul", [n("Sub", [c("one", [1]), some], "Sub_all"), length],
                              "Mul_all")], "Add_count")
    count = n("Min", [count, length], "Min_count")  # keep > S: all S, as a slice
    start = n("Add", [n("Sub", [length, count], "Sub_start"),
                      n("Mul", [n("Sub", [end, length], "Sub_shift"), some], "Mul_shift")],
              "Add_start")  # per sequence: its end - keep, or 0 for all
    zero, one = scalar(c("zero", [0]), "zero"), scalar(c("one", [1]), "one")  # (b.const's
    steps = n("Range", [zero, scalar(count, "count"), one], "Range")  # arrays are 1-d at least)
    index = n("Add", [n("Unsqueeze", [start, c("axes1", [1])], "Unsqueeze_start"),
                      n("Unsqueeze", [steps, c("axes0", [0])], "Unsqueeze_steps")], "Add_index")
    index = n("Max", [index, c("zero", [[0]])], "Max_index")  # B x keep
    rows = n("Range", [zero, scalar(n("Mul", [batch, length], "Mul_rows"), "rows"),
                       scalar(length, "S")], "Range_rows")
    index = n("Add", [index, n("Unsqueeze", [rows, c("axes1", [1])], "Unsqueeze_rows")],
              "Add_rows")
    flat = n("Reshape", [h, c("flat", [-1, hidden])], "Reshape")
    return n("Gather", [flat, index], "Gather", axis=0)


def _array(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _prefix(path: str) -> str:
    return "/" + path.replace(".", "/").replace("/layers/", "/layers.") + "/"


def _is_factored(module) -> bool:
    from edge_c2i.factorize import LowRankLinear, MultiSubspaceLinear

    return isinstance(module, (LowRankLinear, MultiSubspaceLinear))


def _second_stage(b: _Builder, z: str, module, path: str) -> str:
    """A factor module's products after its first (x B^T = ``z``), and its bias."""
    from edge_c2i.factorize import LowRankLinear

    prefix = _prefix(path)
    if isinstance(module, LowRankLinear):
        y = b.one("MatMul", [z, b.const(f"{path}.A_t", _array(module.A).T)], prefix + "MatMul_1")
    else:  # MultiSubspaceLinear: per-group A's, then the rows back in their order
        ranks = b.const(f"{path}.ranks", np.array(module.ranks, np.int64))
        parts = b.op("Split", [z, ranks], prefix + "Split", len(module.ranks), axis=-1)
        ys = [b.one("MatMul", [p, b.const(f"{path}.As.{g}_t", _array(a).T)],
                    prefix + f"MatMul_{g + 1}") for g, (p, a) in enumerate(zip(parts, module.As))]
        y = b.one("Concat", ys, prefix + "Concat", axis=-1)
        y = b.one("Gather", [y, b.const(f"{path}.inverse", module.inverse.cpu().numpy())],
                  prefix + "Gather", axis=-1)
    return _bias(b, y, module, path)


def _bias(b: _Builder, y: str, module, path: str) -> str:
    bias = getattr(module, "bias", None)
    return y if bias is None else b.one("Add", [y, b.const(f"{path}.bias", _array(bias))],
                                        _prefix(path) + "Add")


def linear(b: _Builder, x: str, module, path: str) -> str:
    """The MatMuls of ``module`` (nn.Linear or a factor module) applied to ``x``.

    Node names follow the tracer's ("/model/layers.3/mlp/down_proj/MatMul"), which
    postprocess.out_matmul_prefixes relies on.
    """
    prefix = _prefix(path)
    if _is_factored(module):
        z = b.one("MatMul", [x, b.const(f"{path}.B_t", _array(module.B).T)], prefix + "MatMul")
        return _second_stage(b, z, module, path)
    if not _plain(module):
        from edge_c2i.errors import EdgeC2IError

        raise EdgeC2IError(f"{path} is a {type(module).__name__}; the fused graph knows nn.Linear "
                           "and edge-c2i's factor modules (export with --graph optimum)")
    y = b.one("MatMul", [x, b.const(f"{path}.weight_t", _array(module.weight).T)],
              prefix + "MatMul")
    return _bias(b, y, module, path)


def _plain(module) -> bool:
    return type(module).__name__ == "Linear"


def fused_linear(b: _Builder, x: str, modules: list, paths: list[str], name: str,
                 split: bool = True) -> list[str]:
    """``linear`` of several modules reading the same ``x``: one MatMul of their weights side
    by side (then a Split, unless ``split`` is False: one packed output) when all are dense
    nn.Linear, as q/k/v and gate/up are unless one was reduced; otherwise each its own
    MatMuls.  Fewer, larger products cut the per-operator cost of a decoding step, which at
    int4/int8 is a large part of it."""
    if not all(_plain(m) for m in modules):
        return _fused_factors(b, x, modules, paths, name)
    prefix = _prefix(name)
    w = np.concatenate([_array(m.weight) for m in modules], 0)
    y = b.one("MatMul", [x, b.const(f"{name}.weight_t", w.T)], prefix + "MatMul")
    if any(m.bias is not None for m in modules):
        bias = np.concatenate([_array(m.bias) if m.bias is not None
                               else np.zeros(m.out_features, np.float32) for m in modules])
        y = b.one("Add", [y, b.const(f"{name}.bias", bias)], prefix + "Add")
    if not split:
        return [y]
    sizes = b.const(f"{name}.sizes", np.array([m.out_features for m in modules], np.int64))
    return b.op("Split", [y, sizes], prefix + "Split", len(modules), axis=-1)


def _fused_factors(b: _Builder, x: str, modules: list, paths: list[str], name: str) -> list[str]:
    """Modules reading the same ``x`` where some are reduced: the first products of all
    factor modules side by side in one MatMul (their B's stacked; a Split gives each its
    share), then each one's own A's; dense modules keep their own product (on a 4-bit grid
    they stay exact in int4, which a product shared with factors would not be)."""
    factored = [m for m in modules if _is_factored(m)]
    if len(factored) < 2:
        return [linear(b, x, m, p) for m, p in zip(modules, paths)]
    prefix = _prefix(name) + "factors/"
    stacked = np.concatenate([_array(m.B) for m in factored], 0)
    z = b.one("MatMul", [x, b.const(f"{name}.factors.B_t", stacked.T)], prefix + "MatMul")
    widths = b.const(f"{name}.factors.widths", np.array([m.B.shape[0] for m in factored],
                                                        np.int64))
    firsts = iter(b.op("Split", [z, widths], prefix + "Split", len(factored), axis=-1))
    return [_second_stage(b, next(firsts), m, p) if _is_factored(m) else linear(b, x, m, p)
            for m, p in zip(modules, paths)]


def _norm_weight(norm, gemma: bool) -> np.ndarray:
    """The RMS norm's scale as SimplifiedLayerNormalization multiplies by it: (1 + w) in Gemma."""
    w = _array(norm.weight)
    return (1.0 + w).astype(np.float32) if gemma else w


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", None) or norm.eps)


def _rotary_tables(b: _Builder, rotary, total: str, tag: str) -> tuple[str, str]:
    """cos and sin (positions 0..total-1 x rotary_dim/2) from the module's inv_freq, in fp32
    as transformers computes them (positions times inv_freq, times attention_scaling)."""
    inv_freq = b.const(f"{tag}.inv_freq", _array(rotary.inv_freq).reshape(1, -1))
    zero, one = b.const(f"{tag}.zero", np.array(0, np.int64)), b.const(f"{tag}.one", np.array(1, np.int64))
    pos = b.one("Range", [zero, total, one], f"/{tag}/Range")
    pos = b.one("Cast", [pos], f"/{tag}/Cast", to=1)
    pos = b.one("Unsqueeze", [pos, b.const(f"{tag}.axis1", np.array([1], np.int64))],
                f"/{tag}/Unsqueeze")
    freqs = b.one("Mul", [pos, inv_freq], f"/{tag}/Mul")
    cos, sin = b.one("Cos", [freqs], f"/{tag}/Cos"), b.one("Sin", [freqs], f"/{tag}/Sin")
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    if scaling != 1.0:
        s = b.const(f"{tag}.attention_scaling", np.array(scaling, np.float32))
        cos, sin = (b.one("Mul", [t, s], f"/{tag}/Scale_{t.split('/')[-2]}") for t in (cos, sin))
    return cos, sin


def build(model, opset: int = OPSET):
    """The fused decoder of ``model`` as an onnx ModelProto (with its weights inside)."""
    from onnx import TensorProto, helper

    config, decoder = model.config, model.model
    gemma = config.model_type in GEMMA3
    qk_norm = gemma or config.model_type in QK_NORM
    packed = config.model_type in PACKED
    post_norm = config.model_type in POST_NORM
    layers = decoder.layers
    attn0 = layers[0].self_attn
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = attn0.head_dim
    act = ACTIVATIONS[getattr(config, "hidden_activation", None) or config.hidden_act]
    b = _Builder()

    # attention bookkeeping from the mask: valid lengths - 1 and the total length
    mask_sum = b.one("ReduceSum", ["attention_mask", b.const("axes1", np.array([1], np.int64))],
                     "/model/attn_mask/ReduceSum", keepdims=0)
    seqlens = b.one("Sub", [mask_sum, b.const("one64", np.array(1, np.int64))],
                    "/model/attn_mask/Sub")
    seqlens = b.one("Cast", [seqlens], "/model/attn_mask/Cast_seqlens", to=TensorProto.INT32)
    shape = b.one("Shape", ["attention_mask"], "/model/attn_mask/Shape")
    total64 = b.one("Gather", [shape, b.const("index1", np.array(1, np.int64))],
                    "/model/attn_mask/Gather", axis=0)
    total = b.one("Cast", [total64], "/model/attn_mask/Cast_total", to=TensorProto.INT32)
    tables = {k: _rotary_tables(b, r, total64, f"model.rotary_{k}")
              for k, r in _rotaries(model).items()}

    # embeddings (Gemma scales them by sqrt(hidden) in the weights' dtype)
    embed = decoder.embed_tokens
    table = b.const("model.embed_tokens.weight", _array(embed.weight))
    x = b.one("Gather", [table, "input_ids"], "/model/embed_tokens/Gather", axis=0)
    if getattr(embed, "embed_scale", None) is not None:
        scale = np.array(float(embed.embed_scale.float()), np.float32)
        x = b.one("Mul", [x, b.const("model.embed_tokens.embed_scale", scale)],
                  "/model/embed_tokens/Mul")
    granite = config.model_type in GRANITE

    def times(h: str, owner, factor: str, path: str) -> str:
        """h times Granite's ``owner.<factor>`` (the copy its module reads; others: h)."""
        value = float(getattr(owner, factor, 1.0)) if granite else 1.0
        if value == 1.0:
            return h
        return b.one("Mul", [h, b.const(f"{path}.{factor}", np.array(value, np.float32))],
                     _prefix(path)[:-1] + f"/{factor}/Mul")

    x = times(x, decoder, "embedding_multiplier", "model.embed_tokens")

    def norm(h: str, module, path: str, skip: str | None = None) -> tuple[str, str | None]:
        """RMS norm of h (+ skip): (normalized, the sum h + skip when skip is given)."""
        w = b.const(f"{path}.weight", _norm_weight(module, gemma))
        pre = _prefix(path)[:-1]
        if skip is None:
            return b.one("SimplifiedLayerNormalization", [h, w], pre + "/SimplifiedLayerNorm",
                         axis=-1, epsilon=_eps(module), stash_type=1), None
        out = b.op("SkipSimplifiedLayerNormalization", [h, skip, w],
                   pre + "/SkipSimplifiedLayerNorm", [f"{pre}/normed", "", "", f"{pre}/sum"],
                   domain="com.microsoft", epsilon=_eps(module))
        return out[0], out[3]

    def head_norm(h: str, module, path: str, n: int) -> str:
        """The per-head RMS norm of q or k (B x S x n*head_dim): Gemma-3's and Qwen3's."""
        pre = _prefix(path)[:-1]
        split = b.one("Reshape", [h, b.const(f"{path}.shape", np.array([0, 0, n, head_dim], np.int64))],
                      pre + "/Reshape")
        normed, _ = norm(split, module, path)
        return b.one("Reshape", [normed, b.const(f"{path}.flat", np.array([0, 0, n * head_dim], np.int64))],
                     pre + "/Reshape_1")

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"])]
    # the logits of the last position only, unless asked for more (KEEP_INPUT): declared
    # one per sequence, as onnxruntime-genai allocates them (and runs the graph)
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch_size", 1, config.vocab_size])]
    kv_shape = lambda length: ["batch_size", kv_heads, length, head_dim]
    residual, pending = x, None  # pending: an output still to be added to the residual
    h = x if post_norm else norm(x, layers[0].input_layernorm, "model.layers.0.input_layernorm")[0]
    for i, layer in enumerate(layers):
        p = f"model.layers.{i}"
        if i > 0 and post_norm:  # OLMo2's block reads the residual itself
            h = residual = b.one("Add", [residual, pending], f"/model/layers.{i}/residual/Add")
        elif i > 0:
            h, residual = norm(pending, layer.input_layernorm, f"{p}.input_layernorm", residual)
        attn = layer.self_attn
        # packed q/k/v go to GroupQueryAttention as one input, unless q/k norms come between
        if packed:
            qkv = [linear(b, h, attn.qkv_proj, f"{p}.self_attn.qkv_proj")]
        else:
            qkv = fused_linear(b, h, [attn.q_proj, attn.k_proj, attn.v_proj],
                               [f"{p}.self_attn.{n}_proj" for n in "qkv"],
                               f"{p}.self_attn.qkv_proj", split=qk_norm or post_norm)
        q, k, v = qkv if len(qkv) == 3 else (qkv[0], "", "")
        if qk_norm:
            q = head_norm(q, attn.q_norm, f"{p}.self_attn.q_norm", heads)
            k = head_norm(k, attn.k_norm, f"{p}.self_attn.k_norm", kv_heads)
        elif post_norm:  # over all heads at once
            q, _ = norm(q, attn.q_norm, f"{p}.self_attn.q_norm")
            k, _ = norm(k, attn.k_norm, f"{p}.self_attn.k_norm")
        sliding = _window(config, attn)
        cos, sin = tables["local" if sliding and "local" in tables else "global"]
        past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present = [f"present.{i}.key", f"present.{i}.value"]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape("past_sequence_length"))
                   for n in past]
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape("total_sequence_length"))
                    for n in present]
        # Gemma-3's config may name an attn_logit_softcapping that transformers' Gemma-3
        # attention does not apply (4.57); the graph does what the model does (none)
        softcap = 0.0
        # the same count in both (tests/test_graph.py: w - 1 and w + 1 differ from transformers)
        window = int(sliding) if sliding else -1
        rope = bool(getattr(attn, "use_rope", True))  # SmolLM3's NoPE layers: no rotary
        a = b.op("GroupQueryAttention", [q, k, v, *past, seqlens, total,
                                         *((cos, sin) if rope else ("", ""))],
                 _prefix(f"{p}.self_attn") + "GroupQueryAttention",
                 [_prefix(f"{p}.self_attn") + "attention_out", *present], domain="com.microsoft",
                 num_heads=heads, kv_num_heads=kv_heads, scale=float(attn.scaling),
                 do_rotary=int(rope),
                 rotary_interleaved=0, local_window_size=window, softcap=softcap)
        o = times(linear(b, a[0], attn.o_proj, f"{p}.self_attn.o_proj"), layer,
                  "residual_multiplier", f"{p}.self_attn")
        if gemma:
            o, _ = norm(o, layer.post_attention_layernorm, f"{p}.post_attention_layernorm")
            h, residual = norm(o, layer.pre_feedforward_layernorm,
                               f"{p}.pre_feedforward_layernorm", residual)
        elif post_norm:
            o, _ = norm(o, layer.post_attention_layernorm, f"{p}.post_attention_layernorm")
            h = residual = b.one("Add", [residual, o], f"/model/layers.{i}/self_attn/residual/Add")
        else:
            h, residual = norm(o, layer.post_attention_layernorm,
                               f"{p}.post_attention_layernorm", residual)
        mlp = layer.mlp
        mp = _prefix(f"{p}.mlp")[:-1]
        if packed:  # gate first, then up, as transformers chunks them
            both = linear(b, h, mlp.gate_up_proj, f"{p}.mlp.gate_up_proj")
            gate, up = b.op("Split", [both], mp + "/gate_up_proj/Split", 2, axis=-1)
        else:
            gate, up = fused_linear(b, h, [mlp.gate_proj, mlp.up_proj],
                                    [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"],
                                    f"{p}.mlp.gate_up_proj")
        if act == "silu":
            gate = b.one("Mul", [gate, b.one("Sigmoid", [gate], mp + "/act_fn/Sigmoid")],
                         mp + "/act_fn/Mul")
        else:
            gate = b.one("FastGelu", [gate], mp + "/act_fn/FastGelu", domain="com.microsoft")
        pending = times(linear(b, b.one("Mul", [gate, up], mp + "/Mul"), mlp.down_proj,
                               f"{p}.mlp.down_proj"), layer, "residual_multiplier", f"{p}.mlp")
        if gemma or post_norm:
            pending, _ = norm(pending, layer.post_feedforward_layernorm,
                              f"{p}.post_feedforward_layernorm")
    h, _ = norm(pending, decoder.norm, "model.norm", residual)
    # KEEP_INPUT: how many last positions go through the LM head (0: all), 1 when not fed
    # (an input that is also an initializer: its default)
    keep = b.const(KEEP_INPUT, np.array([1], np.int64))
    inputs.append(helper.make_tensor_value_info(keep, TensorProto.INT64, [1]))
    h = _last_positions(b, h, keep, mask_sum, total64, config.hidden_size)

    head = model.lm_head
    tied = head.weight.data_ptr() == embed.weight.data_ptr() and _plain(head)
    scaled = granite and float(getattr(config, "logits_scaling", 1.0)) != 1.0  # off the config
    cap = getattr(config, "final_logit_softcapping", None)
    if tied:  # the embedding table, read transposed in place
        logits = b.op("FusedMatMul", [h, table], "/lm_head/FusedMatMul",
                      1 if scaled or cap else ["logits"],  # "logits" is written once
                      domain="com.microsoft", alpha=1.0, transB=1)[0]
    else:
        logits = linear(b, h, head, "lm_head")
    if scaled:
        c = b.const("logits_scaling", np.array(config.logits_scaling, np.float32))
        logits = b.one("Div", [logits, c], "/lm_head/logits_scaling/Div")
    if cap:
        c = b.const("final_logit_softcapping", np.array(cap, np.float32))
        t = b.one("Tanh", [b.one("Div", [logits, c], "/lm_head/softcap/Div")], "/lm_head/softcap/Tanh")
        logits = b.one("Mul", [t, c], "/lm_head/softcap/Mul")
    if logits != "logits":
        b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/lm_head/Identity"))

    graph = helper.make_graph(b.nodes, "edge-c2i fused decoder", inputs, outputs, b.inits)
    proto = helper.make_model(graph, producer_name="edge-c2i",
                              opset_imports=[helper.make_opsetid("", opset),
                                             helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 8
    return proto


def write(model, path: Path, opset: int = OPSET) -> dict:
    """Build the fused graph of ``model`` into ``path`` (its weights beside it: export/files.py);
    returns what the manifest records."""
    from . import files

    proto = build(model, opset)
    files.save(proto, path)
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"kind": "fused", "nodes": len(proto.graph.node), "why_not_fused": None,
            "attention": "com.microsoft.GroupQueryAttention",
            "ops": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


