#!/usr/bin/env bash
# The whole GPU check in one run on one borrowed H100/H200, in at most 7 minutes of step limits (a rerun still fits
# a 15-minute loan). Steps, in order, with their limits:
#   check_gpu         90 s  actrec check-gpu: environment, Triton self-check, TV-L1 pairs/s per kernel set, STILT bf16
#   tvl1_cuda_tests   80 s  pytest -k cuda: TV-L1 parity and batching on CUDA, Triton kernels on CUDA vs the CPU
#                           references, CUDA graph replay
#   model_tests       50 s  pytest -k cuda: the models' and training's CUDA tests
#   tvl1_throughput  110 s  benchmarks/device_check.py: pairs/s and OpenCV parity per path (triton, triton-k4,
#                           triton-direct, eager) and batch (8, 64, 256, 1024)
#   bench_train       60 s  benchmarks/bench_train.py --gpu
#   tvl1_compile      30 s  device_check.py, the torch.compile path: last, since a cold compile on CUDA can take
#                           minutes (the inductor cache in .device_check/ stays on the warm machine for a rerun);
#                           no default path compiles on CUDA (Triton by default; plain PyTorch is eager there)
#                   ------
#                    420 s
# Every step writes to $OUT as it goes (unbuffered logs; the tables gain a line per measured row; summary.txt a
# line per finished step), so a step stopped by its limit keeps what it measured. No pytest -x: a failing test
# does not hide the next ones.
#
# Carried (64 MiB in all): the tree (git ls-files, 1.1 MiB) and .device_check/prepared.npz (28.1 MiB: the frames, and
# OpenCV's and our CPU solver's flows of the 20 parity pairs, so the GPU's minutes are not spent computing them),
# 29.2 MiB, made beforehand with the full install by `python3 benchmarks/prepare_device_check.py` (about 3 CPU-minutes);
# no wheels: the GPU paths need neither PyAV nor hdf5plugin nor opencv-contrib, which the image lacks (flow stores
# there use gzip).
#
#   bash benchmarks/device_check.sh              # on the GPU machine; results under $OUT (default .device_check/out)
#                                                # (carry .device_check/prepared.npz itself, not the folder, so that
#                                                # the inductor cache there survives for a rerun)
#   bash benchmarks/device_check.sh --dry-run    # every step on the CPU, tiny sizes, with only the image's packages
#
# --dry-run reads .device_check/tiny.npz (`python3 benchmarks/prepare_device_check.py --tiny`), runs the Triton
# kernels under TRITON_INTERPRET=1, and hides av, hdf5plugin and cv2.optflow (benchmarks/gpu_image/sitecustomize.py)
# as the image does; the CUDA tests skip there (their collection and CPU-side tests run), and the compile step runs
# with TORCH_COMPILE_DISABLE=1. PYTHON overrides python3; DATA overrides the input file.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/.device_check/out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1

# `import actrec` from this checkout (the repository root is the package)
PKG=$(mktemp -d)
STUB=$(mktemp -d)
trap 'rm -rf "$PKG" "$STUB"' EXIT
ln -s "$ROOT" "$PKG/actrec"
export PYTHONPATH=$PKG${PYTHONPATH:+:$PYTHONPATH}
if [ $DRY = 1 ]; then
    DATA=${DATA:-$ROOT/.device_check/tiny.npz}
    export PYTHONPATH=$ROOT/benchmarks/gpu_image:$PYTHONPATH TRITON_INTERPRET=1
    CHECK_GPU=(--device cpu --tiny)
    TVL1=(--tiny --batches 2)
    COMPILE=(--tiny --batches 2)
    export TORCH_COMPILE_DISABLE=1  # the compile step's code runs, not the CPU's cold C++ compile (30-60 s)
    "$PY" -c "import av" 2>/dev/null && { echo "the GPU image's import hook is not active"; exit 2; }
    echo "dry run: av, hdf5plugin and cv2.optflow hidden as on the GPU image; Triton under TRITON_INTERPRET=1"
    TRAIN=(--tiny --iterations 10 --workers 0)
else
    DATA=${DATA:-$ROOT/.device_check/prepared.npz}
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device"; exit 2; }
    export TORCHINDUCTOR_CACHE_DIR=$ROOT/.device_check/inductor
    CHECK_GPU=(--seconds 10)
    TVL1=(--batches 8 64 256 1024 --budget 20)
    COMPILE=(--batches 8 64)
    TRAIN=(--gpu)
fi
if [ ! -f "$DATA" ]; then
    echo "missing $DATA: run benchmarks/prepare_device_check.py$([ $DRY = 1 ] && echo ' --tiny') first"
    exit 2
fi
# the tests' frames and OpenCV flows come from the prepared file; a stub stands for the shared data folder
mkdir -p "$STUB/videos" && touch "$STUB/README.md"
: > "$OUT/summary.txt"
rm -f "$OUT/tvl1_table.md"

step() {  # step NAME LIMIT_S COMMAND...: run under a time limit, log as it goes, record the outcome at once
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name (limit $limit s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 40
    local rc=${PIPESTATUS[0]}
    echo "$name: exit $rc$([ "$rc" = 124 ] && echo ' (time limit)'), $((SECONDS - t0)) s" >> "$OUT/summary.txt"
}

step check_gpu 90 "$PY" -m actrec.cli check-gpu "${CHECK_GPU[@]}"
# ACTREC_TVL1_COMPILE=0: the CPU solves of these tests (the references) run eager, with the same results, rather
# than spend a cold CPU compile of a minute
step tvl1_cuda_tests 80 env ACTREC_TVL1_PREPARED="$DATA" ACTREC_SHARED_DATA="$STUB" ACTREC_TVL1_COMPILE=0 \
    "$PY" -m pytest -q -k cuda -p no:cacheprovider tests/test_tvl1.py tests/test_triton_tvl1.py \
    tests/test_triton_solver.py tests/test_tvl1_graphs.py
step model_tests 50 "$PY" -m pytest -q -k cuda -p no:cacheprovider tests/test_stilt.py tests/test_cotnet.py \
    tests/test_cotlstm.py tests/test_train.py tests/test_train_devices.py
step tvl1_throughput 110 "$PY" benchmarks/device_check.py --data "$DATA" --paths triton triton-k4 triton-direct eager \
    "${TVL1[@]}"
step bench_train 60 "$PY" benchmarks/bench_train.py "${TRAIN[@]}"
step tvl1_compile 30 "$PY" benchmarks/device_check.py --data "$DATA" --paths compile "${COMPILE[@]}"

echo "== summary"
cat "$OUT/summary.txt"
[ -f "$OUT/tvl1_table.md" ] && cat "$OUT/tvl1_table.md"
exit 0
