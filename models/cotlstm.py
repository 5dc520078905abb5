"""CoT-LSTM: two-stream CoTNet-101 fusing static and dynamic features, with an LSTM over the flow frames.

Yue et al., "A Novel Two-stream Architecture Fusing Static And Dynamic Features for Human Action Recognition",
section III. The spatial CoTNet-101 sees one RGB frame; its pooled 2048-d feature goes through FC-1. The temporal
CoTNet-101 sees each of t (10) optical-flow frames separately (2 channels, x and y); the t features feed an LSTM
(eqs. 4-8) whose top layer's last hidden state is the temporal feature. The two features are concatenated and
FC-2 gives the fused scores (softmax in the loss). Dropout 0.5 acts on the inputs of FC-1 and FC-2, the paper's
best setting (Table II). Auxiliary per-stream classifiers give each stream's own scores, for the paper's
spatial / temporal / fusion columns and for late fusion (`fusion/`).

Mixed precision: the LSTM always runs in float32 with autocast off. CUDA's autocast casts cuDNN RNN inputs and
weights to fp16 whatever the autocast dtype, so under bf16 autocast (trained without a GradScaler) the LSTM would
run in fp16 with unscaled gradients; it is small next to the backbones, so float32 costs little.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actrec.models.cotnet import CoTBottleneck, cotnet101
from actrec.models.resnet import BackboneBuilder, reduced_backbone


class CotLstmOutput(NamedTuple):
    """Fused (FC-2) logits and each stream's auxiliary logits, all Tensor[B, classes]."""

    logits: Tensor
    spatial_logits: Tensor
    temporal_logits: Tensor


def _classifier(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Dropout on the input, then a linear layer to class scores."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


class CoTLSTM(nn.Module):
    """Spatial CoTNet + FC-1, temporal CoTNet + LSTM, concatenation and FC-2.

    Args:
        num_classes: action classes.
        flow_channels: channels of one flow frame (2: x and y).
        fc1_dim: output size of FC-1 (not stated by the paper).
        lstm_hidden: hidden size of every LSTM layer (not stated by the paper).
        lstm_layers: stacked LSTM layers; the top one's last hidden state is the temporal feature.
        dropout: on the inputs of FC-1, FC-2 and the auxiliary classifiers (0.5, Table II).
        backbone: builds each stream's headless backbone; CoTNet-101 in the paper, smaller ones for tests.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        flow_channels: int = 2,
        fc1_dim: int = 1024,
        lstm_hidden: int = 512,
        lstm_layers: int = 2,
        dropout: float = 0.5,
        backbone: BackboneBuilder = cotnet101,
    ) -> None:
        super().__init__()
        self.spatial_backbone = backbone(in_channels=3, num_classes=0)
        self.temporal_backbone = backbone(in_channels=flow_channels, num_classes=0)
        dim = self.spatial_backbone.num_features
        self.fc1 = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, fc1_dim), nn.ReLU(inplace=True))
        self.lstm = nn.LSTM(dim, lstm_hidden, num_layers=lstm_layers, batch_first=True)
        self.fc2 = _classifier(fc1_dim + lstm_hidden, num_classes, dropout)
        self.spatial_head = _classifier(fc1_dim, num_classes, dropout)
        self.temporal_head = _classifier(lstm_hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, flow: Tensor) -> CotLstmOutput:
        """rgb Tensor[B, 3, H, W] (one frame), flow Tensor[B, t, 2, H, W] (t flow frames in temporal order)."""
        if rgb.shape[0] != flow.shape[0]:
            raise ValueError(f"rgb and flow disagree on the batch size: {rgb.shape[0]} vs {flow.shape[0]}")
        spatial = self.fc1(self.spatial_backbone(rgb))  # (B, fc1_dim)
        batch, steps = flow.shape[:2]
        frames = self.temporal_backbone(flow.flatten(0, 1)).view(batch, steps, -1)  # (B, t, D)
        with torch.autocast(frames.device.type, enabled=False):  # float32 LSTM (module docstring)
            _, (hidden, _) = self.lstm(frames.float())  # hidden: (layers, B, lstm_hidden)
        temporal = hidden[-1]  # top layer, last time step
        fused = self.fc2(torch.cat([spatial, temporal.to(spatial.dtype)], dim=1))
        return CotLstmOutput(fused, self.spatial_head(spatial), self.temporal_head(temporal))


def cotlstm_loss(output: CotLstmOutput, labels: Tensor, aux_weight: float = 1.0) -> Tensor:
    """Cross-entropy of the fused scores plus `aux_weight` times that of each stream's auxiliary scores."""
    aux = F.cross_entropy(output.spatial_logits, labels) + F.cross_entropy(output.temporal_logits, labels)
    return F.cross_entropy(output.logits, labels) + aux_weight * aux


def cotlstm_reduced(
    num_classes: int, *, width: int = 8, fc1_dim: int = 64, lstm_hidden: int = 32, lstm_layers: int = 1
) -> CoTLSTM:
    """A CPU-sized CoT-LSTM for tests and the demo: `reduced_backbone`s with CoT blocks (32 * width-d features,
    256 at width 8), small FC-1 and LSTM."""
    return CoTLSTM(
        num_classes,
        fc1_dim=fc1_dim,
        lstm_hidden=lstm_hidden,
        lstm_layers=lstm_layers,
        backbone=partial(reduced_backbone, block=CoTBottleneck, width=width),
    )
