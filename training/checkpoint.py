"""Training checkpoints: everything a run needs to continue exactly, in a file ``torch.load(weights_only=True)`` reads.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects): ``format`` =
``"actrec-train-checkpoint"``, ``format_version``, ``iteration`` (iterations completed), ``config`` (TrainConfig as
a dict), ``class_names``, ``world_size``, ``model``, ``optimizer``, ``scheduler`` and ``scaler`` state dicts, and
``rng``: one entry per process with its Python, NumPy, torch CPU and CUDA generator states as tensors and ints.
The CUDA state is that of the process's own device only (``cuda:LOCAL_RANK``), so a run resumes under any set of
visible GPUs; checkpoints from before held every visible device's state as a list, of which the entry at the
process's device index is restored when there is one.
It is written to ``NAME.tmp`` and renamed over ``NAME``, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actrec.errors import InputError
from actrec.models.pretrained import TRAIN_CHECKPOINT_FORMAT, load_torch_file

FORMAT = TRAIN_CHECKPOINT_FORMAT
FORMAT_VERSION = 1
REQUIRED = ("iteration", "config", "class_names", "world_size", "model", "optimizer", "scheduler", "scaler", "rng")


def capture_rng() -> dict[str, Any]:
    """This process's generator states as tensors and plain values (weights_only-loadable)."""
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.empty(0, dtype=torch.uint8),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set this process's generators to a state from ``capture_rng``."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = _own_cuda_state(state["cuda"])
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def _own_cuda_state(saved: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | None:
    """The saved CUDA generator state of this process's device (None when the run had no CUDA state to give)."""
    if isinstance(saved, list):  # older checkpoints: every visible device's state, indexed by device
        index = torch.cuda.current_device() if torch.cuda.is_available() else len(saved)
        return saved[index] if index < len(saved) else None
    return saved if saved.numel() else None


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a training checkpoint; InputError for a missing, corrupt or foreign file."""
    loaded = load_torch_file(path)
    if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
        raise InputError(f"{path}: not an actrec training checkpoint (expected format {FORMAT!r}; a bare state dict "
                         "or another tool's file cannot be resumed or evaluated)")
    if loaded.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format version {loaded.get('format_version')} is not supported "
                         f"(this actrec reads version {FORMAT_VERSION})")
    missing = [key for key in REQUIRED if key not in loaded]
    if missing:
        raise InputError(f"{path}: incomplete training checkpoint (missing {', '.join(missing)})")
    return loaded

