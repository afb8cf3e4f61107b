"""edge-c2i: adapt an LLM to a task with one gradient pass (Compress to Impress), export it to ONNX.

The public API (imported lazily, so that the ONNX runtime path stays free of torch):
``load_model``, ``load_task``, ``adapt``, ``save``, ``evaluate``.
"""

__all__ = ["adapt", "evaluate", "load_model", "load_task", "save"]


def __getattr__(name):
    if name in ("adapt", "save"):
        from . import api

        return getattr(api, name)
    if name == "load_model":
        from .models import load_model

        return load_model
    if name == "load_task":
        from .tasks import load_task

        return load_task
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    raise AttributeError(name)
