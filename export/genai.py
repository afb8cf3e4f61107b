"""genai_config.json: what onnxruntime-genai needs to run an edge-c2i export unchanged.

onnxruntime-genai (``og.Model(folder)``) reads ``genai_config.json`` for the decoder's file,
its input and output names and the search defaults.  Both of our layouts take
``input_ids``, ``attention_mask``, ``past_key_values.%d.key/value`` and give ``logits``,
``present.%d.key/value``; optimum's also takes ``position_ids``.  The fused graph's
GroupQueryAttention writes the new keys and values into the past buffer in place, so
``past_present_share_buffer`` is on (onnxruntime-genai allocates one buffer of
``max_length`` per layer, as for its own builder's models); optimum's graph concatenates, so
it is off there.  The fused graph's logits are declared one per sequence (its
``logits_to_keep`` input, not fed by onnxruntime-genai, defaults to the last position), which
onnxruntime-genai reads as a graph that skips the LM head for the rest of a prompt.  Greedy
search by default, as ``edge-c2i generate`` decodes.

``model.type`` is the model's own type where onnxruntime-genai knows it (GENAI_TYPES, the
decoder-only types of its releases since 0.8) and its generic ``decoder`` otherwise (OPT,
Falcon, OLMo2, ...: "Unsupported model_type" before), which runs any graph with these inputs
and outputs.

The config names one model file (``decoder.filename``): the export's most compact file
(int4, else int8, else fp32; .onnx before .ort).  Another file of the same folder runs with
``og.Config.overlay``: ``config.overlay(json.dumps({"model": {"decoder": {"filename":
"model.onnx"}}}))``.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_c2i.arch import arch, context_length

CONFIG = "genai_config.json"
# decoder-only types every onnxruntime-genai release since 0.8 accepts (its ModelType::LLM)
GENAI_TYPES = ("chatglm", "gemma", "gemma2", "gemma3_text", "gpt2", "granite", "llama",
               "mistral", "nemotron", "olmo", "phi", "phimoe", "phi3", "phi3small", "qwen2",
               "qwen3")
# most compact first: the file genai_config.json names when several were written
PREFERENCE = ("model_int4.onnx", "model_int8.onnx", "model.onnx",
              "model_int4.ort", "model_int8.ort", "model.ort")


def decoder_file(folder: Path) -> str:
    """The model file genai_config.json names: the most compact one in ``folder``."""
    return next(name for name in PREFERENCE if (folder / name).is_file())


def genai_config(config: dict, manifest: dict, filename: str) -> dict:
    """The genai_config.json of an export: ``config`` is its config.json, ``manifest`` ours."""
    facts = arch(config)
    eos = manifest["eos_token_id"]
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if "position_ids" in manifest.get("input_names", ["position_ids"]):
        inputs["position_ids"] = "position_ids"
    shared = (manifest.get("graph") or {}).get("kind") == "fused"
    pad = config.get("pad_token_id")
    return {
        "model": {
            "type": manifest["model_type"] if manifest["model_type"] in GENAI_TYPES else "decoder",
            "bos_token_id": manifest["bos_token_id"],
            "eos_token_id": eos,
            "pad_token_id": pad if isinstance(pad, int) else (eos or [0])[0],
            "vocab_size": manifest["vocab_size"],
            "context_length": manifest.get("max_position_embeddings") or context_length(config) or 2048,
            "decoder": {
                "filename": filename,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "hidden_size": facts.hidden_size,
                "head_size": manifest["head_dim"],
                "num_attention_heads": facts.num_heads,
                "num_key_value_heads": manifest["num_kv_heads"],
                "num_hidden_layers": manifest["num_layers"],
                "inputs": {
                    **inputs,
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "max_length": manifest.get("max_position_embeddings") or context_length(config) or 2048,
            "min_length": 0,
            "past_present_share_buffer": shared,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
            "length_penalty": 1.0,
            "early_stopping": True,
            "no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0,
        },
    }


def write_genai_config(folder: Path, manifest: dict) -> dict:
    """Write ``folder``/genai_config.json; returns what the export manifest records of it."""
    config = json.loads((folder / "config.json").read_text())
    filename = decoder_file(folder)
    (folder / CONFIG).write_text(json.dumps(genai_config(config, manifest, filename), indent=2))
    return {"config": CONFIG, "decoder": filename}
