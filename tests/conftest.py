"""Shared fixtures: the real packaged SmolLM2 (loaded once per session) and tiny random models."""

import os

import pytest
import torch

torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def spectra_cache(tmp_path_factory):
    """The scan's disk cache of singular vectors (spectra.py) in a directory of the session's
    own, also for the CLI's subprocesses: the tests start cold and leave the user's alone."""
    from edge_c2i.spectra import ENV

    before = os.environ.get(ENV)
    os.environ[ENV] = str(tmp_path_factory.mktemp("spectra"))
    yield os.environ[ENV]
    if before is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = before


@pytest.fixture(scope="session")
def smol():
    from edge_c2i.models import load_model

    return load_model("smollm2-135m")


TINY = {
    "llama": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=100)),
    "gemma3_text": ("Gemma3TextConfig", dict(hidden_size=32, intermediate_size=64,
                                             num_attention_heads=4, num_key_value_heads=1,
                                             head_dim=8, num_hidden_layers=2, vocab_size=100)),
    "qwen2": ("Qwen2Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=100)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_head=4, n_layer=2, vocab_size=100, n_positions=128)),
    "gptj": ("GPTJConfig", dict(n_embd=32, n_head=4, n_layer=2, vocab_size=100, rotary_dim=4,
                                n_positions=128)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=32, intermediate_size=64,
                                       num_attention_heads=4, num_hidden_layers=2,
                                       vocab_size=100)),
    "phi": ("PhiConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                              num_hidden_layers=2, vocab_size=100)),
}


def tiny_model(arch: str):
    """A random 2-layer model of the given architecture (for architecture coverage only)."""
    import transformers

    cls_name, kw = TINY[arch]
    config = getattr(transformers, cls_name)(**kw)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.eval().requires_grad_(False)
    return model
