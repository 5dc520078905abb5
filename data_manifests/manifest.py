"""The one manifest format shared by every dataset: a CSV with one row per video.

Columns: ``video_id`` (unique, no ``/``; the key in every store and score file), ``path`` (relative to a video
root given at extraction time), ``label`` (0-based class index, -1 when unknown, e.g. a test list without
labels), ``label_name`` and ``split`` (``train``, ``val`` or ``test``). A manifest with several official splits
is written once per split (``ucf101_split1.csv``...), so each file is one train/test partition.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePath
from typing import Callable, Iterable, Sequence

from actrec.errors import InputError

SPLITS = ("train", "val", "test")
COLUMNS = ("video_id", "path", "label", "label_name", "split")


@dataclass(frozen=True)
class ManifestRow:
    """One video: its id, path relative to the video root, label index and name, and split."""

    video_id: str
    path: str
    label: int
    label_name: str
    split: str


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> int:
    """Write rows as CSV (atomically, via a temporary file) and return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
            count += 1
    tmp.replace(path)
    return count


def read_manifest(path: str | Path, splits: Sequence[str] | None = None) -> list[ManifestRow]:
    """Read a manifest, optionally keeping only some splits; malformed files raise InputError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise InputError(f"{path}: not an actrec manifest (expected columns {','.join(COLUMNS)}, "
                             f"found {','.join(reader.fieldnames or [])})")
        rows = [_parse_row(path, line_no, raw) for line_no, raw in enumerate(reader, start=2)]
    _check_unique_ids(path, rows)
    if splits is not None:
        rows = [r for r in rows if r.split in splits]
    return rows


def _parse_row(path: Path, line_no: int, raw: dict[str, str]) -> ManifestRow:
    try:
        row = ManifestRow(raw["video_id"], raw["path"], int(raw["label"]), raw["label_name"], raw["split"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}:{line_no}: malformed manifest row ({exc})") from None
    if not row.video_id or "/" in row.video_id:
        raise InputError(f"{path}:{line_no}: video_id {row.video_id!r} must be non-empty and contain no '/'")
    if row.split not in SPLITS:
        raise InputError(f"{path}:{line_no}: split {row.split!r} is not one of {', '.join(SPLITS)}")
    return row


def _check_unique_ids(path: Path, rows: list[ManifestRow]) -> None:
    seen: set[str] = set()
    for row in rows:
        if row.video_id in seen:
            raise InputError(f"{path}: duplicate video_id {row.video_id!r}")
        seen.add(row.video_id)


def class_names(rows: Sequence[ManifestRow]) -> list[str]:
    """Class names indexed by label, from the rows that carry a label."""
    names: dict[int, str] = {r.label: r.label_name for r in rows if r.label >= 0}
    return [names.get(i, "") for i in range(max(names, default=-1) + 1)]


def outside_root(rows: Sequence[ManifestRow]) -> list[ManifestRow]:
    """Rows whose path leaves the video root: absolute paths, and relative ones whose ``..`` climb above it. Judged
    on the text of the path, so a symbolic link inside the root that points elsewhere is inside."""
    return [r for r in rows if PurePath(r.path).is_absolute() or os.path.normpath(r.path).split(os.sep)[0] == ".."]


def check_inside_root(rows: Sequence[ManifestRow], video_root: str | Path, allow: bool,
                      log: Callable[[str], None] = print) -> None:
    """Refuse a manifest whose paths leave ``video_root`` (InputError with their count and the first one), or, with
    ``allow``, say once how many do. Such a path is most often a manifest made for another video root, which would
    read other files than the user thinks (an absolute path ignores the root altogether)."""
    outside = outside_root(rows)
    if not outside:
        return
    what = (f"{len(outside)} of the {len(rows)} manifest paths leave the video root {video_root} "
            f"(e.g. {outside[0].path!r})")
    if not allow:
        raise InputError(f"{what}; fix the manifest or --video-root, or pass --allow-outside-root to read them")
    log(f"warning: {what}; reading them as --allow-outside-root asks")
