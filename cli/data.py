"""Data preparation commands: synthetic dataset, manifests, frame extraction, mmaction2 rawframes export and import.

The stages (decoding, stores, OpenCV) are imported by the commands that run them, so that ``--help`` and
make-manifest start at once.
"""

from __future__ import annotations

import click

from actrec.cli.group import cli
from actrec.cli.options import finish_stages, parallel_options, parse_numbers
from actrec.data_manifests.build import (KINETICS_PATTERN, HoldOut, check_videos, folder_manifest, hmdb51_manifest,
                                         kinetics_manifest, scan_videos, ucf101_manifest)
from actrec.data_manifests.manifest import read_manifest, write_manifest
from actrec.errors import ActrecError
from actrec.pipeline import synth as _synth
from actrec.pipeline.frames import ENCODINGS, PARTIAL_POLICIES
from actrec.wording import counted


def _parse_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT such as 340x256, got {value!r}") from None
    if w < 2 or h < 2:
        raise click.BadParameter(f"width and height must be at least 2, got {value!r}")
    return w, h


def _load_rows(manifest: str | None, video_root: str, splits: str | None) -> list:
    chosen = [s.strip() for s in splits.split(",")] if splits else None
    if manifest is None:
        return scan_videos(video_root).rows
    return read_manifest(manifest, chosen)


@cli.command(epilog="""\b
Example:
  actrec synth --out data/synth --videos-per-class 12 --frames 16 --size 96x96 --seed 0

\b
Writes data/synth/videos/<class>/<class>_<iiii>.mp4, data/synth/manifest.csv (paths relative
to videos/), classes.txt and synth.json. Rerunning the same command skips the videos already
written; a rerun with other --frames/--size/--fps/--seed is refused.""")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder for videos/, manifest.csv, classes.txt and synth.json.")
@click.option("--videos-per-class", type=click.IntRange(min=1), default=_synth.DEFAULT_VIDEOS_PER_CLASS,
              show_default=True, help=f"Videos generated for each of the {len(_synth.CLASSES)} classes.")
@click.option("--frames", type=click.IntRange(min=2), default=_synth.DEFAULT_FRAMES, show_default=True,
              help="Frames per video (N frames give N-1 flows).")
@click.option("--size", default="{}x{}".format(*_synth.DEFAULT_SIZE), show_default=True, callback=_parse_size,
              help="Frame size WxH; both even (yuv420p).")
@click.option("--fps", type=click.IntRange(min=1), default=_synth.DEFAULT_FPS, show_default=True,
              help="Frame rate written into the videos.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; the same seed gives the same videos.")
@click.option("--splits", "split_fractions", default=",".join(map(str, _synth.DEFAULT_SPLIT_FRACTIONS)),
              show_default=True, callback=parse_numbers,
              help="Train,val,test fractions per class, summing to 1.")
@click.option("--object-size", type=click.FloatRange(min=0.05, max=0.6), default=_synth.SceneParams.object_size,
              show_default=True, help="Side of the moving object, as a fraction of the frame's short side.")
@click.option("--orbit-radius", type=click.FloatRange(min=0.02, max=0.4), default=_synth.SceneParams.orbit_radius,
              show_default=True, help="Radius of the appearance-only classes' circular motion, as a fraction of the "
                                      "frame's short side.")
def synth(out_dir: str, videos_per_class: int, frames: int, size: tuple[int, int], fps: int, seed: int,
          split_fractions: tuple[float, ...], object_size: float, orbit_radius: float) -> None:
    """Generate the controlled synthetic action dataset (motion-only and appearance-only classes) as H.264 MP4."""
    summary = _synth.generate_synthetic_dataset(out_dir, videos_per_class=videos_per_class, frames=frames,
                                                size=size, fps=fps, seed=seed, split_fractions=split_fractions,
                                                scene=_synth.SceneParams(object_size=object_size,
                                                                         orbit_radius=orbit_radius))
    click.echo(summary.line())


@cli.command("make-manifest", epilog="""\b
Examples:
  actrec make-manifest ucf101 --splits-dir ucfTrainTestlist --split 1 --video-root UCF-101 -o ucf101_s1.csv
  actrec make-manifest hmdb51 --splits-dir testTrainMulti_7030_splits --split 2 -o hmdb51_s2.csv
  actrec make-manifest kinetics400 --csv kinetics-400_val.csv --label-map label_map_k400.txt -o k400_val.csv
  actrec make-manifest folder --video-root my_videos -o mine.csv
  actrec make-manifest folder --video-root my_videos --test-fraction 0.2 --val-fraction 0.1 --seed 0 -o mine.csv
\b
folder: my_videos/<class>/<video> (all train, or per class a held-out share with --test-fraction/--val-fraction,
the same videos for the same --seed) or my_videos/<train|val|test>/<class>/<video> (the folders' splits).
""")
@click.argument("dataset", type=click.Choice(["ucf101", "hmdb51", "kinetics400", "folder"]))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Manifest CSV to write.")
@click.option("--splits-dir", type=click.Path(exists=True, file_okay=False),
              help="UCF101 ucfTrainTestlist folder or HMDB51 testTrainMulti_7030_splits folder.")
@click.option("--split", type=click.IntRange(1, 3), default=1, show_default=True, help="Official split (UCF101/HMDB51).")
@click.option("--class-list", type=click.Path(exists=True, dir_okay=False),
              help="HMDB51 class order (whitespace-separated names); default: sorted names.")
@click.option("--csv", "csv_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Kinetics CSV (train, val or test); repeat for several.")
@click.option("--label-map", type=click.Path(exists=True, dir_okay=False),
              help="Kinetics class names, one per line, in label-index order; default: sorted CSV labels.")
@click.option("--pattern", default=KINETICS_PATTERN, show_default=True,
              help="Kinetics file name from CSV fields {youtube_id} {time_start} {time_end} {label} {split}.")
@click.option("--video-root", type=click.Path(exists=True, file_okay=False),
              help="Check that every video exists here (required for 'folder').")
@click.option("--keep-missing", is_flag=True, help="Keep rows whose video file is missing (default: drop them).")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="folder, flat <class>/<video> layout: share of every class's videos put in test (rounded, at "
                   "least one video stays in train).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="folder, flat layout: share of every class's videos put in val.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which videos --test-fraction/--val-fraction hold out: the same seed, the same videos.")
def make_manifest_cmd(dataset: str, output: str, splits_dir: str | None, split: int, class_list: str | None,
                      csv_files: tuple[str, ...], label_map: str | None, pattern: str, video_root: str | None,
                      keep_missing: bool, test_fraction: float, val_fraction: float, seed: int) -> None:
    """Build a manifest (video_id, path, label, label_name, split) from official split files or a folder tree."""
    if dataset in ("ucf101", "hmdb51") and not splits_dir:
        raise click.UsageError(f"{dataset} needs --splits-dir")
    if dataset == "kinetics400" and not csv_files:
        raise click.UsageError("kinetics400 needs at least one --csv")
    if dataset == "folder" and not video_root:
        raise click.UsageError("folder needs --video-root")
    holding_out = test_fraction > 0 or val_fraction > 0
    if holding_out and dataset != "folder":
        raise click.UsageError(f"{dataset} has official splits; --test-fraction and --val-fraction are for folder")
    holdout = HoldOut(test_fraction, val_fraction, seed) if holding_out else None
    builders = {
        "ucf101": lambda: ucf101_manifest(splits_dir, split),
        "hmdb51": lambda: hmdb51_manifest(splits_dir, split, class_list),
        "kinetics400": lambda: kinetics_manifest(csv_files, label_map, pattern),
        "folder": lambda: folder_manifest(video_root, holdout=holdout),
    }
    build = builders[dataset]()
    if video_root and dataset != "folder":
        build = check_videos(build, video_root, drop_missing=not keep_missing)
    for problem in build.problems[:20]:
        click.echo(f"warning: {problem}", err=True)
    if len(build.problems) > 20:
        click.echo(f"warning: ... and {len(build.problems) - 20} more problems", err=True)
    dropped = (f"{counted(len(build.duplicates), 'duplicate')}, {counted(len(build.unknown_labels), 'unknown label')}, "
               f"{len(build.missing)} missing")
    if not build.rows:
        raise ActrecError(f"{output}: not written, no video left ({dropped})")
    count = write_manifest(output, build.rows)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(build.counts().items()))
    unplaced = f", {len(build.unplaced)} outside class folders" if build.unplaced else ""
    click.echo(f"make-manifest: {counted(count, 'video')} ({counts}); {dropped}{unplaced} -> {output}")


@cli.command("extract-frames", epilog="""\b
Examples:
  actrec extract-frames --manifest ucf101_s1.csv --video-root UCF-101 --out frames/ --workers 8
  actrec extract-frames --video-root clips/ --out frames/ --short-side 256 --fps 25
  torchrun --nnodes 4 --nproc-per-node 1 -m actrec.cli extract-frames --manifest k400.csv --video-root K400 --out frames/ --workers 32
\b
A rerun with the same options skips finished videos. Failed videos are listed in OUT/failures.rankR.tsv.
""")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False),
              help="Manifest CSV (default: every video under --video-root, ids from file names).")
@click.option("--video-root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder the manifest paths are relative to.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Frame store folder (created or resumed).")
@click.option("--split", "splits", help="Only these manifest splits, comma-separated (e.g. train,test).")
@click.option("--size", callback=_parse_size, default=None, help="Output WIDTHxHEIGHT [default: 340x256].")
@click.option("--short-side", type=click.IntRange(min=2), help="Scale the short side to N, keeping aspect.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), help="Resample to this frame rate.")
@click.option("--encoding", type=click.Choice(ENCODINGS), default="jpeg", show_default=True,
              help="Frame encoding: JPEG bytes (small) or raw gzip-compressed uint8 (lossless).")
@click.option("--jpeg-qscale", type=click.IntRange(2, 31), default=2, show_default=True,
              help="JPEG quantiser scale as ffmpeg's -q:v (2 = best quality, ~40 dB; larger = smaller files).")
@click.option("--partial", type=click.Choice(PARTIAL_POLICIES), default="keep", show_default=True,
              help="A video that decodes only partly: keep its frames with a warning, or fail it.")
@click.option("--videos-per-shard", type=click.IntRange(min=1), default=128, show_default=True,
              help="Videos per HDF5 shard (fixed when the store is created).")
@click.option("--allow-outside-root", is_flag=True,
              help="Read manifest paths that leave --video-root (absolute, or climbing out with ..); refused "
                   "otherwise, as they usually mean a manifest made for another root.")
@parallel_options
def extract_frames_cmd(manifest: str | None, video_root: str, out: str, splits: str | None,
                       size: tuple[int, int] | None, short_side: int | None, fps: float | None, encoding: str,
                       jpeg_qscale: int, partial: str, videos_per_shard: int, allow_outside_root: bool, workers: int,
                       rank: int | None, world_size: int | None, quiet: bool) -> None:
    """Decode videos (PyAV), resize, and store RGB frames in a sharded, resumable HDF5 frame store."""
    from actrec.pipeline.decode import ResizeSpec
    from actrec.pipeline.frames import ExtractOptions, extract_frames

    if size and short_side:
        raise click.UsageError("--size and --short-side are exclusive")
    resize = ResizeSpec(None, None, short_side) if short_side else ResizeSpec(*(size or (340, 256)))
    options = ExtractOptions(resize=resize, fps=fps, encoding=encoding, jpeg_qscale=jpeg_qscale, partial=partial)
    rows = _load_rows(manifest, video_root, splits)
    summary = extract_frames(rows, video_root, out, options, workers=workers, videos_per_shard=videos_per_shard,
                             rank=rank, world_size=world_size, progress=not quiet,
                             allow_outside_root=allow_outside_root, log=lambda line: click.echo(line, err=True))
    finish_stages(summary)


@cli.command("export-rawframes", epilog="""\b
Examples:
  actrec export-rawframes --frames frames/ --flow flow/ --out rawframes/ --manifest ucf101_s1.csv --workers 8
\b
Writes rawframes/<video>/img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg (1-indexed; flow as quantised uint8
grayscale JPEG) and, with --manifest, <split>_rawframes.txt / <split>_rawframes_flow.txt annotation files.
""")
@click.option("--frames", "frames_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Frame store.")
@click.option("--flow", "flow_root", type=click.Path(exists=True, file_okay=False), help="Flow store (optional).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (created or resumed).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False),
              help="Export these videos and write mmaction2 annotation files per split (default: every video).")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="JPEG quality of flow images (and of frames stored raw; JPEG frames are copied as they are).")
@parallel_options
def export_rawframes_cmd(frames_root: str, flow_root: str | None, out: str, manifest: str | None, quality: int,
                         workers: int, rank: int | None, world_size: int | None, quiet: bool) -> None:
    """Export frame and flow stores to the mmaction2 rawframe layout."""
    from actrec.pipeline.rawframes import export_rawframes

    rows = read_manifest(manifest) if manifest else None
    summary = export_rawframes(frames_root, out, flow_root, rows, quality=quality, workers=workers, rank=rank,
                               world_size=world_size, progress=not quiet, log=lambda line: click.echo(line, err=True))
    finish_stages(summary)


@cli.command("import-rawframes", epilog="""\b
Examples:
  actrec import-rawframes --src rawframes/ --frames-out frames/ --flow-out flow/ --bound 20 --workers 8
\b
--src holds one folder per video (or is one video folder). The naming (img_/flow_x_/flow_y_ or x_/y_, 0- or
1-indexed) is detected from the first folder and reported. RGB files are stored as they are (no re-encoding).
""")
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False), help="Rawframe folder.")
@click.option("--frames-out", required=True, type=click.Path(file_okay=False), help="Frame store to write.")
@click.option("--flow-out", type=click.Path(file_okay=False), help="Flow store to write (from the x/y images).")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Bound the flow images were quantised with (mmaction2: 20).")
@click.option("--videos-per-shard", type=click.IntRange(min=1), default=128, show_default=True,
              help="Videos per HDF5 shard.")
@parallel_options
def import_rawframes_cmd(src: str, frames_out: str, flow_out: str | None, bound: float, videos_per_shard: int,
                         workers: int, rank: int | None, world_size: int | None, quiet: bool) -> None:
    """Build frame and flow stores from mmaction2/TSN rawframe folders, so no frame or flow is recomputed."""
    from actrec.pipeline.rawframes import import_rawframes

    summaries = import_rawframes(src, frames_out, flow_out, bound=bound, videos_per_shard=videos_per_shard,
                                 workers=workers, rank=rank, world_size=world_size, progress=not quiet,
                                 log=lambda line: click.echo(line, err=True))
    finish_stages(*summaries)
