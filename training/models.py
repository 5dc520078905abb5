"""The two trainable models by name: how each is built, fed, trained and scored.

``MODEL_SPECS`` is a plain dict from the model name of ``actrec train MODEL`` to its ``ModelSpec``. The datasets give
every model the same layout, RGB ``[B, n, 3, H, W]`` and flow ``[B, n, L, 2, H, W]``; ``inputs`` turns it into the
model's own arguments. Streams are named ``rgb`` (spatial) and ``flow`` (temporal) in score files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from actrec.errors import InputError
from actrec.models.cotlstm import CoTLSTM, cotlstm_loss, cotlstm_reduced
from actrec.models.pretrained import load_pretrained
from actrec.models.stilt import STILT, stilt_loss, stilt_reduced
from actrec.training.augment import draw_tsn, draw_variation
from actrec.training.batch import BatchAugment
from actrec.training.batch_augment import tsn_batch, variation_batch
from actrec.training.config import TrainConfig
from actrec.training.datasets import Draw

STREAMS = ("rgb", "flow")  # score-file stream names: spatial, temporal


@dataclass(frozen=True)
class ModelSpec:
    """How one architecture is built, fed and read out."""

    build: Callable[[int, TrainConfig], nn.Module]  # (num_classes, config) -> model, paper-sized
    build_reduced: Callable[[int, TrainConfig], nn.Module]  # CPU-sized variant (config.width)
    loss: Callable[[Any, Tensor], Tensor]  # (model output, labels) -> scalar
    draw: Draw  # a training clip's augmentation draws (in the loader)
    augment: BatchAugment  # the draws applied to a batch (on the training device)
    inputs: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # dataset layout -> forward arguments
    fused: Callable[[Any], Tensor]  # model output -> the model's own fused class probabilities
    square_test_frames: bool  # test frames resized to a square (as in training) instead of by the short side
    single_position: bool  # one RGB frame per clip: a test view is one position (else all positions are segments)


def _stilt_inputs(rgb: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """(B, n, 3, H, W), (B, n, L, 2, H, W) -> rgb and the 2L-channel stacks (B, n, 2L, H, W): x1, y1, x2, y2, ..."""
    return rgb, flow.flatten(2, 3)


def _cotlstm_inputs(rgb: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 1, 3, H, W), (B, 1, t, 2, H, W) -> one frame (B, 3, H, W) and the flow sequence (B, t, 2, H, W)."""
    return rgb[:, 0], flow[:, 0]


def _stilt_fused(output: Any) -> Tensor:
    """STILT's two-stream score: the average of the two streams' softmax."""
    return (output.spatial_logits.float().softmax(1) + output.temporal_logits.float().softmax(1)) / 2


MODEL_SPECS: dict[str, ModelSpec] = {
    "stilt": ModelSpec(
        build=lambda classes, c: STILT(classes, flow_length=c.flow_length, co_attention=c.co_attention),
        build_reduced=lambda classes, c: stilt_reduced(classes, flow_length=c.flow_length, width=c.width,
                                                       co_attention=c.co_attention),
        loss=stilt_loss,
        draw=draw_tsn,
        augment=tsn_batch,
        inputs=_stilt_inputs,
        fused=_stilt_fused,
        square_test_frames=False,
        single_position=False,
    ),
    "cotlstm": ModelSpec(
        build=lambda classes, c: CoTLSTM(classes),
        build_reduced=lambda classes, c: cotlstm_reduced(classes, width=c.width),
        loss=cotlstm_loss,
        draw=draw_variation,
        augment=variation_batch,
        inputs=_cotlstm_inputs,
        fused=lambda output: output.logits.float().softmax(1),  # FC-2
        square_test_frames=True,
        single_position=True,
    ),
}


def stream_logits(output: Any) -> tuple[Tensor, Tensor]:
    """(spatial, temporal) logits of either model's output."""
    return output.spatial_logits, output.temporal_logits


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout layer's probability (the reduced builders take the architecture's default)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The configured model (paper-sized or reduced) with ``config.dropout``; weights from the current RNG."""
    spec = MODEL_SPECS[config.model]
    model = (spec.build_reduced if config.reduced else spec.build)(num_classes, config)
    set_dropout(model, config.dropout)
    return model


def load_backbones(model: nn.Module, path: str) -> list[str]:
    """Load ImageNet weights into both backbones (flow's first conv by cross-modality init); report lines.

    Raises InputError when the file gives a backbone no tensor at all, so a wrong file is never silently ignored.
    """
    lines = []
    for name in ("spatial_backbone", "temporal_backbone"):
        report = load_pretrained(getattr(model, name), path)
        if not report.loaded and not report.adapted:
            raise InputError(f"{path}: no tensor of this file fits the {name} of the model")
        lines.append(f"{name}: " + report.summary())
    return lines


def to_channels_last(model: nn.Module, device: torch.device, reduced: bool) -> nn.Module:
    """channels_last memory format where it is faster: on CUDA (tensor-core convolutions), and for the reduced
    models on the CPU too, where oneDNN runs their 8- to 64-channel convolutions faster in it (a training step of 16
    clips at 56 px on one thread: STILT 173 -> 141 ms, CoT-LSTM 402 -> 260 ms). The paper-sized ResNet-50 gains
    nothing from it on the CPU (424 -> 428 ms per step of 4 images at 112 px), so it stays as it is there
    (benchmarks/bench_cpu_step.py; RESULTS.md, "The reduced models' CPU step")."""
    faster = device.type == "cuda" or (device.type == "cpu" and reduced)
    return model.to(memory_format=torch.channels_last) if faster else model
