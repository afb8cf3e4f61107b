"""edge-c2i: adapt an LLM to a task with one gradient pass (Compress to Impress), export it to ONNX.

The public API (imported lazily, so that the ONNX runtime path stays free of torch):
``load_model``, ``load_task``, ``adapt``, ``compress``, ``search``, ``apply_``, ``reduced``,
``save``, ``evaluate``, and the plain values they take and return: ``SearchConfig``,
``CompressConfig``, ``Reduction``, ``Trial``, ``AdaptReport``.
"""

import sys
import types

_WHERE = {
    "adapt": "api", "save": "api", "search": "search", "apply_": "factorize",
    "reduced": "factorize", "load_model": "models", "load_task": "tasks",
    "evaluate": "evaluate", "SearchConfig": "config", "Reduction": "config", "Trial": "config",
    "AdaptReport": "config", "compress": "compress", "CompressConfig": "config",
}  # fmt: skip
__all__ = ["AdaptReport", "CompressConfig", "Reduction", "SearchConfig", "Trial", "adapt",
           "apply_", "compress", "evaluate", "load_model", "load_task", "reduced", "save",
           "search"]


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


class _Package(types.ModuleType):
    """Keeps ``edge_c2i.search``, ``.evaluate`` and ``.compress`` the functions: importing the
    submodules of the same names would otherwise bind the modules there (they stay in
    ``sys.modules`` and ``from edge_c2i.search import ...`` works as ever)."""

    def __setattr__(self, name, value):
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
