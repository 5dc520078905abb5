#!/usr/bin/env bash
# The whole GPU check in one run (aimed at under 8 minutes on one H200):
#   1. the CUDA tests (TV-L1 parity and batching on CUDA, the Triton kernels on CUDA against the CPU references,
#      the models and training tests);
#   2. TV-L1 pairs/s at 340x256 for the Triton (with and without CUDA graphs), torch.compile and eager paths at
#      batches 8/64/256/1024, with parity against OpenCV's flows (benchmarks/device_check.py);
#   3. python benchmarks/bench_train.py --gpu;
# then a short table. Inputs: .device_check/prepared.npz, made beforehand on a machine with PyAV and
# opencv-contrib by `python benchmarks/prepare_device_check.py`, and carried (it is git-ignored). Wheels for PyAV
# and hdf5plugin, if placed in the git-ignored .whl/, are installed offline first (the training tests need them).
#
#   bash benchmarks/device_check.sh            # results also under $OUT (tvl1_table.md, logs)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=$ROOT/.device_check/prepared.npz
OUT=${OUT:-$ROOT/.device_check/out}
mkdir -p "$OUT"
export OUT
PY=${PYTHON:-python}
[ -f "$DATA" ] || { echo "missing $DATA: run benchmarks/prepare_device_check.py first"; exit 2; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device"; exit 2; }

# `import actrec` from this checkout (the repository root is the package)
PKG=$(mktemp -d)
ln -s "$ROOT" "$PKG/actrec"
export PYTHONPATH=$PKG${PYTHONPATH:+:$PYTHONPATH}
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --find-links .whl av hdf5plugin 2>&1 | tail -n 2
fi
# the tests' frames and OpenCV flows come from the prepared file; a stub stands for the shared data folder
STUB=$(mktemp -d)
mkdir -p "$STUB/videos" && touch "$STUB/README.md"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

status=()
step() {  # step NAME TIMEOUT_S COMMAND...: run, log, remember the outcome
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 40
    local rc=${PIPESTATUS[0]}
    status+=("$name: exit $rc, $((SECONDS - t0)) s")
}

step tvl1_cuda_tests 150 env ACTREC_TVL1_PREPARED="$DATA" ACTREC_SHARED_DATA="$STUB" \
    "$PY" -m pytest -q -x -k "cuda" tests/test_tvl1.py tests/test_triton_tvl1.py -p no:cacheprovider
step model_tests 90 "$PY" -m pytest -q tests/test_stilt.py tests/test_cotnet.py tests/test_cotlstm.py \
    tests/test_train.py -p no:cacheprovider
step tvl1_throughput 200 "$PY" benchmarks/device_check.py --data "$DATA" --batches 8 64 256 1024 --budget 40
step bench_train 80 "$PY" benchmarks/bench_train.py --gpu

echo "== summary"
printf '%s\n' "${status[@]}" | tee "$OUT/summary.txt"
[ -f "$OUT/tvl1_table.md" ] && cat "$OUT/tvl1_table.md"
