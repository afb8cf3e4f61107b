"""Repair the tokenizers transformers builds from .gguf files.

- Gemma: transformers turns the SentencePiece vocabulary of a Gemma .gguf
  (tokenizer.ggml.model "llama") into a `tokenizers` Unigram model, but Gemma's SentencePiece
  model is BPE, so words fall apart ("The capital" -> 'The', ' c', 'ap', 'it', 'al').
  `fix_spm_bpe_tokenizer` rebuilds it as BPE.
- GPT-2-style byte-level BPE (SmolLM2, tokenizer.ggml.model "gpt2"): transformers sets
  ``byte_fallback`` and a SentencePiece-style decoder on a ByteLevel model. transformers
  itself never reaches either (every byte has a ByteLevel piece), but other readers of
  tokenizer.json do: onnxruntime-genai maps every non-ASCII piece to id -1 and decodes
  wrongly. `fix_byte_level_bpe` sets them to what a byte-level BPE means and writes the
  GPT-2 split out as a Split; transformers' ids and text are unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

SPM_BPE_ARCHITECTURES = {"gemma", "gemma2", "gemma3"}
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # SentencePiece piece types (tokenizer.ggml.token_type)


def fix_spm_bpe_tokenizer(tokenizer, gguf_path: str | Path):
    """A SentencePiece-BPE tokenizer rebuilt from `gguf_path` if `tokenizer` is a wrong Unigram.

    Only Gemma-family .gguf files (tokenizer.ggml.model "llama") whose tokenizer transformers
    built as Unigram are rebuilt; any other tokenizer is returned unchanged. The result keeps
    the ids of tokenizer.ggml.tokens, the special tokens and add_bos/add_eos of `tokenizer`.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, models.Unigram):
        return tokenizer
    meta = _read_gguf(gguf_path)
    if meta["model"] != "llama" or meta["architecture"] not in SPM_BPE_ARCHITECTURES:
        return tokenizer

    from transformers import GemmaTokenizerFast

    return GemmaTokenizerFast(
        tokenizer_object=_spm_bpe(meta["tokens"], meta["scores"], meta["types"], meta["unk"]),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        pad_token=tokenizer.pad_token,
        add_bos_token=getattr(tokenizer, "add_bos_token", True),
        add_eos_token=getattr(tokenizer, "add_eos_token", False),
        padding_side=tokenizer.padding_side,
        model_max_length=tokenizer.model_max_length,
        chat_template=tokenizer.chat_template,
        name_or_path=tokenizer.name_or_path,
    )


# the split tokenizers' ByteLevel pre-tokenizer applies when use_regex is on (GPT-2's)
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def fix_byte_level_bpe(tokenizer):
    """`tokenizer` as a plain byte-level BPE that onnxruntime-genai reads as transformers does.

    No byte fallback and a ByteLevel decoder (what a byte-level BPE means), and the
    pre-tokenizer's built-in GPT-2 split written out as an explicit Split: onnxruntime-genai
    otherwise splits "\n\nP" as "\n\n", "P" where transformers gives "\n", "\nP".  The ids
    transformers gives are unchanged.  A tokenizer whose model is not BPE, or whose
    pre-tokenizer is not a bare ByteLevel, is returned unchanged; the backend is replaced in
    place (the wrapper's settings stay as they were).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, models.BPE):
        return tokenizer
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel":
        return tokenizer
    spec["model"]["byte_fallback"] = False
    fixed = Tokenizer.from_str(json.dumps(spec))
    fixed.decoder = decoders.ByteLevel()
    if pre.get("use_regex", True):
        fixed.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT2_SPLIT), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=pre.get("add_prefix_space", False),
                                     use_regex=False),
        ])
    tokenizer._tokenizer = fixed
    return tokenizer


def is_byte_level(tokenizer) -> bool:
    """Whether ``tokenizer`` decodes bytes (a ByteLevel decoder): decoding is lossless."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.ByteLevel)


def _read_gguf(gguf_path: str | Path) -> dict:
    """The tokenizer metadata of a .gguf file (values of field f are f.parts[f.data[i]])."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields

    def values(key: str) -> list:
        field = fields.get(key)
        return [] if field is None else [field.parts[i] for i in field.data]

    def text(key: str) -> str | None:
        found = values(key)
        return bytes(found[0]).decode("utf-8") if found else None

    unk = values("tokenizer.ggml.unknown_token_id")
    return {
        "architecture": text("general.architecture"),
        "model": text("tokenizer.ggml.model"),
        "tokens": [bytes(part).decode("utf-8") for part in values("tokenizer.ggml.tokens")],
        "scores": [float(part[0]) for part in values("tokenizer.ggml.scores")],
        "types": [int(part[0]) for part in values("tokenizer.ggml.token_type")],
        "unk": int(unk[0][0]) if unk else None,
    }


def _spm_bpe(tokens: list[str], scores: list[float], types: list[int], unk: int | None):
    """A `tokenizers` BPE equivalent of a SentencePiece BPE model with byte fallback.

    llama.cpp stores user-defined whitespace pieces with real spaces ("  "), and so do we:
    they are added tokens matched on the raw text (``normalized=False``), before the
    normalizer turns spaces into "▁".  transformers gives the same ids either way, but
    onnxruntime-genai matches added tokens on the raw text only: with the pieces as "▁▁"
    (normalized) it split every run of spaces into single "▁" (``a  b`` -> a, ▁, ▁b where
    SentencePiece and transformers give a, ▁▁, b).  "<0x09>" stays a byte piece: Gemma-3
    has a separate user-defined "\\t" (mapping it to "\\t" would clash).
    """
    pieces = list(tokens)
    vocab = {piece: i for i, piece in enumerate(pieces)}
    model = models.BPE(
        vocab=vocab,
        merges=_merges(pieces, scores, types),
        unk_token=pieces[unk] if unk is not None else None,
        byte_fallback=True,
        fuse_unk=True,
    )
    backend = Tokenizer(model)
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # SentencePiece never splits control and user-defined pieces. Control pieces are special;
    # user-defined ones ("\n\n", "  ", "<div>") are text and must survive skip_special_tokens.
    backend.add_tokens(
        [
            AddedToken(piece, special=kind == CONTROL,
                       normalized=kind == USER_DEFINED and not _spaces(piece))
            for piece, kind in zip(pieces, types)
            if kind in (CONTROL, USER_DEFINED)
        ]
    )
    return backend


def _spaces(piece: str) -> bool:
    """A run of spaces (a user-defined whitespace piece as llama.cpp stores it)."""
    return bool(piece) and not piece.strip(" ")


def _merges(pieces: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges as SentencePiece applies them: the pair whose union scores highest first.

    Every split (left, right) of a normal piece into two normal pieces is a merge ranked by
    the score of the piece; one dict lookup per split, so O(vocab x piece length).
    """
    normal = {piece for piece, kind in zip(pieces, types) if kind == NORMAL}
    ranked = [
        (-score, i, cut, piece[:cut], piece[cut:])
        for i, (piece, score, kind) in enumerate(zip(pieces, scores, types))
        if kind == NORMAL
        for cut in range(1, len(piece))
        if piece[:cut] in normal and piece[cut:] in normal
    ]
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]
