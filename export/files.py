"""How the export writes an ONNX file: the graph in ``NAME.onnx``, its weights beside it in
``NAME.onnx_data`` (ONNX's external data, as onnxruntime-genai's model builder and optimum
write large models).

ONNX Runtime reads a one-file model by parsing the whole protobuf and then copying each
weight out of it; weights in an external file are read straight into their tensors.
bench/bench_load.py (load.json) measures both on the dense exports: the peak RSS of
creating a session 13-179 MB lower (SmolLM2 fp32 683 against 756 MB, Gemma-3 fp32 1724
against 1903) and the load 1.5-2.8x faster; bench_runtime.py's int4 saved as one file (key
``weights``) peaked higher in decoding too.  A runtime
that takes a model from bytes (ORT Mobile's ``.ort``, the Android demo's asset) needs one
file: ``export --ort`` writes the ``.ort`` files, and android_demo/copy_model.sh joins an
``.onnx`` with its data (``onnx.save`` in one file).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edge_c2i.io import record_written

DATA_SUFFIX = "_data"


def data_path(path: Path) -> Path:
    """The external data file of the ONNX file ``path``."""
    return path.with_name(path.name + DATA_SUFFIX)


def save(model, path: Path) -> None:
    """Write ``model`` (an onnx ModelProto with its weights in memory) to ``path`` and its
    weights to ``data_path(path)``, replacing both."""
    import onnx

    data = data_path(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=data.name, size_threshold=1024)
    if data.is_file():  # (a graph without large tensors has none)
        shutil.copymode(path, data)  # onnx creates it readable by its owner only
    record_written(path.parent, path.name, data.name)  # a variant added to a finished export


def size(path: Path) -> int:
    """Bytes of the ONNX file ``path`` with its external data."""
    data = data_path(path)
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
