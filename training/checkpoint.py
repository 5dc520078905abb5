"""Training checkpoints: everything a run needs to continue exactly, in a file ``torch.load(weights_only=True)`` reads.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects): ``format`` =
``"actrec-train-checkpoint"``, ``format_version``, ``iteration`` (iterations completed), ``config`` (TrainConfig as
a dict), ``class_names``, ``world_size``, ``model``, ``optimizer``, ``scheduler`` and ``scaler`` state dicts, and
``rng``: one entry per process with its Python, NumPy, torch CPU and CUDA generator states as tensors and ints.
The CUDA state is that of the process's own device only (``cuda:LOCAL_RANK``), so a run resumes under any set of
visible GPUs; checkpoints from before held every visible device's state as a list, of which the entry at the
process's device index is restored when there is one.
An optional ``elapsed`` holds the training seconds spent up to that iteration (absent in older checkpoints).

Writing (``save_checkpoint``): the free space is checked first against an upper bound of the file's size, so a full
disk stops with one line (folder, space needed, space left) before anything is written. The file is written to
``NAME.tmp`` while its SHA-256 is computed, then ``NAME.sha256.tmp`` (``sha256sum`` format, so
``sha256sum -c checkpoint.pt.sha256`` checks it by hand), both are synced and renamed over ``NAME`` and ``NAME.sha256``
in that order. A failed write removes its ``.tmp`` files and leaves the previous checkpoint as it was;
``recover_partial_writes`` settles what a crash left at the next start.

Reading (``load_checkpoint``): the file's SHA-256 must match ``NAME.sha256`` (or the ``NAME.sha256.tmp`` of a write
interrupted between its two renames); a checkpoint written before checksums existed has no ``.sha256`` and loads as
before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch

from actrec.errors import InputError, OutputError
from actrec.models.pretrained import TRAIN_CHECKPOINT_FORMAT, load_torch_file
from actrec.pipeline.diskspace import NotEnoughSpace, check_free_space, fsync_path, is_disk_full

FORMAT = TRAIN_CHECKPOINT_FORMAT
FORMAT_VERSION = 1
REQUIRED = ("iteration", "config", "class_names", "world_size", "model", "optimizer", "scheduler", "scaler", "rng")
# Upper bound of torch.save's bytes beyond the tensor storages: per tensor (zip headers, 64-byte alignment, pickle
# entry: about 300 measured on a reduced STILT checkpoint) and for the plain values (config, class names: a few KB
# for Kinetics' 400).
_BYTES_PER_TENSOR = 1 << 10
_BYTES_PLAIN = 1 << 20
_READ_BLOCK = 1 << 20


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


def checksum_path(path: str | Path) -> Path:
    """``NAME.sha256``: the SHA-256 of checkpoint ``NAME``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def checkpoint_bytes(payload: Any) -> int:
    """An upper bound of the size of ``torch.save(payload)``: the tensors' storages (each counted once) plus
    ``_BYTES_PER_TENSOR`` per tensor and ``_BYTES_PLAIN`` for the plain values."""
    storages: dict[tuple[str, int], int] = {}
    count = 0
    pending = [payload]
    while pending:
        value = pending.pop()
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[(str(value.device), storage.data_ptr())] = storage.nbytes()
            count += 1
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            pending.extend(value)
    return sum(storages.values()) + count * _BYTES_PER_TENSOR + _BYTES_PLAIN


class _HashingWriter:
    """A write-only file for ``torch.save`` that computes the SHA-256 of what passes through and keeps the OSError
    of a failed write (torch turns it into an unhelpful "unexpected pos" RuntimeError)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.sha256, self.error = file, hashlib.sha256(), None

    def write(self, data: bytes) -> int:
        try:
            written = self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.sha256.update(data)
        return written

    def flush(self) -> None:
        self.file.flush()


@contextlib.contextmanager
def _synced(path: Path) -> Iterator[BinaryIO]:
    """``path`` created for writing, and synced to disk when the block ends."""
    with path.open("wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def _save_hashed(obj: Any, file: BinaryIO) -> str:
    """``torch.save(obj)`` into ``file``; returns the SHA-256 (hex) of what was written."""
    writer = _HashingWriter(file)
    try:
        torch.save(obj, writer)
    except RuntimeError:
        if writer.error is not None:
            raise writer.error from None
        raise
    return writer.sha256.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint and its SHA-256 atomically; on any failure the previous pair stays as it was.

    OutputError (one line naming the file) when the disk is full, checked before writing, or a write fails."""
    path = Path(path)
    tmp, sums = _tmp(path), checksum_path(path)
    checkpoint = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    needed = checkpoint_bytes(checkpoint)
    try:
        check_free_space(path.parent, needed, "a checkpoint")
        with _synced(tmp) as f:
            digest = _save_hashed(checkpoint, f)
        with _synced(_tmp(sums)) as f:
            f.write(f"{digest}  {path.name}\n".encode())
        tmp.replace(path)
        _tmp(sums).replace(sums)
        fsync_path(path.parent)
    except BaseException as exc:  # a failed write, or an interrupt: no partial file stays to fill the disk
        for leftover in (tmp, _tmp(sums)):
            leftover.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        if is_disk_full(exc) and not isinstance(exc, NotEnoughSpace):  # the disk filled up while writing
            exc = NotEnoughSpace(path.parent, needed, shutil.disk_usage(path.parent).free, "a checkpoint")
        raise OutputError(f"{path}: {exc.strerror or exc}") from None


def check_room(path: str | Path, weights: dict[str, torch.Tensor], optimizer_slots: int, retry: str) -> None:
    """Before any training: OutputError (one line; ``retry`` says how to go on) unless the folder of checkpoint
    ``path`` can take one, estimated from the model's ``weights`` and ``optimizer_slots`` state tensors per weight."""
    path = Path(path)
    try:
        needed = (checkpoint_bytes(weights) - _BYTES_PLAIN) * (1 + optimizer_slots) + _BYTES_PLAIN
        check_free_space(path.parent, needed, "a checkpoint")
    except NotEnoughSpace as exc:
        raise OutputError(f"{path}: {exc.strerror}; nothing was trained: free some space and {retry}") from None


def recover_partial_writes(path: str | Path) -> list[str]:
    """Settle what an interrupted ``save_checkpoint`` left beside ``path``; return what was done, one note each.

    ``NAME.tmp`` (never renamed: the previous pair is intact) is removed, with ``NAME.sha256.tmp`` beside it. A
    ``NAME.sha256.tmp`` alone is a write stopped between its two renames: it is renamed in place when it matches
    ``NAME``, and removed otherwise."""
    path = Path(path)
    tmp, pending = _tmp(path), _tmp(checksum_path(path))
    notes = []
    if tmp.exists():
        notes.append(f"removed {tmp} ({tmp.stat().st_size / 1e6:.1f} MB), left by an interrupted checkpoint write")
        tmp.unlink()
        pending.unlink(missing_ok=True)
    elif pending.exists():
        if path.is_file() and _read_digest(pending) == file_sha256(path):
            pending.replace(checksum_path(path))
        else:
            pending.unlink()
    return notes


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    sha256 = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(_READ_BLOCK):
            sha256.update(block)
    return sha256.hexdigest()


def _read_digest(sums: Path) -> str:
    """The digest of a ``sha256sum``-format file."""
    digest = sums.read_text(encoding="ascii", errors="replace").split(maxsplit=1)[:1]
    if not digest or len(digest[0]) != 64:
        raise InputError(f"{sums}: not a SHA-256 checksum file (expected a line '<64 hex digits>  NAME')")
    return digest[0].lower()


def verify_checksum(path: str | Path) -> None:
    """InputError naming ``path`` unless its bytes match its ``.sha256`` (nothing to check without one)."""
    path = Path(path)
    sums = checksum_path(path)
    if not (path.is_file() and sums.is_file()):
        return
    actual = file_sha256(path)
    pending = _tmp(sums)  # read first: another process may be renaming it over ``sums`` (recover_partial_writes)
    with contextlib.suppress(FileNotFoundError):
        if actual == _read_digest(pending):  # written, stopped before the checksum's rename
            return
    if actual == _read_digest(sums):
        return
    raise InputError(f"{path}: corrupt checkpoint: its SHA-256 does not match {sums.name} (changed on disk or in a "
                     "copy after it was written); use an intact copy of the run folder")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a training checkpoint; InputError for a missing, corrupt (checksum) or foreign file."""
    verify_checksum(path)
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

