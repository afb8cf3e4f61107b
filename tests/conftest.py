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
def needs_bigbench():
    """Skips a test of the real BIG-bench tasks where the bigbench sdist cannot be had (a
    package index that does not serve it, and no $EDGE_C2I_BIGBENCH): the skip says why."""
    from edge_c2i.tasks import BigBenchUnavailable, bigbench_source

    try:
        bigbench_source()
    except BigBenchUnavailable as e:
        pytest.skip(f"BIG-bench tasks unavailable: {e}")


def write_bigbench(root, tasks: dict[str, dict]):
    """``tasks`` (path under benchmark_tasks, e.g. "parent/sub/task.json" -> JSON) as a
    BIG-bench checkout under ``root``; the folder that holds ``bigbench/``."""
    import json

    for rel, data in tasks.items():
        path = root / "bigbench" / "benchmark_tasks" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return root


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
    "qwen3": ("Qwen3Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
                                  vocab_size=100)),
    "phi3": ("Phi3Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                num_key_value_heads=2, num_hidden_layers=2, vocab_size=100,
                                pad_token_id=0)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_head=4, n_layer=2, vocab_size=100, n_positions=128)),
    "gptj": ("GPTJConfig", dict(n_embd=32, n_head=4, n_layer=2, vocab_size=100, rotary_dim=4,
                                n_positions=128)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=32, intermediate_size=64,
                                       num_attention_heads=4, num_hidden_layers=2,
                                       vocab_size=100)),
    "phi": ("PhiConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                              num_hidden_layers=2, vocab_size=100)),
    # not in arch.ARCHITECTURES: their layouts are read off their modules (targets.inferred)
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_attention_heads=4,
                              num_hidden_layers=2, vocab_size=100, word_embed_proj_dim=32)),
    "olmo2": ("Olmo2Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_hidden_layers=2, vocab_size=100)),
    "falcon": ("FalconConfig", dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                    vocab_size=100)),  # multi_query: one key/value head
    "bloom": ("BloomConfig", dict(hidden_size=32, n_head=4, n_layer=2, vocab_size=100)),
    "mpt": ("MptConfig", dict(d_model=32, n_heads=4, n_layers=2, vocab_size=100)),
    "starcoder2": ("Starcoder2Config", dict(hidden_size=32, intermediate_size=64,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            num_hidden_layers=2, vocab_size=100)),
}


def genai_greedy(model, ids: list[int], n: int) -> list[int]:
    """onnxruntime-genai's greedy continuation of ``ids`` (``n`` tokens) by ``model``."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def byte_bpe_tokenizer(text: str, vocab_size: int = 300):
    """A byte-level BPE trained on ``text`` (any string encodes), as a transformers fast
    tokenizer whose <|endoftext|> (id 0) is the BOS."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text] * 20, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>")


def tiny_model(arch: str):
    """A random 2-layer model of the given architecture (for architecture coverage only)."""
    import transformers

    cls_name, kw = TINY[arch]
    config = getattr(transformers, cls_name)(**kw)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.eval().requires_grad_(False)
    return model
