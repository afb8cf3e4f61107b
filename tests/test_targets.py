import pytest
import torch
from conftest import TINY, tiny_model

from edge_c2i.arch import ARCHITECTURES
from edge_c2i.errors import EdgeC2IError
from edge_c2i.targets import architecture, find_targets, get_target, inferred, weight_matrix


@pytest.mark.parametrize("arch", sorted(TINY))
def test_every_target_is_a_linear_map_of_its_block(arch):
    model = tiny_model(arch)
    targets = find_targets(model)
    types = architecture(model)[1]
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


@pytest.mark.parametrize("arch", sorted(a for a in TINY if a in ARCHITECTURES))
def test_reading_the_modules_of_a_known_architecture_gives_its_table(arch):
    """The inference, run where the table has the answer (GPT-2's transposed Conv1D and fused
    c_attn, GPT-NeoX's attention.dense, Phi-3's packed matrices, Gemma-3's ...)."""
    model = tiny_model(arch)
    assert inferred(model) == ARCHITECTURES[model.config.model_type]


INFERRED = {
    "opt": ("model.decoder.layers", {"q": "self_attn.q_proj", "k": "self_attn.k_proj",
                                     "v": "self_attn.v_proj", "o": "self_attn.out_proj",
                                     "in": "fc1", "out": "fc2"}),
    "olmo2": ARCHITECTURES["llama"],
    "falcon": ("transformer.h", {"qkv": "self_attention.query_key_value",
                                 "o": "self_attention.dense", "in": "mlp.dense_h_to_4h",
                                 "out": "mlp.dense_4h_to_h"}),
    "mpt": ("transformer.blocks", {"qkv": "attn.Wqkv", "o": "attn.out_proj",
                                   "in": "ffn.up_proj", "out": "ffn.down_proj"}),
    "starcoder2": ("model.layers", {**{t: f"self_attn.{t}_proj" for t in "qkvo"},
                                    "in": "mlp.c_fc", "out": "mlp.c_proj"}),
}


@pytest.mark.parametrize("arch", sorted(INFERRED))
def test_an_architecture_outside_the_table_is_read_off_its_modules(arch):
    model = tiny_model(arch)
    assert model.config.model_type not in ARCHITECTURES
    assert architecture(model) == INFERRED[arch]
    assert [t.key for t in find_targets(model, layers=[1])] == [
        f"1.{t}" for t in INFERRED[arch][1]]


def test_blocks_of_different_kinds_have_their_own_targets():
    """LFM2 mixes short-convolution blocks and attention blocks, both with a w1/w3/w2 MLP."""
    import transformers

    config = transformers.Lfm2Config(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=100, layer_types=["conv", "full_attention"])
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert [t.key for t in find_targets(model)] == [
        "0.gate", "0.in", "0.out", "0.conv_in_proj", "0.conv_out_proj",
        "1.q", "1.k", "1.v", "1.o", "1.gate", "1.in", "1.out"]
    assert get_target(model, 0, "in").name == "model.layers.0.feed_forward.w3"
    with pytest.raises(EdgeC2IError, match="layer 0 has no matrix of type 'q'"):
        get_target(model, 0, "q")


def test_an_unconventional_module_is_named_by_its_path():
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    for block in model.model.layers:
        block.self_attn.gate_proj = torch.nn.Linear(32, 32)  # a second "gate"
        block.mlp.lens = torch.nn.Linear(32, 32)  # a name no convention has
    blocks, types = inferred(model)
    assert blocks == "model.layers" and "gate" not in types
    assert types["self_attn_gate_proj"] == "self_attn.gate_proj"
    assert types["mlp_gate_proj"] == "mlp.gate_proj" and types["mlp_lens"] == "mlp.lens"
    assert types["q"] == "self_attn.q_proj" and types["out"] == "mlp.down_proj"


def test_a_model_that_is_no_decoder_is_refused():
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(EdgeC2IError, match="BertForMaskedLM is not a causal language model"):
        find_targets(BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=64)))


def test_unknown_layer_or_type_is_refused(smol):
    model, _ = smol
    with pytest.raises(EdgeC2IError, match="layers 0..29"):
        find_targets(model, layers=[30])
    with pytest.raises(EdgeC2IError, match="unknown matrix type"):
        find_targets(model, types=["fc9"])
