"""Which weight matrices are candidates, addressed as (layer, type).

Like peft's ``target_modules``, every supported architecture maps onto the same
few names: ``q k v o`` for attention and ``in out`` (plus ``gate`` where the
MLP is gated) for the MLP.  Fused projections keep their fused weight as one
matrix and are addressed as one type: GPT-2's ``c_attn`` and GPT-NeoX's
``query_key_value`` are type ``qkv`` (rank-reducing the fused matrix is what
LASER does for these models, and it keeps the module structure intact).  The names
of each architecture's modules are in ``arch.ARCHITECTURES``; this module walks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .arch import ARCHITECTURES
from .errors import EdgeC2IError

# The rate grid lives here and nowhere else; type names live in arch.ARCHITECTURES.
LASER_RATES = (0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.01, 0.005)


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
        raise EdgeC2IError(
            f"unsupported architecture {model_type!r}; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
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
            raise EdgeC2IError(
                f"unknown matrix type(s) {unknown} for {model.config.model_type}; "
                f"this architecture has: {' '.join(type_map)}"
            )
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad:
            raise EdgeC2IError(f"layer(s) {bad} out of range: this model has layers 0..{n_layers - 1}")
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
