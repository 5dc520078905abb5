"""The choices of ``compute-flow`` (solver backends, stored dtypes, HDF5 codecs) and each codec's h5py arguments.

Importing this module costs nothing (no torch, no hdf5plugin): the command line builds its options from it. The
codecs ``zstd``, ``lz4hc`` and ``lz4`` are HDF5 filter plugins that hdf5plugin registers; they import it when a
flow store is written or read with them. ``gzip`` and ``none`` are HDF5's own, so a machine without hdf5plugin
(the GPU image we borrow) writes and reads such stores as usual.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from actrec.deps import require

BACKENDS = ("torch", "opencv")
DTYPES = ("uint8", "float16")
# HDF5 storage of a flow chunk (all lossless; the name is recorded in the store), measured by
# benchmarks/bench_flowstore.py against mmaction2's JPEG folders (bytes, random 10-flow stack reads):
# zstd (Zstandard level 3, the default) 2.1-2.25x the bytes, 2.1-2.5x the reads, ~1 ms to write a flow (level 9 saves 8%
# of the bytes at 5x the writing CPU, which a GPU writing 2,000 flows/s cannot spare); lz4hc (Blosc2 LZ4HC-9) 2.4x,
# 4.0x; lz4 (Blosc LZ4, the default before) 3.4x, 3.7-4.0x; gzip 2.3x, 0.8x but readable by any HDF5 reader.
COMPRESSIONS = ("zstd", "lz4hc", "lz4", "gzip", "none")
PLUGIN_CODECS = ("zstd", "lz4hc", "lz4")  # HDF5 filter plugins, registered by hdf5plugin


def require_codec(codec: str, needed_for: str) -> ModuleType | None:
    """hdf5plugin (imported, so that HDF5 knows its filters) if ``codec`` is one of its plugins, else None;
    MissingDependency naming ``needed_for`` and the built-in codecs when hdf5plugin is not installed."""
    if codec not in PLUGIN_CODECS:
        return None
    return require("hdf5plugin", f"{needed_for} with the {codec} codec (gzip and none need no plugin)")


def codec_storage(codec: str) -> dict[str, Any]:
    """The h5py ``compression`` and ``compression_opts`` of a flow chunk stored with ``codec``."""
    if codec == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    if codec == "none":
        return {}
    plugin = require_codec(codec, "writing a flow store (compute-flow, import-rawframes)")
    filters = {"zstd": lambda: plugin.Zstd(clevel=3),
               "lz4hc": lambda: plugin.Blosc2(cname="lz4hc", clevel=9, filters=plugin.Blosc2.NOFILTER),
               "lz4": lambda: plugin.Blosc(cname="lz4", clevel=5, shuffle=plugin.Blosc.SHUFFLE)}
    return dict(filters[codec]())
