"""Decode a video with PyAV into RGB frames of a target size, honouring rotation metadata and optional fps resampling.

Frames are produced one at a time (a generator), so a long or high-resolution video never sits in memory whole.
Decoding problems are raised as ``DecodeError`` with the file and the reason; a stream that breaks after some
frames were decoded is reported through ``DecodeResult.error`` so the caller can keep or reject the partial video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from actrec.deps import LazyModule
from actrec.errors import InputError

av = LazyModule("av", "decoding videos (extract-frames, predict)")


class DecodeError(InputError):
    """A video that cannot be decoded at all (missing, empty, not a video, a still image, no decodable frame)."""


@dataclass(frozen=True)
class ResizeSpec:
    """Output size: a fixed ``width`` x ``height``, or the short side scaled to ``short_side`` keeping aspect.

    The size applies to the displayed (rotation-corrected) picture. The field's default is 340x256.
    """

    width: int | None = 340
    height: int | None = 256
    short_side: int | None = None

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """Target (width, height) for a displayed picture of the given size."""
        if self.short_side is not None:
            scale = self.short_side / min(width, height)
            return _even_round(width * scale), _even_round(height * scale)
        if self.width is None or self.height is None:
            return width, height
        return self.width, self.height


def _even_round(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


@dataclass(frozen=True)
class VideoInfo:
    """What we learn about a source video while decoding it."""

    source_fps: float
    source_width: int
    source_height: int
    rotation: int  # degrees counter-clockwise applied to the coded picture for display (0, 90, 180, 270)
    declared_frames: int  # the container's frame count, 0 when it does not say (e.g. Matroska)


@dataclass
class DecodeResult:
    """Filled in while frames are consumed: the source info, and the error that ended decoding early, if any."""

    info: VideoInfo | None = None
    decoded_frames: int = 0
    output_size: tuple[int, int] | None = None  # (width, height) of the frames handed out
    error: str | None = None


def decode_frames(path: str | Path, resize: ResizeSpec = ResizeSpec(), fps: float | None = None,
                  threads: int = 0, result: DecodeResult | None = None,
                  pixel_format: str = "rgb24") -> Iterator[av.VideoFrame]:
    """Yield the displayed frames of ``path`` (rotation applied) at the target size, in ``pixel_format``.

    Scaling and pixel-format conversion happen in one swscale pass. ``threads`` is FFmpeg's decoding thread count
    (0 = automatic). Errors before the first frame raise ``DecodeError``; an error after it ends the stream and is
    recorded in ``result.error``.
    """
    path = Path(path)
    result = result if result is not None else DecodeResult()
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        frames = _decoded_frames(path, container, stream, result)
        first = next(frames, None)
        if first is None:
            raise DecodeError(f"{path}: no decodable video frame" + (f" ({result.error})" if result.error else ""))
        info = _video_info(stream, first)
        result.info = info
        out_w, out_h = resize.output_size(*_display_size(info))
        timed = _resample(_with_times(first, frames), fps, info.source_fps) if fps else (
            f for f, _ in _with_times(first, frames))
        for frame in timed:
            yield _convert(frame, out_w, out_h, info.rotation, pixel_format)
    finally:
        container.close()


def decode_video(path: str | Path, resize: ResizeSpec = ResizeSpec(), fps: float | None = None,
                 threads: int = 0, result: DecodeResult | None = None) -> Iterator[np.ndarray]:
    """Yield RGB ``uint8[H, W, 3]`` frames of ``path`` at the target size (and ``fps``, when given)."""
    return (frame.to_ndarray() for frame in decode_frames(path, resize, fps, threads, result, "rgb24"))


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise DecodeError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{path}: not a readable video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise DecodeError(f"{path}: no video stream (audio only or data file)")
    if _is_still_image(container.format.name):
        image = container.format.name.removesuffix("_pipe").upper()
        container.close()
        raise DecodeError(f"{path}: not a video but a single {image} image (whatever its extension); "
                          "give a video file")
    return container


def _is_still_image(demuxer: str) -> bool:
    """FFmpeg's image demuxers (``png_pipe``, ``jpeg_pipe``, ..., ``image2``) read one picture, whatever the
    file's extension; an animated format (GIF, APNG) has its own demuxer and is accepted as a video."""
    return demuxer.endswith("_pipe") or demuxer == "image2"


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _decoded_frames(path: Path, container: av.container.InputContainer, stream: av.VideoStream,
                    result: DecodeResult) -> Iterator[av.VideoFrame]:
    try:
        for frame in container.decode(stream):
            result.decoded_frames += 1
            yield frame
    except (av.FFmpegError, OSError) as exc:
        result.error = f"decoding stopped after {result.decoded_frames} frames: {_reason(exc)}"


def _video_info(stream: av.VideoStream, first: av.VideoFrame) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return VideoInfo(source_fps=float(rate) if rate else 0.0, source_width=first.width, source_height=first.height,
                     rotation=int(round(getattr(first, "rotation", 0) or 0)) % 360, declared_frames=stream.frames or 0)


def _display_size(info: VideoInfo) -> tuple[int, int]:
    if info.rotation in (90, 270):
        return info.source_height, info.source_width
    return info.source_width, info.source_height


def _with_times(first: av.VideoFrame, rest: Iterator[av.VideoFrame]) -> Iterator[tuple[av.VideoFrame, float]]:
    """Frames with their presentation time (seconds from the first frame; index-based when pts are missing)."""
    t0 = first.time
    yield first, 0.0
    for i, frame in enumerate(rest, start=1):
        yield frame, (frame.time - t0) if (frame.time is not None and t0 is not None) else float(i)


def _resample(timed: Iterator[tuple[av.VideoFrame, float]], fps: float, source_fps: float) -> Iterator[av.VideoFrame]:
    """Pick frames at ``fps``: output k shows the source frame on screen at time k / fps.

    The last source frame stays on screen for one source frame period, so the output spans the whole video.
    """
    k = 0
    previous: tuple[av.VideoFrame, float] | None = None
    for frame, t in timed:
        if previous is not None:
            while k / fps < t - 1e-9:
                yield previous[0]
                k += 1
        previous = (frame, t)
    if previous is not None:
        end = previous[1] + (1.0 / source_fps if source_fps > 0 else 1.0 / fps)
        while k / fps < end - 1e-9:
            yield previous[0]
            k += 1


def _convert(frame: av.VideoFrame, out_w: int, out_h: int, rotation: int, pixel_format: str) -> av.VideoFrame:
    """Scale in coded orientation (so the displayed picture gets the target size), rotate, convert."""
    coded_w, coded_h = (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)
    shrink = coded_w * coded_h < frame.width * frame.height
    interpolation = "AREA" if shrink else "BICUBIC"
    if not rotation:
        return frame.reformat(width=coded_w, height=coded_h, format=pixel_format, interpolation=interpolation)
    rgb = frame.reformat(width=coded_w, height=coded_h, format="rgb24", interpolation=interpolation).to_ndarray()
    rotated = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(rgb, k=rotation // 90)), format="rgb24")
    return rotated if pixel_format == "rgb24" else rotated.reformat(format=pixel_format)
