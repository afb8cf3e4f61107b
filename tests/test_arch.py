"""edge_c2i.arch: one reading of a config, the same from a PretrainedConfig and its config.json."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, tiny_model

from edge_c2i.arch import arch, context_length, export_context, token_ids
from edge_c2i.errors import EdgeC2IError

SMALL = {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2}


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_kv_cache_has_the_heads_and_head_dim_arch_reads(name):
    model = tiny_model(name)
    facts = arch(model.config)
    cache = model(torch.tensor([[1, 2, 3]]), use_cache=True).past_key_values
    assert len(cache.layers) == facts.num_layers
    assert tuple(cache.layers[0].keys.shape) == (1, facts.num_kv_heads, 3, facts.head_dim)


@pytest.mark.parametrize("name", sorted(TINY))
def test_config_json_gives_what_the_loaded_config_gives(name, tmp_path):
    """GPT-2 and GPT-J keep n_layer/n_head/n_positions in config.json: read them the same."""
    config = tiny_model(name).config
    config.save_pretrained(tmp_path)
    assert arch(json.loads((tmp_path / "config.json").read_text())) == arch(config)


def test_context_length_under_either_name():
    assert context_length({"n_positions": 128}) == 128
    assert context_length({"max_position_embeddings": 8192}) == 8192
    assert context_length({"text_config": {"max_position_embeddings": 32768}}) == 32768
    assert context_length({}) is None and context_length({"n_positions": 0}) is None


def test_an_export_of_longrope_ends_where_its_long_factors_would_begin():
    """Phi-3's longrope changes its rotary past original_max_position_embeddings, which a
    traced graph does not: the export's context ends there (config objects and config.json)."""
    from transformers import LlamaConfig, Phi3Config

    scaling = {"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8}
    phi = Phi3Config(hidden_size=64, num_attention_heads=4, max_position_embeddings=256,
                     original_max_position_embeddings=64, rope_scaling=scaling, pad_token_id=0)
    assert context_length(phi) == 256 and export_context(phi) == 64
    assert export_context(phi.to_dict()) == 64
    plain = Phi3Config(hidden_size=64, num_attention_heads=4, max_position_embeddings=256,
                       original_max_position_embeddings=64, pad_token_id=0)
    assert export_context(plain) == 256
    yarn = LlamaConfig(max_position_embeddings=256, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})
    assert export_context(yarn) == 256  # yarn's tables do not change with the length
    assert export_context({}) is None


def test_generation_config_wins_for_eos_and_bos():
    gen = SimpleNamespace(eos_token_id=[2, 7], bos_token_id=None)
    facts = arch({**SMALL, "eos_token_id": 2, "bos_token_id": 1}, gen)
    assert facts.eos_token_ids == [2, 7] and facts.bos_token_id == 1
    assert arch(SMALL).eos_token_ids == []
    assert token_ids(5) == [5] and token_ids((1, 2)) == [1, 2] and token_ids(None) == []


def test_defaults_follow_the_config_conventions():
    facts = arch(SMALL)
    assert (facts.num_kv_heads, facts.head_dim, facts.intermediate_size) == (2, 8, 64)


def test_a_config_without_its_shape_is_refused():
    with pytest.raises(EdgeC2IError, match="num_hidden_layers"):
        arch({"hidden_size": 16})


def test_arch_never_imports_torch():
    code = "import sys, edge_c2i.arch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
