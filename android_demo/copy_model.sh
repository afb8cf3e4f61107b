#!/usr/bin/env bash
# Copies an `edge-c2i export` folder into the app's assets (app/src/main/assets/model/, git-ignored).
#   ./copy_model.sh ONNX_DIR [--int8]
# Takes model.ort (model_int8.ort with --int8; the .onnx file if there is no .ort),
# tokenizer.json, edge_c2i_export.json, and config.json / tokenizer_config.json when present.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="$HERE/app/src/main/assets/model"

SRC="${1:-}"
[ -n "$SRC" ] && [ -d "$SRC" ] || { echo "usage: $0 ONNX_DIR [--int8]" >&2; exit 2; }
STEM=model
[ "${2:-}" = "--int8" ] && STEM=model_int8

if [ -f "$SRC/$STEM.ort" ]; then
    MODEL="$SRC/$STEM.ort"
elif [ -f "$SRC/$STEM.onnx" ]; then
    MODEL="$SRC/$STEM.onnx"
    echo "copy_model: no $STEM.ort in $SRC, using $STEM.onnx (export with --ort for the mobile format)" >&2
    if compgen -G "$SRC/$STEM.onnx?data" >/dev/null; then
        # the export keeps an .onnx file's weights beside it (NAME.onnx_data); the app copies
        # one asset to a file, so the graph and its weights are joined into one .onnx
        JOIN=1
    fi
else
    echo "copy_model: no $STEM.ort or $STEM.onnx in $SRC" >&2
    exit 1
fi
[ -f "$SRC/tokenizer.json" ] || { echo "copy_model: no tokenizer.json in $SRC" >&2; exit 1; }
[ -f "$SRC/edge_c2i_export.json" ] || echo "copy_model: no edge_c2i_export.json in $SRC; the app will read config.json" >&2

rm -rf "$DEST"
mkdir -p "$DEST"
if [ "${JOIN:-0}" = 1 ]; then
    python3 -c 'import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])' "$MODEL" "$DEST/model.onnx" || {
        echo "copy_model: could not join $STEM.onnx with its weights (needs python3 with onnx); or export with --ort" >&2
        exit 1
    }
else
    cp "$MODEL" "$DEST/model.${MODEL##*.}"
fi
for f in tokenizer.json edge_c2i_export.json config.json tokenizer_config.json; do
    if [ -f "$SRC/$f" ]; then cp "$SRC/$f" "$DEST/"; fi
done
echo "copy_model: copied into $DEST:"
ls -l "$DEST"
