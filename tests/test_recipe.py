"""`edge-c2i apply`: an adapted folder rebuilt from its base model and its recipe."""

import json
import os
import subprocess
import sys

import pytest
import torch

from edge_c2i.adapted import MANIFEST, save_adapted
from edge_c2i.errors import EdgeC2IError
from edge_c2i.factorize import reduce
from edge_c2i.models import load_model, resolve
from edge_c2i.recipe import fingerprint, read_recipe
from edge_c2i.targets import get_target

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    model, tok = load_model("smollm2-135m")
    reds = [reduce(model, get_target(model, 28, "out"), 0.2),
            reduce(model, get_target(model, 25, "gate"), 0.05, clusters=2)]
    info = {"base_model": "smollm2-135m", "base_sha256": fingerprint(resolve("smollm2-135m")),
            "task": "bundled:continents-open", "method": "test"}
    return save_adapted(model, tok, tmp_path_factory.mktemp("r") / "adapted", reds, info)


def _apply(args, cwd):
    return subprocess.run([sys.executable, "-m", "edge_c2i.cli", "apply", "--threads", "1",
                           "--quiet", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)


def test_apply_rebuilds_the_adapted_model_exactly(adapted, tmp_path):
    res = _apply(["--recipe", str(adapted / MANIFEST), "--out", "rebuilt"], tmp_path)
    assert res.returncode == 0, res.stderr
    a, tok = load_model(str(adapted))
    b, _ = load_model(str(tmp_path / "rebuilt"))
    ids = torch.tensor([tok("The genre of Stairway to Heaven is")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    manifest = json.loads((tmp_path / "rebuilt" / MANIFEST).read_text())
    assert manifest["base_sha256"] == json.loads((adapted / MANIFEST).read_text())["base_sha256"]


def test_a_recipe_from_another_base_is_refused(adapted, tmp_path):
    recipe = json.loads((adapted / MANIFEST).read_text())
    recipe["base_sha256"] = "0" * 64
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    res = _apply(["--recipe", "r.json", "--out", "rebuilt"], tmp_path)
    assert res.returncode == 2 and "sha256" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "rebuilt").exists()


def test_a_file_that_is_no_recipe_is_refused(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(EdgeC2IError, match="no recipe"):
        read_recipe(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(EdgeC2IError, match="not JSON"):
        read_recipe(tmp_path / "y.json")


@pytest.mark.parametrize("edit, word", [({"layer": 24.0}, "layer"), ({"layer": True}, "layer"),
                                        ({"layer": "24"}, "layer"), ({"rate": "0.05"}, "rate"),
                                        ({"clusters": 2.5}, "clusters"), ({"type": 3}, "type"),
                                        ({"ranks": [1.5]}, "ranks")])
def test_a_hand_edited_reduction_of_the_wrong_type_is_refused(tmp_path, edit, word):
    """Values of the wrong type failed deep inside torch (TypeError, AttributeError)."""
    from edge_c2i.config import Reduction

    reduction = {"layer": 24, "type": "down", "rate": 0.05, "clusters": 1, "clustering": "none",
                 "ranks": [28], "group_sizes": [576], **edit}
    (tmp_path / "r.json").write_text(json.dumps({"base_model": "smollm2-135m",
                                                 "reductions": [reduction]}))
    [read] = read_recipe(tmp_path / "r.json")["reductions"]
    with pytest.raises(EdgeC2IError, match=f"reduction's {word} must be"):
        Reduction.from_dict(read)
