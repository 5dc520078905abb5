#!/usr/bin/env bash
# Create .venv and install actrec with its test dependencies and the optional TensorBoard logging (its tests run).
# torch is pinned first to the CPU wheel so that no CUDA packages are pulled on a machine without a GPU; on a GPU
# machine install your CUDA torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
# gpu: triton, whose kernel tests run on the CPU too (TRITON_INTERPRET=1)
.venv/bin/python -m pip install -q -e ".[test,tensorboard,gpu]"
