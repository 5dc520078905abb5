"""Encoding: RGB frames to yuv420p H.264 MP4 files with PyAV, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from actrec.deps import LazyModule
from actrec.errors import ActrecError, StoreError

av = LazyModule("av", "writing videos (synth, demo)")


# H.264 encoders in order of preference, with options that keep the texture (and so the flow) sharp. x264's
# macroblock-tree rate control is off: with it, this libx264 build encoded the same frames to different bytes and
# pixels from run to run; without it the output is byte-identical for a given seed.
H264_ENCODERS: dict[str, dict[str, str]] = {
    "libx264": {"crf": "18", "preset": "medium", "x264-params": "mbtree=0"},
    "libopenh264": {"b": "2M"},
}


def pick_h264_encoder(candidates: Sequence[str] = tuple(H264_ENCODERS)) -> str:
    """The first H.264 encoder this PyAV build has, or ActrecError naming the ones tried."""
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
        except (av.codec.codec.UnknownCodecError, av.FFmpegError):
            continue
        return name
    raise ActrecError(f"PyAV ({av.__version__}) has no H.264 encoder (tried {', '.join(candidates)}); "
                      "install a PyAV build with libx264 or libopenh264")


def write_h264(path: Path, frames: np.ndarray, fps: int, encoder: str) -> None:
    """Encode RGB frames ``uint8 [T, H, W, 3]`` as yuv420p H.264 MP4 at ``path``, atomically.

    The file is written under a hidden ``.part`` name and renamed at the end, so a killed run never leaves a
    half-written video under its final name.
    """
    tmp = path.with_name(f".{path.name}.part")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(encoder, rate=fps, options=H264_ENCODERS.get(encoder, {}))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for image in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode(None))
    except av.FFmpegError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{path}: H.264 encoding with {encoder} failed ({exc})") from None
    tmp.replace(path)
