#!/usr/bin/env bash
# Build the emulated arm64 environment that run_arm64.sh runs device_run.py in:
# a Debian arm64 root filesystem (debootstrap, minbase + python3) run by qemu-user,
# with the aarch64 wheels of numpy, onnxruntime and tokenizers (no torch) installed
# into it by the host's pip.
#
#   sudo bash device_tests/arm64/setup_rootfs.sh            # -> /tmp/arm64/rootfs
#
# Settings (environment): ARM64_ROOT (default /tmp/arm64: rootfs/, wheels/ and logs
# go there), ARM64_NO_BINFMT=1 (build as if binfmt_misc were missing), DEBIAN_SUITE
# (bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian), and the package pins
# ORT_VERSION / NUMPY_VERSION / TOKENIZERS_VERSION (default: the versions the host
# python has, so arm64 and x86 run the same onnxruntime).
# Needs root (apt-get, debootstrap, mount) and a Debian/Ubuntu host with access to
# the Debian mirror and PyPI. Idempotent: a finished step is skipped on a rerun.
# Runs its heavy steps under `nice -n 19`. About 10 minutes here (see README.md).
set -euo pipefail

ARM64_ROOT=${ARM64_ROOT:-/tmp/arm64}
ROOTFS=$ARM64_ROOT/rootfs
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_PY=${HOST_PYTHON:-python3}
SITE=/opt/edge-c2i/site-packages   # inside the rootfs
log() { echo "[setup_rootfs] $*" >&2; }

host_version() {  # the host's installed version of a distribution, or empty
    "$HOST_PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true
}
ORT_VERSION=${ORT_VERSION:-$(host_version onnxruntime)}
NUMPY_VERSION=${NUMPY_VERSION:-$(host_version numpy)}
TOKENIZERS_VERSION=${TOKENIZERS_VERSION:-$(host_version tokenizers)}
pin() { if [ -n "$2" ]; then echo "$1==$2"; else echo "$1"; fi; }

mkdir -p "$ARM64_ROOT"

# 1. Host tools: qemu-user (static, so it also runs inside a chroot), binfmt, debootstrap.
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null \
        || ! command -v update-binfmts >/dev/null; then
    log "installing qemu-user-static binfmt-support debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get install -y -qq \
        qemu-user-static binfmt-support debootstrap >/dev/null
fi

# 2. binfmt_misc: lets the kernel run aarch64 ELF files through qemu (needed for
#    debootstrap's second stage and for chroot). Not fatal: run_arm64.sh falls back
#    to `qemu-aarch64-static -L ROOTFS` without it.
#    ARM64_NO_BINFMT=1 builds as if it were missing (to test that path).
binfmt_ok() { [ "${ARM64_NO_BINFMT:-0}" != 1 ] \
    && grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; }
if ! binfmt_ok && [ "${ARM64_NO_BINFMT:-0}" != 1 ]; then
    [ -e /proc/sys/fs/binfmt_misc/register ] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
fi
if binfmt_ok; then log "binfmt_misc: qemu-aarch64 registered"; else
    log "binfmt_misc: not available; the rootfs will be unpacked without its second stage"; fi

# 3. The Debian arm64 root filesystem.
if [ ! -x "$ROOTFS/usr/bin/python3" ] || [ ! -e "$ROOTFS/.edge-c2i-rootfs-done" ]; then
    rm -rf "$ROOTFS"
    if binfmt_ok; then
        log "debootstrap --arch=arm64 --variant=minbase --include=python3 $SUITE (under emulation)"
        nice -n 19 debootstrap --arch=arm64 --variant=minbase --include=python3 \
            "$SUITE" "$ROOTFS" "$MIRROR" >"$ARM64_ROOT/debootstrap.log" 2>&1 \
            || { tail -20 "$ARM64_ROOT/debootstrap.log" >&2; exit 1; }
    else
        # No binfmt: download and unpack only (--foreign), then unpack every downloaded
        # package (python3 and its libraries included) without running maintainer
        # scripts. Enough for qemu-aarch64-static -L to run python3.
        log "debootstrap --foreign (no binfmt), then dpkg-deb -x of the downloaded packages"
        nice -n 19 debootstrap --arch=arm64 --variant=minbase --include=python3 --foreign \
            "$SUITE" "$ROOTFS" "$MIRROR" >"$ARM64_ROOT/debootstrap.log" 2>&1 \
            || { tail -20 "$ARM64_ROOT/debootstrap.log" >&2; exit 1; }
        for deb in "$ROOTFS"/var/cache/apt/archives/*.deb; do
            nice -n 19 dpkg-deb -x "$deb" "$ROOTFS"
        done
        py=$(ls "$ROOTFS"/usr/bin/python3.[0-9]* | grep -E 'python3\.[0-9]+$' | head -1)
        ln -sf "$(basename "$py")" "$ROOTFS/usr/bin/python3"
    fi
    touch "$ROOTFS/.edge-c2i-rootfs-done"
fi
# qemu inside the rootfs, for chroot on kernels whose binfmt entry lacks the F flag
cp -f "$(command -v qemu-aarch64-static)" "$ROOTFS/usr/bin/qemu-aarch64-static"

# 4. The Python packages device_run.py needs, as aarch64 wheels (host pip, --target).
PYVER=$(ls "$ROOTFS"/usr/lib/ | grep -E '^python3\.[0-9]+$' | sort -V | tail -1 | sed 's/python//')
ABI=cp${PYVER/./}
REQS=("$(pin onnxruntime "$ORT_VERSION")" "$(pin numpy "$NUMPY_VERSION")"
      "$(pin tokenizers "$TOKENIZERS_VERSION")")
STAMP="$ROOTFS$SITE/.installed"
if [ ! -e "$STAMP" ] || [ "$(cat "$STAMP")" != "${REQS[*]}" ]; then
    log "pip: aarch64 wheels for Python $PYVER: ${REQS[*]}"
    rm -rf "$ROOTFS$SITE"
    mkdir -p "$ROOTFS$SITE" "$ARM64_ROOT/wheels"
    PLAT=(--platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
          --platform manylinux2014_aarch64 --python-version "$PYVER" --implementation cp
          --abi "$ABI" --abi abi3 --only-binary=:all:)
    nice -n 19 "$HOST_PY" -m pip download --quiet -d "$ARM64_ROOT/wheels" "${PLAT[@]}" "${REQS[@]}"
    nice -n 19 "$HOST_PY" -m pip install --quiet --no-index --find-links "$ARM64_ROOT/wheels" \
        --target "$ROOTFS$SITE" "${PLAT[@]}" "${REQS[@]}"
    echo "${REQS[*]}" >"$STAMP"
fi

# 5. /sys is never mounted in the rootfs: onnxruntime's cpuinfo (its aarch64 build) segfaults
#    under qemu-user when it reads the host's x86 CPU topology and cache files in /sys (with
#    the host's /proc/cpuinfo, which qemu 7.2 passes through unchanged). Plain files stand in
#    for the CPU lists it reads, as on a 1-core board, so cpuinfo initialises (the CPU
#    features then come from the aarch64 HWCAPs that qemu reports). For qemu -L, which falls
#    back to the host's file when the rootfs lacks one, the per-CPU files cpuinfo reads are
#    directories here: they open but read nothing, as if absent.
CPU=$ROOTFS/sys/devices/system/cpu
mkdir -p "$CPU"
for f in possible present online; do echo 0 >"$CPU/$f"; done
for f in topology/physical_package_id topology/cluster_cpus_list topology/core_siblings_list \
         topology/thread_siblings_list cpufreq/cpuinfo_max_freq cpufreq/cpuinfo_min_freq \
         cache/index0/level cache/index0/size cache/index0/shared_cpu_list \
         cache/index1/level cache/index1/size cache/index1/shared_cpu_list \
         cache/index2/level cache/index2/size cache/index2/shared_cpu_list \
         cache/index3/level cache/index3/size cache/index3/shared_cpu_list; do
    mkdir -p "$CPU/cpu0/$f"
done

# 6. Smoke test: the emulated python imports the three packages.
mkdir -p "$ROOTFS/repo" "$ROOTFS/onnx" "$ROOTFS/c2i-home"   # run_arm64.sh's mount points
CHECK='import platform, numpy, onnxruntime, tokenizers; print(platform.machine(), platform.python_version(), "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__, "tokenizers", tokenizers.__version__)'
if binfmt_ok; then
    unshare --mount --propagation private -- bash -c 'mount -t proc proc "$1/proc" &&
        exec chroot "$1" /usr/bin/env -i PYTHONPATH="$2" QEMU_CPU="$4" /usr/bin/python3 -c "$3"' \
        _ "$ROOTFS" "$SITE" "$CHECK" "${QEMU_CPU:-cortex-a76}"
else
    PYTHONPATH=$SITE QEMU_CPU=${QEMU_CPU:-cortex-a76} \
        qemu-aarch64-static -L "$ROOTFS" "$ROOTFS/usr/bin/python3" -c "$CHECK"
fi
log "done: $ROOTFS (Debian $(cat "$ROOTFS/etc/debian_version"), $(qemu-aarch64-static --version | head -1))"
