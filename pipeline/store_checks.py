"""Checksums of stored entries, written with every frame and flow and verified on every read.

Two mechanisms, one per kind of HDF5 dataset, chosen by what HDF5 allows and what a read costs
(``benchmarks/bench_store_checksums.py``, RESULTS.md "Store checksums"):

- **Arrays** (flow, raw frames; one chunk per entry): HDF5's built-in ``fletcher32`` filter, which works after any
  codec (gzip, Zstandard, Blosc, none) and needs no plugin to read. It checksums the chunk as stored (compressed), so
  HDF5 verifies a 45 kB compressed flow instead of the 174 kB it decompresses to; a mismatch fails the read.
- **Variable-length bytes** (JPEG frames): HDF5 refuses any filter on variable-length data ("not suitable for
  filters"), and the bytes live in the global heap, out of reach of chunk filters anyway. Each entry's CRC-32 is kept
  in the dataset's attribute ``crc32`` (uint32, one per entry) and checked before the entry is decoded.

Stores written before checksums existed have neither; their entries read as before, unchecked (``has_checksums``).
Every failure raises StoreReadError naming the shard, the video and the entry's index (``EntryPlace``).
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from actrec.errors import StoreReadError

CRC_ATTR = "crc32"
HDF5_ERRORS = (OSError, KeyError, RuntimeError, ValueError)  # what h5py raises for damaged files


@dataclass(frozen=True)
class EntryPlace:
    """Where a video's entries live, for error messages: the shard file, the video and what an entry is called."""

    shard: str
    video_id: str
    entry: str  # "frame" or "flow"

    def error(self, index: int | None, problem: str) -> StoreReadError:
        """The one-line error for entry ``index`` (or the whole video, when None)."""
        where = f"video {self.video_id!r}" + ("" if index is None else f", {self.entry} {index}")
        return StoreReadError(f"{self.shard}: {where}: {problem}", shard=self.shard, video_id=self.video_id,
                              index=index)


@contextlib.contextmanager
def damage_named(place: EntryPlace) -> Iterator[None]:
    """Turn HDF5's errors while reading a video's metadata (a group, a dataset's header, an attribute: HDF5 checks
    their checksums) into StoreReadError naming the shard and the video."""
    try:
        yield
    except StoreReadError:
        raise
    except HDF5_ERRORS as exc:
        raise place.error(None, f"cannot be read ({one_line(exc)}): the shard is damaged") from None


def is_vlen(dtype: np.dtype) -> bool:
    return h5py.check_vlen_dtype(dtype) is not None


def crc32_of(items: Sequence[np.ndarray]) -> np.ndarray:
    """CRC-32 of each variable-length entry (its bytes as stored)."""
    return np.array([zlib.crc32(np.ascontiguousarray(item, dtype=np.uint8)) for item in items], dtype=np.uint32)


def array_checksum_options(data: np.ndarray, chunks: tuple[int, ...] | None) -> dict[str, Any]:
    """create_dataset options that checksum an array: fletcher32, on one chunk per entry unless chunks are given.
    An empty array (a video with no flow) stores nothing to protect and gets none."""
    if data.size == 0:
        return {"chunks": chunks}
    if chunks is None:
        chunks = (1, *data.shape[1:]) if data.ndim > 1 else True
    return {"chunks": chunks, "fletcher32": True}


def has_checksums(dset: h5py.Dataset) -> bool:
    """Whether the dataset's entries carry a checksum (False for stores written before checksums, and empty ones)."""
    return CRC_ATTR in dset.attrs if is_vlen(dset.dtype) else bool(dset.fletcher32)


def read_vlen(dset: h5py.Dataset, indices: Sequence[int] | None, place: EntryPlace) -> list[np.ndarray]:
    """Entries of a variable-length dataset (all when ``indices`` is None, in one HDF5 call), each checked against
    its stored CRC-32."""
    idx = list(range(dset.shape[0])) if indices is None else [int(i) for i in indices]
    with damage_named(place):
        stored = dset.attrs.get(CRC_ATTR)
    if stored is not None and len(stored) != dset.shape[0]:
        raise place.error(None, f"{len(stored)} checksums for {dset.shape[0]} entries: the shard is damaged")
    try:
        items = list(dset[()]) if indices is None else [dset[i] for i in idx]
    except HDF5_ERRORS:
        items = [_entry(dset, i, place) for i in idx]  # names the first entry that cannot be read
    if stored is not None:
        for i, item in zip(idx, items):
            found = zlib.crc32(item)
            if found != int(stored[i]):
                raise place.error(i, f"checksum mismatch (CRC-32 {found:08x}, stored {int(stored[i]):08x}): the "
                                     "shard is damaged")
    return items


def read_rows(dset: h5py.Dataset, start: int, stop: int, place: EntryPlace) -> np.ndarray:
    """Entries ``start .. stop-1`` of an array dataset; HDF5 checks their fletcher32 checksums (when stored) and
    decompresses them. On a failure the first bad entry is found and named."""
    try:
        return dset[start:stop]
    except HDF5_ERRORS as exc:
        first = str(exc)
    for i in range(start, stop):
        _entry(dset, i, place)
    raise place.error(None, _problem(first))  # only the whole slice failed: no single entry to name


def _entry(dset: h5py.Dataset, index: int, place: EntryPlace) -> Any:
    try:
        return dset[index]
    except HDF5_ERRORS as exc:
        problem = _problem(str(exc))
    if dset.fletcher32 and not _chunk_checksum_ok(dset, index):
        problem = "checksum mismatch (Fletcher-32): the shard is damaged"
    raise place.error(index, problem)


def _problem(message: str) -> str:
    return f"cannot be read or decompressed ({one_line(message)}): the shard is damaged"


def _chunk_checksum_ok(dset: h5py.Dataset, index: int) -> bool:
    """Whether the stored chunk holding entry ``index`` matches its fletcher32 checksum (h5py reports any filter's
    failure with the same words, so a failed read is told apart here). False when the chunk cannot be read."""
    first = (index - index % dset.chunks[0], *(0,) * (dset.ndim - 1))
    try:
        _, raw = dset.id.read_direct_chunk(first)
    except HDF5_ERRORS:
        return False
    return len(raw) >= 4 and fletcher32(raw[:-4]) == int.from_bytes(raw[-4:], "little")


def fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 (``H5_checksum_fletcher32``): 16-bit big-endian words, both sums folded every 360 words,
    an odd last byte as the high byte of a last word."""
    octets = np.frombuffer(data, np.uint8)
    even = len(octets) // 2 * 2
    words = (octets[0:even:2].astype(np.uint64) << 8) | octets[1:even:2]
    if len(octets) % 2:
        words = np.append(words, np.uint64(octets[-1]) << 8)
    sum1 = sum2 = 0
    for start in range(0, len(words), 360):
        running = np.cumsum(words[start:start + 360]) + sum1
        sum1, sum2 = _fold(int(running[-1])), _fold(sum2 + int(running.sum()))
    return (_fold(sum2) << 16) | _fold(sum1)


def _fold(value: int) -> int:
    return (value & 0xFFFF) + (value >> 16)


def one_line(exc: BaseException | str) -> str:
    """An error's message (HDF5's may span lines) on one line; a KeyError's without its quotes."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split())


def count(n: int, noun: str) -> str:
    """``1 video``, ``2 videos``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
