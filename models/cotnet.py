"""CoTNet-50/101: ResNet whose bottleneck 3x3 convolutions are Contextual Transformer (CoT) blocks.

Follows the CoTNet reference design (Li et al., "Contextual Transformer Networks for Visual Recognition", and
its JDAI-CV/CoTNet code, built on timm's ResNet with the plain 7x7 stem, which our parameter counts confirm:
CoTNet-50 22.2 M, CoTNet-101 38.3 M with the 1000-class head). The reference runs the local aggregation as a
CUDA kernel in fp32 only; here it is plain PyTorch, so it runs on the CPU, on CUDA and under fp16/bf16
autocast, and it never materialises the k*k-fold unfolded copy of the value map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from actrec.models.resnet import Bottleneck, NormLayer, ResNet

KEY_GROUPS = 4  # groups of the k x k convolution giving the static context K1
SHARE = 8  # channels sharing one aggregation weight map: the maps number C / SHARE
ATTENTION_REDUCTION = 2  # the attention embedding maps 2C -> C / 2
FUSE_MIN_CHANNELS = 32  # the split-attention bottleneck has max(C / 2, 32) channels
RADIX = 2  # split attention chooses between the two contexts K2 and K1


def local_aggregate(value: Tensor, weights: Tensor, kernel_size: int) -> Tensor:
    """Per-pixel k x k weighted sum of the zero-padded value map (the CoT "local convolution").

    out[b, c, y, x] = sum_{i,j} weights[b, c mod G, i*k + j, y, x] * value[b, c, y + i - k//2, x + j - k//2]

    Args:
        value: Tensor[B, C, H, W].
        weights: Tensor[B, G, k*k, H, W] with C divisible by G; map j serves the channels c with c mod G == j.
        kernel_size: k (odd).

    Accumulates over the k*k shifted views of one padded copy of `value`, each multiplied by its weight map,
    instead of unfolding (which stores k*k copies of the value map and keeps them for the backward pass); the
    backward pass (hand-written, first order only) keeps just `value` and `weights`. The result has `value`'s
    dtype, so autocast-produced fp16/bf16 values stay in reduced precision.
    """
    return _LocalAggregation.apply(value, weights.to(value.dtype), kernel_size)


def _padded_groups(x: Tensor, groups: int, pad: int) -> Tensor:
    """Tensor[B, C, H, W] -> zero-padded Tensor[B, C/G, G, H + 2 pad, W + 2 pad]; channel c = a*G + j sits at
    [:, a, j], so weight map j broadcasts over dim 1."""
    batch, channels, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    return padded.view(batch, channels // groups, groups, height + 2 * pad, width + 2 * pad)


class _LocalAggregation(torch.autograd.Function):
    """`local_aggregate` with an explicit backward: both gradients are accumulated over the same shifted views."""

    @staticmethod
    def forward(ctx, value: Tensor, weights: Tensor, kernel_size: int) -> Tensor:
        ctx.save_for_backward(value, weights)
        ctx.kernel_size = kernel_size
        batch, channels, height, width = value.shape
        padded = _padded_groups(value, weights.shape[1], kernel_size // 2)
        out = torch.zeros_like(value)  # keeps value's memory format (e.g. channels_last)
        grouped = out.view(batch, channels // weights.shape[1], weights.shape[1], height, width)  # (B, C/G, G, H, W)
        for index, (i, j) in enumerate(_offsets(kernel_size)):
            grouped.addcmul_(padded[..., i : i + height, j : j + width], weights[:, None, :, index])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        value, weights = ctx.saved_tensors
        kernel_size = ctx.kernel_size
        batch, channels, height, width = value.shape
        groups, pad = weights.shape[1], kernel_size // 2
        grad = grad_out.reshape(batch, channels // groups, groups, height, width)  # (B, C/G, G, H, W)
        grad_value = grad_weights = None
        if ctx.needs_input_grad[0]:
            padded_grad = grad.new_zeros(batch, channels // groups, groups, height + 2 * pad, width + 2 * pad)
            for index, (i, j) in enumerate(_offsets(kernel_size)):
                padded_grad[..., i : i + height, j : j + width].addcmul_(grad, weights[:, None, :, index])
            grad_value = padded_grad[..., pad : pad + height, pad : pad + width].reshape(value.shape)
        if ctx.needs_input_grad[1]:
            padded = _padded_groups(value, groups, pad)
            shifted = [padded[..., i : i + height, j : j + width] for i, j in _offsets(kernel_size)]
            grad_weights = torch.stack([(grad * view).sum(dim=1) for view in shifted], dim=2)  # (B, G, k*k, H, W)
        return grad_value, grad_weights, None


def _offsets(kernel_size: int) -> list[tuple[int, int]]:
    """Window offsets (i, j) in the order of the k*k weight maps (row-major, index i*k + j)."""
    return [(i, j) for i in range(kernel_size) for j in range(kernel_size)]


def local_aggregate_unfold(value: Tensor, weights: Tensor, kernel_size: int) -> Tensor:
    """The same operation written with `F.unfold`, as the reference's own test checks its kernel: simple, but it
    materialises a k*k-times larger copy of `value`. The baseline for tests and `benchmarks/bench_models.py`."""
    batch, channels, height, width = value.shape
    groups = weights.shape[1]
    patches = F.unfold(value, kernel_size, padding=kernel_size // 2)  # (B, C*k*k, H*W)
    patches = patches.view(batch, channels // groups, groups, kernel_size**2, height, width)
    return (patches * weights.unsqueeze(1)).sum(dim=3).view(batch, channels, height, width)


class CoTLayer(nn.Module):
    """Contextual Transformer block on C channels, stride 1, shape-preserving: Tensor[B, C, H, W] -> same.

    K1 (static context) = ReLU(BN(grouped k x k conv(x))); attention weights from [x, K1] by a 1x1 conv 2C -> C/2,
    BN, ReLU and a 1x1 conv to k*k*C/SHARE maps with GroupNorm(C/SHARE) (no softmax); value V = BN(1x1 conv(x));
    K2 (dynamic context) = Swish(BN(local k x k aggregation of V)); output = split attention over (K2, K1).
    Submodule names are ours; `actrec.models.pretrained` maps the reference names onto them.
    """

    def __init__(self, channels: int, kernel_size: int = 3, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if channels % SHARE:
            raise ValueError(f"CoT layer width must be a multiple of {SHARE}, got {channels}")
        self.kernel_size = kernel_size
        maps = channels // SHARE
        reduced = channels // ATTENTION_REDUCTION
        fuse = max(channels // 2, FUSE_MIN_CHANNELS)
        self.static_key = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=KEY_GROUPS, bias=False),
            norm_layer(channels),
            nn.ReLU(inplace=True),
        )
        self.attention = nn.Sequential(
            nn.Conv2d(2 * channels, reduced, 1, bias=False),
            norm_layer(reduced),
            nn.ReLU(inplace=True),
            nn.Conv2d(reduced, kernel_size**2 * maps, 1),
            nn.GroupNorm(maps, kernel_size**2 * maps),
        )
        self.value = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), norm_layer(channels))
        self.dynamic_norm = norm_layer(channels)
        self.act = nn.SiLU(inplace=True)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, fuse, 1),
            norm_layer(fuse),
            nn.ReLU(inplace=True),
            nn.Conv2d(fuse, RADIX * channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        static = self.static_key(x)  # K1
        weights = self.attention(torch.cat([x, static], dim=1))
        weights = weights.view(batch, channels // SHARE, self.kernel_size**2, height, width)  # (B, G, k*k, H, W)
        dynamic = local_aggregate(self.value(x), weights, self.kernel_size)
        dynamic = self.act(self.dynamic_norm(dynamic))  # K2
        return split_attention(dynamic, static, self.fuse)


def split_attention(dynamic: Tensor, static: Tensor, fuse: nn.Module) -> Tensor:
    """Per-channel softmax choice between K2 and K1 from their pooled sum; fuse output channel 2c + r scores
    context r (0: K2, 1: K1) for channel c, as in the reference."""
    batch, channels = dynamic.shape[:2]
    pooled = (dynamic + static).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    scores = fuse(pooled).view(batch, channels, RADIX).softmax(dim=2)  # (B, C, 2)
    scores = scores.to(dynamic.dtype)[..., None, None]  # (B, C, 2, 1, 1)
    return dynamic * scores[:, :, 0] + static * scores[:, :, 1]


class CoTBottleneck(Bottleneck):
    """Bottleneck whose 3x3 step is a 3x3 average pool (stride 2, padding 1; only when downsampling) followed by
    a CoT layer, with no BN or activation after it (reference design)."""

    def build_spatial(self, width: int, stride: int, norm_layer: NormLayer) -> None:
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride > 1 else nn.Identity()
        self.conv2 = CoTLayer(width, kernel_size=3, norm_layer=norm_layer)

    def spatial(self, x: Tensor) -> Tensor:
        return self.conv2(self.pool(x))


def cotnet50(
    *, in_channels: int = 3, num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d
) -> ResNet:
    """CoTNet-50 (stages 3, 4, 6, 3), about 22.2 M parameters with 1000 classes; 2048-d features."""
    return ResNet(
        (3, 4, 6, 3), block=CoTBottleneck, in_channels=in_channels, num_classes=num_classes, norm_layer=norm_layer
    )


def cotnet101(
    *, in_channels: int = 3, num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d
) -> ResNet:
    """CoTNet-101 (stages 3, 4, 23, 3), about 38.3 M parameters with 1000 classes (36.2 M headless)."""
    return ResNet(
        (3, 4, 23, 3), block=CoTBottleneck, in_channels=in_channels, num_classes=num_classes, norm_layer=norm_layer
    )
