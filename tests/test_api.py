"""The typed API: SearchConfig's checks, the report's JSON, reduced() and apply_ of a recipe."""

import json
import sys
from dataclasses import fields

import pytest
import torch

import edge_c2i
from edge_c2i import search as search_fn
from edge_c2i.api import adapt
from edge_c2i.config import AdaptReport, Candidate, Reduction, SearchConfig, Trial
from edge_c2i.errors import EdgeC2IError
from edge_c2i.factorize import LowRankLinear, apply_, reduced
from edge_c2i.models import load_model
from edge_c2i.tasks import load_task, split

IDS = torch.tensor([[1, 504, 3458, 282, 4649, 314, 7042, 30, 30, 2]])


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_the_package_exports_the_verbs_not_the_modules():
    assert edge_c2i.search is search_fn and callable(search_fn)
    assert callable(edge_c2i.evaluate) and callable(edge_c2i.apply_)


def test_every_search_config_field_is_documented():
    assert all(f.metadata.get("help") for f in fields(SearchConfig))


@pytest.mark.parametrize("kwargs,message", [
    ({"top_k": 0}, "top_k must be at least 1"),
    ({"clusters": (1, 0)}, "clusters must be >= 1"),
    ({"rates": (0.5, 1.5)}, "rate 1.5 out of range"),
    ({"rates": ()}, "rates is empty"),
    ({"score": "best"}, "unknown score 'best'"),
    ({"clustering": "spectral"}, "unknown clustering 'spectral'"),
    ({"n_eval": 0}, "n_eval must be at least 1"),
    ({"max_memory": -1}, "max_memory must be a positive"),
    ({"method": "sgd"}, "unknown method 'sgd'"),
])
def test_search_config_errors_name_the_parameter(kwargs, message):
    with pytest.raises(EdgeC2IError, match=message) as e:
        SearchConfig(**kwargs)
    assert "--" not in str(e.value)  # a parameter, never a CLI flag


def test_laser_refuses_c2i_only_fields():
    SearchConfig(method="laser", rates=(0.1,), layers=(3,))  # its own knobs are fine
    with pytest.raises(EdgeC2IError, match="top_k, clusters do not apply to LASER"):
        SearchConfig(method="laser", top_k=2, clusters=(1, 2))
    for name, value in (("score", "tail_grad"), ("max_memory", 10**9), ("n_calib", 50)):
        with pytest.raises(EdgeC2IError, match=f"{name} do not apply to LASER"):
            SearchConfig(method="laser", **{name: value})
    with pytest.raises(EdgeC2IError, match="n_calib do not apply to LASER"):
        adapt(None, None, "bundled:continents-open", method="laser", n_calib=10)  # before any work
    with pytest.raises(EdgeC2IError, match="unknown parameter.*topk"):
        adapt(None, None, "bundled:continents-open", topk=2)


def a_report(**changes) -> AdaptReport:
    red = Reduction(3, "out", 0.2, 2, "kmeans", [30, 31], [288, 288],
                    "model.layers.3.mlp.down_proj")
    trial = Trial(red, 0.75, 0.9, 1.5, 5, 0)
    values = {
        "model": "smollm2-135m", "task": "bigbench:x", "method": "c2i", "score": "first_order",
        "protocol": "c2i", "splits": {"calib": 100, "eval": 100, "test": 300},
        "n_grad_samples": 100, "n_eval_samples": 100, "timings": {"scan_s": 1.0},
        "evaluations": 1, "candidates": [Candidate(3, "out", 0.5, 0.2)], "reductions": [red],
        "eval_base": {"accuracy": 0.7, "loss": 1.0, "n": 100}, "eval_best": trial,
        "base": {"accuracy": 0.5, "loss": 1.0, "n": 300},
        "adapted": {"accuracy": 0.6, "loss": 0.9, "n": 300}, "calibrated_base": None,
        "params": {"before": 10, "after": 9}, "acceptance": {"accepted": True},
        "test_difference": None, "verdict": "ok", "trials": [trial],
        "rankings": {"first_order": ["3.out"]}, "task_notes": {"delimited": 0},
    }
    return AdaptReport(**{**values, **changes})


def test_report_round_trips_through_json_with_its_schema_version():
    report = a_report()
    d = json.loads(json.dumps(report.to_dict()))
    assert d["schema_version"] == 2 and report["verdict"] == "ok"
    assert d["chosen"]["clusters"] == 2 and d["recipe"] == {
        "base_model": "smollm2-135m", "reductions": [d["chosen"]]}
    assert set(d["recipe"]["reductions"][0]) == {f.name for f in fields(Reduction)}
    assert d["trials"][0]["layer"] == 3 and d["trials"][0]["wins"] == 5  # flat, as always
    assert AdaptReport.from_dict(d) == report
    old = {k: v for k, v in d.items() if k not in ("schema_version", "recipe")}  # schema 1
    assert AdaptReport.from_dict(old).reductions == report.reductions
    nothing = a_report(reductions=[], eval_best=None).to_dict()
    assert nothing["chosen"] is None and nothing["recipe"]["reductions"] == []
    with pytest.raises(EdgeC2IError, match="newer"):
        AdaptReport.from_dict({**d, "schema_version": 99})


def test_reduced_restores_the_very_same_module(smol):
    model, _ = smol
    before = logits(model)
    original = model.get_submodule("model.layers.7.self_attn.o_proj")
    with reduced(model, Reduction(7, "o", 0.05)) as red:
        assert isinstance(model.get_submodule(red.name), LowRankLinear) and red.ranks == [28]
        assert not torch.equal(logits(model), before)
    assert model.get_submodule("model.layers.7.self_attn.o_proj") is original
    assert torch.equal(logits(model), before)
    with pytest.raises(RuntimeError), reduced(model, Reduction(7, "o", 0.05)):
        raise RuntimeError("a failed evaluation")
    assert model.get_submodule("model.layers.7.self_attn.o_proj") is original


def test_search_leaves_the_model_as_it_was(smol):
    model, tok = smol
    before = logits(model)
    config = SearchConfig(top_k=1, rates=(0.05,), layers=(29,), types=("out",), n_calib=4,
                          n_eval=4, n_test=4)
    found = search_fn(model, tok, "bundled:continents", config, progress=False)
    assert len(found.trials) == 1 and found.splits.sizes["eval"] == 4
    assert torch.equal(logits(model), before)


def test_apply_of_the_recipe_reproduces_the_adapted_model(monkeypatch):
    # the acceptance gate is not under test: take the best trial whatever its margin
    monkeypatch.setattr(sys.modules["edge_c2i.search"], "pick",
                        lambda base, trials, alpha=0.05: max(trials, key=Trial.key))
    model, tok = load_model("smollm2-135m")
    report = adapt(model, tok, "bundled:continents", top_k=1, rates=(0.2,),
                   clusters=(2,), layers=(28, 29), n_calib=8, n_eval=8, n_test=8,
                   progress=False, model_name="smollm2-135m")
    recipe = json.loads(json.dumps(report.to_dict()))["recipe"]
    assert len(recipe["reductions"]) == 1 and recipe["reductions"][0]["clusters"] == 2
    fresh, _ = load_model(recipe["base_model"])
    applied = apply_(fresh, [Reduction.from_dict(r) for r in recipe["reductions"]])
    assert applied == report.reductions
    assert torch.equal(logits(fresh), logits(model))


def test_the_search_decomposes_within_the_memory_plan(smol, monkeypatch):
    import edge_c2i.svd as svd_module
    from edge_c2i.search import c2i_search

    model, tok = smol
    budgets, inside = [], []
    real, real_linalg = svd_module.svd, torch.linalg.svd

    def recording(W, method="auto", k=None, budget=None):
        budgets.append(budget)
        inside.append(True)
        try:
            return real(W, method, k, budget)
        finally:
            inside.pop()

    def linalg_svd(*args, **kwargs):
        assert inside, "a decomposition outside svd.svd (and its memory plan)"
        return real_linalg(*args, **kwargs)

    monkeypatch.setattr(svd_module, "svd", recording)
    monkeypatch.setattr(torch.linalg, "svd", linalg_svd)
    s = split(load_task("bundled:continents"), n_calib=4, n_eval=4)
    config = SearchConfig(top_k=2, rates=(0.5, 0.05), clusters=(1, 2), layers=(29,),
                          types=("out", "o"), max_memory=3 * 10**9, screen=None)
    found = c2i_search(model, tok, s.calib, s.eval, config, progress=False)
    assert len(found.trials) == 8 and found.svd_budget is not None
    # none in the scan (its eigendecompositions are in the plan's "svd" share), then per
    # candidate 1 + 2 (its two row groups): no decomposition per rate
    assert len(budgets) == 2 * 3 and set(budgets) == {found.svd_budget}
