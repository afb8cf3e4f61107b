import pytest
from conftest import TINY, tiny_model

from edge_c2i.arch import ARCHITECTURES
from edge_c2i.errors import EdgeC2IError
from edge_c2i.targets import find_targets, get_target, weight_matrix


@pytest.mark.parametrize("arch", sorted(TINY))
def test_every_target_is_a_linear_map_of_its_block(arch):
    model = tiny_model(arch)
    targets = find_targets(model)
    types = ARCHITECTURES[model.config.model_type][1]
    assert len(targets) == 2 * len(types)
    for t in targets:
        W = weight_matrix(model.get_submodule(t.name))
        assert W.dim() == 2 and f".{t.layer}." in t.name


def test_gpt2_conv1d_weight_is_transposed_to_out_by_in():
    model = tiny_model("gpt2")
    W = weight_matrix(model.get_submodule(get_target(model, 0, "in").name))
    assert tuple(W.shape) == (4 * 32, 32)  # c_fc maps 32 -> 128
    W = weight_matrix(model.get_submodule(get_target(model, 0, "qkv").name))
    assert tuple(W.shape) == (3 * 32, 32)  # fused q, k, v: one matrix, type "qkv"


def test_real_smollm2_has_210_targets(smol):
    model, _ = smol
    targets = find_targets(model)
    assert len(targets) == 30 * 7
    assert {t.type for t in targets} == {"q", "k", "v", "o", "gate", "in", "out"}
    assert tuple(weight_matrix(model.get_submodule(get_target(model, 3, "out").name)).shape) == (
        576, 1536)


def test_unsupported_architecture_lists_the_supported_ones():
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(EdgeC2IError, match="supported: .*llama"):
        find_targets(BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=64)))


def test_unknown_layer_or_type_is_refused(smol):
    model, _ = smol
    with pytest.raises(EdgeC2IError, match="layers 0..29"):
        find_targets(model, layers=[30])
    with pytest.raises(EdgeC2IError, match="unknown matrix type"):
        find_targets(model, types=["fc9"])
