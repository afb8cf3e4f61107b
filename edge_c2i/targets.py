"""Which weight matrices are candidates, addressed as (layer, type).

Like peft's ``target_modules``, every supported architecture maps onto the same
few names: ``q k v o`` for attention and ``in out`` (plus ``gate`` where the
MLP is gated) for the MLP.  Fused projections keep their fused weight as one
matrix and are addressed as one type: GPT-2's ``c_attn`` and GPT-NeoX's
``query_key_value`` are type ``qkv`` (rank-reducing the fused matrix is what
LASER does for these models, and it keeps the module structure intact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError

# Rate grid and type names live here and nowhere else.
LASER_RATES = (0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.01, 0.005)
ATTN_TYPES = ("q", "k", "v", "qkv", "o")
MLP_TYPES = ("gate", "in", "out")
ALL_TYPES = ATTN_TYPES + MLP_TYPES

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
class Target:
    """One candidate matrix: block ``layer`` (from 0), ``type``, and its module path."""

    layer: int
    type: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.type}"


def architecture(model: nn.Module) -> tuple[str, dict[str, str]]:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks, in order."""
    return model.get_submodule(architecture(model)[0])


def find_targets(
    model: nn.Module, layers: list[int] | None = None, types: list[str] | None = None
) -> list[Target]:
    """All candidate matrices of ``model``, optionally restricted to some layers and types."""
    blocks_path, type_map = architecture(model)
    n_layers = len(model.get_submodule(blocks_path))
    if types is not None:
        unknown = [t for t in types if t not in type_map]
        if unknown:
            raise UserError(
                f"unknown matrix type(s) {unknown} for {model.config.model_type}; "
                f"this architecture has: {' '.join(type_map)}"
            )
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad:
            raise UserError(f"layer(s) {bad} out of range: this model has layers 0..{n_layers - 1}")
    out = []
    for i in range(n_layers) if layers is None else sorted(set(layers)):
        for t, sub in type_map.items():
            if types is None or t in types:
                out.append(Target(i, t, f"{blocks_path}.{i}.{sub}"))
    return out


def get_target(model: nn.Module, layer: int, type_: str) -> Target:
    found = find_targets(model, [layer], [type_])
    return found[0]


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight as (in, out), the transpose of nn.Linear."""
    return type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as the (out, in) matrix W of y = W x + b, whatever the module type."""
    w = module.weight
    return w.t() if is_conv1d(module) else w
