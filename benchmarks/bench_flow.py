"""TV-L1 throughput: OpenCV's CPU DualTVL1OpticalFlow (one process per core) vs our PyTorch solver, in one run.

On the same real 340x256 consecutive-frame pairs as tests/test_tvl1.py (5 Kinetics clips x 4 pairs by default):
pairs/s of each, the ratio, and parity (fraction of pixels within 0.1 px of OpenCV's flow, overall and worst pair).
CUDA batch sizes run when CUDA is available; otherwise the script says so.

    .venv/bin/python benchmarks/bench_flow.py [--pairs-per-clip 4] [--threads N] [--variants]
    .venv/bin/python benchmarks/bench_flow.py --floor     # work counts and the H200 memory-bound floor
    .venv/bin/python benchmarks/bench_flow.py --memory    # peak bytes per pixel per pair of each kernel set

``--variants`` also times our solver eager (no torch.compile) and with 1 intra-op thread, to report the effect of
each CPU speed-up. The first compiled call's compile time is reported separately (it is paid once per process).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from actrec.pipeline.flow_opencv import opencv_tvl1_flow  # noqa: E402
from actrec.pipeline.tvl1 import TVL1Params, tvl1_flow  # noqa: E402
from actrec.pipeline.tvl1 import floor  # noqa: E402

CLIPS = ("kinetics_arm_wrestling.mp4", "kinetics_clean_and_jerk.mp4", "kinetics_pool_cleaning.mp4",
         "kinetics_skateboarding.mp4", "kinetics_tai_chi.mp4")


def load_pairs(videos: Path, per_clip: int, first: int = 30):
    from test_tvl1 import gray_frames

    a, b = [], []
    for clip in CLIPS:
        frames = gray_frames(videos / clip, first, per_clip + 1)
        a.extend(frames[:-1])
        b.extend(frames[1:])
    return np.stack(a), np.stack(b)


def parity(flow: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    epe = np.sqrt(((flow - ref) ** 2).sum(-1))
    per_pair = (epe < 0.1).reshape(len(flow), -1).mean(1)
    return float((epe < 0.1).mean()), float(per_pair.min())


def _ours_in_worker(a, b, threads: int = 1):
    """Our solver inside a joblib worker process with ``threads`` intra-op threads (for the per-core variant)."""
    torch.set_num_threads(threads)
    return tvl1_flow(a, b, TVL1Params()).numpy()


def ours_per_core(a, b, cores: int):
    """Pairs split over ``cores`` worker processes, 1 thread each (loky reuses the warm workers across calls)."""
    from joblib import Parallel, delayed

    bounds = np.linspace(0, len(a), cores + 1).astype(int)
    parts = Parallel(n_jobs=cores, backend="loky")(delayed(_ours_in_worker)(a[lo:hi], b[lo:hi])
                                                   for lo, hi in zip(bounds[:-1], bounds[1:]))
    return np.concatenate(parts)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def report_floor(a: np.ndarray, b: np.ndarray) -> None:
    """Per pair, the inner iterations and pixel-iterations per pyramid level after per-pair stopping; then the
    bytes per fused iteration and the memory-bound floor on the H200."""
    params = TVL1Params()
    steps, held, sizes = floor.held_counts(a, b, params)
    pix = floor.pixel_iterations(steps, sizes)
    levels = " ".join(f"{h}x{w}" for h, w in sizes)
    print(f"levels (finest first): {levels}; at most {params.warps * params.outer_iterations * params.inner_iterations}"
          " inner iterations per level")
    for i, (s, p) in enumerate(zip(steps, pix)):
        print(f"pair {i:2d}: iterations per level {' '.join(f'{v:5d}' for v in s)}  "
              f"pixel-iterations {p.sum() / 1e6:7.2f} M")
    mean = float(pix.sum(1).mean())
    print(f"mean pixel-iterations per pair: {mean / 1e6:.2f} M ({pix.mean(0).round().astype(int).tolist()} per level);"
          f" {floor.BYTES_PER_ITERATION} bytes per pixel per fused iteration")
    print(f"memory-bound floor at {floor.H200_COPY_BANDWIDTH / 1e12:.1f} TB/s: "
          f"{floor.floor_pairs_per_s(mean):.0f} pairs/s (one pass per iteration)", flush=True)
    report_held(pix, floor.pixel_iterations(held, sizes), floor.pixel_iterations(np.minimum(held, 2 * params.warps),
                                                                                 sizes))


def report_held(pix: np.ndarray, held: np.ndarray, copied: np.ndarray) -> None:
    """The traffic of stopped pairs still in their batch (GPU schedule): the first kernels copied them every
    iteration, the next ones twice per warp; the Triton solver's step kernel returns at once for them (their
    state stays in the set their parity names), so they cost no traffic."""
    copy_bytes = 48  # a frozen pair's copy: reads and writes its 6 state planes
    run = pix.sum() * floor.BYTES_PER_ITERATION
    before, after = held.sum() * copy_bytes, copied.sum() * copy_bytes
    print(f"held after stopping (GPU schedule): {held.sum(1).mean() / 1e6:.2f} M pixel-iterations per pair; frozen"
          f" copies were {100 * before / (run + before):.1f}% of the traffic with a copy per iteration,"
          f" {100 * after / (run + after):.1f}% with two per warp, none now (no copies): the floor moved from"
          f" {floor.floor_pairs_per_s((run + before) / floor.BYTES_PER_ITERATION / len(pix)):.0f} to"
          f" {floor.floor_pairs_per_s(run / floor.BYTES_PER_ITERATION / len(pix)):.0f} pairs/s", flush=True)


def report_memory(a: np.ndarray, b: np.ndarray) -> None:
    """Peak tensor bytes per pixel per pair of the CUDA schedule (whole batch, one host check per outer
    iteration), measured on the CPU, for each kernel set (Triton under TRITON_INTERPRET=1 only)."""
    import functools

    from actrec.pipeline.tvl1 import solver

    solver.solve_level = functools.partial(solver.solve_level, sync_inner=False)
    params = TVL1Params(warps=1, outer_iterations=2, inner_iterations=2)  # the peak is the finest level's layout
    kinds = ["torch", "triton"] if os.environ.get("TRITON_INTERPRET") == "1" else ["torch"]
    n, h, w = a.shape
    for kind in kinds:
        peak = floor.peak_tensor_bytes(lambda: tvl1_flow(a, b, params, compile=False, chunk=n, kernels=kind))
        print(f"{kind}: peak {peak / (n * h * w):.0f} bytes per pixel per pair ({n} pairs {w}x{h})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs-per-clip", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="cores for both (OpenCV processes, torch threads)")
    ap.add_argument("--variants", action="store_true", help="also time eager mode and 1 thread")
    ap.add_argument("--floor", action="store_true", help="only count the work and print the H200 floor")
    ap.add_argument("--memory", action="store_true", help="only measure peak bytes per pixel per pair (2 pairs)")
    ap.add_argument("--data", default=os.environ.get("ACTREC_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    args = ap.parse_args()
    cores = args.threads
    torch.set_num_threads(cores)
    a, b = load_pairs(Path(args.data) / "videos", args.pairs_per_clip)
    n = len(a)
    params = TVL1Params()
    if args.floor or args.memory:
        print(f"{n} pairs 340x256; load avg {os.getloadavg()[0]:.2f}", flush=True)
        report_floor(a, b) if args.floor else report_memory(a[:2], b[:2])
        return
    print(f"{n} pairs 340x256 from {len(CLIPS)} clips; {cores} cores ({platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, load avg {os.getloadavg()[0]:.2f})", flush=True)

    ref, t_cv = timed(lambda: opencv_tvl1_flow(a, b, params, workers=cores).numpy())
    print(f"opencv  ({cores} processes x 1 thread): {t_cv:7.1f} s  {n / t_cv:6.2f} pairs/s", flush=True)

    # compile once on a small batch (paid once per process; inductor caches on disk across processes)
    _, t_compile = timed(lambda: tvl1_flow(a[:2], b[:2], params, compile=True))
    ours, t_ours = timed(lambda: tvl1_flow(a, b, params, compile=True).numpy())
    p_all, p_min = parity(ours, ref)
    print(f"ours    (torch.compile, {cores} threads, batch {n}): {t_ours:7.1f} s  {n / t_ours:6.2f} pairs/s  "
          f"ratio {t_cv / t_ours:.2f}x OpenCV  | first call incl. compile {t_compile:.1f} s", flush=True)
    print(f"parity: {p_all:.4f} of all pixels within 0.1 px of OpenCV, worst pair {p_min:.4f}", flush=True)

    if args.variants:
        eager, t_eager = timed(lambda: tvl1_flow(a, b, params, compile=False).numpy())
        print(f"ours    (eager, {cores} threads): {t_eager:7.1f} s  {n / t_eager:6.2f} pairs/s  "
              f"ratio {t_cv / t_eager:.2f}x  identical to compiled: {np.array_equal(eager, ours)}", flush=True)
        torch.set_num_threads(1)
        tvl1_flow(a[:2], b[:2], params, compile=True)  # inductor compiles again for 1 thread: keep it out of the time
        _, t_one = timed(lambda: tvl1_flow(a, b, params, compile=True).numpy())
        print(f"ours    (torch.compile, 1 thread): {t_one:7.1f} s  {n / t_one:6.2f} pairs/s  "
              f"(x{cores} processes would be {cores * n / t_one:.2f} pairs/s)", flush=True)
        torch.set_num_threads(cores)
        _, t_warm = timed(lambda: ours_per_core(a[: 2 * cores], b[: 2 * cores], cores))  # compile in each worker
        per_core, t_pc = timed(lambda: ours_per_core(a, b, cores))
        print(f"ours    (torch.compile, {cores} processes x 1 thread): {t_pc:7.1f} s  {n / t_pc:6.2f} pairs/s  "
              f"ratio {t_cv / t_pc:.2f}x OpenCV  identical: {np.array_equal(per_core, ours)}  "
              f"(worker warm-up incl. compile {t_warm:.1f} s)", flush=True)

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for bs in (32, 128, 256):
            reps = -(-bs // n)
            a_bs, b_bs = np.concatenate([a] * reps)[:bs], np.concatenate([b] * reps)[:bs]
            tvl1_flow(a_bs[:2], b_bs[:2], params, device="cuda")
            torch.cuda.synchronize()
            flow, t_gpu = timed(lambda: tvl1_flow(a_bs, b_bs, params, device="cuda").cpu().numpy())
            p_all, p_min = parity(flow[:n], ref[: min(n, bs)]) if bs >= n else parity(flow, ref[:bs])
            print(f"cuda ({name}) batch {bs}: {t_gpu:7.1f} s  {bs / t_gpu:7.2f} pairs/s  "
                  f"parity {p_all:.4f} (worst {p_min:.4f})", flush=True)
    else:
        print("cuda: no GPU available in this run (torch.cuda.is_available() is False)")


if __name__ == "__main__":
    main()
