"""The adapted folder: plain transformers loads it exactly; edge-c2i refuses it when damaged."""

import json
import shutil

import pytest
import torch
from conftest import tiny_model

from edge_c2i.adapted import FACTORS, MANIFEST, save_adapted
from edge_c2i.errors import EdgeC2IError
from edge_c2i.factorize import LowRankLinear, MultiSubspaceLinear, count_params, reduce
from edge_c2i.models import load_model
from edge_c2i.targets import get_target


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """SmolLM2 with one plain and one two-subspace reduction, saved; and its logits."""
    model, tok = load_model("smollm2-135m")
    before = count_params(model)
    reds = [reduce(model, get_target(model, 20, "out"), 0.1),
            reduce(model, get_target(model, 21, "gate"), 0.2, clusters=4)]
    assert count_params(model) < before
    ids = torch.tensor([tok("The capital of France is Paris, and of Italy")["input_ids"]])
    with torch.no_grad():
        ref = model(ids).logits
    out = save_adapted(model, tok, tmp_path_factory.mktemp("a") / "adapted", reds,
                       {"base_model": "smollm2-135m"})
    return out, reds, ids, ref, count_params(model)


def test_edge_c2i_reloads_the_factors(adapted):
    out, reds, ids, ref, params = adapted
    again, _ = load_model(str(out))
    assert isinstance(again.get_submodule(reds[0].name), LowRankLinear)
    assert isinstance(again.get_submodule(reds[1].name), MultiSubspaceLinear)
    assert count_params(again) == params
    with torch.no_grad():
        assert torch.equal(again(ids).logits, ref)


def test_plain_transformers_loads_the_same_model(adapted):
    """No missing weights, and the dense reduced matrices give edge-c2i's logits.

    The two differ only by float32 rounding: x (A B)^T is summed in another order
    than (x B^T) A^T; 1e-5 of the largest logit bounds it.
    """
    from transformers import AutoModelForCausalLM

    out, _, ids, ref, _ = adapted
    plain, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        logits = plain(ids).logits
    assert (logits - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def _copy(out, tmp_path):
    return shutil.copytree(out, tmp_path / "copy")


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / FACTORS).unlink(), "missing"),
    (lambda f: (f / FACTORS).write_bytes((f / FACTORS).read_bytes()[:1000]), "damaged"),
    (lambda f: (f / MANIFEST).unlink(), "factors"),
    (lambda f: (f / MANIFEST).write_text((f / MANIFEST).read_text()[:40]), "damaged"),
    (lambda f: (f / "model.safetensors").unlink(), "could not load"),
])
def test_a_damaged_folder_is_refused(adapted, tmp_path, damage, message):
    folder = _copy(adapted[0], tmp_path)
    damage(folder)
    with pytest.raises(EdgeC2IError, match=message):
        load_model(str(folder))


def test_factors_that_disagree_with_the_weights_are_refused(adapted, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(adapted[0], tmp_path)
    tensors = load_file(folder / FACTORS)
    key = next(k for k in tensors if k.endswith(".A"))
    tensors[key] = tensors[key] * 1.01
    save_file(tensors, folder / FACTORS)
    with pytest.raises(EdgeC2IError, match="do not match"):
        load_model(str(folder))


def test_a_folder_transformers_would_fill_randomly_is_refused(tmp_path):
    """Factor tensors in the standard weights without a manifest (the old layout)."""
    from safetensors.torch import load_file

    model = tiny_model("llama")
    reduce(model, get_target(model, 1, "out"), 0.5)
    model.save_pretrained(tmp_path)  # down_proj.A / .B instead of down_proj.weight
    assert "model.layers.1.mlp.down_proj.A" in load_file(tmp_path / "model.safetensors")
    with pytest.raises(EdgeC2IError, match="random"):
        from edge_c2i.models import load_plain

        load_plain(tmp_path)


def test_manifest_records_each_reduction(adapted):
    manifest = json.loads((adapted[0] / MANIFEST).read_text())
    assert manifest["format"] == 2
    assert [r["name"] for r in manifest["reductions"]] == [r.name for r in adapted[1]]
