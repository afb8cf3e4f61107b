"""A saved choice as a small recipe: rebuild an adapted model from its base in seconds.

The manifest of an adapted folder (``edge_c2i.json``) is the recipe: the base model's
name, a sha256 of its weights, and the reductions (layer, type, rate, clusters,
clustering, ranks, group sizes).  ``apply_recipe`` replays the reductions on the
base model; the decompositions are deterministic, so the rebuilt model is the
adapted one (tests/test_recipe.py compares the logits).

    edge-c2i apply --model smollm2-135m --recipe out/wikidata/edge_c2i.json --out out/rebuilt
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import nn

from .adapted import MANIFEST
from .config import Reduction
from .errors import EdgeC2IError
from .factorize import apply_

RECIPE_KEYS = ("layer", "type", "rate", "clusters", "clustering", "ranks", "group_sizes")


def fingerprint(where: Path | str) -> str | None:
    """sha256 of a model folder's weights (its *.safetensors files, in name order)."""
    if not isinstance(where, Path):
        return None  # a hub id: nothing local to hash
    files = sorted(where.glob("*.safetensors"))
    files = [f for f in files if not f.name.startswith("edge_c2i")]
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def read_recipe(path: str | Path) -> dict:
    """The recipe in an adapted folder, its ``edge_c2i.json`` or a ``report.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise EdgeC2IError(f"cannot read the recipe {path}: {e.strerror}") from None
    except ValueError:
        raise EdgeC2IError(f"{path} is not JSON; pass an adapted folder or its {MANIFEST}") from None
    if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
        data = data["recipe"]  # a report.json
    reductions = data.get("reductions") if isinstance(data, dict) else None
    if not isinstance(reductions, list) or not all(
            isinstance(r, dict) and set(RECIPE_KEYS) <= r.keys() for r in reductions):
        raise EdgeC2IError(f"{path} holds no recipe (a list of reductions with "
                           f"{', '.join(RECIPE_KEYS)}); pass an adapted folder or its {MANIFEST}")
    return data


def check_base(recipe: dict, where: Path | str) -> None:
    """Refuse a base model whose weights are not the ones the recipe was made from."""
    want = recipe.get("base_sha256")
    if want is None:
        return
    got = fingerprint(where)
    if got is not None and got != want:
        raise EdgeC2IError(f"the recipe was made from {recipe.get('base_model')!r} with weights "
                           f"sha256 {want[:12]}..., but {where} has {got[:12]}...: pass the same "
                           "base model")


def apply_recipe(model: nn.Module, recipe: dict) -> list[Reduction]:
    """Replay the recipe's reductions on ``model`` in place; check they give the same ranks."""
    wanted = [Reduction.from_dict(r) for r in recipe["reductions"]]
    if any(r.basis != "plain" for r in wanted):
        raise EdgeC2IError("the recipe is a compressed model's: its factors were fitted to "
                           "calibration data and live only in its folder; copy the folder, "
                           "or run compress again")
    done = apply_(model, wanted)
    for want, got in zip(wanted, done):
        if list(got.ranks) != list(want.ranks) or list(got.group_sizes) != list(want.group_sizes):
            raise EdgeC2IError(f"layer {want.layer} {want.type}: the recipe has ranks {want.ranks} "
                               f"over rows {want.group_sizes}, this model gives {got.ranks} over "
                               f"{got.group_sizes}: it is not the recipe's base model (or the "
                               "recipe was edited)")
    return done
