"""The Gemma-3 .gguf tokenizer rebuilt as SentencePiece BPE segments, round-trips and fits the model."""

import pytest
import torch

from edge_c2i.gguf_tokenizer import fix_spm_bpe_tokenizer

PARAGRAPHS = [
    (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built it."
    ),
    (
        "Photosynthesis is the process by which green plants use sunlight to turn water and "
        "carbon dioxide into sugar and oxygen. It takes place mainly in the leaves."
    ),
    (
        "After dinner we walked along the river, talking about our plans for the summer "
        "holidays, until the sun went down and the air grew cold."
    ),
]

@pytest.fixture(scope="module")
def gemma_tokenizers():
    """(broken Unigram tokenizer as transformers builds it, fixed BPE tokenizer), from the
    packaged Gemma-3's .gguf (assembled from its parts once; these tests skipped on a fresh
    machine while they looked for it before anything had made it)."""
    from transformers import AutoTokenizer

    from edge_c2i.models import packaged_gguf

    gguf = packaged_gguf("gemma3-270m")
    broken = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return broken, fix_spm_bpe_tokenizer(broken, gguf)


@pytest.fixture(scope="module")
def model():
    """The packaged Gemma-3 converted to float32 (its weights are what matter)."""
    from transformers import AutoModelForCausalLM

    from edge_c2i.models import resolve

    return AutoModelForCausalLM.from_pretrained(resolve("gemma3-270m"),
                                                dtype=torch.float32).eval()


def test_other_tokenizers_are_returned_unchanged(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    gpt2_like = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    )
    assert fix_spm_bpe_tokenizer(gpt2_like, tmp_path / "unread.gguf") is gpt2_like


def test_segmentation(gemma_tokenizers):
    broken, fixed = gemma_tokenizers
    tokens = fixed.convert_ids_to_tokens(fixed("The capital of France is").input_ids)
    assert tokens == ["<bos>", "The", "▁capital", "▁of", "▁France", "▁is"]
    tokens = fixed.tokenize("The quick brown fox jumps over the lazy dog.")
    assert tokens == [
        "The",
        "▁quick",
        "▁brown",
        "▁fox",
        "▁jumps",
        "▁over",
        "▁the",
        "▁lazy",
        "▁dog",
        ".",
    ]
    # user-defined pieces whole; a run of spaces is the GGUF's piece, spaces as stored
    assert fixed.tokenize("a  b\n\nc\td") == ["a", "  ", "b", "\n\n", "c", "\t", "d"]
    assert fixed.convert_tokens_to_ids("  ") == broken.convert_tokens_to_ids("▁▁")
    assert fixed.tokenize("<start_of_turn>user") == ["<start_of_turn>", "user"]
    for token in ("▁France", "<eos>", "<end_of_turn>", "\n"):  # same ids as the .gguf vocab
        assert fixed.convert_tokens_to_ids(token) == broken.convert_tokens_to_ids(token)
    assert (fixed.bos_token_id, fixed.eos_token_id, fixed.pad_token_id) == (2, 1, 0)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! It's 2024.",
        "naïve café, Größe, 日本語のテキスト, Ωμέγα",
        "emoji 😀🦜 and rare 𓀀 \x01",
        "two\nlines\n\n\nand\ttabs",
        "  multiple   spaces  ",
        "<div>html</div> and <b>bold</b>",
    ],
)
def test_round_trip(gemma_tokenizers, text):
    _, fixed = gemma_tokenizers
    ids = fixed(text).input_ids
    assert ids[0] == fixed.bos_token_id
    assert fixed.decode(ids, skip_special_tokens=True) == text
    assert fixed.decode(fixed.encode(text, add_special_tokens=False)) == text


def _nll(model, tokenizer, text: str) -> float:
    """Negative log-likelihood (nats) of all tokens of `text` after <bos>."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss  # mean over the ids.shape[1] - 1 predicted tokens
    return loss.item() * (ids.shape[1] - 1)


@pytest.mark.slow
def test_model_prefers_fixed_tokenizer(gemma_tokenizers, model):
    broken, fixed = gemma_tokenizers
    chars = sum(len(text) for text in PARAGRAPHS)
    nll_fixed = sum(_nll(model, fixed, text) for text in PARAGRAPHS) / chars
    nll_broken = sum(_nll(model, broken, text) for text in PARAGRAPHS) / chars
    print(f"NLL per character: fixed {nll_fixed:.3f}, broken {nll_broken:.3f} nats")
    assert nll_fixed < 0.5 * nll_broken

    # This base model continues the bare prompt with " the capital of the country of France.",
    # but "▁Paris" is among its top-3 next tokens (rank > 1000 under the broken tokenizer) ...
    ids = fixed("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    assert fixed.convert_tokens_to_ids("▁Paris") in logits.topk(3).indices.tolist()
    # ... and greedily answers the question.
    ids = fixed("Q: What is the capital of France?\nA:", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    answer = fixed.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    print(f"greedy answer: {answer!r}")
    assert "Paris" in answer


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_converted_tokenizers_name_the_gguf_special_tokens(name):
    """transformers' GGUF converter takes SmolLM2's EOS from its BOS id (<|im_start|>, where
    a turn ends with <|im_end|>): a chat generation stopped at the tokenizer's EOS ran on.
    The converted folder's tokenizer names the ids its config.json (the .gguf's) does."""
    import json

    from transformers import AutoTokenizer

    from edge_c2i.models import resolve

    folder = resolve(name)
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for kind in ("bos", "eos", "pad"):
        assert getattr(tokenizer, f"{kind}_token_id") == config[f"{kind}_token_id"], kind


CODE = ["if x != ' ' : pass", "ls -la . ; cd ..", "return ' ' * 4 + s", "f(a , b) ; g( )",
        "don 't and can' t", "x = [1 , 2] ."]


def test_converted_byte_level_bpe_decodes_text_as_it_was():
    """A byte-level BPE decodes losslessly; the converter's clean-up of spaces turned
    "x != ' '" into "x!=''" in every decoded answer and generated line (onnxruntime-genai,
    reading the same tokenizer.json, printed the text as it was)."""
    from transformers import AutoTokenizer

    from edge_c2i.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    assert tokenizer.clean_up_tokenization_spaces is False
    for text in CODE:
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
