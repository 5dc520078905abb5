"""The `actrec` command line: thin Click commands that parse options and call library functions."""

from __future__ import annotations

import json
import sys
from typing import Callable

import click

from actrec import __version__
from actrec.data_manifests.build import (KINETICS_PATTERN, check_videos, folder_manifest, hmdb51_manifest,
                                         kinetics_manifest, scan_videos, ucf101_manifest)
from actrec.data_manifests.manifest import read_manifest, write_manifest
from actrec.demo import DemoConfig, run_demo
from actrec.errors import ActrecError
from actrec.pipeline import synth as _synth
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.frames import ENCODINGS, PARTIAL_POLICIES, ExtractOptions, extract_frames
from actrec.pipeline.flow import (BACKENDS, COMPRESSIONS, DTYPES, FlowOptions, compute_flow, resolve_device,
                                  store_compression)
from actrec.pipeline.rawframes import export_rawframes, import_rawframes
from actrec.pipeline.stage import StageSummary
from actrec.pipeline.tvl1 import TVL1Params


class ProjectError(click.ClickException):
    """A project error shown as one line (``error: ...``) with the error's exit code."""

    def __init__(self, error: ActrecError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class ActrecGroup(click.Group):
    """The command group: project errors become one-line messages with their exit codes, also under CliRunner."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ActrecError as exc:
            raise ProjectError(exc) from None


@click.group(cls=ActrecGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="actrec")
def cli() -> None:
    """Two-stream action recognition: videos -> frames -> TV-L1 flow -> STILT / CoT-LSTM -> fusion."""


# --- shared options and helpers ---

def parallel_options(func: Callable) -> Callable:
    """Options shared by every per-video stage: worker processes, multi-node ranks, progress display."""
    options = [
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Worker processes on this machine."),
        click.option("--rank", type=click.IntRange(min=0), default=None,
                     help="This process's rank (default: $RANK as set by torchrun, else 0)."),
        click.option("--world-size", type=click.IntRange(min=1), default=None,
                     help="Number of processes sharing the job (default: $WORLD_SIZE, else 1)."),
        click.option("--quiet", is_flag=True, help="No progress bar (the summary is still printed)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def finish_stages(*summaries: StageSummary) -> None:
    """Print each stage's summary; exit non-zero when a video failed (1) or a run was interrupted (130)."""
    for summary in summaries:
        click.echo(summary.line())
    if any(s.interrupted for s in summaries):
        sys.exit(130)
    if any(s.failed for s in summaries):
        sys.exit(1)


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


# --- commands: frames and manifests (pipeline/, data_manifests/) ---

def _parse_fractions(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """Turn ``0.6,0.2,0.2`` into a tuple of floats; the library checks their count and sum."""
    try:
        return tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.6,0.2,0.2, got {value!r}") from None


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
              show_default=True, callback=_parse_fractions,
              help="Train,val,test fractions per class, summing to 1.")
def synth(out_dir: str, videos_per_class: int, frames: int, size: tuple[int, int], fps: int, seed: int,
          split_fractions: tuple[float, ...]) -> None:
    """Generate the controlled synthetic action dataset (motion-only and appearance-only classes) as H.264 MP4."""
    summary = _synth.generate_synthetic_dataset(out_dir, videos_per_class=videos_per_class, frames=frames,
                                                size=size, fps=fps, seed=seed, split_fractions=split_fractions)
    click.echo(summary.line())


@cli.command("make-manifest", epilog="""\b
Examples:
  actrec make-manifest ucf101 --splits-dir ucfTrainTestlist --split 1 --video-root UCF-101 -o ucf101_s1.csv
  actrec make-manifest hmdb51 --splits-dir testTrainMulti_7030_splits --split 2 -o hmdb51_s2.csv
  actrec make-manifest kinetics400 --csv kinetics-400_val.csv --label-map label_map_k400.txt -o k400_val.csv
  actrec make-manifest folder --video-root my_videos -o mine.csv
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
def make_manifest_cmd(dataset: str, output: str, splits_dir: str | None, split: int, class_list: str | None,
                      csv_files: tuple[str, ...], label_map: str | None, pattern: str, video_root: str | None,
                      keep_missing: bool) -> None:
    """Build a manifest (video_id, path, label, label_name, split) from official split files or a folder tree."""
    if dataset in ("ucf101", "hmdb51") and not splits_dir:
        raise click.UsageError(f"{dataset} needs --splits-dir")
    if dataset == "kinetics400" and not csv_files:
        raise click.UsageError("kinetics400 needs at least one --csv")
    if dataset == "folder" and not video_root:
        raise click.UsageError("folder needs --video-root")
    builders = {
        "ucf101": lambda: ucf101_manifest(splits_dir, split),
        "hmdb51": lambda: hmdb51_manifest(splits_dir, split, class_list),
        "kinetics400": lambda: kinetics_manifest(csv_files, label_map, pattern),
        "folder": lambda: folder_manifest(video_root),
    }
    build = builders[dataset]()
    if video_root and dataset != "folder":
        build = check_videos(build, video_root, drop_missing=not keep_missing)
    for problem in build.problems[:20]:
        click.echo(f"warning: {problem}", err=True)
    if len(build.problems) > 20:
        click.echo(f"warning: ... and {len(build.problems) - 20} more problems", err=True)
    if not build.rows:
        raise ActrecError(f"{output}: not written, no video left ({len(build.duplicates)} duplicates, "
                          f"{len(build.unknown_labels)} unknown labels, {len(build.missing)} missing)")
    count = write_manifest(output, build.rows)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(build.counts().items()))
    unplaced = f", {len(build.unplaced)} outside class folders" if build.unplaced else ""
    click.echo(f"make-manifest: {count} videos ({counts}); {len(build.duplicates)} duplicates, "
               f"{len(build.unknown_labels)} unknown labels, {len(build.missing)} missing{unplaced} -> {output}")


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
@parallel_options
def extract_frames_cmd(manifest: str | None, video_root: str, out: str, splits: str | None,
                       size: tuple[int, int] | None, short_side: int | None, fps: float | None, encoding: str,
                       jpeg_qscale: int, partial: str, videos_per_shard: int, workers: int, rank: int | None,
                       world_size: int | None, quiet: bool) -> None:
    """Decode videos (PyAV), resize, and store RGB frames in a sharded, resumable HDF5 frame store."""
    if size and short_side:
        raise click.UsageError("--size and --short-side are exclusive")
    resize = ResizeSpec(None, None, short_side) if short_side else ResizeSpec(*(size or (340, 256)))
    options = ExtractOptions(resize=resize, fps=fps, encoding=encoding, jpeg_qscale=jpeg_qscale, partial=partial)
    rows = _load_rows(manifest, video_root, splits)
    summary = extract_frames(rows, video_root, out, options, workers=workers, videos_per_shard=videos_per_shard,
                             rank=rank, world_size=world_size, progress=not quiet,
                             log=lambda line: click.echo(line, err=True))
    finish_stages(summary)


def tvl1_options(func: Callable) -> Callable:
    """TV-L1 solver options (OpenCV's names and defaults), shared by every command that computes flow."""
    defaults = TVL1Params()
    options = [
        click.option("--tau", type=float, default=defaults.tau, show_default=True, help="Time step of the dual update."),
        click.option("--lambda", "lambda_", type=float, default=defaults.lambda_, show_default=True,
                     help="Weight of the data term (smaller = smoother flow)."),
        click.option("--theta", type=float, default=defaults.theta, show_default=True,
                     help="Coupling between u and the auxiliary variable v."),
        click.option("--nscales", type=click.IntRange(min=1), default=defaults.nscales, show_default=True,
                     help="Pyramid levels."),
        click.option("--warps", type=click.IntRange(min=1), default=defaults.warps, show_default=True,
                     help="Warpings per level."),
        click.option("--epsilon", type=float, default=defaults.epsilon, show_default=True,
                     help="Stopping threshold of a warp."),
        click.option("--inner-iterations", type=click.IntRange(min=1), default=defaults.inner_iterations,
                     show_default=True, help="Iterations between two median filterings."),
        click.option("--outer-iterations", type=click.IntRange(min=1), default=defaults.outer_iterations,
                     show_default=True, help="Median filterings per warp."),
        click.option("--scale-step", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     default=defaults.scale_step, show_default=True, help="Downscaling factor between levels."),
        click.option("--median-filtering", type=click.IntRange(min=1), default=defaults.median_filtering,
                     show_default=True, help="Median filter size applied to the flow (1 = off)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def tvl1_params(kwargs: dict) -> TVL1Params:
    """Pop the TV-L1 options parsed by ``tvl1_options`` from a command's kwargs into a TVL1Params."""
    names = ("tau", "lambda_", "theta", "nscales", "warps", "epsilon", "inner_iterations", "outer_iterations",
             "scale_step", "median_filtering")
    return TVL1Params(**{name: kwargs.pop(name) for name in names})


@cli.command("compute-flow", epilog="""\b
Examples:
  actrec compute-flow --frames frames/ --out flow/ --workers 2                  # CPU: OpenCV's TV-L1 in 2 processes
  actrec compute-flow --frames frames/ --out flow/ --gpu                        # one GPU, batched PyTorch TV-L1
  torchrun --nproc-per-node 8 -m actrec.cli compute-flow --frames frames/ --out flow/ --gpu   # 8 GPUs, own shards
\b
N frames give N-step flows; flow i maps frame i to frame i+step (0-based). Stored as uint8 in [-bound, bound].
""")
@click.option("--frames", "frames_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Frame store written by extract-frames.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Flow store folder (created or resumed).")
@click.option("--gpu", is_flag=True, help="Compute on CUDA (cuda:$LOCAL_RANK under torchrun); an error without CUDA.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="torch (batched PyTorch TV-L1) or opencv (OpenCV's CPU TV-L1 in --workers processes) "
                   "[default: torch with --gpu, else opencv, the faster one on CPUs].")
@click.option("--batch-pixels", type=click.IntRange(min=1), default=None,
              help="Frame pixels (H x W) per solver call, pairs of one frame shape from several videos "
                   "(5570560 = 64 pairs at 340x256) [default: what fits in the GPU's free memory; on the CPU "
                   "8 such pairs per worker]. A batch that runs out of GPU memory is retried in halves.")
@click.option("--readers", type=click.IntRange(min=1), default=3, show_default=True,
              help="Threads reading and decoding frames ahead of the solver (one turns 1,500-1,900 JPEG frames "
                   "per CPU-second into gray at 340x256).")
@click.option("--writers", type=click.IntRange(min=1), default=None,
              help="Writer processes (1: a thread) [default: 4 with --gpu, to write 2,000 flows/s; else 1].")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Quantisation bound in pixels (mmaction2 uses 20).")
@click.option("--step", type=click.IntRange(min=1), default=1, show_default=True, help="Flow from frame i to i+step.")
@click.option("--dtype", type=click.Choice(DTYPES), default="uint8", show_default=True,
              help="uint8 (quantised, the field's convention) or float16 (unquantised pixels).")
@click.option("--compression", type=click.Choice(list(COMPRESSIONS)), default=None,
              help="HDF5 storage of each flow, all lossless: zstd (smallest of the fast ones), lz4hc or lz4 (faster "
                   "reads, larger; via hdf5plugin), gzip (any HDF5 reader), none [default: the codec of the store "
                   "at --out when resuming one, else zstd].")
@click.option("--videos-per-shard", type=click.IntRange(min=1), default=128, show_default=True,
              help="Videos per HDF5 shard (fixed when the store is created).")
@tvl1_options
@parallel_options
def compute_flow_cmd(frames_root: str, out: str, gpu: bool, backend: str | None, batch_pixels: int | None,
                     readers: int, writers: int | None, bound: float, step: int, dtype: str, compression: str | None,
                     videos_per_shard: int, workers: int, rank: int | None, world_size: int | None, quiet: bool, **tvl1: float) -> None:
    """TV-L1 optical flow of consecutive frames into a sharded, resumable HDF5 flow store."""
    options = FlowOptions(params=tvl1_params(tvl1), bound=bound, step=step, dtype=dtype,
                          compression=compression or store_compression(out),
                          backend=backend or ("torch" if gpu else "opencv"), device=resolve_device(gpu),
                          batch_pixels=batch_pixels or 0, readers=readers, writers=writers or 0)
    summary = compute_flow(frames_root, out, options, workers=workers, videos_per_shard=videos_per_shard, rank=rank,
                           world_size=world_size, progress=not quiet, log=lambda line: click.echo(line, err=True))
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
    summaries = import_rawframes(src, frames_out, flow_out, bound=bound, videos_per_shard=videos_per_shard,
                                 workers=workers, rank=rank, world_size=world_size, progress=not quiet,
                                 log=lambda line: click.echo(line, err=True))
    finish_stages(*summaries)


@cli.command("demo", epilog="""\b
Examples:
  actrec demo                                   # about 5 minutes on 2 CPU cores
  actrec demo --workdir /tmp/demo --seed 1 --iterations 600
\b
Runs synth, extract-frames, compute-flow, train (STILT without and with co-attention, CoT-LSTM), evaluate and
fit-fusion as real commands in WORKDIR, then prints the ablation tables (STILT Tables 4 and 5, CoT-LSTM Table II
layouts) and where the files and plots are.""")
@click.option("--workdir", type=click.Path(file_okay=False), default="demo_workdir", show_default=True,
              help="Folder for every file the demo writes (rerunning resumes the finished stages).")
@click.option("--videos-per-class", type=click.IntRange(min=5), default=DemoConfig.videos_per_class,
              show_default=True, help="Synthetic videos per class (12 classes; split 60/20/20 into train/val/test).")
@click.option("--iterations", type=click.IntRange(min=1), default=DemoConfig.iterations, show_default=True,
              help="Training iterations per model.")
@click.option("--frames", type=click.IntRange(min=12), default=DemoConfig.frames, show_default=True,
              help="Frames per synthetic video (at least 12: stacks of 10 flows).")
@click.option("--size", type=click.IntRange(min=32), default=DemoConfig.size, show_default=True,
              help="Frame size (square); the network input is 7/8 of it.")
@click.option("--seed", type=click.IntRange(min=0), default=DemoConfig.seed, show_default=True,
              help="Seed of the data and of training.")
def demo_cmd(workdir: str, videos_per_class: int, iterations: int, frames: int, size: int, seed: int) -> None:
    """The whole pipeline on a generated dataset on the CPU, ending with the papers' ablation tables."""
    config = DemoConfig(videos_per_class=videos_per_class, iterations=iterations, frames=frames, size=size,
                        crop=size * 7 // 8, seed=seed)
    run_demo(workdir, config, echo=click.echo)


# --- commands: optical flow (pipeline/tvl1.py) ---


@cli.command("flow-pair", epilog="""\b
Examples:
  actrec flow-pair frame10.png frame11.png -o flow.flo --viz flow.png
  actrec flow-pair a.jpg b.jpg -o flow.flo --device cuda            # batched PyTorch solver on the GPU
  actrec flow-pair a.jpg b.jpg -o flow.flo --backend opencv         # OpenCV's own CPU TV-L1
\b
Colour images are converted to gray as OpenCV does. The .flo holds the flow from IMG0 to IMG1 (pixels, x then y).
""")
@click.argument("img0", type=click.Path(dir_okay=False))
@click.argument("img1", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output Middlebury .flo file.")
@click.option("--viz", type=click.Path(dir_okay=False), help="Also write the Middlebury colour-wheel picture (PNG).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the torch backend computes; cuda without CUDA is an error.")
@click.option("--backend", type=click.Choice(["torch", "opencv"]), default=None,
              help="torch (PyTorch TV-L1) or opencv (cv2.optflow.DualTVL1OpticalFlow, CPU only) "
                   "[default: torch on cuda, else opencv, as compute-flow].")
@tvl1_options
def flow_pair_cmd(img0: str, img1: str, out: str, viz: str | None, device: str, backend: str | None,
                  **tvl1: float) -> None:
    """TV-L1 optical flow between two images, written as .flo (and optionally a colour picture)."""
    import numpy as np

    from actrec.errors import InputError
    from actrec.pipeline.flowio import read_gray_image, write_color_png, write_flo

    params = tvl1_params(tvl1)
    backend = backend or ("torch" if device == "cuda" else "opencv")
    if backend == "opencv" and device == "cuda":
        raise InputError("the opencv backend runs on the CPU only; use --backend torch with --device cuda")
    a, b = read_gray_image(img0), read_gray_image(img1)
    if a.shape != b.shape:
        raise InputError(f"{img0} is {a.shape[1]}x{a.shape[0]} but {img1} is {b.shape[1]}x{b.shape[0]}")
    if backend == "torch":
        from actrec.pipeline.tvl1 import tvl1_flow

        flow = tvl1_flow(a, b, params, device=device)[0].cpu().numpy()
    else:
        from actrec.pipeline.flow_opencv import opencv_tvl1_flow

        flow = opencv_tvl1_flow(a, b, params)[0].numpy()
    write_flo(out, flow)
    if viz:
        write_color_png(viz, flow)
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    click.echo(f"{out}: {flow.shape[1]}x{flow.shape[0]} flow ({backend}, {device}), mean |flow| "
               f"{magnitude.mean():.3f} px, max {magnitude.max():.2f} px" + (f"; picture {viz}" if viz else ""))

# --- commands: models, training, evaluation ---

from pathlib import Path  # noqa: E402
from actrec.data_manifests.manifest import SPLITS as _SPLITS  # noqa: E402  (this command block's imports)
from actrec.training.config import AMP_MODES as _AMP_MODES, MODELS as _MODELS  # noqa: E402
from actrec.training.config import OPTIMIZERS as _OPTIMIZERS, SCHEDULES as _SCHEDULES  # noqa: E402


def _check_pretrained(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == "imagenet" or Path(value).is_file():
        return value
    raise click.BadParameter(f"expected 'imagenet' or a weights file, got {value!r} (no such file)")


@cli.command("train", epilog="""\b
Examples:
  actrec train stilt --frames frames/ --flow flow/ --manifest ucf101_s1.csv --out runs/stilt_s1 \\
      --gpu --workers 8 --pretrained imagenet
  actrec train stilt --frames frames/ --flow flow/ --manifest hmdb51_s1.csv --out runs/stilt_h1 \\
      --gpu --lr-step 5000
  actrec train cotlstm --frames frames/ --flow flow/ --manifest ucf101_s1.csv --out runs/cot_s1 --gpu
  torchrun --nproc-per-node 4 -m actrec.cli train stilt --frames frames/ --flow flow/ \\
      --manifest ucf101_s1.csv --out runs/stilt_s1 --gpu --accumulate 2
  actrec train stilt --out runs/stilt_s1 --resume --gpu
\b
CPU demo with a reduced model and small crops (the from-scratch recipe: AdamW, warmup, cosine):
  actrec train stilt --frames data/frames --flow data/flow --manifest data/synth/manifest.csv \\
      --out runs/demo --reduced --crop 64 --resize 72 --batch-size 8 --iterations 300
\b
Defaults are the paper's recipe for MODEL (SGD, step decay: for ImageNet-initialised backbones), or with --reduced
the from-scratch recipe (AdamW lr 0.001, weight decay 0.05, 20 warmup iterations, cosine decay); --config JSON and
then the options override them. The run folder gets config.json, checkpoint.pt (every --checkpoint-every
iterations, on SIGTERM/SIGINT, at the end), metrics.csv, loss.png and, with TensorBoard installed, tensorboard/.
Exit code 130 after a stop by signal: rerun with --resume.""")
@click.argument("model", type=click.Choice(_MODELS))
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder (config.json, checkpoint.pt, metrics.csv, loss.png, tensorboard/).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON object setting any training-config fields; options given here override it.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out exactly; only --iterations, --workers, --checkpoint-every and "
                   "--log-every may change.")
@click.option("--frames", help="Frame store folder.")
@click.option("--flow", help="Flow store folder computed from that frame store.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), help="Manifest CSV (labels and splits).")
@click.option("--split", type=click.Choice(_SPLITS), help="Manifest split to train on [default: train].")
@click.option("--iterations", type=click.IntRange(min=1), help="Total iterations [STILT 50000, CoT-LSTM 500].")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Global batch: per-process batch x processes x --accumulate [STILT 128, CoT-LSTM 64].")
@click.option("--accumulate", type=click.IntRange(min=1), help="Micro-batches accumulated per iteration [1].")
@click.option("--optimizer", type=click.Choice(_OPTIMIZERS),
              help="sgd (the papers', with momentum) or adamw (decay on weights only) [sgd; --reduced: adamw].")
@click.option("--schedule", type=click.Choice(_SCHEDULES),
              help="lr schedule after the warmup: step (x0.1 every --lr-step) or cosine (to 0 at the last "
                   "iteration) [step; --reduced: cosine].")
@click.option("--warmup-iters", type=click.IntRange(min=0),
              help="Iterations of linear lr warmup before the schedule [0; --reduced: 20].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Initial learning rate [0.001].")
@click.option("--lr-step", type=click.IntRange(min=1),
              help="Step schedule: multiply the lr by 0.1 every N iterations [STILT 10000 (HMDB51 in the paper: "
                   "5000), CoT-LSTM 450].")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Weight decay [0.0005; --reduced: 0.05].")
@click.option("--momentum", type=click.FloatRange(0, 1), help="SGD momentum [0.9].")
@click.option("--segments", type=click.IntRange(min=1), help="STILT: TSN segments per training clip [3].")
@click.option("--flow-length", type=click.IntRange(min=1),
              help="Flow frames per stack (STILT L) or sequence (CoT-LSTM t) [10].")
@click.option("--crop", type=click.IntRange(min=1), help="Network input size [224].")
@click.option("--resize", type=click.IntRange(min=1),
              help="CoT-LSTM: square size before rotation and crop; STILT testing: short side [256].")
@click.option("--flip/--no-flip", default=None,
              help="Random horizontal flips in training; --no-flip when mirroring changes the class (e.g. moving "
                   "left vs right) [on].")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Dropout before classifiers [0.5].")
@click.option("--amp", type=click.Choice(_AMP_MODES),
              help="Mixed precision: auto = bf16 on CUDA, off on CPU; fp16 uses a GradScaler [auto].")
@click.option("--pretrained", callback=_check_pretrained, metavar="imagenet|FILE",
              help="ImageNet weights loaded into both backbones, the flow stream's first conv by cross-modality "
                   "init: 'imagenet' (STILT: torchvision's ResNet-50, downloaded once into the torch hub cache) or "
                   "a file (e.g. JDAI-CV's CoTNet-101 for CoT-LSTM); what was loaded is printed.")
@click.option("--co-attention/--no-co-attention", default=None,
              help="STILT: --no-co-attention averages the segments instead (the paper's Two-stream ablation) [on].")
@click.option("--reduced/--full-size", default=None, help="CPU-sized backbones for tests and demos [full size].")
@click.option("--width", type=click.IntRange(min=1), help="Stem width of --reduced backbones [8].")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of weights, data order and augmentation [0].")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader processes per training process [4].")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Iterations between checkpoints [1000].")
@click.option("--log-every", type=click.IntRange(min=1), help="Iterations between metrics rows [10].")
@click.option("--gpu", is_flag=True, help="Train on cuda:LOCAL_RANK (one GPU per torchrun process).")
@click.option("--quiet", is_flag=True, help="No progress bar (the summary is still printed).")
def train_cmd(model: str, run_dir: str, config_file: str | None, resume: bool, gpu: bool, quiet: bool,
              **overrides) -> None:
    """Train STILT or CoT-LSTM on a frame store and a flow store (single process, or every process of torchrun)."""
    from actrec.training.config import resolve_config
    from actrec.training.trainer import resume_config, train

    if resume and config_file:
        raise click.UsageError("--config cannot be combined with --resume (the run's saved config is used)")
    config = (resume_config(run_dir, {**overrides, "model": model}) if resume
              else resolve_config(model, config_file, overrides))
    summary = train(config, run_dir, resume=resume, gpu=gpu, progress=not quiet,
                    log=lambda line: click.echo(line, err=True))
    if summary.rank == 0:
        click.echo(summary.line())
    if summary.interrupted:
        sys.exit(130)


@cli.command("evaluate", epilog="""\b
Examples:
  actrec evaluate --checkpoint runs/stilt_s1/checkpoint.pt --split test -o scores/stilt_s1_test.npz --gpu
  actrec evaluate --checkpoint runs/stilt_s1/checkpoint.pt --split train -o scores/stilt_s1_train.npz \\
      --crops center --gpu
  actrec fit-fusion --train-scores scores/stilt_s1_train.npz --test-scores scores/stilt_s1_test.npz -o fusion.json
  actrec evaluate --checkpoint runs/stilt_s1/checkpoint.pt -o scores/stilt_s1_test.npz --fusion fusion.json
\b
Writes OUT.npz (per-stream softmax scores rgb and flow, the model's own fusion, ids, labels), OUT.per_class.csv
and OUT.confusion.png, and prints top-1, top-5 and mean class accuracy per stream.""")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="checkpoint.pt of a training run (its config gives the model and the default data).")
@click.option("--split", type=click.Choice(_SPLITS), default="test", show_default=True,
              help="Manifest split to score (train: the scores fit-fusion learns from).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Score file to write (.npz); the CSV and PNG are written beside it.")
@click.option("--frames", help="Frame store [default: the training run's].")
@click.option("--flow", help="Flow store [default: the training run's].")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), help="Manifest [default: the run's].")
@click.option("--positions", type=click.IntRange(min=1), default=25, show_default=True,
              help="Uniformly spaced test positions per video.")
@click.option("--crops", type=click.Choice(["ten", "center"]), default="ten", show_default=True,
              help="10 crops (4 corners, centre and their mirror images) or the centre crop per position.")
@click.option("--chunk", type=click.IntRange(min=1), default=10, show_default=True,
              help="Views per forward pass (lower it when memory runs out).")
@click.option("--features", is_flag=True, help="Also store each stream's features (for early fusion).")
@click.option("--fusion", type=click.Path(exists=True, dir_okay=False),
              help="Fusion JSON from fit-fusion: apply it and report its accuracy too.")
@click.option("--confusion-top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Most frequent classes shown in the confusion matrix; the rest is grouped as 'other'.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader processes reading the stores.")
@click.option("--gpu", is_flag=True, help="Evaluate on cuda:LOCAL_RANK.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate_cmd(checkpoint: str, split: str, output: str, frames: str | None, flow: str | None,
                 manifest: str | None, positions: int, crops: str, chunk: int, features: bool, fusion: str | None,
                 confusion_top: int, workers: int, gpu: bool, quiet: bool) -> None:
    """Score every video of a split with a trained model (TSN's 25-position test protocol) and report accuracy."""
    from actrec.training.evaluate import EvalOptions, evaluate

    options = EvalOptions(split=split, frames=frames, flow=flow, manifest=manifest, positions=positions,
                          ten_crop=crops == "ten", chunk=chunk, features=features, fusion=fusion,
                          confusion_top=confusion_top, workers=workers, gpu=gpu)
    result = evaluate(checkpoint, output, options, progress=not quiet)
    click.echo(result.table)
    click.echo("wrote " + ", ".join(map(str, result.files)))

@cli.command("predict", epilog="""\b
Examples:
  actrec predict clip.mp4 --checkpoint runs/stilt_s1/checkpoint.pt --fusion fusion.json --topk 5
  actrec predict a.mp4 b.avi --checkpoint runs/cot_s1/checkpoint.pt --gpu --json > predictions.json
\b
Frames and flow are computed as for the training stores (their recorded size, fps, TV-L1 parameters and bound).
A video that cannot be decoded or is too short for flow is reported ("failed: FILE: reason") and the others are
still predicted; the exit code is then 1.""")
@click.argument("videos", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="checkpoint.pt of a training run.")
@click.option("--fusion", type=click.Path(exists=True, dir_okay=False),
              help="Fusion JSON from fit-fusion [default: the model's own fused output].")
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True, help="Classes to print per video.")
@click.option("--positions", type=click.IntRange(min=1), default=25, show_default=True,
              help="Uniformly spaced test positions per video.")
@click.option("--crops", type=click.Choice(["ten", "center"]), default="ten", show_default=True,
              help="10 crops or the centre crop per position.")
@click.option("--gpu", is_flag=True, help="Flow and model on CUDA.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
def predict_cmd(videos: tuple[str, ...], checkpoint: str, fusion: str | None, topk: int, positions: int, crops: str,
                gpu: bool, as_json: bool) -> None:
    """Classify videos with a trained model: decode, TV-L1 flow, test-time protocol, optional fusion weights."""
    from actrec.training.predict import predict_videos

    run = predict_videos(videos, checkpoint, fusion=fusion, k=topk, gpu=gpu, positions=positions,
                         ten_crop=crops == "ten", log=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in run.predictions], indent=2))
    else:
        for p in run.predictions:
            click.echo(p.video)
            for rank, (name, probability) in enumerate(zip(p.classes, p.probabilities), start=1):
                click.echo(f"  {rank}. {name:30s} {probability:.3f}")
    for line in run.failures:
        click.echo(f"failed: {line}", err=True)
    if run.failures:
        sys.exit(1)


# --- commands: fusion (fusion/) ---

def _parse_lambda(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """``auto`` (None: choose by cross-validation) or a finite lambda >= 0."""
    if value == "auto":
        return None
    try:
        lam = float(value)
    except ValueError:
        raise click.BadParameter(f"expected 'auto' or a number, found {value!r}") from None
    if not 0 <= lam < float("inf"):
        raise click.BadParameter(f"lambda must be a finite number >= 0, found {value}")
    return lam


def _score_source_options(side: str):
    """The --SIDE-scores, --SIDE-ids and --SIDE-labels options, defined once for the train and test sides."""
    existing = click.Path(exists=True, dir_okay=False)
    options = [
        click.option(f"--{side}-scores", multiple=True, required=True, type=existing,
                     help=f"{side} scores: one actrec .npz, or .npy matrices (N, C) or (S, N, C), repeated for "
                          "several streams"),
        click.option(f"--{side}-ids", type=existing, help=f"video-id list (one per line) for the {side} .npy rows"),
        click.option(f"--{side}-labels", type=existing,
                     help=f"labels of the {side} .npy rows: an actrec manifest .csv or an int .npy"),
    ]

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@cli.command("fit-fusion", epilog="""\b
Examples:
  actrec fit-fusion --train-scores ucf101_s1_train.npz --test-scores ucf101_s1_test.npz \\
      --method all -o fusion.json --plot weights.png
\b
  actrec fit-fusion --train-scores rgb_train.npy --train-scores flow_train.npy \\
      --train-ids train_ids.txt --train-labels ucf101_split1.csv \\
      --test-scores rgb_test.npy --test-scores flow_test.npy \\
      --test-ids test_ids.txt --test-labels ucf101_split1.csv \\
      --stream-names rgb,flow --lambda 0.3 --min-weight 0.1 -o fusion.json""")
@_score_source_options("train")
@_score_source_options("test")
@click.option("--stream-names", help="comma-separated names of the stacked .npy streams, e.g. rgb,flow")
@click.option("--method", type=click.Choice(["awf", "average", "global", "early", "all"]), default="awf",
              show_default=True, help="fusion to fit and write; 'all' fits and compares every method and writes AWF")
@click.option("--lambda", "lam", default="auto", show_default=True, callback=_parse_lambda,
              help="AWF lambda (eq. 5), or 'auto' to choose lambda (and w_min) by k-fold cross-validation")
@click.option("--min-weight", type=click.FloatRange(0, 1), default=None,
              help="AWF lower bound w_min on every stream weight (weights sum to 1) [default: 0, or CV with auto]")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="k of the k-fold cross-validation behind --lambda auto")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="fusion JSON to write (weights per class and stream, lambda, w_min, names)")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="PNG of the per-class stream weights, classes sorted by the second stream's weight")
def fit_fusion_command(train_scores, train_ids, train_labels, test_scores, test_ids, test_labels, stream_names,
                       method, lam, min_weight, folds, output, plot) -> None:
    """Fit per-class stream weights (AWF) on training scores and compare fusions on test scores.

    AWF solves the linear program of STILT eqs. 5-7 per class, with weights >= --min-weight summing to 1.
    Prints top-1, top-5 and mean class accuracy of every stream and fitted method, and writes the fusion JSON.
    """
    import warnings

    from actrec.fusion.awf import AwfParams
    from actrec.fusion.fit import FitOptions, fit_fusion_files
    from actrec.fusion.scores import FusionWarning, ScoreSource

    names = tuple(n.strip() for n in stream_names.split(",")) if stream_names else None
    train = ScoreSource(tuple(train_scores), train_ids, train_labels, names)
    test = ScoreSource(tuple(test_scores), test_ids, test_labels, names)
    options = FitOptions(method=method, awf=AwfParams(lam=lam, min_weight=min_weight, folds=folds))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FusionWarning)
        try:
            result = fit_fusion_files(train, test, output, options, plot)
        finally:
            for warning in caught:
                click.echo(f"warning: {warning.message}", err=True)
    click.echo(result.table)
    for note in result.notes:
        click.echo(note)
    click.echo(f"wrote {output}" + (f" and {plot}" if plot else ""))


def main() -> None:
    """Console entry point."""
    cli(prog_name="actrec")


if __name__ == "__main__":
    main()
