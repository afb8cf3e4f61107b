#!/usr/bin/env bash
# Export the local HF-format models with the ONNX Runtime GenAI "model builder"
# (python -m onnxruntime_genai.models.builder) for the onnxruntime-genai benchmark.
#
# The builder needs transformers >= 5, while the project's system Python stays on
# transformers 4.57.x, so it runs from its own venv (created here if missing).
# The exported folders are loaded later from the system Python's onnxruntime-genai.
#
# Usage:  bash bench/genai_builder.sh            # all models x precisions
#         OUT=/some/dir bash bench/genai_builder.sh
# Env:    OUT     output root (default /work/builder); result: $OUT/$MODEL/$PRECISION
#         VENV    builder venv (default /work/venvs/genai-builder)
#         MODELS  models to build (default "smollm2-135m gemma3-270m")
#         MODELS_DIR  the HF-format model folders (default: edge-c2i's converted packaged
#                 models, converted here first if missing)
#         PRECISIONS (default "fp32 int8 int4")
#
# int4/int8 use the builder's defaults (onnxruntime-genai 0.18.0; see the
# `--extra_options` help text and make_tied_embeddings_init in the builder source):
#   - weight-only RTN quantization ("default" algo) of every MatMul weight, including
#     lm_head, into MatMulNBits with block_size=32, is_symmetric=true (no zero
#     points), accuracy_level=4 on CPU (activations quantized to int8 in the kernel);
#   - shared_embeddings defaults to the config's tie_word_embeddings (true for both
#     models, despite the help text saying "Default is false"), which adds Gather to
#     op_types_to_quantize. int4: the embedding becomes a GatherBlockQuantized that
#     reads lm_head's int4 weights (one int4 copy). int8: Gather quantization is
#     4-bit only, so the embedding stays an fp32 Gather table and lm_head is a
#     separate int8 MatMulNBits (two copies). fp32: one table, Transpose for lm_head.
# Note: `builder --help` itself crashes in 0.18.0 (an unescaped '%' in a help
# string), so read the source for the option list.
#
# Gemma-3 (model_type gemma3_text) does not build with the plain builder 0.18.0 +
# transformers 5: transformers 5 stores Gemma-3 RoPE as a per-layer-type dict
# rope_parameters={"full_attention": {...}, "sliding_attention": {...}} and drops
# rope_theta / rope_local_base_freq, while the builder's Gemma3Model reads
# rope_parameters["rope_type"] (KeyError) and config.rope_local_base_freq. No
# builder option changes that, so gemma3 models are built through COMPAT_PY below:
# it runs the unmodified builder after flattening the config back to the shape it
# reads (global theta 1e6, local theta 1e4). Set GEMMA3_COMPAT=0 to skip them.
# Known runtime caveats of the Gemma-3 export (onnxruntime-genai 0.18.0):
#   - og.Tokenizer.encode() adds no <bos> (id 2) although HF does; Gemma-3
#     degenerates without it, so callers must prepend bos_token_id themselves;
#   - sliding-window layers get a 512-slot windowed KV cache, so search
#     max_length must be >= 512 (else GroupQueryAttention fails:
#     "KV cache capacity (N) must be at least local_window_size (512)").
set -euo pipefail

OUT="${OUT:-/work/builder}"
VENV="${VENV:-/work/venvs/genai-builder}"
MODELS_DIR="${MODELS_DIR:-${EDGE_C2I_HOME:-$HOME/.cache/edge-c2i}/models}"
MODELS="${MODELS:-smollm2-135m gemma3-270m}"
GEMMA3_COMPAT="${GEMMA3_COMPAT:-1}"
PRECISIONS="${PRECISIONS:-fp32 int8 int4}"
# Local folders only: never reach the Hugging Face hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# (a) Builder venv with pinned packages. torch must be a CPU build: the machine's
# pip config has /opt/wheels as find-links, which holds torch-2.13.0+cpu, so a
# plain install resolves to it without nvidia-* packages. onnx_ir is imported by
# the builder but is not a declared dependency of onnxruntime-genai.
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating builder venv $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    nice -n 10 "$VENV/bin/pip" install \
        torch==2.13.0 'transformers>=5' onnxruntime-genai==0.18.0 onnxruntime==1.32.0 \
        onnx onnx_ir numpy sentencepiece protobuf >&2
    if "$VENV/bin/pip" list 2>/dev/null | grep -qi '^nvidia-'; then
        echo "ERROR: a CUDA torch was installed into $VENV; install a +cpu wheel instead" >&2
        exit 1
    fi
fi
"$VENV/bin/python" -c "import onnxruntime_genai, transformers, torch; print('builder venv:', 'transformers', transformers.__version__, 'torch', torch.__version__, 'onnxruntime-genai', onnxruntime_genai.__version__)" >&2

# Builder entry point with the Gemma-3 config flattening described above (the
# builder's own code is not changed; this mirrors its `__main__` block).
COMPAT_PY='
import onnxruntime_genai.models.builder as b
_get = b.get_hf_details
def get_hf_details(*args, **kwargs):
    details = _get(*args, **kwargs)
    cfg = details["hf_config"]
    rp = getattr(cfg, "rope_parameters", None)
    if (getattr(cfg, "model_type", "") == "gemma3_text" and isinstance(rp, dict)
            and "full_attention" in rp and "sliding_attention" in rp):
        full, local = rp["full_attention"], rp["sliding_attention"]
        if {full.get("rope_type"), local.get("rope_type")} - {"default", None}:
            raise NotImplementedError(f"scaled RoPE is not handled here: {rp}")
        cfg.rope_theta = full["rope_theta"]
        cfg.rope_local_base_freq = local["rope_theta"]
        cfg.rope_parameters = dict(full)
        print(f"compat: gemma3 rope_theta={cfg.rope_theta} rope_local_base_freq={cfg.rope_local_base_freq}")
    return details
b.get_hf_details = get_hf_details
a = b.get_args()
extra = b.parse_extra_options(
    a.model_name, a.input, a.output, a.precision, a.execution_provider, a.cache_dir, a.extra_options,
    builder_config_version=a.builder_config_version, target_options=a.target_options,
    drafter_options=a.drafter_options, speculative_options=a.speculative_options,
    runtime_config=a.runtime_config, search=a.search)
b.create_model(a.model_name, a.input, a.output, a.precision, a.execution_provider, a.cache_dir, **extra)
'

# (b) One build per model x precision, skipped if the output already exists.
for MODEL in $MODELS; do
    if [ ! -f "$MODELS_DIR/$MODEL/config.json" ]; then
        # a fresh machine: the packaged GGUF converted once, as every edge-c2i command does
        python3 -c "import sys; from edge_c2i.models import resolve; print(resolve(sys.argv[1]))" \
            "$MODEL" >&2
    fi
    if [ ! -f "$MODELS_DIR/$MODEL/config.json" ]; then
        echo "FAILED $MODEL: no $MODELS_DIR/$MODEL/config.json (set MODELS_DIR)" >&2
        continue
    fi
    for PRECISION in $PRECISIONS; do
        dst="$OUT/$MODEL/$PRECISION"
        if [ -f "$dst/genai_config.json" ] && [ -f "$dst/model.onnx" ]; then
            echo "skip $MODEL/$PRECISION: $dst exists" >&2
            continue
        fi
        entry=(-m onnxruntime_genai.models.builder)
        if grep -q '"model_type": *"gemma3_text"' "$MODELS_DIR/$MODEL/config.json"; then
            if [ "$GEMMA3_COMPAT" != 1 ]; then
                echo "skip $MODEL/$PRECISION: gemma3_text needs GEMMA3_COMPAT=1 (see header)" >&2
                continue
            fi
            entry=(-c "$COMPAT_PY")
        fi
        # The builder writes temporary files into its cache dir (-c); keep that
        # out of the read-only model folder and out of the cwd, and remove it after.
        cache="$OUT/.cache/$MODEL-$PRECISION"
        if [ -e "$dst" ]; then  # never delete a folder this script did not finish writing
            echo "FAILED $MODEL/$PRECISION: $dst exists but holds no finished build;" \
                 "remove it yourself or choose another OUT" >&2
            continue
        fi
        rm -rf "$cache"
        mkdir -p "$dst"
        echo "build $MODEL/$PRECISION -> $dst" >&2
        t0=$(date +%s.%N)
        nice -n 10 "$VENV/bin/python" "${entry[@]}" \
            -i "$MODELS_DIR/$MODEL" -o "$dst" -p "$PRECISION" -e cpu -c "$cache" \
            > "$dst.build.log" 2>&1 || {
            echo "FAILED $MODEL/$PRECISION (log: $dst.build.log)" >&2
            tail -n 20 "$dst.build.log" >&2
            rm -rf "$cache" "$dst"   # no half-built folder that a rerun would skip
            continue
        }
        t1=$(date +%s.%N)
        rm -rf "$cache"
        # transformers 5 re-saves tokenizer_config.json with "chat_template": null
        # when the model has none (gemma3-270m); og.Tokenizer then fails with
        # "[json.exception.type_error.302] type must be string, but is null".
        python3 - "$dst/tokenizer_config.json" <<'PY'
import json, sys
p = sys.argv[1]
cfg = json.load(open(p))
drop = [k for k, v in cfg.items() if v is None and k == "chat_template"]
if drop:
    for k in drop:
        del cfg[k]
    json.dump(cfg, open(p, "w"), indent=2)
    print(f"removed null {drop} from {p}", file=sys.stderr)
PY
        awk -v m="$MODEL" -v p="$PRECISION" -v a="$t0" -v b="$t1" \
            'BEGIN { printf "built %s/%s in %.1f s\n", m, p, b - a }' >&2
    done
done
