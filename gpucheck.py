"""``actrec check-gpu``: what a GPU machine has, and whether our GPU paths work on it and how fast, in one table.

The command a user runs on a new machine, and the one to paste into a bug report. It reports the environment
(torch, CUDA, driver, GPU name and memory, Triton, cuDNN, free memory), then runs:

1. the Triton kernels' self-check (:mod:`actrec.pipeline.tvl1.selfcheck`): a built-in pair solved on the GPU and
   by the CPU solver, compared, directly and through CUDA graphs;
2. TV-L1 throughput for each kernel set (``triton``, ``torch``: plain PyTorch) for about ``seconds`` each on
   generated 340x256 pairs of known motion (a smooth texture moved by 1.5 px): pairs per second after a
   warm-up call (compilation, reported apart), and the mean error of the flow against the true motion;
3. a few bf16 training steps of STILT at full size (ResNet-50 x 2, 3 segments, L = 10, 224 crops), batch 8:
   clips per second, the loss (finite) and the peak memory.

Each check is a row of the table; the command exits 0 when all pass and 1 when one fails. The checks take the
device as an argument, so the CPU runs them too (``TINY`` sizes, Triton under ``TRITON_INTERPRET=1``): the tests
and the device check's dry run do.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from actrec import __version__
from actrec.pipeline.tvl1.params import TVL1Params

Log = Callable[[str], None]


@dataclass(frozen=True)
class CheckSizes:
    """How much each check runs: the GPU's sizes by default, ``TINY`` for a CPU dry run."""

    pair: tuple[int, int] = (340, 256)  # (W, H) of the generated pairs
    pairs: int = 64  # pairs per solver call
    seconds: float = 20.0  # throughput measured per kernel set (at least one call)
    params: TVL1Params = field(default_factory=TVL1Params)  # OpenCV's defaults
    motion_tolerance_px: float = 0.5  # mean end-point error against the true motion, inside a 16 px border
    train_batch: int = 8
    train_steps: int = 4  # timed, after one warm-up step
    reduced: bool = False  # STILT at full size (ResNet-50 streams)
    crop: int = 224


TINY = CheckSizes(pair=(64, 48), pairs=2, seconds=0.0, motion_tolerance_px=1.0, train_batch=2, train_steps=1,
                  params=TVL1Params(nscales=1, warps=1, outer_iterations=2, inner_iterations=3), reduced=True,
                  crop=32)


@dataclass
class CheckRow:
    """One check: its name, whether it passed, the result in words, its numbers and its time."""

    name: str
    passed: bool
    result: str
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The check's line of the table."""
        return f"| {self.name} | {'pass' if self.passed else 'FAIL'} | {self.result} | {self.seconds:.1f} |"


TABLE_HEAD = "| check | status | result | s |\n|---|---|---|---:|"


def environment_text(env: dict[str, Any]) -> str:
    return "\n".join(f"{key}: {value}" for key, value in env.items())


@dataclass
class GpuReport:
    """The environment and the checks of one ``check-gpu`` run."""

    environment: dict[str, Any]
    rows: list[CheckRow]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def table(self) -> str:
        """The environment as ``key: value`` lines, then one table line per check."""
        return "\n".join([environment_text(self.environment), "", TABLE_HEAD, *(r.line() for r in self.rows)])

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "passed": self.passed,
                "checks": [{"name": r.name, "passed": r.passed, "result": r.result, "seconds": round(r.seconds, 2),
                            **r.numbers} for r in self.rows]}


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the device: torch, CUDA, driver, GPU name and memory, Triton, cuDNN, free memory."""
    env: dict[str, Any] = {"actrec": __version__, "python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "triton": _version("triton"),
                           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                           "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", driver=_driver_version(),
                   memory_gb=round(total / 1e9, 1), free_memory_gb=round(free / 1e9, 1))
    else:
        env.update(gpu=None, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return env


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi (torch does not report it), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def selfcheck_row(device: torch.device) -> CheckRow:
    """The Triton kernels' self-check on ``device`` (its warning, if any, becomes this row's result)."""
    from actrec.pipeline.tvl1 import selfcheck
    from actrec.pipeline.tvl1.backend import get_kernels

    if not _triton_runs(device):
        return CheckRow("triton self-check", True, "skipped: Triton runs on CUDA (or under TRITON_INTERPRET=1)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        get_kernels("triton", False).runner(device)
    report = selfcheck.reports[str(device)]
    stages = [("direct", report.direct)] + ([("graphs", report.graphs)] if report.graphs is not None else [])
    words = [f"{name}: " + ("bit-identical to the CPU" if s.identical else
                            f"max diff {s.max_diff:.2g} px" if s.passed else s.cause) for name, s in stages]
    return CheckRow("triton self-check", report.passed, f"{'; '.join(words)}; runs as {report.chosen}",
                    sum(s.seconds for _, s in stages), report.as_dict())


def _triton_runs(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def generated_pairs(sizes: CheckSizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sizes.pairs`` pairs of the self-check's texture, pair i moved by 1.5 px in the direction 2 pi i / N:
    ``(N, H, W)`` uint8 frames and the true shifts ``(N, 2)``."""
    from actrec.pipeline.tvl1.selfcheck import moving_texture

    w, h = sizes.pair
    angles = 2 * np.pi * np.arange(sizes.pairs) / sizes.pairs
    shifts = 1.5 * np.stack([np.cos(angles), np.sin(angles)], 1)
    frames = [moving_texture(h, w, (float(dx), float(dy))) for dx, dy in shifts]
    return np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames]), shifts


def throughput_row(kernels: str, device: torch.device, sizes: CheckSizes, log: Log) -> CheckRow:
    """About ``sizes.seconds`` of TV-L1 with one kernel set: pairs/s after a warm-up call, and the flow's mean
    error against the true motion (inside a 16 px border, where no motion leaves the frame)."""
    from actrec.pipeline.tvl1.solver import tvl1_flow

    name = f"tv-l1 {kernels} {sizes.pair[0]}x{sizes.pair[1]}"
    if kernels == "triton" and not _triton_runs(device):
        return CheckRow(name, True, "skipped: Triton runs on CUDA (or under TRITON_INTERPRET=1)")
    img0, img1, shifts = generated_pairs(sizes)
    a, b = torch.from_numpy(img0).to(device), torch.from_numpy(img1).to(device)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the self-check's row reports a fallback
            flow = tvl1_flow(a, b, sizes.params, device=device, kernels=kernels, compile=False, log=log)
            _sync(device)
            warm = time.perf_counter() - start
            calls, begin = 0, time.perf_counter()
            while calls == 0 or time.perf_counter() - begin < sizes.seconds:
                flow = tvl1_flow(a, b, sizes.params, device=device, kernels=kernels, compile=False, log=log)
                _sync(device)
                calls += 1
            elapsed = time.perf_counter() - begin
    except Exception as exc:  # noqa: BLE001 - the failure is the finding: one line in the table
        return CheckRow(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                        time.perf_counter() - start)
    error = _motion_error(flow.float().cpu().numpy(), shifts)
    rate = calls * sizes.pairs / elapsed
    passed = math.isfinite(error) and error <= sizes.motion_tolerance_px
    result = (f"{rate:.1f} pairs/s (batch {sizes.pairs}, warm-up {warm:.1f} s); mean error {error:.3f} px against "
              f"the true motion (tolerance {sizes.motion_tolerance_px})")
    return CheckRow(name, passed, result, time.perf_counter() - start,
                    {"pairs_per_s": round(rate, 2), "warmup_s": round(warm, 2), "motion_error_px": round(error, 4)})


def _motion_error(flow: np.ndarray, shifts: np.ndarray, border: int = 16) -> float:
    inner = flow[:, border:-border, border:-border] if min(flow.shape[1:3]) > 4 * border else flow
    return float(np.sqrt(((inner - shifts[:, None, None, :]) ** 2).sum(-1)).mean())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_row(device: torch.device, sizes: CheckSizes) -> CheckRow:
    """A few bf16 training steps of STILT (SGD) on a random batch kept on the device: clips/s, loss, memory."""
    from actrec.training.config import recipe
    from actrec.training.models import MODEL_SPECS, build_model, to_channels_last
    from actrec.training.trainer import autocast

    config = replace(recipe("stilt", reduced=sizes.reduced), crop=sizes.crop, batch_size=sizes.train_batch)
    name = f"stilt {'reduced' if sizes.reduced else 'full size'} bf16, batch {sizes.train_batch}"
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        spec = MODEL_SPECS["stilt"]
        model = to_channels_last(build_model(config, 101), device, config.reduced).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        n, L, c, batch = config.segments, config.flow_length, config.crop, config.batch_size
        inputs = tuple(t.to(device) for t in spec.inputs(torch.randn(batch, n, 3, c, c),
                                                          torch.randn(batch, n, L, 2, c, c)))
        labels = torch.randint(101, (batch,), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def step() -> float:
            with autocast(device, torch.bfloat16):
                loss = spec.loss(model(*inputs), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())

        step()
        _sync(device)
        begin = time.perf_counter()
        losses = [step() for _ in range(sizes.train_steps)]
        rate = sizes.train_steps * batch / (time.perf_counter() - begin)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory, no bf16 kernels: one line in the table
        return CheckRow(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                        time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    passed = all(math.isfinite(x) for x in losses)
    result = (f"{rate:.1f} clips/s ({rate * 2 * n:.0f} images/s), loss {losses[-1]:.3f}"
              + (f", peak memory {peak:.1f} GB" if peak is not None else ""))
    return CheckRow(name, passed, result, time.perf_counter() - start,
                    {"clips_per_s": round(rate, 2), "loss": losses[-1], "peak_memory_gb": peak})


def check_gpu(device: torch.device, sizes: CheckSizes = CheckSizes(), log: Log = print,
              on_row: Callable[[CheckRow], None] | None = None) -> GpuReport:
    """The environment, then each check on ``device``: announced through ``log`` as it starts, handed to ``on_row``
    as soon as it is done (so that a caller killed by a timeout has printed the rows measured so far)."""
    env = environment(device)
    rows: list[CheckRow] = []
    checks: list[tuple[str, Callable[[], CheckRow]]] = [
        ("the Triton self-check", lambda: selfcheck_row(device)),
        *((f"TV-L1 throughput with the {k} kernels", lambda k=k: throughput_row(k, device, sizes, log))
          for k in ("triton", "torch")),
        ("STILT training steps", lambda: training_row(device, sizes)),
    ]
    for title, run in checks:
        log(f"check-gpu: {title} ...")
        rows.append(run())
        if on_row is not None:
            on_row(rows[-1])
    return GpuReport(env, rows)
