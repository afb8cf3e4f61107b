"""Which weight matrices are candidates, addressed as (layer, type).

Like peft's ``target_modules``, every supported architecture maps onto the same
few names: ``q k v o`` for attention and ``in out`` (plus ``gate`` where the
MLP is gated) for the MLP.  Fused projections keep their fused weight as one
matrix and are addressed as one type: GPT-2's ``c_attn`` and GPT-NeoX's
``query_key_value`` are type ``qkv`` (rank-reducing the fused matrix is what
LASER does for these models, and it keeps the module structure intact).  The names
of each architecture's modules are in ``arch.ARCHITECTURES``; this module walks them.

A causal LM whose type is not in that table is read off its modules (``inferred``), as
peft falls back to a model's linear layers: its blocks are the module list with one entry
per layer, its targets every linear map in a block, and each is named by the
conventional name of its module (``q_proj`` is ``q``, ``fc2`` is ``out``) or, failing
one, by its path in the block (``self_attn.dense`` of an unknown layout is
``self_attn_dense``).  A test reads every architecture of the table this way and gets the
table back.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .arch import ARCHITECTURES, arch
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
    """(dotted path of the block list, {type: dotted path inside a block}) of ``model``."""
    model_type = getattr(model.config, "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    if model not in _INFERRED:
        _INFERRED[model] = inferred(model)
    return _INFERRED[model]


# inferred layouts, per model object (a model's modules do not move once loaded)
_INFERRED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# A module's conventional names across transformers' decoders (Llama, OPT, Falcon, Bloom,
# GPT-2, CodeGen, MPT, StarCoder2, ...).  Names whose role depends on where they sit
# (``dense``, ``c_proj``, ``out_proj``, ``wo``) are in _BY_PLACE.
_BY_NAME = {
    "qkv": ("qkv_proj", "query_key_value", "c_attn", "wqkv", "w_pack"),
    "q": ("q_proj", "query", "wq", "q_lin", "query_proj"),
    "k": ("k_proj", "key", "wk", "k_lin", "key_proj"),
    "v": ("v_proj", "value", "wv", "v_lin", "value_proj"),
    "o": ("o_proj", "out_lin"),
    "gate": ("gate_proj",),
    "in": ("up_proj", "fc1", "fc_in", "c_fc", "dense_h_to_4h", "gate_up_proj", "lin1"),
    "out": ("down_proj", "fc2", "fc_out", "dense_4h_to_h", "lin2"),
}
_TYPE_OF_NAME = {name: t for t, names in _BY_NAME.items() for name in names}
# (name, is the module inside the attention?) -> type
_BY_PLACE = {("dense", True): "o", ("c_proj", True): "o", ("out_proj", True): "o",
             ("wo", True): "o", ("c_proj", False): "out", ("wo", False): "out"}
# Llama's original names, used by LFM2 and Mixtral's experts: w1 gate, w3 up, w2 down
_W123 = {"w1": "gate", "w3": "in", "w2": "out"}


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _block_list(model: nn.Module, n_layers: int) -> str:
    """The path of the module list holding one block per layer (the language model's, in a
    multimodal model whose vision tower has its own)."""
    lists = [name for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == n_layers
             and any(_is_linear(sub) for sub in m[0].modules())]
    text = [n for n in lists if not any(w in n for w in ("vision", "visual", "audio"))]
    if not (text or lists):
        raise EdgeC2IError(
            f"found no list of {n_layers} blocks (the config's layer count) with linear layers "
            f"in this {type(model).__name__}: edge-c2i adapts decoder-only transformers")
    return (text or lists)[0]


def _type_of(path: str, siblings: set[str]) -> str | None:
    parent, _, name = path.rpartition(".")
    low = name.lower()
    if low in _W123 and {"w1", "w2", "w3"} <= siblings:
        return _W123[low]
    in_attention = "att" in parent.lower()
    return _BY_PLACE.get((low, in_attention), _TYPE_OF_NAME.get(low))


def inferred(model: nn.Module) -> tuple[str, dict[str, str]]:
    """The layout of a causal LM that is not in ``ARCHITECTURES``, read off its modules."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cls = type(model).__name__
    if cls not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        raise EdgeC2IError(
            f"{cls} is not a causal language model (model type "
            f"{getattr(model.config, 'model_type', None)!r}): edge-c2i adapts decoders such as "
            f"{', '.join(sorted(ARCHITECTURES))}")
    blocks_path = _block_list(model, arch(model.config).num_layers)
    paths: list[str] = []  # every linear map of any block (layers may differ, as LFM2's)
    for block in model.get_submodule(blocks_path):
        for path, m in block.named_modules():
            # skip a block's own lists (a mixture of experts' experts) and repeats
            if _is_linear(m) and path not in paths and not any(
                    part.isdigit() for part in path.split(".")):
                paths.append(path)
    by_parent: dict[str, set[str]] = {}
    for path in paths:
        parent, _, name = path.rpartition(".")
        by_parent.setdefault(parent, set()).add(name.lower())
    types = [_type_of(p, by_parent[p.rpartition(".")[0]]) for p in paths]
    type_map = {}
    for path, t in zip(paths, types, strict=True):
        # a name that two modules would share, or none, becomes the module's own path
        type_map[t if t is not None and types.count(t) == 1 else path.replace(".", "_")] = path
    order = list(_BY_NAME)  # the conventional types in the table's order, then the others
    return blocks_path, dict(sorted(type_map.items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order))))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks, in order."""
    return model.get_submodule(architecture(model)[0])


def find_targets(
    model: nn.Module, layers: list[int] | None = None, types: list[str] | None = None
) -> list[Target]:
    """All candidate matrices of ``model``, optionally restricted to some layers and types."""
    blocks_path, type_map = architecture(model)
    blocks = model.get_submodule(blocks_path)
    n_layers = len(blocks)
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
        block = blocks[i]
        for t, sub in type_map.items():
            # an inferred layout is the union of its blocks' (LFM2 mixes attention and
            # convolution blocks): a block without the module has no such target
            if (types is None or t in types) and _has(block, sub):
                out.append(Target(i, t, f"{blocks_path}.{i}.{sub}"))
    return out


def _has(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
    except AttributeError:
        return False
    return True


def get_target(model: nn.Module, layer: int, type_: str) -> Target:
    found = find_targets(model, [layer], [type_])
    if not found:
        raise EdgeC2IError(f"layer {layer} has no matrix of type {type_!r}")
    return found[0]


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight as (in, out), the transpose of nn.Linear."""
    return type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as the (out, in) matrix W of y = W x + b, whatever the module type."""
    w = module.weight
    return w.t() if is_conv1d(module) else w
