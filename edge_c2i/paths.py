"""Where edge-c2i keeps its caches (no heavy imports here: the ONNX runtime path uses it)."""

import os
from pathlib import Path


def home() -> Path:
    """The cache dir for converted models and task data: $EDGE_C2I_HOME or ~/.cache/edge-c2i."""
    return Path(os.environ.get("EDGE_C2I_HOME", Path.home() / ".cache" / "edge-c2i"))
