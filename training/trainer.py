"""The training loop of ``actrec train``: optimiser and schedule (``optim.py``), AMP, DDP, checkpoints, exact resume.

Run folder: ``config.json`` (the resolved TrainConfig), ``checkpoint.pt`` (written every ``checkpoint_every``
iterations, on SIGTERM/SIGINT and at the end; see ``actrec.training.checkpoint``), and every ``log_every``
iterations a row of ``metrics.csv`` (iteration, loss, lr, clips_per_s, data_wait, elapsed_s, bad_samples) with the
same values in ``tensorboard/`` when TensorBoard is installed, and ``loss.png`` at the end
(``actrec.training.monitor``); ``bad_samples.csv`` lists the unreadable clips skipped (``bad_samples.py``).
``loss`` is the iteration's mean training loss over the global batch (its readable clips); ``data_wait`` the
fraction of the logged iterations' time spent waiting for the input (``feed.py``: loader and batch augmentation).
Under DDP the loss is averaged over the processes on log iterations only (the iteration's one host
synchronisation), when a stop request is also shared.

Exact resume: model, optimizer, LR schedule, GradScaler and every generator (Python, NumPy, torch, CUDA) are
restored, and the data order and each clip's augmentation are functions of the iteration (``distributed.py``), so on
the CPU a resumed run reproduces the uninterrupted one bit for bit. The DataLoader gets its own generator so that
starting it does not draw from the global one.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from actrec.data_manifests.manifest import class_names, read_manifest
from actrec.errors import DeviceError, InputError, OutputError
from actrec.models.pretrained import resolve_weights
from actrec.training.checkpoint import (capture_rng, check_room, load_checkpoint, recover_partial_writes, restore_rng,
                                        save_checkpoint)
from actrec.training.config import (CONFIG_FILE, TrainConfig, absolute_paths, apply_overrides, check_resume,
                                    config_to_dict, config_warnings, run_config, save_config, validate_config)
from actrec.training.datasets import ClipSource
from actrec.training.distributed import DistContext, close_distributed, gather_objects, init_distributed, log_across
from actrec.training.feed import TrainFeed
from actrec.training.models import MODEL_SPECS, build_model, load_backbones, to_channels_last
from actrec.training.monitor import MetricsRow, RunMonitor, closed_on_error
from actrec.training.optim import build_optimizer, build_scheduler

CHECKPOINT = "checkpoint.pt"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BACKBONES = {"stilt": "resnet50", "cotlstm": "cotnet101"}  # each model's backbone, for --pretrained imagenet


@dataclass
class TrainSummary:
    """What a call to ``train`` did."""

    run_dir: Path
    start_iteration: int
    iteration: int
    last_loss: float | None  # the last training loss known (None: none logged yet) ...
    loss_iteration: int  # ... and its iteration
    clips: int
    elapsed: float
    data_wait: float
    rank: int = 0  # the process that made this summary (the CLI prints rank 0's)
    interrupted: bool = False
    skipped: int = 0  # unreadable training clips skipped (--on-bad-sample skip), by all processes

    def line(self) -> str:
        rate = self.clips / self.elapsed if self.elapsed > 0 else 0.0
        loss = "no loss logged yet" if self.last_loss is None else f"last loss {self.last_loss:.4f}"
        if self.last_loss is not None and self.loss_iteration != self.iteration:
            loss += f" (iteration {self.loss_iteration})"
        text = (f"train: iterations {self.start_iteration} -> {self.iteration}, {loss}, "
                f"{rate:.1f} clips/s, data wait {100 * self.data_wait:.0f}%, {self.elapsed:.1f} s; "
                f"checkpoint {self.run_dir / CHECKPOINT}")
        if self.skipped:
            text += f"; {self.skipped} unreadable clips skipped (listed in {self.run_dir / 'bad_samples.csv'})"
        if self.interrupted:
            text += "; interrupted: continue with --resume"
        return text


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting on ``device`` (None: full precision)."""
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if mode == "fp16" and device.type != "cuda":
        raise DeviceError("--amp fp16 needs a CUDA device; use --amp bf16 or off on the CPU")
    return AMP_DTYPES.get(mode)


def inference_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for scoring with a model trained under ``amp``: the training one on CUDA, none (full
    precision) elsewhere, so that a model trained with --amp fp16 on GPUs is evaluated on any device."""
    return amp_dtype(mode, device) if device.type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device``, or nothing for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def resume_config(run_dir: str | Path, overrides: Mapping[str, Any]) -> TrainConfig:
    """The config of the run saved in ``run_dir`` with ``overrides`` (None values ignored) applied; only the
    resumable fields (iterations, workers, cache_mb, checkpoint_every, log_every) may change."""
    path = Path(run_dir) / CHECKPOINT
    saved = run_config(load_checkpoint(path)["config"], path)
    wanted = absolute_paths(apply_overrides(saved, {k: v for k, v in overrides.items() if v is not None},
                                            "command line"))
    return check_resume(saved, wanted, str(path))


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, gpu: bool = False,
          progress: bool = True, log: Callable[[str], None] = print) -> TrainSummary:
    """Train ``config`` into ``run_dir`` (or continue the run there with ``resume``); return a summary.

    Works alone or in every process of a torchrun job. SIGTERM and SIGINT end the run at the next iteration
    boundary with a checkpoint (``summary.interrupted``).
    """
    ctx = init_distributed(gpu)
    try:
        summary = _Run(config, Path(run_dir), ctx, resume, log).loop(progress)
    except BaseException:
        close_distributed(ctx, failed=True)
        raise
    close_distributed(ctx)
    return summary


class _Run:
    """One training process: model, optimiser, data and bookkeeping, set up fresh or from the checkpoint."""

    def __init__(self, config: TrainConfig, run_dir: Path, ctx: DistContext, resume: bool,
                 log: Callable[[str], None]) -> None:
        validate_config(config, ctx.world_size)
        config = absolute_paths(config)  # as saved: a run folder works from any directory
        self.config, self.run_dir, self.ctx, self.log = config, run_dir, ctx, log
        self.spec = MODEL_SPECS[config.model]
        if ctx.is_main:  # settle what an interrupted checkpoint write left
            for note in recover_partial_writes(run_dir / CHECKPOINT):
                log(f"note: {note}")
        checkpoint = self._checkpoint_to_resume(resume)
        rows = read_manifest(config.manifest)
        self.class_names = class_names(rows)
        train_rows = [r for r in rows if r.split == config.split]
        _check_training_rows(config, train_rows)
        self.source = ClipSource(config.frames, config.flow, train_rows, config.flow_length, config.cache_mb)
        torch.manual_seed(config.seed)  # the same initial weights in every process
        self.model = self._build_model(pretrained=checkpoint is None)  # a resumed run has its weights
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.amp = amp_dtype(config.amp, ctx.device)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp == torch.float16)
        self.iteration = 0
        self.saved_iteration: int | None = None  # the iteration of the newest checkpoint on disk
        self.elapsed_before = 0.0  # training seconds of the earlier sessions of a resumed run
        self._started = time.perf_counter()
        if checkpoint is None:
            _seed_generators(config.seed + ctx.rank)
        else:
            self._restore(checkpoint)
        self.net: nn.Module = self.model  # what the forward pass calls: the model, or its DDP wrapper
        if ctx.distributed:
            self.net = DistributedDataParallel(self.model, device_ids=[ctx.device.index]
                                               if ctx.device.type == "cuda" else None)
        self.monitor: RunMonitor | None = None
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            check_room(run_dir / CHECKPOINT, self.model.state_dict(), 2 if config.optimizer == "adamw" else 1,
                       "continue with --resume" if resume else "start again")
            save_config(run_dir / CONFIG_FILE, config)
            self.monitor = RunMonitor(run_dir, self.iteration)
            if checkpoint is not None and "elapsed" not in checkpoint and self.monitor.last_row is not None:
                self.elapsed_before = self.monitor.last_row.elapsed_s  # checkpoints from before "elapsed" was saved
            for line in config_warnings(config):
                log(line)

    def _checkpoint_to_resume(self, resume: bool) -> dict[str, Any] | None:
        path = self.run_dir / CHECKPOINT
        if not resume:
            if path.exists():
                raise InputError(f"{path}: this run folder already holds a run; continue it with --resume "
                                 "or choose another --out")
            return None
        checkpoint = load_checkpoint(path)
        check_resume(run_config(checkpoint["config"], path), self.config, str(path))
        return checkpoint

    def _build_model(self, pretrained: bool) -> nn.Module:
        model = build_model(self.config, len(self.class_names))
        if pretrained and self.config.pretrained:
            weights = resolve_weights(self.config.pretrained, BACKBONES[self.config.model], progress=self.ctx.is_main)
            for line in load_backbones(model, str(weights)):
                if self.ctx.is_main:
                    self.log(line)
        if self.ctx.distributed and self.ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over all GPUs
        return to_channels_last(model.to(self.ctx.device), self.ctx.device, self.config.reduced)

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(checkpoint["model"])
        except RuntimeError as exc:
            raise InputError(f"{self.run_dir / CHECKPOINT}: weights do not fit the configured model ({exc})") from None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.iteration = self.saved_iteration = int(checkpoint["iteration"])
        self.elapsed_before = float(checkpoint.get("elapsed", 0.0))
        states = checkpoint["rng"]
        if checkpoint["world_size"] == self.ctx.world_size:
            restore_rng(states[self.ctx.rank])
        else:
            _seed_generators(self.config.seed + self.ctx.rank + self.iteration)
            if self.ctx.is_main:
                self.log(f"note: resumed on {self.ctx.world_size} processes, saved on {checkpoint['world_size']}: "
                         "data order is kept, dropout draws differ from an uninterrupted run")

    def loop(self, progress: bool) -> TrainSummary:
        """Train until ``config.iterations`` or a stop signal; checkpoint; return the summary."""
        config, ctx = self.config, self.ctx
        last = self.monitor.last_row if self.monitor is not None else None  # a resumed run's last logged loss
        summary = TrainSummary(self.run_dir, self.iteration, self.iteration, last.loss if last else None,
                               last.iteration if last else self.iteration, 0, 0.0, 0.0, ctx.rank)
        bar = tqdm(total=config.iterations, initial=self.iteration, desc=f"train {config.model}", unit="it",
                   disable=not (progress and ctx.is_main), dynamic_ncols=True)
        window = _Window()
        start = self._started = time.perf_counter()
        self.model.train()
        self.feed = TrainFeed(config, self.source, ctx, self.iteration, self.run_dir, self.log)
        # on an error: the workers are stopped, the bar closed and the events flushed, and the error propagates
        with closed_on_error(bar, self.monitor), _StopSignals() as stop, self.feed as batches:
            while self.iteration < config.iterations:
                loss, lr = self._step(batches, window)
                self.iteration += 1
                summary.clips += config.batch_size
                bar.update(1)
                if self.iteration % config.log_every == 0 or self.iteration == config.iterations:
                    summary.last_loss, summary.interrupted, summary.skipped = log_across(  # the host sync
                        loss, stop.requested, self.feed.skipped, ctx)
                    summary.loss_iteration = self.iteration
                    self._log_metrics(summary.last_loss, lr, window, self._elapsed(), summary.skipped, bar)
                else:  # a single process stops at once; DDP processes learn of a stop at the next log iteration
                    summary.interrupted = stop.requested and not ctx.distributed
                    if summary.interrupted:  # its loss is the global batch's; one host sync, at the stop only
                        summary.last_loss, summary.loss_iteration = loss.item(), self.iteration
                if summary.interrupted or self.iteration % config.checkpoint_every == 0:
                    self._save()
                if summary.interrupted:
                    break
            if not summary.interrupted and self.iteration % config.checkpoint_every:
                self._save()
        bar.close()
        if self.monitor is not None:
            self.monitor.close()  # TensorBoard events flushed, loss.png drawn
        summary.iteration = self.iteration
        if not ctx.distributed:  # also after a stop between log iterations (DDP processes stop on log iterations)
            summary.skipped = self.feed.skipped
        summary.elapsed = time.perf_counter() - start
        summary.data_wait = window.total_wait / max(summary.elapsed, 1e-9)
        return summary

    def _step(self, batches: Iterator, window: "_Window") -> tuple[torch.Tensor, float]:
        """One iteration: ``accumulate`` micro-batches forward and backward, then one optimiser step."""
        config, device = self.config, self.ctx.device
        lr = self.optimizer.param_groups[0]["lr"]
        total = torch.zeros((), device=device)
        trained = False
        for micro in range(config.accumulate):
            waited = time.perf_counter()
            batch = next(batches)  # on the device, augmented
            window.wait(time.perf_counter() - waited)
            if batch is None:  # every clip of this micro-batch was unreadable and skipped
                continue
            rgb, flow = self.spec.inputs(batch[0], batch[1])
            labels = batch[2]
            last = micro == config.accumulate - 1
            no_sync = isinstance(self.net, DistributedDataParallel) and not last  # all-reduce on the last only
            with self.net.no_sync() if no_sync else contextlib.nullcontext(), autocast(device, self.amp):
                loss = self.spec.loss(self.net(rgb, flow), labels) / config.accumulate
            self.scaler.scale(loss).backward()
            total += loss.detach().float()
            trained = True
        if trained:  # else every clip of the iteration was skipped: no gradient to step with
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        window.step()
        return total, lr

    def _elapsed(self) -> float:
        """Training seconds of the whole run: earlier sessions of a resumed run, and this one."""
        return self.elapsed_before + time.perf_counter() - self._started

    def _log_metrics(self, loss: float, lr: float, window: "_Window", elapsed: float, skipped: int,
                     bar: tqdm) -> None:
        clips_per_s, wait = window.read(self.config.batch_size)
        if self.monitor is None:
            return
        self.monitor.log(MetricsRow(self.iteration, loss, lr, clips_per_s, wait, elapsed, skipped))
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2g}", clips_s=f"{clips_per_s:.1f}", wait=f"{100 * wait:.0f}%")

    def _save(self) -> None:
        """Checkpoint (rank 0 writes; every rank contributes its generator states)."""
        rng = gather_objects(capture_rng(), self.ctx)
        if not self.ctx.is_main:
            return
        try:
            save_checkpoint(self.run_dir / CHECKPOINT, {
                "iteration": self.iteration,
                "elapsed": self._elapsed(),
                "config": config_to_dict(self.config),
                "class_names": self.class_names,
                "world_size": self.ctx.world_size,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
            })
        except OutputError as exc:
            kept = ("no checkpoint was written yet" if self.saved_iteration is None
                    else f"the checkpoint of iteration {self.saved_iteration} is kept: continue from it with --resume")
            raise OutputError(f"{exc}; {kept}") from None
        self.saved_iteration = self.iteration


def _check_training_rows(config: TrainConfig, rows: list) -> None:
    if not rows:
        raise InputError(f"{config.manifest}: no video in split {config.split!r}")
    unlabelled = [r.video_id for r in rows if r.label < 0]
    if unlabelled:
        raise InputError(f"{config.manifest}: {len(unlabelled)} training videos have no label, e.g. {unlabelled[0]!r}")


def _seed_generators(seed: int) -> None:
    """Seed the Python, NumPy and torch generators of a fresh run (dropout uses torch's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Window:
    """Throughput and data-wait fraction since the last metrics row."""

    def __init__(self) -> None:
        self.total_wait = 0.0
        self._since = time.perf_counter()
        self._wait = 0.0
        self._steps = 0

    def wait(self, seconds: float) -> None:
        self._wait += seconds
        self.total_wait += seconds

    def step(self) -> None:
        self._steps += 1

    def read(self, batch_size: int) -> tuple[float, float]:
        """(clips per second, fraction of time waiting for data) over the window; starts a new window."""
        now = time.perf_counter()
        elapsed = max(now - self._since, 1e-9)
        result = (self._steps * batch_size / elapsed, self._wait / elapsed)
        self._since, self._wait, self._steps = now, 0.0, 0
        return result


class _StopSignals:
    """Turn SIGTERM and SIGINT into a request to stop at the next iteration boundary (main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> "_StopSignals":
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
