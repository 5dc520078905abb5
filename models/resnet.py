"""ResNet-50/101 with bottleneck blocks, laid out exactly as torchvision's so ImageNet checkpoints load.

The stride of a downsampling bottleneck sits on its 3x3 convolution ("ResNet v1.5", torchvision's and timm's
default). Module names and parameter shapes follow torchvision (`conv1`, `bn1`, `layer1.0.downsample.0`, `fc`):
ResNet-50 with 1000 classes has 25,557,032 parameters and 320 state-dict entries, ResNet-101 44,549,160 and 626.
The same `ResNet` class carries CoTNet (`actrec.models.cotnet`) by swapping the block type.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]

EXPANSION = 4  # output channels of a bottleneck = EXPANSION x its inner width
STAGE_STRIDES = (1, 2, 2, 2)  # layer1 keeps the stem's resolution, the others halve it


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 spatial (carrying the stride), 1x1 expand, plus the identity or projected shortcut.

    Subclasses change only the spatial step by overriding `build_spatial` and `spatial`.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        norm_layer: NormLayer,
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = norm_layer(width)
        self.build_spatial(width, stride, norm_layer)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def build_spatial(self, width: int, stride: int, norm_layer: NormLayer) -> None:
        """The torchvision 3x3 convolution with BN; ReLU follows in `spatial`."""
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(width)

    def spatial(self, x: Tensor) -> Tensor:
        """Tensor[B, w, H, W] -> Tensor[B, w, H/stride, W/stride]."""
        return self.relu(self.bn2(self.conv2(x)))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.spatial(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem (7x7 conv, BN, ReLU, 3x3 max pool), four bottleneck stages, global average pool, linear classifier.

    Args:
        layers: bottlenecks per stage, (3, 4, 6, 3) for ResNet-50, (3, 4, 23, 3) for ResNet-101.
        block: the bottleneck class; `CoTBottleneck` turns this into CoTNet.
        in_channels: input channels: 3 for RGB, 2L for a stack of L optical-flow frames.
        num_classes: classifier outputs; 0 leaves the model headless (`fc` is an identity).
        width: stem channels and inner width of the first stage (64 in the published models); stage k has
            width * 2**k inner and 4 * width * 2**k output channels. Small values give reduced test models.
        norm_layer: builds a normalisation layer from a channel count (e.g. BatchNorm2d, a frozen BN).
        zero_init_residual: start every block's last BN at zero so each block begins as the identity.
        stem_pool: False leaves out the stem's max pool (total stride 16 instead of 32; no parameter changes, so
            weights load either way): for small inputs, see `reduced_backbone`.
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        block: type[Bottleneck] = Bottleneck,
        in_channels: int = 3,
        num_classes: int = 1000,
        width: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
        zero_init_residual: bool = False,
        stem_pool: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != len(STAGE_STRIDES):
            raise ValueError(f"ResNet needs {len(STAGE_STRIDES)} stage depths, got {tuple(layers)}")
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem_pool else nn.Identity()
        channels = width
        for index, (depth, stride) in enumerate(zip(layers, STAGE_STRIDES)):
            stage_width = width * 2**index
            stage = _make_stage(block, channels, stage_width, depth, stride, norm_layer)
            self.add_module(f"layer{index + 1}", stage)
            channels = stage_width * EXPANSION
        self.num_features = channels
        self.num_classes = num_classes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self, zero_init_residual)

    def forward_features(self, x: Tensor) -> Tensor:
        """Tensor[B, in_channels, H, W] -> feature map Tensor[B, num_features, H/32, W/32] (H/16 without the
        stem pool)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Feature map -> pooled Tensor[B, num_features] (pre_logits) or logits Tensor[B, num_classes]."""
        pooled = torch.flatten(self.avgpool(features), 1)
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _make_stage(
    block: type[Bottleneck], in_channels: int, width: int, depth: int, stride: int, norm_layer: NormLayer
) -> nn.Sequential:
    """One stage: the first block changes resolution/channels (projection shortcut), the rest keep them."""
    out_channels = width * EXPANSION
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            norm_layer(out_channels),
        )
    blocks = [block(in_channels, width, stride, norm_layer, downsample)]
    blocks += [block(out_channels, width, 1, norm_layer, None) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """He-normal (fan-out) convolutions and unit/zero norm affine parameters, as torchvision and timm do."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, Bottleneck) and isinstance(module.bn3, nn.BatchNorm2d):
                nn.init.zeros_(module.bn3.weight)


def resnet50(
    *, in_channels: int = 3, num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d
) -> ResNet:
    """ResNet-50 (stages 3, 4, 6, 3): 25,557,032 parameters with 1000 classes; 2048-d features."""
    return ResNet((3, 4, 6, 3), in_channels=in_channels, num_classes=num_classes, norm_layer=norm_layer)


def resnet101(
    *, in_channels: int = 3, num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d
) -> ResNet:
    """ResNet-101 (stages 3, 4, 23, 3): 44,549,160 parameters with 1000 classes; 2048-d features."""
    return ResNet((3, 4, 23, 3), in_channels=in_channels, num_classes=num_classes, norm_layer=norm_layer)


def reduced_backbone(
    *, in_channels: int = 3, num_classes: int = 0, width: int = 8, block: type[Bottleneck] = Bottleneck
) -> ResNet:
    """The CPU-sized backbone of the reduced models (tests, the demo): one bottleneck per stage, `width`-wide.

    An RGB backbone (3 input channels) leaves out the stem's max pool. Reduced models see crops of about 56 px, where
    the full stem's stride 4 leaves a 29-px object 7 cells wide before the first stage; without the pool the spatial
    stream names more of the demo's appearance-only classes right (disc, star, stripes, checker: 60% of 288 test
    videos of those classes over 3 seeds, against 52%; benchmarks/RESULTS.md, "Demo") for 24 ms more per training
    step of 24 frames. A flow backbone keeps the pool: flow fields are smooth, and without it the demo's temporal
    stream lost 2 to 15 points of test top-1 over 3 seeds.
    """
    return ResNet((1, 1, 1, 1), block=block, in_channels=in_channels, num_classes=num_classes, width=width,
                  stem_pool=in_channels != 3)


BackboneBuilder = Callable[..., ResNet]
"""What two-stream models take to build a stream: called as `builder(in_channels=..., num_classes=0)`, it returns a
headless backbone whose forward gives pooled features Tensor[B, num_features]; e.g. `resnet50`, `cotnet101`, or
`functools.partial(reduced_backbone, width=8)`."""
