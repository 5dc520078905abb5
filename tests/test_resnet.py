"""ResNet-50/101: torchvision's parameter counts and state-dict layout, forward shapes, and `load_pretrained`."""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import pytest
import torch

from actrec.errors import InputError
from actrec.models import LoadReport, ResNet, load_pretrained, reduced_backbone, resnet50, resnet101

# Keys and shapes of torchvision's resnet50().state_dict() (1000 classes).
TORCHVISION_RESNET50 = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "bn1.running_mean": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn2.running_var": (64,),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.bn3.weight": (256,),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.weight": (256,),
    "layer1.0.downsample.1.running_mean": (256,),
    "layer1.0.downsample.1.num_batches_tracked": (),
    "layer1.1.conv1.weight": (64, 256, 1, 1),
    "layer1.2.bn3.bias": (256,),
    "layer2.0.conv1.weight": (128, 256, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.conv3.weight": (512, 128, 1, 1),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer2.3.conv1.weight": (128, 512, 1, 1),
    "layer2.3.bn2.num_batches_tracked": (),
    "layer3.0.conv1.weight": (256, 512, 1, 1),
    "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
    "layer3.0.downsample.1.bias": (1024,),
    "layer3.5.conv2.weight": (256, 256, 3, 3),
    "layer3.5.bn3.running_mean": (1024,),
    "layer4.0.conv1.weight": (512, 1024, 1, 1),
    "layer4.0.conv2.weight": (512, 512, 3, 3),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.0.downsample.1.running_var": (2048,),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "layer4.2.bn3.num_batches_tracked": (),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}
NOT_IN_RESNET50 = ("layer1.1.downsample.0.weight", "layer3.6.conv1.weight", "layer4.3.conv1.weight", "bn2.weight")
# Keys only ResNet-101 has (stage 3 has 23 blocks).
TORCHVISION_RESNET101 = {
    "layer3.6.conv1.weight": (256, 1024, 1, 1),
    "layer3.22.conv2.weight": (256, 256, 3, 3),
    "layer3.22.conv3.weight": (1024, 256, 1, 1),
    "layer3.22.bn3.running_var": (1024,),
}

reduced_resnet = partial(ResNet, (1, 1, 1, 1), width=8)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def meta_resnet50() -> ResNet:
    with torch.device("meta"):
        return resnet50()


@pytest.fixture(scope="module")
def meta_resnet101() -> ResNet:
    with torch.device("meta"):
        return resnet101()


@pytest.fixture(scope="module")
def pretrained_resnet50(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A full ResNet-50 with non-trivial BN statistics, saved as a torchvision-style bare state dict."""
    torch.manual_seed(0)
    model = resnet50()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
    state = model.state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "resnet50_imagenet.pth"
    torch.save(state, path)
    return path, state


def test_resnet50_matches_torchvision_counts(meta_resnet50: ResNet) -> None:
    assert sum(p.numel() for p in meta_resnet50.parameters()) == 25_557_032
    assert len(meta_resnet50.state_dict()) == 320


def test_resnet101_matches_torchvision_counts(meta_resnet101: ResNet) -> None:
    assert sum(p.numel() for p in meta_resnet101.parameters()) == 44_549_160
    assert len(meta_resnet101.state_dict()) == 626


def test_resnet50_state_dict_follows_torchvision_layout(meta_resnet50: ResNet) -> None:
    shapes = _shapes(meta_resnet50)
    assert {key: shapes.get(key) for key in TORCHVISION_RESNET50} == TORCHVISION_RESNET50
    assert not set(NOT_IN_RESNET50) & set(shapes)
    assert list(shapes)[:6] == list(TORCHVISION_RESNET50)[:6]
    assert list(shapes)[-2:] == ["fc.weight", "fc.bias"]


def test_resnet101_state_dict_follows_torchvision_layout(meta_resnet101: ResNet) -> None:
    shapes = _shapes(meta_resnet101)
    expected = {**TORCHVISION_RESNET50, **TORCHVISION_RESNET101}
    assert {key: shapes.get(key) for key in expected} == expected
    assert "layer3.23.conv1.weight" not in shapes


def test_resnet50_forward_shapes_and_headless_features() -> None:
    model = resnet50(in_channels=20, num_classes=0).eval()
    x = torch.randn(1, 20, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model(x)
    assert model.conv1.weight.shape == (64, 20, 7, 7)
    assert features.shape == (1, 2048, 2, 2)
    assert pooled.shape == (1, 2048)
    torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))


def test_reduced_resnet_logits_and_stride() -> None:
    model = reduced_resnet(num_classes=5).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 112, 112))
        logits = model.forward_head(features)
    assert features.shape == (2, 256, 4, 4)
    assert logits.shape == (2, 5)


def test_without_the_stem_pool_the_stride_halves_and_the_weights_stay_the_same() -> None:
    pooled, unpooled = reduced_resnet(num_classes=0), reduced_resnet(num_classes=0, stem_pool=False)
    assert _shapes(pooled) == _shapes(unpooled)  # the pool has no weights: the same files load into both
    unpooled.load_state_dict(pooled.state_dict())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert pooled.eval().forward_features(x).shape == (2, 256, 4, 4)
        assert unpooled.eval().forward_features(x).shape == (2, 256, 7, 7)


def test_reduced_backbone_keeps_the_stem_pool_for_flow_only() -> None:
    rgb, flow = reduced_backbone(in_channels=3), reduced_backbone(in_channels=20)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert rgb.eval().forward_features(x).shape == (1, 256, 4, 4)  # stride 16
        assert flow.eval().forward_features(torch.randn(1, 20, 56, 56)).shape == (1, 256, 2, 2)  # stride 32
        assert rgb(x).shape == (1, 256)  # headless by default


def test_load_pretrained_round_trips_a_torchvision_file(pretrained_resnet50, caplog) -> None:
    path, state = pretrained_resnet50
    model = resnet50()
    with caplog.at_level(logging.INFO, logger="actrec.models.pretrained"):
        report = load_pretrained(model, path)
    assert report.missing == report.unexpected == report.skipped == report.adapted == ()
    assert len(report.loaded) == 320
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert str(path) in caplog.text


@pytest.mark.parametrize("wrap", ["state_dict", "model", "ddp"])
def test_load_pretrained_unwraps_checkpoints_and_strips_ddp_prefix(tmp_path: Path, wrap: str) -> None:
    source = reduced_resnet(num_classes=7)
    state = source.state_dict()
    content = {"module." + key: value for key, value in state.items()} if wrap == "ddp" else {wrap: state, "epoch": 3}
    torch.save(content, tmp_path / "wrapped.pth")
    target = reduced_resnet(num_classes=7)
    report = load_pretrained(target, tmp_path / "wrapped.pth")
    assert report.missing == report.unexpected == ()
    assert all(torch.equal(value, state[key]) for key, value in target.state_dict().items())


def test_classifier_of_another_size_is_skipped_and_reported(pretrained_resnet50) -> None:
    path, state = pretrained_resnet50
    model = resnet50(num_classes=101)
    head_before = model.fc.weight.detach().clone()
    report = load_pretrained(model, path)
    assert report.skipped == ("fc.weight", "fc.bias")
    assert report.missing == report.unexpected == ()
    assert torch.equal(model.fc.weight, head_before)
    assert torch.equal(model.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert "fc.weight" in report.summary()


def test_cross_modality_init_averages_rgb_kernel_over_flow_channels(pretrained_resnet50) -> None:
    path, state = pretrained_resnet50
    model = resnet50(in_channels=20, num_classes=0)
    report = load_pretrained(model, path)
    assert report.adapted == ("conv1.weight",)
    assert report.unexpected == ("fc.weight", "fc.bias")
    rgb_mean = state["conv1.weight"].mean(dim=1)
    assert model.conv1.weight.shape == (64, 20, 7, 7)
    for channel in range(20):
        torch.testing.assert_close(model.conv1.weight[:, channel], rgb_mean)
    assert torch.equal(model.layer1[0].conv2.weight, state["layer1.0.conv2.weight"])


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, caplog) -> None:
    state = reduced_resnet().state_dict()
    del state["layer2.0.bn1.running_mean"]
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with caplog.at_level(logging.WARNING, logger="actrec.models.pretrained"):
        report = load_pretrained(reduced_resnet(), tmp_path / "partial.pth")
    assert report.missing == ("layer2.0.bn1.running_mean",)
    assert report.unexpected == ("layer9.0.conv1.weight",)
    assert "layer2.0.bn1.running_mean" in caplog.text and "layer9.0.conv1.weight" in caplog.text


def test_weights_of_another_architecture_raise(pretrained_resnet50) -> None:
    path, _ = pretrained_resnet50
    with pytest.raises(InputError, match="another architecture") as excinfo:
        load_pretrained(reduced_resnet(), path)
    assert str(path) in str(excinfo.value)


class _CallsOnLoad:
    """Unpickling this would call os.getcwd: a pickle that runs code, which a weights-only load refuses."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"this is a text file, not a checkpoint\n", "not a readable PyTorch checkpoint"),
        ("truncated", "not a readable PyTorch checkpoint"),
        ("list", "not a state dict"),
        ("non-tensor", "not a state dict"),
        ("code", r"the file asks to run code when loaded \(\w+\.getcwd\) and was refused"),
    ],
)
def test_unloadable_files_raise_input_error_naming_the_file(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save(reduced_resnet().state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    elif content == "non-tensor":
        torch.save({"conv1.weight": [1, 2, 3]}, path)
    elif content == "code":
        torch.save({"conv1.weight": _CallsOnLoad()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as excinfo:
        load_pretrained(reduced_resnet(), path)
    assert str(path) in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_pretrained(reduced_resnet(), tmp_path / "absent.pth")


def test_load_report_names_the_first_keys_of_a_long_list_and_counts_the_rest() -> None:
    keys = tuple(f"spatial_backbone.layer{i}.weight" for i in range(20))
    report = LoadReport(Path("run/checkpoint.pt"), loaded=(), adapted=(), skipped=(), missing=keys[:3],
                        unexpected=keys)
    lines = report.summary().splitlines()
    assert lines[1] == f"  missing from the file: {', '.join(keys[:3])}"
    assert lines[2] == f"  unexpected in the file: {', '.join(keys[:8])} and 12 more"
