#!/usr/bin/env bash
# Run device_tests/device_run.py on an arm64 CPU and compare it with the same run on x86.
#
#   bash device_tests/arm64/run_arm64.sh ONNX_DIR [MODEL_FILE ...] [--examples N]
#        [--out FILE] [--cap-mb MB] [--x86-from DIR] [--no-x86] [--compare-only]
#
# MODEL_FILE defaults to: model.onnx model_int8.ort.  ONNX_DIR needs device_reference.json
# (python device_tests/make_reference.py ONNX_DIR --model ADAPTED, on the host).
#
# Where it runs the arm64 side (ARM64_MODE=auto picks the first that works):
#   native  - this machine is aarch64 (a real board): its own python3 (PYTHON=...), which
#             needs numpy, onnxruntime and tokenizers; no emulation.
#   chroot  - x86 host: the Debian arm64 rootfs of setup_rootfs.sh under qemu-user through
#             binfmt_misc, in a private mount namespace (the repo, ONNX_DIR and a task-data
#             folder are bind-mounted read-only; nothing stays mounted afterwards).
#   qemu-L  - x86 host without binfmt_misc: qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3.
# On an x86 host it then runs the same command with the host python (--no-x86 skips it) and
# compares: max abs difference of the last-position logits of the reference prompts (arm64 vs
# x86), greedy tokens, task accuracy; and each side against device_reference.json with the
# tolerances of device_tests/test_device.py.  On a board, --x86-from DIR takes the x86 side
# from an earlier host run (DIR = the x86/ folder of its work dir).  --compare-only redoes
# only the comparison and the --out file from the raw outputs already in WORK.
#
# Every run: 1 ONNX Runtime thread (--threads 1), OMP_NUM_THREADS=1, under `nice -n $NICE`
# (default 19).  Writes --out (default bench/results/device_arm64.json); raw outputs go to
# WORK (default $ARM64_ROOT/work).  Exit code 1 if a check fails.
# Environment: ARM64_ROOT (/tmp/arm64), ARM64_MODE, QEMU_CPU (cortex-a76), NICE, PYTHON
# (native), HOST_PYTHON, DEVICE_RUN (another device_run.py to run instead of the repo's),
# EDGE_C2I_HOME (task data), RESULT_NOTE (a sentence added to the notes of --out).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ARM64_ROOT=${ARM64_ROOT:-/tmp/arm64}
ROOTFS=$ARM64_ROOT/rootfs
WORK=${WORK:-$ARM64_ROOT/work}
NICE=${NICE:-19}
# The emulated CPU: Cortex-A76 (Raspberry Pi 5, RK3588 class; NEON + dotprod, no SVE/i8mm).
# Also tried here: cortex-a72 (Pi 4; 3x slower int8 under qemu), max (all features).
QEMU_CPU=${QEMU_CPU:-cortex-a76}
# the python that reads the reference and compares (needs numpy); on a board, PYTHON's
if [ "$(uname -m)" = aarch64 ]; then HOST_PY=${HOST_PYTHON:-${PYTHON:-python3}}
else HOST_PY=${HOST_PYTHON:-python3}; fi
SITE=/opt/edge-c2i/site-packages
DEVICE_RUN=${DEVICE_RUN:-$REPO/device_tests/device_run.py}
log() { echo "[run_arm64] $*" >&2; }
die() { echo "[run_arm64] error: $*" >&2; exit 2; }

ONNX_DIR="" MODELS=() EXAMPLES=0 CAP_MB=3072 OUT=$REPO/bench/results/device_arm64.json
X86=1 X86_FROM="" RUN=1
while [ $# -gt 0 ]; do
    case $1 in
        --examples) EXAMPLES=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --cap-mb) CAP_MB=$2; shift 2 ;;
        --x86-from) X86_FROM=$(cd "$2" && pwd); shift 2 ;;
        --no-x86) X86=0; shift ;;
        --compare-only) RUN=0; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) if [ -z "$ONNX_DIR" ]; then ONNX_DIR=$1; else MODELS+=("$1"); fi; shift ;;
    esac
done
[ -n "$ONNX_DIR" ] || die "usage: run_arm64.sh ONNX_DIR [MODEL_FILE ...] (--help)"
ONNX_DIR=$(cd "$ONNX_DIR" && pwd)
[ ${#MODELS[@]} -gt 0 ] || MODELS=(model.onnx model_int8.ort)
[ -f "$ONNX_DIR/device_reference.json" ] || die "no $ONNX_DIR/device_reference.json: \
run python device_tests/make_reference.py $ONNX_DIR --model ADAPTED on the host first"
for m in "${MODELS[@]}"; do [ -f "$ONNX_DIR/$m" ] || die "no $ONNX_DIR/$m"; done
mkdir -p "$WORK/arm64" "$WORK/x86" "$(dirname "$OUT")"
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")

# ---------------------------------------------------------------- where arm64 runs
binfmt_ok() { grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; }
MODE=${ARM64_MODE:-auto}
if [ "$MODE" = auto ]; then
    if [ "$(uname -m)" = aarch64 ]; then MODE=native
    elif binfmt_ok && unshare --mount true 2>/dev/null; then MODE=chroot
    else MODE=qemu-L; fi
fi
[ "$(uname -m)" = aarch64 ] && X86=0
case $MODE in
    native) PYTHON=${PYTHON:-python3} ;;
    chroot|qemu-L) [ -x "$ROOTFS/usr/bin/python3" ] && [ -d "$ROOTFS$SITE" ] \
        || die "no arm64 rootfs at $ROOTFS: run bash device_tests/arm64/setup_rootfs.sh" ;;
    *) die "ARM64_MODE must be auto, native, chroot or qemu-L" ;;
esac
log "arm64 side: $MODE"

# ---------------------------------------------------------------- task data, offline
# device_run.py loads the reference's task; give it a private EDGE_C2I_HOME holding only
# that task's JSON, so nothing is downloaded on the device side.
TASK=$("$HOST_PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['task'])" \
    "$ONNX_DIR/device_reference.json")
C2I_HOME=$WORK/c2i-home
case $TASK in
    bigbench:*)
        NAME=${TASK#bigbench:}; NAME=${NAME%/}
        DEST=$C2I_HOME/bigbench/tasks/$NAME
        if ! ls "$DEST"/task*.json >/dev/null 2>&1; then
            SRC=${EDGE_C2I_HOME:-$HOME/.cache/edge-c2i}/bigbench/tasks/$NAME
            if ! ls "$SRC"/task*.json >/dev/null 2>&1 && [ "$(uname -m)" != aarch64 ]; then
                log "extracting $TASK on the host (edge_c2i.tasks)"
                (cd "$REPO" && PYTHONPATH=$REPO "$HOST_PY" -c \
                    "import sys; from edge_c2i.tasks import bigbench_task_file as f; f(sys.argv[1])" \
                    "$NAME") >&2
            fi
            ls "$SRC"/task*.json >/dev/null 2>&1 || die "no task data for $TASK in $SRC: copy \
~/.cache/edge-c2i/bigbench/tasks/$NAME from a machine that has it (or set EDGE_C2I_HOME)"
            mkdir -p "$DEST" && cp "$SRC"/task*.json "$DEST/"
        fi ;;
    bundled:*) ;;  # ships inside edge-c2i (edge_c2i/tasks_data): nothing to stage
    *) die "task $TASK: only bigbench: and bundled: tasks are staged for the device side" ;;
esac

# ---------------------------------------------------------------- helper: logits + versions
# A second, short process per model: the last-position logits of the reference prompts
# (device_run.py prints only their difference to the reference) and the package versions.
[ "$RUN" = 1 ] && cp "$DEVICE_RUN" "$WORK/device_run.py"
# The torch-free code as pip installs it (pyproject's package-dir: the checkout's export/
# folder is the package edge_c2i.export), without pip: both sides import from WORK/src.
if [ "$RUN" = 1 ]; then
    rm -rf "$WORK/src" && mkdir -p "$WORK/src"
    cp -r "$REPO/edge_c2i" "$WORK/src/edge_c2i" && cp -r "$REPO/export" "$WORK/src/edge_c2i/export"
    find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
fi
cat >"$WORK/dump_logits.py" <<'EOF'
import json, os, platform, sys
import numpy as np, onnxruntime, tokenizers
from edge_c2i.export.runtime import OnnxLM
onnx_dir, model_file, out = sys.argv[1:4]
ref = json.load(open(f"{onnx_dir}/device_reference.json"))
lm = OnnxLM(onnx_dir, 1, model_file)
np.savez(out, *[lm.logits(r["ids"])[-1] for r in ref["prompts"]])
try:
    deb = open("/etc/debian_version").read().strip()
except OSError:
    deb = None
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                  "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                  "tokenizers": tokenizers.__version__, "debian": deb,
                  "qemu_cpu": os.environ.get("QEMU_CPU"),
                  "torch_imported": "torch" in sys.modules}))
EOF

# run_side SIDE CMD...: runs CMD (a python command line, paths as seen by that side).
run_side() {
    local side=$1; shift
    local env=(OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8 HOME=/root
               PATH=/usr/local/bin:/usr/bin:/bin)
    if [ "$side" = x86 ]; then
        env -i "${env[@]}" PYTHONPATH="$WORK/src" EDGE_C2I_HOME="$C2I_HOME" \
            nice -n "$NICE" "$(command -v "$HOST_PY")" "$@"
    elif [ "$MODE" = native ]; then
        env -i "${env[@]}" HOME="$HOME" PATH="$PATH" PYTHONPATH="$WORK/src" \
            EDGE_C2I_HOME="$C2I_HOME" nice -n "$NICE" "$PYTHON" "$@"
    elif [ "$MODE" = qemu-L ]; then
        # qemu looks a path up under ROOTFS first, then on the host: /usr/... comes from
        # the rootfs, the repo, ONNX_DIR and WORK (absent from the rootfs) from the host.
        env -i "${env[@]}" PYTHONPATH="$WORK/src:$SITE" EDGE_C2I_HOME="$C2I_HOME" \
            QEMU_CPU="$QEMU_CPU" nice -n "$NICE" qemu-aarch64-static -L "$ROOTFS" "$ROOTFS/usr/bin/python3" "$@"
    else
        # chroot: paths inside are /repo, /onnx, /work (bind mounts in a private namespace)
        local args=() a
        for a in "$@"; do
            a=${a//"$WORK"//work}; a=${a//"$ONNX_DIR"//onnx}; a=${a//"$REPO"//repo}; args+=("$a")
        done
        unshare --mount --propagation private -- bash -c '
            set -e; R=$1; shift
            mkdir -p "$R/repo" "$R/onnx" "$R/work" "$R/proc" "$R/dev"
            mount --bind "$1" "$R/repo"; mount -o remount,bind,ro "$R/repo"
            mount --bind "$2" "$R/onnx"; mount -o remount,bind,ro "$R/onnx"
            mount --bind "$3" "$R/work"
            mount -t proc proc "$R/proc"; mount --rbind /dev "$R/dev"   # no /sys: see README
            shift 3; exec chroot "$R" "$@"' _ "$ROOTFS" "$REPO" "$ONNX_DIR" "$WORK" \
            /usr/bin/env -i "${env[@]}" QEMU_CPU="$QEMU_CPU" PYTHONPATH=/work/src:$SITE \
            EDGE_C2I_HOME=/work/c2i-home \
            nice -n "$NICE" /usr/bin/python3 "${args[@]}"
    fi
}

now() { date +%s.%N; }
sides=(arm64); [ "$X86" = 1 ] && sides+=(x86)
status=0
[ "$RUN" = 1 ] || sides=()
for m in "${MODELS[@]}"; do
    for side in ${sides[@]+"${sides[@]}"}; do
        log "$side: device_run.py $m --threads 1 --max-memory-mb $CAP_MB --examples $EXAMPLES"
        t0=$(now)
        if run_side "$side" "$WORK/device_run.py" "$ONNX_DIR" "$m" --threads 1 \
                --max-memory-mb "$CAP_MB" --examples "$EXAMPLES" \
                >"$WORK/$side/$m.out" 2>"$WORK/$side/$m.err"; then
            t1=$(now)
            tail -n 1 "$WORK/$side/$m.out" >"$WORK/$side/$m.json"
            echo "$t0 $t1" | awk '{printf "%.1f\n", $2 - $1}' >"$WORK/$side/$m.wall_s"
            log "$side: $m done in $(cat "$WORK/$side/$m.wall_s") s"
        else
            log "$side: $m FAILED (see $WORK/$side/$m.err):"; tail -5 "$WORK/$side/$m.err" >&2
            rm -f "$WORK/$side/$m.json"; status=1; continue
        fi
        run_side "$side" "$WORK/dump_logits.py" "$ONNX_DIR" "$m" "$WORK/$side/$m.logits.npz" \
            >"$WORK/$side/$m.env.json" 2>"$WORK/$side/$m.dump.err" \
            || { log "$side: logits dump of $m failed (see $WORK/$side/$m.dump.err)"; status=1; }
    done
done

# ---------------------------------------------------------------- compare and record
QEMU=$(command -v qemu-aarch64-static >/dev/null && qemu-aarch64-static --version | head -1 || true)
[ -n "$X86_FROM" ] && XDIR=$X86_FROM || XDIR=$WORK/x86
"$HOST_PY" - "$WORK" "$XDIR" "$ONNX_DIR" "$OUT" "$MODE" "$QEMU" "$EXAMPLES" "$CAP_MB" "$NICE" \
    "$WORK/device_run.py" "$REPO/device_tests/device_run.py" "${MODELS[@]}" <<'EOF' || status=1
import datetime, hashlib, json, os, platform, sys
from pathlib import Path
import numpy as np

work, xdir, onnx_dir, out, mode, qemu, examples, cap, nice, ran, repo_run, *models = sys.argv[1:]
work, xdir = Path(work), Path(xdir)
ref = json.loads((Path(onnx_dir) / "device_reference.json").read_text())
# the bounds the exporter kept this export under (export/parity.py, recorded in the manifest)
parity = json.loads((Path(onnx_dir) / "edge_c2i_export.json").read_text()).get("parity")
if not parity:
    sys.exit(f"{onnx_dir} was exported with --no-check: no parity tolerances to check against")
FP32_ATOL, INT8_MIN_CORR = parity["fp32_atol"], parity["int8_min_corr"]
FP32 = lambda m: "int8" not in m
sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]


def side(folder, m):
    try:
        run = json.loads((folder / f"{m}.json").read_text())
    except (OSError, ValueError):
        return None, None, None
    env = logits = None
    try:
        env = json.loads((folder / f"{m}.env.json").read_text().strip().splitlines()[-1])
        z = np.load(folder / f"{m}.logits.npz")
        logits = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    except (OSError, ValueError, IndexError):
        pass
    wall = (folder / f"{m}.wall_s")
    run["wall_s"] = float(wall.read_text()) if wall.is_file() else None
    return run, env, logits


def summary(run):
    return {"load_s": round(run["load_s"], 3), "prefill_128_s": round(run["prefill_128_s"], 4),
            "per_token_s": round(run["per_token_s"], 4), "peak_rss_mb": round(run["peak_rss_mb"], 1),
            "accuracy": run["task"]["accuracy"], "loss": round(run["task"]["loss"], 5),
            "n_examples": run["task"]["n"], "wall_s": run["wall_s"],
            "torch_imported": run["torch_imported"]}


INT8_MAX_RANK = 3  # as test_device.py: the wanted first token among the top 3 int8 logits


def rank(logits, token):  # 1 = the argmax
    return int((logits > logits[token]).sum()) + 1


def host_ranks(run, logits):
    """Rank of the reference's first greedy token in each prompt's logits (device_run.py
    prints it since 86f9028; older copies do not, then it comes from the dumped logits)."""
    got = [p.get("host_first_token_rank") for p in run["prompts"]]
    if None in got and logits is not None:
        got = [rank(lg, w["greedy"][0]) for lg, w in zip(logits, ref["prompts"])]
    return got


def checks(run, m, logits):  # device_tests/test_device.py's tolerances, vs the PyTorch reference
    c = {"torch_not_imported": run["torch_imported"] is False,
         "peak_rss_below_cap": run["peak_rss_mb"] < int(cap)}
    pairs = list(zip(run["prompts"], ref["prompts"]))
    if FP32(m):
        c[f"logits_within_{FP32_ATOL:g}_of_reference"] = all(g["max_abs_diff"] <= FP32_ATOL
                                                              for g, _ in pairs)
        c["greedy_equals_reference"] = all(g["greedy"] == w["greedy"] for g, w in pairs)
    else:
        c[f"logits_corr_ge_{INT8_MIN_CORR:g}"] = all(g["corr"] >= INT8_MIN_CORR for g, _ in pairs)
        ranks = host_ranks(run, logits)
        c[f"host_first_token_rank_le_{INT8_MAX_RANK}"] = (None not in ranks
                                                         and max(ranks) <= INT8_MAX_RANK)
    tol = 0.01 if FP32(m) else 0.05
    if run["task"]["n"] == ref["examples"]:
        c[f"accuracy_within_{tol}_of_reference"] = \
            abs(run["task"]["accuracy"] - ref["host"]["accuracy"]) <= tol + 1e-9
    # else: the reference's accuracy is on other examples; arm64 vs x86 compares accuracy
    c["loss_finite"] = bool(np.isfinite(run["task"]["loss"]))
    return c


result = {"date": datetime.date.today().isoformat(),
          "what": "device_tests/device_run.py on an arm64 CPU vs the same command on x86 "
                  "(device_tests/arm64/run_arm64.sh)",
          "onnx_dir": onnx_dir, "arm64_mode": mode,
          "reference": {"task": ref["task"], "examples": ref["examples"], "host": ref["host"]},
          "settings": {"threads": 1, "OMP_NUM_THREADS": 1, "cap_mb": int(cap), "nice": int(nice),
                       "examples_arg": int(examples)},
          "device_run": {"sha256": sha(ran), "same_as_repo": sha(ran) == sha(repo_run)},
          "environment": {}, "models": {}}
ok = True
for m in models:
    a_run, a_env, a_logits = side(work / "arm64", m)
    x_run, x_env, x_logits = side(xdir, m)
    if a_env:
        a_env = {k: v for k, v in a_env.items() if k != "qemu_cpu"} | {
            "emulator": f"{qemu}, -cpu {a_env.get('qemu_cpu')}" if mode != "native" else None}
        result["environment"]["arm64"] = a_env
    if x_env:
        result["environment"]["x86"] = {k: v for k, v in x_env.items() if k != "qemu_cpu"}
    entry = {"precision": "fp32" if FP32(m) else "int8"}
    for name, run in (("arm64", a_run), ("x86", x_run)):
        if run is not None:
            entry[name] = summary(run)
            logits = a_logits if name == "arm64" else x_logits
            entry[name]["checks_vs_reference"] = checks(run, m, logits)
            if not FP32(m):
                entry[name]["host_first_token_ranks"] = host_ranks(run, logits)
                entry[name]["first_greedy_token_equals_reference"] = all(
                    g["greedy"][0] == w["greedy"][0] for g, w in zip(run["prompts"], ref["prompts"]))
            entry[name]["max_abs_logit_diff_vs_reference"] = max(p["max_abs_diff"]
                                                                 for p in run["prompts"])
            if run["task"]["n"] != ref["examples"]:
                entry[name]["accuracy_vs_reference"] = (
                    f"not checked: {run['task']['n']} examples, the reference has "
                    f"{ref['examples']} (accuracy {ref['host']['accuracy']})")
            ok &= all(entry[name]["checks_vs_reference"].values())
        else:
            entry[name] = None
    if a_run is not None and x_run is not None:
        cmp = {"greedy_tokens_equal": all(p["greedy"] == q["greedy"] for p, q in
                                          zip(a_run["prompts"], x_run["prompts"])),
               "accuracy_diff": round(a_run["task"]["accuracy"] - x_run["task"]["accuracy"], 6),
               "same_n_examples": a_run["task"]["n"] == x_run["task"]["n"]}
        cmp["first_greedy_token_equal"] = all(p["greedy"][:1] == q["greedy"][:1] for p, q in
                                              zip(a_run["prompts"], x_run["prompts"]))
        if a_logits is not None and x_logits is not None:
            cmp["max_abs_logit_diff"] = float(max(np.abs(p - q).max()
                                                  for p, q in zip(a_logits, x_logits)))
            cmp["min_logit_corr"] = float(min(np.corrcoef(p, q)[0, 1]
                                              for p, q in zip(a_logits, x_logits)))
            cmp["x86_first_token_rank_in_arm64"] = max(rank(p, int(q.argmax()))
                                                       for p, q in zip(a_logits, x_logits))
        # test_device.py's tolerances, with x86 in the place of the PyTorch reference:
        # fp32: logits within FP32_ATOL, the same greedy tokens, accuracy within 0.01;
        # int8 (other integer kernels on each CPU): logits corr >= INT8_MIN_CORR, x86's first greedy
        # token among arm64's top 3, accuracy within 0.05.
        acc_tol = 0.01 if FP32(m) else 0.05
        if FP32(m):
            cmp["pass"] = (cmp["greedy_tokens_equal"]
                           and cmp.get("max_abs_logit_diff", np.inf) <= FP32_ATOL)
            cmp["tolerances"] = {"max_abs_logit_diff": FP32_ATOL, "greedy": "all tokens",
                                 "accuracy": acc_tol}
        else:
            cmp["pass"] = (cmp.get("x86_first_token_rank_in_arm64", np.inf) <= INT8_MAX_RANK
                           and cmp.get("min_logit_corr", 0) >= INT8_MIN_CORR)
            cmp["tolerances"] = {"min_logit_corr": INT8_MIN_CORR,
                                 "x86_first_token_rank_in_arm64": INT8_MAX_RANK,
                                 "accuracy": acc_tol}
        cmp["pass"] = bool(cmp["pass"] and cmp["same_n_examples"]
                           and abs(cmp["accuracy_diff"]) <= acc_tol + 1e-9)
        ok &= cmp["pass"]
        entry["arm64_vs_x86"] = cmp
    else:
        ok &= a_run is not None
    result["models"][m] = entry
result["notes"] = [
    "arm64 numbers from qemu-user emulation are not a board's: latency and wall time are those "
    "of a translated x86 process, and peak_rss_mb includes qemu's own translator memory; "
    "the RLIMIT_AS cap is not enforced under qemu-user (it ignores setrlimit(RLIMIT_AS))"
    if mode != "native" else "arm64 numbers measured on a native aarch64 CPU",
    "x86 numbers are from the host python on the same machine, under nice -n %s" % nice,
] + ([os.environ["RESULT_NOTE"]] if os.environ.get("RESULT_NOTE") else [])
Path(out).write_text(json.dumps(result, indent=2) + "\n")
for m, e in result["models"].items():
    a, x, c = e.get("arm64"), e.get("x86"), e.get("arm64_vs_x86", {})
    print(f"{m}: arm64 acc {a and a['accuracy']} n {a and a['n_examples']} "
          f"prefill {a and a['prefill_128_s']} s tok {a and a['per_token_s']} s wall {a and a['wall_s']} s"
          f" | x86 acc {x and x['accuracy']} prefill {x and x['prefill_128_s']} s "
          f"tok {x and x['per_token_s']} s | max|dlogit| {c.get('max_abs_logit_diff')} "
          f"greedy equal {c.get('greedy_tokens_equal')}")
print(f"written: {out}; all checks {'pass' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
EOF
exit $status
