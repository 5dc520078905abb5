"""Optimiser and learning-rate schedule of a training run: the papers' SGD with step decay, or AdamW with warmup
and cosine decay for models trained from scratch.

Both papers fine-tune ImageNet-initialised backbones with SGD (lr 1e-3, momentum 0.9) and divide the lr by 10 at
fixed steps. From random weights that recipe hardly moves in a short budget, so ``--reduced`` runs default to
AdamW (lr 1e-3, weight decay 0.05 on weights, none on biases and normalisation parameters, as is usual for AdamW)
with a linear warmup and a cosine decay to zero at the last iteration.

The schedule is one pure function of the iteration (``lr_factor``) behind a ``LambdaLR``: its state is just the
iteration count, so a resumed run continues it exactly. With the cosine schedule, changing ``iterations`` on resume
stretches or shrinks the part of the decay still to come.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from actrec.training.config import TrainConfig


def lr_factor(iteration: int, *, schedule: str, iterations: int, warmup: int, step: int, gamma: float) -> float:
    """The lr of ``iteration`` (0-based, before its update) as a fraction of the configured lr.

    Warmup: ``(iteration + 1) / warmup`` over the first ``warmup`` iterations. Then ``step``: ``gamma`` to the
    power of the completed ``step``-iteration periods; ``cosine``: half a cosine from 1 down to 0 over the
    iterations after the warmup.
    """
    if iteration < warmup:
        return (iteration + 1) / warmup
    if schedule == "step":
        return gamma ** (iteration // step)
    progress = (iteration - warmup) / max(iterations - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Parameter groups with ``weight_decay`` on the weights; biases and normalisation scales (1-D tensors) get
    none unless ``decay_all`` (the papers' SGD decays every parameter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` over the model's parameters: SGD with momentum, or AdamW."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameter_groups(model, config.weight_decay, decay_all=True), lr=config.lr,
                               momentum=config.momentum)
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay, decay_all=False), lr=config.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The lr schedule of ``config`` (warmup, then step or cosine), stepped once per iteration."""
    def factor(iteration: int) -> float:
        return lr_factor(iteration, schedule=config.schedule, iterations=config.iterations,
                         warmup=config.warmup_iters, step=config.lr_step, gamma=config.lr_gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
