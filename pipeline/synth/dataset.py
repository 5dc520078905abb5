"""Splits, options and the dataset: the writer of videos, manifest.csv, classes.txt and synth.json."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from actrec.data_manifests.manifest import SPLITS, ManifestRow, write_manifest
from actrec.errors import InputError
from actrec.pipeline.synth.classes import CLASSES, SceneParams
from actrec.pipeline.synth.encode import pick_h264_encoder, write_h264
from actrec.pipeline.synth.nuisance import _SPLIT_STREAM, _generator
from actrec.pipeline.synth.render import render_video


FORMAT_VERSION = 1
DEFAULT_VIDEOS_PER_CLASS = 12
DEFAULT_FRAMES = 16
DEFAULT_SIZE = (96, 96)  # (width, height)
DEFAULT_FPS = 25
DEFAULT_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test


@dataclass(frozen=True)
class SynthSummary:
    """What a ``generate_synthetic_dataset`` run did."""

    out_dir: Path
    manifest: Path
    classes: int
    written: int  # videos encoded in this run
    skipped: int  # videos already present from an earlier run
    seconds: float

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        return (f"synth: wrote {self.written} videos ({self.skipped} already present), {self.classes} classes, "
                f"{self.seconds:.1f} s -> {self.manifest}")


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Videos per split for ``n`` videos: largest-remainder rounding of ``n * fraction`` (ties: earlier split)."""
    exact = [n * f for f in fractions]
    counts = [int(math.floor(x)) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(videos_per_class: int, fractions: Sequence[float], seed: int) -> list[str]:
    """Split name per video index, from a seeded permutation; shared by all classes (stratified per class)."""
    order = _generator(seed, 0, _SPLIT_STREAM).permutation(videos_per_class)
    names = [name for name, count in zip(SPLITS, split_counts(videos_per_class, fractions)) for _ in range(count)]
    splits = [""] * videos_per_class
    for index, name in zip(order, names):
        splits[int(index)] = name
    return splits


def _check_options(videos_per_class: int, frames: int, size: tuple[int, int], fps: int, seed: int,
                   split_fractions: Sequence[float]) -> None:
    width, height = size
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise InputError(f"size {width}x{height}: width and height must be even and at least 16 (yuv420p)")
    if frames < 2:
        raise InputError(f"frames {frames}: need at least 2 frames (flow needs pairs)")
    if videos_per_class < 1 or fps < 1 or seed < 0:
        raise InputError(f"videos_per_class {videos_per_class}, fps {fps}, seed {seed}: "
                         "expected videos_per_class >= 1, fps >= 1, seed >= 0")
    if len(split_fractions) != len(SPLITS) or min(split_fractions) < 0 or abs(sum(split_fractions) - 1) > 1e-6:
        raise InputError(f"split fractions {tuple(split_fractions)}: expected three non-negative fractions "
                         f"({', '.join(SPLITS)}) summing to 1")


def _content_options(frames: int, size: tuple[int, int], fps: int, seed: int, encoder: str,
                     scene: SceneParams) -> dict:
    """The options that fix every video's content: a resumed run must use the same ones."""
    return {"format_version": FORMAT_VERSION, "frames": frames, "width": size[0], "height": size[1], "fps": fps,
            "seed": seed, "encoder": encoder, "scene": json.loads(json.dumps(asdict(scene)))}


def _check_or_record_options(path: Path, options: dict) -> None:
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != options:
            changed = sorted(k for k in options.keys() | found.keys() if options.get(k) != found.get(k))
            raise InputError(f"{path}: existing videos were made with other options ({', '.join(changed)} differ); "
                             "rerun with the same options or use a new output folder")
        return
    path.write_text(json.dumps(options, indent=2) + "\n", encoding="utf-8")


def generate_synthetic_dataset(out_dir: str | Path, *, videos_per_class: int = DEFAULT_VIDEOS_PER_CLASS,
                               frames: int = DEFAULT_FRAMES, size: tuple[int, int] = DEFAULT_SIZE,
                               fps: int = DEFAULT_FPS, seed: int = 0,
                               split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
                               scene: SceneParams = SceneParams()) -> SynthSummary:
    """Write the synthetic dataset under ``out_dir`` (layout in the package docstring) and return a summary.

    ``size`` is (width, height). Resumable: videos already present are kept and skipped, provided
    ``synth.json`` shows they were made with the same content options.
    """
    start = time.perf_counter()
    _check_options(videos_per_class, frames, size, fps, seed, split_fractions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = pick_h264_encoder()
    _check_or_record_options(out_dir / "synth.json", _content_options(frames, size, fps, seed, encoder, scene))
    splits = assign_splits(videos_per_class, split_fractions, seed)
    rows, written = [], 0
    jobs = [(label, cls, index) for label, cls in enumerate(CLASSES) for index in range(videos_per_class)]
    for label, cls, index in tqdm(jobs, desc="synth", unit="video"):
        video_id = f"{cls.name}_{index:04d}"
        relative = f"{cls.name}/{video_id}.mp4"
        path = out_dir / "videos" / relative
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = render_video(cls, index, frames=frames, width=size[0], height=size[1], seed=seed, scene=scene)
            write_h264(path, pixels, fps, encoder)
            written += 1
        rows.append(ManifestRow(video_id, relative, label, cls.name, splits[index]))
    manifest = out_dir / "manifest.csv"
    write_manifest(manifest, rows)
    (out_dir / "classes.txt").write_text("".join(f"{cls.name}\n" for cls in CLASSES), encoding="utf-8")
    return SynthSummary(out_dir, manifest, len(CLASSES), written, len(jobs) - written, time.perf_counter() - start)
