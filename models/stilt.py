"""STILT: two-stream ResNet-50 with spatial-temporal interaction learning by alternating co-attention.

Liu et al., "Spatial-temporal interaction learning based two-stream network for action recognition"
(Information Sciences 2022), sections 3.1-3.2, Algorithm 1 and Tables 2-3. A spatial ResNet-50 sees one RGB frame
and a temporal ResNet-50 one stack of L flow frames (2L channels) for each of n TSN segments, giving per-segment
features S, T of shape (n, 2048). The co-attention attends over the n segments:

    H = tanh(W_k K + (W_g g) 1^T)        (1)    hidden size h = 512
    a = softmax(w_hk^T H)  over the n segments   (2)
    O = sum_i a_i k_i                    (3)    O is 2048-d, a convex combination of segment features

Step 1: K = S, g = 0 -> s'; step 2: K = T, g = s' -> t'; step 3: K = S, g = t' -> s''. Further alternations repeat
steps 2-3 with the same parameters (Algorithm 1's "repeat"), each guided by the latest vector of the other stream.

Our reading of Table 3 ("co-attention layer 2048 -> 512, FC 512 x 1024, softmax 1024 x classes"): the attended
2048-d vector of each stream is projected to 512 (the co-attention layer's output) and ReLU'd, then FC 512 -> 1024
and ReLU, then dropout and the 1024 -> classes classifier. One head and one softmax cross-entropy loss per
stream, summed (`stilt_loss`); the two streams' scores are fused later (adaptively weighted fusion, `fusion/`).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actrec.models.resnet import BackboneBuilder, reduced_backbone, resnet50


class StiltOutput(NamedTuple):
    """Per-stream logits and the final attention weights over the n segments (uniform without co-attention)."""

    spatial_logits: Tensor  # [B, classes]
    temporal_logits: Tensor  # [B, classes]
    spatial_weights: Tensor  # [B, n], sums to 1 over segments
    temporal_weights: Tensor  # [B, n], sums to 1 over segments


class AttentionStep(nn.Module):
    """One attention operation A(K; g) of eqs. 1-3 over the segments of one stream."""

    def __init__(self, feature_dim: int, hidden: int, guided: bool) -> None:
        super().__init__()
        self.key = nn.Linear(feature_dim, hidden, bias=False)  # W_k
        self.guide = nn.Linear(feature_dim, hidden, bias=False) if guided else None  # W_g (step 1 has g = 0)
        self.score = nn.Linear(hidden, 1, bias=False)  # w_hk

    def forward(self, keys: Tensor, guide: Tensor | None) -> tuple[Tensor, Tensor]:
        """keys Tensor[B, n, D], guide Tensor[B, D] or None -> (attended Tensor[B, D], weights Tensor[B, n])."""
        hidden = self.key(keys)  # (B, n, h)
        if guide is not None:
            hidden = hidden + self.guide(guide).unsqueeze(1)  # (W_g g) 1^T
        hidden = torch.tanh(hidden)  # eq. 1
        weights = self.score(hidden).squeeze(-1).float().softmax(dim=1)  # eq. 2, (B, n)
        attended = torch.einsum("bn,bnd->bd", weights.to(keys.dtype), keys)  # eq. 3, (B, D)
        return attended, weights


class AlternatingCoAttention(nn.Module):
    """Algorithm 1: summarise S (step 1), then alternate attending T guided by s and S guided by t."""

    def __init__(self, feature_dim: int, hidden: int, alternations: int) -> None:
        super().__init__()
        if alternations < 1:
            raise ValueError(f"alternations must be >= 1, got {alternations}")
        self.alternations = alternations
        self.summarise = AttentionStep(feature_dim, hidden, guided=False)  # step 1
        self.attend_temporal = AttentionStep(feature_dim, hidden, guided=True)  # step 2
        self.attend_spatial = AttentionStep(feature_dim, hidden, guided=True)  # step 3

    def forward(self, spatial: Tensor, temporal: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """S, T Tensor[B, n, D] -> (s'', t', spatial weights Tensor[B, n], temporal weights Tensor[B, n])."""
        attended_spatial, _ = self.summarise(spatial, None)  # s'
        for _ in range(self.alternations):
            attended_temporal, temporal_weights = self.attend_temporal(temporal, attended_spatial)  # t'
            attended_spatial, spatial_weights = self.attend_spatial(spatial, attended_temporal)  # s''
        return attended_spatial, attended_temporal, spatial_weights, temporal_weights


def mean_over_segments(spatial: Tensor, temporal: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The "Two-stream" ablation: plain segment means and uniform weights, same outputs as the co-attention."""
    batch, segments = spatial.shape[:2]
    uniform = torch.full((batch, segments), 1.0 / segments, device=spatial.device)
    return spatial.mean(dim=1), temporal.mean(dim=1), uniform, uniform


def _stream_head(feature_dim: int, projection: int, fc_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Attended feature -> 512 (co-attention layer output) -> FC 1024 -> classifier (Table 3)."""
    return nn.Sequential(
        nn.Linear(feature_dim, projection),
        nn.ReLU(inplace=True),
        nn.Linear(projection, fc_dim),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(fc_dim, num_classes),
    )


class STILT(nn.Module):
    """Two-stream network with the spatial-temporal interaction learning module.

    Args:
        num_classes: action classes.
        flow_length: L, flow frames per stack; the temporal backbone takes 2L channels (x, y per frame).
        hidden: h, the co-attention hidden size of eq. 1 (512 in Table 3).
        projection: output size of the co-attention layer, the attended feature projected (512 in Table 3).
        fc_dim: the fully connected layer before each classifier (1024 in Table 3).
        alternations: repetitions of steps 2-3 (1: one pass of the three steps).
        co_attention: False replaces the co-attention by segment means (the paper's "Two-stream" row).
        dropout: before each classifier (not stated by the paper).
        backbone: builds each stream's headless backbone; ResNet-50 in the paper, smaller ones for tests.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        flow_length: int = 10,
        hidden: int = 512,
        projection: int = 512,
        fc_dim: int = 1024,
        alternations: int = 1,
        co_attention: bool = True,
        dropout: float = 0.5,
        backbone: BackboneBuilder = resnet50,
    ) -> None:
        super().__init__()
        self.spatial_backbone = backbone(in_channels=3, num_classes=0)
        self.temporal_backbone = backbone(in_channels=2 * flow_length, num_classes=0)
        dim = self.spatial_backbone.num_features
        self.co_attention = AlternatingCoAttention(dim, hidden, alternations) if co_attention else None
        self.spatial_head = _stream_head(dim, projection, fc_dim, num_classes, dropout)
        self.temporal_head = _stream_head(dim, projection, fc_dim, num_classes, dropout)

    def forward(self, rgb: Tensor, flow: Tensor) -> StiltOutput:
        """rgb Tensor[B, n, 3, H, W], flow Tensor[B, n, 2L, H, W] (one RGB frame and one flow stack per segment)."""
        if rgb.shape[:2] != flow.shape[:2]:
            shapes = f"{tuple(rgb.shape[:2])} vs {tuple(flow.shape[:2])}"
            raise ValueError(f"rgb and flow disagree on (batch, segments): {shapes}")
        spatial = segment_features(self.spatial_backbone, rgb)  # S, (B, n, D)
        temporal = segment_features(self.temporal_backbone, flow)  # T, (B, n, D)
        interact = self.co_attention if self.co_attention is not None else mean_over_segments
        attended_spatial, attended_temporal, spatial_weights, temporal_weights = interact(spatial, temporal)
        return StiltOutput(
            self.spatial_head(attended_spatial),
            self.temporal_head(attended_temporal),
            spatial_weights,
            temporal_weights,
        )


def segment_features(backbone: nn.Module, clips: Tensor) -> Tensor:
    """Run a headless backbone on every segment: Tensor[B, n, C, H, W] -> Tensor[B, n, D]."""
    batch, segments = clips.shape[:2]
    features = backbone(clips.flatten(0, 1))  # (B*n, D)
    return features.view(batch, segments, -1)


def stilt_loss(output: StiltOutput, labels: Tensor) -> Tensor:
    """Sum of the two streams' softmax cross-entropy losses (one loss per stream, section 3.2)."""
    return F.cross_entropy(output.spatial_logits, labels) + F.cross_entropy(output.temporal_logits, labels)


def stilt_reduced(
    num_classes: int, *, flow_length: int = 10, width: int = 8, hidden: int = 32, co_attention: bool = True
) -> STILT:
    """A CPU-sized STILT for tests and the demo: `reduced_backbone`s (32 * width-d features, 256 at width 8),
    co-attention and heads of size `hidden`."""
    return STILT(
        num_classes,
        flow_length=flow_length,
        hidden=hidden,
        projection=hidden,
        fc_dim=2 * hidden,
        co_attention=co_attention,
        backbone=partial(reduced_backbone, width=width),
    )
