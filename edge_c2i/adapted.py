"""The adapted folder: a plain transformers model that also carries its factors.

    config.json, model.safetensors, tokenizer files
                          a standard model whose reduced matrices hold A B densely, so
                          AutoModelForCausalLM.from_pretrained (lm-eval, vLLM, the ONNX
                          Runtime GenAI builder) loads exactly the adapted model
    edge_c2i_factors.safetensors
                          the factors of each reduced matrix (A, B; multi-subspace: the
                          stacked B, each group's A and the row order)
    edge_c2i.json         the manifest: which matrices are reduced, how, from what
    report.json           the search report (written by ``edge_c2i.api.save``)

edge-c2i loads the standard weights, then swaps each reduced matrix for its factor
module, after checking that the factors multiply back to the dense matrix stored
beside them.  A folder whose manifest or factors are missing or disagree with the
weights is refused, never silently loaded as something else.

Folders written before this layout (format 1: the factors in model.safetensors, no
dense matrix) still load.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from .errors import EdgeC2IError
from .factorize import (
    LowRankLinear,
    MultiSubspaceLinear,
    Reduction,
    dense_module,
    empty_factors,
    swap,
)
from .io import OutputDir, has_manifest
from .targets import weight_matrix

MANIFEST = "edge_c2i.json"
FACTORS = "edge_c2i_factors.safetensors"
FORMAT = 2
FACTOR_TYPES = (LowRankLinear, MultiSubspaceLinear)


def is_adapted(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).exists()


def output(out: str | Path, force: bool) -> OutputDir:
    """Claim ``out`` for an adapted folder (refused unless new, or ours with ``force``)."""
    return OutputDir(out, force, has_manifest(MANIFEST), "an adapted model folder")


@contextlib.contextmanager
def dense_view(model: nn.Module):
    """Within the block, every factor module of ``model`` is a dense Linear again."""
    names = [n for n, m in model.named_modules() if isinstance(m, FACTOR_TYPES)]
    factors = {n: swap(model, n, dense_module(model.get_submodule(n))) for n in names}
    try:
        yield factors
    finally:
        for name, module in factors.items():
            swap(model, name, module)


def save_adapted(model: nn.Module, tokenizer, out: str | Path | OutputDir,
                 reductions: list[Reduction], info: dict | None = None, force: bool = False,
                 extra_files: dict | None = None) -> Path:
    """Write the adapted folder atomically (see the module docstring for its files)."""
    from safetensors.torch import save_file

    dest = out if isinstance(out, OutputDir) else output(out, force)
    with dest as tmp, dense_view(model) as factors:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tensors = {f"{name}.{key}": t.detach().contiguous()
                   for name, module in factors.items()
                   for key, t in module.state_dict().items() if key != "bias"}
        save_file(tensors, tmp / FACTORS)
        manifest = {"format": FORMAT, "reductions": [r.to_dict() for r in reductions],
                    **(info or {})}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for fname, content in (extra_files or {}).items():
            (tmp / fname).write_text(content)
    return dest.out


def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["reductions"] = list(manifest["reductions"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgeC2IError(f"{folder}/{MANIFEST} is damaged ({type(e).__name__}); re-run adapt "
                           "or restore the folder") from None
    return manifest


def load_adapted(folder: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The adapted model with its factor modules in place; refuses an inconsistent folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("format", 1) == 1:
        return _load_format1(folder, manifest, dtype)
    from safetensors.torch import load_file

    from .models import load_plain

    if not (folder / FACTORS).is_file():
        raise EdgeC2IError(f"{folder} lists reduced matrices in {MANIFEST} but its {FACTORS} is "
                           "missing; re-run adapt or restore the folder")
    model = load_plain(folder, dtype)
    try:
        tensors = load_file(folder / FACTORS)
    except Exception as e:  # noqa: BLE001 (safetensors has its own error type for a damaged file)
        raise EdgeC2IError(f"{folder}/{FACTORS} is damaged ({e}); re-run adapt") from None
    for red in map(Reduction.from_dict, manifest["reductions"]):
        name = red.name
        dense = model.get_submodule(name)
        module = empty_factors(dense, red.ranks, red.group_sizes)
        state = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        if dense.bias is not None:
            state["bias"] = dense.bias
        try:
            module.load_state_dict(state)
        except RuntimeError:
            raise EdgeC2IError(f"{folder}/{FACTORS} does not hold the factors {MANIFEST} lists "
                               f"for {name}; re-run adapt") from None
        W = weight_matrix(dense)
        if not torch.allclose(module.dense(), W, rtol=1e-4, atol=1e-6 * W.abs().max().item()):
            raise EdgeC2IError(f"{folder}: the factors of {name} do not match its weights (the "
                               "folder was changed after adapt); re-run adapt")
        swap(model, name, module.to(dtype))
    return model


def _load_format1(folder: Path, manifest: dict, dtype: torch.dtype) -> nn.Module:
    """Folders written before format 2: factor parameters in the standard weights file."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for red in manifest["reductions"]:
        swap(model, red["name"],
             empty_factors(model.get_submodule(red["name"]), red["ranks"], red["group_sizes"]))
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise EdgeC2IError(f"{folder}: weights do not match its manifest "
                           f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    return model.to(dtype)
