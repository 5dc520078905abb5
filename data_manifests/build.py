"""Build manifests from the official split files of UCF101, HMDB51 and Kinetics-400, or from a class-per-folder tree.

Every builder returns a ``ManifestBuild``: the rows plus the problems found on the way (duplicates, unknown
labels, missing video files), so that the caller decides what to print and what to drop. Rows with an unknown
label are never emitted (they cannot be trained on); duplicates keep their first occurrence.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from actrec.data_manifests.manifest import ManifestRow
from actrec.errors import InputError
from actrec.wording import agrees, counted

KINETICS_PATTERN = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d)\.txt$")
_HMDB_SPLIT_IDS = {"1": "train", "2": "test"}  # 0 = unused in this split


@dataclass
class ManifestBuild:
    """Rows of a manifest and the problems met while building it (each a one-line message)."""

    rows: list[ManifestRow]
    duplicates: list[str] = field(default_factory=list)
    unknown_labels: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)  # folder layout: videos outside any class folder
    kept_whole: list[str] = field(default_factory=list)  # held-out splits: classes too small to give a video

    @property
    def problems(self) -> list[str]:
        return ([f"duplicate: {d}" for d in self.duplicates] + [f"unknown label: {u}" for u in self.unknown_labels]
                + [f"missing video: {m}" for m in self.missing] + _unplaced_problem(self.unplaced)
                + _kept_whole_problem(self.kept_whole))

    def counts(self) -> dict[str, int]:
        """Number of rows per split."""
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.split] = out.get(row.split, 0) + 1
        return out


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: split file not found")
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def _video_id(path: str) -> str:
    return Path(path).stem


def _collect(candidates: Iterable[tuple[str, str, str | None]], classes: Sequence[str], source: str) -> ManifestBuild:
    """Turn (relative path, split, label name or None) triples into rows, recording duplicates and unknown labels."""
    index = {name: i for i, name in enumerate(classes)}
    build = ManifestBuild(rows=[])
    seen: set[str] = set()
    for rel, split, label_name in candidates:
        vid = _video_id(rel)
        if vid in seen:
            build.duplicates.append(f"{source}: {rel}")
            continue
        if label_name is None:
            build.rows.append(ManifestRow(vid, rel, -1, "", split))
        elif label_name in index:
            build.rows.append(ManifestRow(vid, rel, index[label_name], label_name, split))
        else:
            build.unknown_labels.append(f"{source}: {rel} has label {label_name!r}")
            continue
        seen.add(vid)
    return build


def ucf101_manifest(splits_dir: str | Path, split: int = 1) -> ManifestBuild:
    """UCF101 from ``ucfTrainTestlist`` (classInd.txt, trainlist0N.txt, testlist0N.txt), official split 1, 2 or 3.

    Train rows carry a 1-based label that must agree with the class folder; test rows take the label of their
    class folder, as every published pipeline does.
    """
    _check_split(split)
    root = Path(splits_dir)
    classes = [line.split()[1] for line in _read_lines(root / "classInd.txt")]

    def rows(kind: str) -> Iterator[tuple[str, str, str | None]]:
        for line in _read_lines(root / f"{kind}list0{split}.txt"):
            parts = line.split()
            rel, folder = parts[0], parts[0].split("/")[0]
            if len(parts) > 1 and not (parts[1].isdigit() and 0 < int(parts[1]) <= len(classes)
                                       and classes[int(parts[1]) - 1] == folder):
                yield rel, kind, f"{folder} (index {parts[1]})"
            else:
                yield rel, kind, folder

    return _collect((r for kind in ("train", "test") for r in rows(kind)), classes, f"{root} split {split}")


def hmdb51_manifest(splits_dir: str | Path, split: int = 1, class_list: str | Path | None = None) -> ManifestBuild:
    """HMDB51 from ``testTrainMulti_7030_splits`` (``<class>_test_split<k>.txt``: 1 train, 2 test, 0 unused).

    Class order: ``class_list`` (whitespace-separated names, the TSN order) when given, else sorted class names.
    Paths are ``<class>/<video>.avi`` relative to the video root.
    """
    _check_split(split)
    root = Path(splits_dir)
    files = sorted(p for p in root.glob(f"*_test_split{split}.txt") if _HMDB_FILE.match(p.name))
    if not files:
        raise InputError(f"{root}: no HMDB51 files '<class>_test_split{split}.txt' found")
    file_classes = [_HMDB_FILE.match(p.name)["cls"] for p in files]  # type: ignore[index]
    classes = Path(class_list).read_text().split() if class_list else sorted(file_classes)

    def rows() -> Iterator[tuple[str, str, str | None]]:
        for path, cls in zip(files, file_classes):
            for line in _read_lines(path):
                name, flag = (line.split() + ["?"])[:2]
                if flag in _HMDB_SPLIT_IDS:
                    yield f"{cls}/{name}", _HMDB_SPLIT_IDS[flag], cls
                elif flag != "0":
                    raise InputError(f"{path}: line {line!r} has split id {flag!r}, expected 0, 1 or 2")

    return _collect(rows(), classes, f"{root} split {split}")


def kinetics_manifest(csv_paths: Sequence[str | Path], label_map: str | Path | None = None,
                      pattern: str = KINETICS_PATTERN) -> ManifestBuild:
    """Kinetics-400 from the official CSVs (``label,youtube_id,time_start,time_end,split[,is_cc]``).

    ``pattern`` names the file of a row from its fields (``youtube_id``, ``time_start``, ``time_end``, ``label``,
    ``split``), e.g. ``{split}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``. Class order is the
    label map's (one name per line) when given, else the sorted label set of the CSVs. Test CSVs without a label
    column give label -1.
    """
    tables = [_read_kinetics_csv(Path(p)) for p in csv_paths]
    if label_map:
        classes = _read_lines(Path(label_map))
    else:
        classes = sorted({r["label"] for rows in tables for _, r in rows if r.get("label")})

    def rows() -> Iterator[tuple[str, str, str | None]]:
        for path, table in zip(csv_paths, tables):
            for line_no, r in table:
                try:
                    rel = pattern.format(youtube_id=r["youtube_id"], time_start=int(r["time_start"]),
                                         time_end=int(r["time_end"]), label=r.get("label", ""), split=r["split"])
                except (KeyError, ValueError) as exc:
                    raise InputError(f"{path}:{line_no}: cannot name row {r} with pattern {pattern!r} "
                                     f"({exc})") from None
                split = "val" if r["split"] in ("val", "validate") else r["split"]
                yield rel, split, r.get("label") or None

    return _collect(rows(), classes, "kinetics")


def _read_kinetics_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of a Kinetics CSV with their line numbers; a row whose field count differs from the header's is an
    InputError naming the file and line (a short row would otherwise carry None values into the naming)."""
    if not path.is_file():
        raise InputError(f"{path}: Kinetics CSV not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        needed = {"youtube_id", "time_start", "time_end", "split"}
        header = reader.fieldnames or []
        if not needed <= set(header):
            raise InputError(f"{path}: not a Kinetics CSV (needs columns {', '.join(sorted(needed))})")
        rows = []
        for row in reader:
            extra = row.get(None) or []  # type: ignore[call-overload]
            fields = sum(v is not None for k, v in row.items() if k is not None) + len(extra)
            if fields != len(header):
                raise InputError(f"{path}:{reader.line_num}: row has {fields} fields, the header "
                                 f"({','.join(header)}) has {len(header)}")
            rows.append((reader.line_num, row))
        return rows


FOLDER_LAYOUT = "<root>/<class>/<video> or <root>/<train|val|test>/<class>/<video>"


@dataclass(frozen=True)
class HoldOut:
    """Fractions of every class's videos that a flat ``<class>/<video>`` tree gives to test and val; see
    ``hold_out``."""

    test: float = 0.0
    val: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.test, self.val) < 0 or self.test + self.val >= 1:
            raise InputError(f"--test-fraction {self.test:g} and --val-fraction {self.val:g} must be at least 0 "
                             "and sum to less than 1 (the rest is train)")


def folder_manifest(video_root: str | Path, split: str = "train", extensions: Sequence[str] = VIDEO_EXTENSIONS,
                    holdout: HoldOut | None = None) -> ManifestBuild:
    """A class-per-folder tree: ``root/<class>/<video>``, or ``root/<train|val|test>/<class>/<video>``.

    Classes are the sorted names of the folders that hold videos; with split folders every video takes its
    folder's split, otherwise ``split``, or with ``holdout`` the test and val shares of each class (``hold_out``;
    a tree with split folders has its splits already, and ``holdout`` is then an InputError). Videos outside any
    class folder (directly under the root or under a split folder) have no label: they are left out and listed in
    ``unplaced``, and a tree where no video is in a class folder is an InputError, so that a wrong
    ``--video-root`` never gives an empty manifest silently.
    """
    root = Path(video_root)
    if not root.is_dir():
        raise InputError(f"{root}: video folder not found")
    tops = sorted(p for p in root.iterdir() if p.is_dir())
    split_dirs = [p for p in tops if p.name in ("train", "val", "test")]
    has_splits = bool(split_dirs) and len(split_dirs) == len(tops)
    if has_splits and holdout is not None:
        raise InputError(f"{root}: the tree has its own split folders ({', '.join(p.name for p in split_dirs)}); "
                         "--test-fraction and --val-fraction are for a flat <class>/<video> layout")
    sources = [(p, p.name) for p in split_dirs] if has_splits else [(root, split)]
    exts = {e.lower() for e in extensions}

    def videos(folder: Path, recursive: bool) -> list[Path]:
        found = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(v for v in found if v.is_file() and v.suffix.lower() in exts)

    candidates = [(video.relative_to(root).as_posix(), base_split, class_dir.name)
                  for base, base_split in sources
                  for class_dir in sorted(c for c in base.iterdir() if c.is_dir())
                  for video in videos(class_dir, recursive=True)]
    bases = {root} | {base for base, _ in sources}
    unplaced = [v.relative_to(root).as_posix() for base in sorted(bases) for v in videos(base, recursive=False)]
    if not candidates:
        n = len(unplaced)
        raise InputError(f"{root}: no videos in class folders (the layout is {FOLDER_LAYOUT})"
                         + (f"; {counted(n, 'video')} outside them {agrees(n, 'has', 'have')} no class" if n else ""))
    build = replace(_collect(candidates, sorted({c for _, _, c in candidates}), str(root)), unplaced=unplaced)
    return hold_out(build, holdout) if holdout is not None else build


def hold_out(build: ManifestBuild, holdout: HoldOut) -> ManifestBuild:
    """Move a share of every class's videos to test and val, the same ones on every run with the same seed.

    Per class of n videos, round(n x fraction) go to test and to val (halves round up), but at least one stays in
    train; the class's videos are ranked by SHA-256 of ``<seed>:<video_id>`` and test takes the first, val the
    next, train the rest. Ranking by a hash of the id (not a shuffle of the list) makes the draw independent of
    the file system's order and of the other classes, and adding a video to a class moves at most two others
    (one across each boundary of the ranking).
    Classes too small to give a video to a split with a non-zero fraction are listed in ``kept_whole``."""
    def rank(row: ManifestRow) -> bytes:
        return hashlib.sha256(f"{holdout.seed}:{row.video_id}".encode()).digest()

    rows: list[ManifestRow] = []
    kept_whole: list[str] = []
    for name in sorted({r.label_name for r in build.rows}):
        members = sorted((r for r in build.rows if r.label_name == name), key=rank)
        n = len(members)
        n_test = min(_round_half_up(n * holdout.test), n - 1)
        n_val = min(_round_half_up(n * holdout.val), n - 1 - n_test)
        if (holdout.test and not n_test) or (holdout.val and not n_val):
            kept_whole.append(f"{name} ({counted(n, 'video')})")
        splits = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        rows += [replace(r, split=s) for r, s in zip(members, splits)]
    order = {r.video_id: i for i, r in enumerate(build.rows)}
    return replace(build, rows=sorted(rows, key=lambda r: order[r.video_id]), kept_whole=kept_whole)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)  # 1e-9: 50 x 0.29 is 14.499999999999998 in floating point


def _unplaced_problem(unplaced: Sequence[str]) -> list[str]:
    """One message for the videos a folder layout had to leave out: how many, why, and the first few."""
    if not unplaced:
        return []
    shown = ", ".join(unplaced[:3]) + (", ..." if len(unplaced) > 3 else "")
    return [f"{counted(len(unplaced), 'video')} left out, not in a class folder (the layout is {FOLDER_LAYOUT}): "
            f"{shown}"]


def _kept_whole_problem(kept_whole: Sequence[str]) -> list[str]:
    """One message for the classes too small to give test or val a video."""
    if not kept_whole:
        return []
    n = len(kept_whole)
    return [f"{counted(n, 'class', 'classes')} {agrees(n, 'is', 'are')} too small to give every held-out split a "
            f"video: {', '.join(kept_whole)}"]


def check_videos(build: ManifestBuild, video_root: str | Path, drop_missing: bool = True) -> ManifestBuild:
    """Record the rows whose video file does not exist under ``video_root``; drop them unless asked to keep."""
    root = Path(video_root)
    missing = [r for r in build.rows if not (root / r.path).is_file()]
    missing_ids = {r.video_id for r in missing}
    rows = [r for r in build.rows if r.video_id not in missing_ids] if drop_missing else build.rows
    return replace(build, rows=rows, missing=build.missing + [str(root / r.path) for r in missing])


def _check_split(split: int) -> None:
    if split not in (1, 2, 3):
        raise InputError(f"official split must be 1, 2 or 3, got {split}")


def scan_videos(video_root: str | Path, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> ManifestBuild:
    """Every video file under ``video_root`` (recursively), unlabelled, for jobs that need no manifest."""
    root = Path(video_root)
    if not root.is_dir():
        raise InputError(f"{root}: video folder not found")
    exts = {e.lower() for e in extensions}
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    return _collect(((rel, "test", None) for rel in paths), [], str(root))
