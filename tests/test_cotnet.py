"""CoTNet-50/101: parameter counts, the CoT block, the memory-lean local aggregation, reference checkpoints,
channels_last and autocast."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from actrec.models import CoTBottleneck, ResNet, cotnet50, cotnet101, load_pretrained, local_aggregate
from actrec.models.cotnet import CoTLayer, local_aggregate_unfold

reduced_cotnet = partial(ResNet, (1, 1, 1, 1), block=CoTBottleneck, width=8)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{name}": (() if name == "num_batches_tracked" else (channels,)) for name in BN}


# JDAI-CV/CoTNet models/cotnet.py, CotLayer(dim=64, kernel_size=3) at layer1.0.conv2: every state-dict key and shape.
REFERENCE_COT_LAYER_64 = {
    "key_embed.0.weight": (64, 16, 3, 3),  # 3x3 conv, groups 4
    **_bn("key_embed.1", 64),
    "embed.0.weight": (32, 128, 1, 1),  # 2C -> C/2
    **_bn("embed.1", 32),
    "embed.3.weight": (72, 32, 1, 1),  # C/2 -> 9 * C/8
    "embed.3.bias": (72,),
    "embed.4.weight": (72,),  # GroupNorm(C/8, 9*C/8)
    "embed.4.bias": (72,),
    "conv1x1.0.weight": (64, 64, 1, 1),
    **_bn("conv1x1.1", 64),
    **_bn("bn", 64),
    "se.0.weight": (32, 64, 1, 1),  # C -> max(C/2, 32)
    "se.0.bias": (32,),
    **_bn("se.1", 32),
    "se.3.weight": (128, 32, 1, 1),  # -> 2C
    "se.3.bias": (128,),
}
# Our CoT sub-module names -> the reference's (CotLayer's attribute names), to write a reference-layout file.
REFERENCE_NAMES = {
    "static_key": "key_embed",
    "attention": "embed",
    "value": "conv1x1",
    "dynamic_norm": "bn",
    "fuse": "se",
}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _brute_force_aggregate(value: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """The defining formula, one output element at a time (zero padding, map c mod G serves channel c)."""
    batch, channels, height, width = value.shape
    groups = weights.shape[1]
    padded = F.pad(value, (k // 2,) * 4)
    out = torch.zeros_like(value)
    for b in range(batch):
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    window = padded[b, c, y : y + k, x : x + k].reshape(-1)
                    out[b, c, y, x] = (window * weights[b, c % groups, :, y, x]).sum()
    return out


@pytest.fixture(scope="module")
def meta_cotnets() -> dict[str, ResNet]:
    with torch.device("meta"):
        return {"50": cotnet50(), "101": cotnet101(), "101-headless": cotnet101(num_classes=0)}


@pytest.mark.parametrize(("name", "published"), [("50", 22.2e6), ("101", 38.3e6), ("101-headless", 36.22e6)])
def test_cotnet_parameter_counts_match_the_paper(meta_cotnets, name: str, published: float) -> None:
    assert abs(_params(meta_cotnets[name]) - published) / published < 0.005


def test_cotnet_uses_the_plain_7x7_stem_and_pooled_cot_blocks(meta_cotnets) -> None:
    model = meta_cotnets["101"]
    assert model.conv1.weight.shape == (64, 3, 7, 7)
    strided = model.layer2[0]
    assert isinstance(strided.pool, torch.nn.AvgPool2d)
    assert (strided.pool.kernel_size, strided.pool.stride, strided.pool.padding) == (3, 2, 1)
    assert isinstance(model.layer2[1].pool, torch.nn.Identity)
    assert not hasattr(strided, "bn2")
    assert isinstance(strided.conv2, CoTLayer)


def test_reference_cot_layer_keys_map_onto_ours(meta_cotnets) -> None:
    from actrec.models.pretrained import map_reference_keys

    reference = {f"layer1.0.conv2.{key}": torch.empty(shape) for key, shape in REFERENCE_COT_LAYER_64.items()}
    mapped = {key: tuple(value.shape) for key, value in map_reference_keys(reference).items()}
    state = meta_cotnets["50"].state_dict()
    ours = {key: tuple(value.shape) for key, value in state.items() if key.startswith("layer1.0.conv2.")}
    assert mapped == ours


def test_reference_layout_checkpoint_loads_into_cotnet(tmp_path: Path) -> None:
    source = reduced_cotnet(num_classes=10)
    state = source.state_dict()

    def reference_name(key: str) -> str:
        parts = key.split(".")
        if len(parts) > 4 and parts[2] == "conv2":
            parts[3] = REFERENCE_NAMES[parts[3]]
        return ".".join(parts)

    reference = {reference_name(key): value for key, value in state.items()}
    assert "layer2.0.conv2.key_embed.0.weight" in reference
    torch.save({"state_dict": reference, "epoch": 350}, tmp_path / "cotnet_reference.pth.tar")
    target = reduced_cotnet(num_classes=10)
    report = load_pretrained(target, tmp_path / "cotnet_reference.pth.tar")
    assert report.missing == report.unexpected == report.skipped == ()
    assert all(torch.equal(value, state[key]) for key, value in target.state_dict().items())


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_aggregations_match_the_defining_formula(kernel_size: int) -> None:
    torch.manual_seed(0)
    value = torch.randn(1, 4, 5, 4)
    weights = torch.randn(1, 2, kernel_size**2, 5, 4)
    expected = _brute_force_aggregate(value, weights, kernel_size)
    torch.testing.assert_close(local_aggregate_unfold(value, weights, kernel_size), expected)
    torch.testing.assert_close(local_aggregate(value, weights, kernel_size), expected)


def test_lean_aggregation_equals_unfold_in_values_and_gradients() -> None:
    torch.manual_seed(0)
    value = torch.randn(2, 64, 14, 14, requires_grad=True)
    weights = torch.randn(2, 8, 9, 14, 14, requires_grad=True)
    upstream = torch.randn(2, 64, 14, 14)
    lean = local_aggregate(value, weights, 3)
    naive = local_aggregate_unfold(value, weights, 3)
    torch.testing.assert_close(lean, naive, rtol=1e-5, atol=1e-5)
    lean_grads = torch.autograd.grad(lean, (value, weights), upstream)
    naive_grads = torch.autograd.grad(naive, (value, weights), upstream)
    for lean_grad, naive_grad in zip(lean_grads, naive_grads):
        torch.testing.assert_close(lean_grad, naive_grad, rtol=1e-5, atol=1e-5)
    channels_last = local_aggregate(value.detach().to(memory_format=torch.channels_last), weights.detach(), 3)
    torch.testing.assert_close(channels_last, naive.detach(), rtol=1e-5, atol=1e-5)


def test_cot_layer_and_blocks_keep_shapes() -> None:
    torch.manual_seed(0)
    layer = CoTLayer(64)
    x = torch.randn(2, 64, 14, 14)
    assert layer(x).shape == (2, 64, 14, 14)
    model = reduced_cotnet(num_classes=10)
    features = model.forward_features(torch.randn(2, 3, 112, 112))
    assert features.shape == (2, 256, 4, 4)
    features.mean().backward()
    assert model.layer1[0].conv2.attention[3].weight.grad.abs().sum() > 0


def test_channels_last_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = reduced_cotnet(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_cpu_bf16_autocast_forward() -> None:
    torch.manual_seed(0)
    model = reduced_cotnet(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_forward_backward(dtype: torch.dtype) -> None:
    model = reduced_cotnet(num_classes=10).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=dtype):
        logits = model(x)
    assert logits.dtype == dtype
    logits.float().sum().backward()
    assert torch.isfinite(model.conv1.weight.grad).all()
