"""Optical flow commands: TV-L1 options shared by them, compute-flow (a flow store) and flow-pair (two images)."""

from __future__ import annotations

from typing import Callable

import click

from actrec.cli.group import cli
from actrec.cli.options import finish_stages, parallel_options
from actrec.pipeline.flow_spec import BACKENDS, COMPRESSIONS, DTYPES
from actrec.pipeline.tvl1.params import TVL1Params


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
  srun --nodes 4 --ntasks-per-node 8 --gpus-per-node 8 actrec compute-flow --frames frames/ --out flow/ --gpu
\b
N frames give N-step flows; flow i maps frame i to frame i+step (0-based). Stored as uint8 in [-bound, bound].
""")
@click.option("--frames", "frames_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Frame store written by extract-frames.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Flow store folder (created or resumed).")
@click.option("--gpu", is_flag=True,
              help="Compute on CUDA (cuda:$LOCAL_RANK under torchrun, cuda:$SLURM_LOCALID under srun); an error "
                   "without CUDA.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="torch (batched PyTorch TV-L1) or opencv (OpenCV's CPU TV-L1 in --workers processes) "
                   "[default: torch with --gpu, else opencv, the faster one on CPUs].")
@click.option("--batch-pixels", type=click.IntRange(min=1), default=None,
              help="Frame pixels (H x W) per solver call, pairs of one frame shape from several videos "
                   "(5570560 = 64 pairs at 340x256) [default: what fits in the GPU's free memory; on the CPU "
                   "8 such pairs per worker, reached by doubling from one pair per worker so that the bar moves "
                   "after the first pair]. A batch that runs out of GPU memory is retried in halves.")
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
@click.option("--compression", type=click.Choice(COMPRESSIONS), default=None,
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
    from actrec.pipeline.flow import FlowOptions, compute_flow, resolve_device, store_compression

    options = FlowOptions(params=tvl1_params(tvl1), bound=bound, step=step, dtype=dtype,
                          compression=compression or store_compression(out),
                          backend=backend or ("torch" if gpu else "opencv"), device=resolve_device(gpu),
                          batch_pixels=batch_pixels or 0, readers=readers, writers=writers or 0)
    summary = compute_flow(frames_root, out, options, workers=workers, videos_per_shard=videos_per_shard, rank=rank,
                           world_size=world_size, progress=not quiet, log=lambda line: click.echo(line, err=True))
    finish_stages(summary)


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
