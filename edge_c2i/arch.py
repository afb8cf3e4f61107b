"""Per-architecture facts: where the target matrices are, and what a model's config says.

``ARCHITECTURES`` names each architecture's blocks and target modules (targets.py walks
them).  ``arch(config)`` reads layers, heads, kv heads, head_dim and eos, and
``context_length(config)`` the positions the model was trained with: the memory plan
(budget.py), the export manifest (export/onnx_export.py), scoring (evaluate.py) and the ONNX
runtime (export/runtime.py) read them here, from a transformers ``PretrainedConfig`` or the
dict of a ``config.json`` alike.  Torch-free: the runtime path imports it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EdgeC2IError

# Each fact under its transformers name first, then the names GPT-2, GPT-J, Bloom and MPT
# keep in config.json (their PretrainedConfig maps those; a plain dict does not).
_NAMES = {
    "num_layers": ("num_hidden_layers", "n_layer", "n_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_heads": ("num_attention_heads", "n_head", "n_heads"),
    "num_kv_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "intermediate_size": ("intermediate_size", "n_inner"),
    "context": ("max_position_embeddings", "n_positions", "max_seq_len"),
}

# (dotted path of the block list, {type: dotted path inside a block}) for a Llama-like model
_LLAMA_LIKE = (
    "model.layers",
    {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "in": "mlp.up_proj",
        "out": "mlp.down_proj",
    },
)

# model_type -> (dotted path of the block list, {type: dotted path inside a block})
ARCHITECTURES: dict[str, tuple[str, dict[str, str]]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gpt2": (
        "transformer.h",
        {"qkv": "attn.c_attn", "o": "attn.c_proj", "in": "mlp.c_fc", "out": "mlp.c_proj"},
    ),
    "gptj": (
        "transformer.h",
        {
            "q": "attn.q_proj",
            "k": "attn.k_proj",
            "v": "attn.v_proj",
            "o": "attn.out_proj",
            "in": "mlp.fc_in",
            "out": "mlp.fc_out",
        },
    ),
    "gpt_neox": (
        "gpt_neox.layers",
        {
            "qkv": "attention.query_key_value",
            "o": "attention.dense",
            "in": "mlp.dense_h_to_4h",
            "out": "mlp.dense_4h_to_h",
        },
    ),
    # Phi-3 and Phi-4-mini keep q/k/v in one matrix and the MLP's gate and up in another
    # (its input, as GPT-NeoX's dense_h_to_4h)
    "phi3": (
        "model.layers",
        {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "in": "mlp.gate_up_proj",
         "out": "mlp.down_proj"},
    ),
    "phi": (
        "model.layers",
        {
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.dense",
            "in": "mlp.fc1",
            "out": "mlp.fc2",
        },
    ),
}


@dataclass(frozen=True)
class Arch:
    """What the plan, the exporter and the runtime need to know of a decoder."""

    model_type: str | None
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int | None
    eos_token_ids: list[int]
    bos_token_id: int | None


def _get(config, name: str):
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


def _fact(config, fact: str):
    return next((v for v in (_get(config, n) for n in _NAMES[fact]) if v is not None), None)


def text_config(config):
    """The language model's config (a multimodal Gemma-3 config nests it as ``text_config``)."""
    return _get(config, "text_config") or config


def token_ids(value) -> list[int]:
    """An id, a list of ids or None (configs hold all three) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def context_length(config) -> int | None:
    """The positions the model was trained with, or None if its config names none."""
    n = _fact(text_config(config), "context")
    return n if isinstance(n, int) and n > 0 else None


def export_context(config) -> int | None:
    """The positions an export computes as the model does: its context, except where the
    rotary tables change with the length.  Phi-3's ``longrope`` (128k Phi-3, Phi-4-mini)
    switches to its long factors once a sequence passes ``original_max_position_embeddings``;
    an export traced on short sequences keeps the short ones, so its context ends there."""
    n = context_length(config)
    text = text_config(config)
    scaling = _get(text, "rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type") if isinstance(scaling, dict) else None
    short = _get(text, "original_max_position_embeddings")
    if kind == "longrope" and isinstance(short, int) and short > 0 and (n is None or short < n):
        return short
    return n


def _kv_heads(config, heads: int) -> int:
    """The key/value heads of the KV cache.  Falcon and GPT-BigCode say ``multi_query`` for
    one; Falcon's new layout broadcasts its ``num_kv_heads`` to every head before caching."""
    if _get(config, "multi_query") and not _get(config, "new_decoder_architecture"):
        return 1
    return _fact(config, "num_kv_heads") or heads


def arch(config, generation_config=None) -> Arch:
    """The facts of ``config``; eos/bos from ``generation_config`` first, as ``generate`` does."""
    text = text_config(config)
    layers, hidden, heads = (_fact(text, f) for f in ("num_layers", "hidden_size", "num_heads"))
    if not all(isinstance(v, int) for v in (layers, hidden, heads)):
        raise EdgeC2IError("the model's config lacks its number of layers, hidden size or heads "
                           "(num_hidden_layers, hidden_size, num_attention_heads)")

    def token(name: str):
        given = _get(generation_config, name) if generation_config is not None else None
        return given if given is not None else _get(text, name)

    return Arch(
        model_type=_get(text, "model_type"),
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=_kv_heads(text, heads),
        head_dim=_fact(text, "head_dim") or hidden // heads,
        intermediate_size=_fact(text, "intermediate_size") or 4 * hidden,
        vocab_size=_get(text, "vocab_size"),
        eos_token_ids=token_ids(token("eos_token_id")),
        bos_token_id=token("bos_token_id"),
    )
