"""GPU TV-L1 throughput and parity, from the inputs prepare_device_check.py saved (no PyAV, no opencv-contrib).

For each solver path (``triton``: the Triton solver in its default configuration, outer iterations replayed as CUDA
graphs; ``triton-k4``: 4 iterations per kernel pass, ACTREC_TVL1_PASS_ITERATIONS=4; ``triton-direct``: the default
kernels launched one by one, ACTREC_TVL1_GRAPHS=0; ``eager``: plain PyTorch; ``compile``: PyTorch fused by
``torch.compile``) and batch size, the prepared real pairs (20 at 340x256) are repeated up to the batch, solved
once after a warm-up (compilation excluded, reported apart), and timed: pairs/s, and parity with OpenCV's flows
(fraction of pixels within 0.1 px, overall and worst pair; a pair's flow does not depend on its batch, so the first
20 flows stand for all). The TV-L1 parameters are those the file's OpenCV flows were computed with. A path whose
run exceeds ``--budget`` seconds skips its larger batches. Each row is printed and appended to
``$OUT/tvl1_table.md`` as soon as it is measured, so a run stopped by a time limit keeps what it measured.

    python3 benchmarks/device_check.py --data .device_check/prepared.npz [--batches 64 256 1024]
    TRITON_INTERPRET=1 python3 benchmarks/device_check.py --data .device_check/tiny.npz --tiny --batches 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from actrec.pipeline.tvl1 import TVL1Params, tvl1_flow

# path: (tvl1_flow options, environment while it runs)
PATHS = {"triton": (dict(kernels="triton"), {}),
         "triton-k4": (dict(kernels="triton"), {"ACTREC_TVL1_PASS_ITERATIONS": "4"}),
         "triton-direct": (dict(kernels="triton"), {"ACTREC_TVL1_GRAPHS": "0"}),
         "eager": (dict(kernels="torch", compile=False), {}),
         "compile": (dict(kernels="torch", compile=True), {})}


def parity(flow: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    within = np.sqrt(((flow - ref) ** 2).sum(-1)) < 0.1
    return float(within.mean()), float(within.reshape(len(flow), -1).mean(1).min())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_path(name: str, img0: np.ndarray, img1: np.ndarray, ref: np.ndarray, params: TVL1Params,
             batches: list[int], device: torch.device, budget: float, row_file: RowFile) -> list[dict]:
    """Warm up, then time each batch size; rows of the final table, each added to ``row_file`` when measured."""
    options, env = PATHS[name]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return _time_batches(name, options, img0, img1, ref, params, batches, device, budget, row_file)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _time_batches(name: str, options: dict, img0: np.ndarray, img1: np.ndarray, ref: np.ndarray,
                  params: TVL1Params, batches: list[int], device: torch.device, budget: float,
                  row_file: RowFile) -> list[dict]:
    t = time.perf_counter()
    tvl1_flow(img0[:2], img1[:2], params, device=device, **options)
    sync(device)
    warm = time.perf_counter() - t
    print(f"{name}: warm-up (2 pairs, incl. compilation) {warm:.1f} s", flush=True)
    rows = []
    n = len(img0)
    for bs in batches:
        reps = -(-bs // n)
        a = torch.from_numpy(np.concatenate([img0] * reps)[:bs]).to(device)
        b = torch.from_numpy(np.concatenate([img1] * reps)[:bs]).to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t = time.perf_counter()
        flow = tvl1_flow(a, b, params, device=device, **options)
        sync(device)
        sec = time.perf_counter() - t
        k = min(n, bs)
        p_all, p_min = parity(flow[:k].cpu().numpy(), ref[:k])
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")
        row = dict(path=name, batch=bs, seconds=sec, pairs_s=bs / sec, parity=p_all, worst=p_min, peak_gb=peak,
                   warmup=warm)
        rows.append(row)
        row_file.add(row)
        print(f"{name} batch {bs}: {sec:.2f} s, {bs / sec:.1f} pairs/s, parity {p_all:.4f} (worst pair {p_min:.4f}),"
              f" peak memory {peak:.1f} GB", flush=True)
        if sec > budget:
            print(f"{name}: {sec:.0f} s > budget {budget:.0f} s, larger batches skipped", flush=True)
            break
    return rows


TABLE_HEAD = ("| path | batch | pairs/s | within 0.1 px | worst pair | peak GB | warm-up s |\n"
              "|---|---:|---:|---:|---:|---:|---:|")


def table_line(r: dict) -> str:
    return (f"| {r['path']} | {r['batch']} | {r['pairs_s']:.1f} | {r['parity']:.4f} | {r['worst']:.4f} | "
            f"{r['peak_gb']:.1f} | {r['warmup']:.1f} |")


class RowFile:
    """``$OUT/tvl1_table.md`` (header once, then one line per row, flushed as each row is measured); nothing
    without $OUT."""

    def __init__(self) -> None:
        out = os.environ.get("OUT")
        self.path = Path(out) / "tvl1_table.md" if out else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                self.path.write_text(TABLE_HEAD + "\n")

    def add(self, row: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(table_line(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=".device_check/prepared.npz")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64, 256, 1024])
    ap.add_argument("--paths", nargs="+", default=["triton", "triton-k4", "triton-direct", "compile", "eager"],
                    choices=list(PATHS))
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per run before larger batches are skipped")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU dry run (with prepare_device_check.py --tiny's file): no CUDA needed, the Triton paths "
                         "only under TRITON_INTERPRET=1")
    args = ap.parse_args()
    saved = np.load(args.data)
    img0, img1, ref = saved["img0"], saved["img1"], saved["opencv_flow"]
    params = TVL1Params(**json.loads(str(saved["params"]))) if "params" in saved else TVL1Params()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        if os.environ.get("TRITON_INTERPRET") != "1" and device.type != "cuda":
            args.paths = [p for p in args.paths if not p.startswith("triton")]
    elif device.type != "cuda":
        raise SystemExit("no CUDA device: run with --tiny for a CPU dry run")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name}; torch {torch.__version__}; {len(img0)} pairs {img0.shape[2]}x{img0.shape[1]}", flush=True)
    row_file = RowFile()
    rows = []
    for path in args.paths:
        rows += run_path(path, img0, img1, ref, params, args.batches, device, args.budget, row_file)
    print("\n".join([TABLE_HEAD, *map(table_line, rows)]))


if __name__ == "__main__":
    main()
