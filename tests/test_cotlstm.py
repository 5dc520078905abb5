"""CoT-LSTM: stream wiring (FC-1, LSTM top-layer last state, concatenation, FC-2), auxiliary heads, sizes."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from actrec.models import CoTBottleneck, CoTLSTM, ResNet, cotlstm_loss, cotlstm_reduced

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture: one intra-op thread)

reduced_cotnet = partial(ResNet, (1, 1, 1, 1), block=CoTBottleneck, width=8)


def _inputs(batch: int, steps: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, size, size), torch.randn(batch, steps, 2, size, size)


def test_paper_dropout_on_fc1_and_fc2() -> None:
    model = cotlstm_reduced(num_classes=5)
    assert model.fc1[0].p == 0.5 and model.fc2[0].p == 0.5
    assert model.fc2[1].in_features == model.fc1[1].out_features + model.lstm.hidden_size


def test_temporal_feature_is_the_top_lstm_layers_last_state() -> None:
    torch.manual_seed(0)
    model = CoTLSTM(num_classes=5, lstm_layers=2, lstm_hidden=16, fc1_dim=24, backbone=reduced_cotnet).eval()
    rgb, flow = _inputs(batch=2, steps=4, size=64)
    with torch.no_grad():
        output = model(rgb, flow)
        frames = model.temporal_backbone(flow.flatten(0, 1)).view(2, 4, -1)  # (B, t, D)
        sequence, _ = model.lstm(frames)  # top layer's outputs at every step
        temporal = sequence[:, -1]
        spatial = model.fc1(model.spatial_backbone(rgb))
        fused = model.fc2(torch.cat([spatial, temporal], dim=1))
    torch.testing.assert_close(output.temporal_logits, model.temporal_head(temporal), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.spatial_logits, model.spatial_head(spatial), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.logits, fused, rtol=1e-4, atol=1e-5)


def test_flow_order_matters_only_to_the_temporal_stream() -> None:
    torch.manual_seed(0)
    model = cotlstm_reduced(num_classes=5).eval()
    rgb, flow = _inputs(batch=2, steps=4, size=64)
    with torch.no_grad():
        output = model(rgb, flow)
        reversed_output = model(rgb, flow.flip(1))
    torch.testing.assert_close(reversed_output.spatial_logits, output.spatial_logits)
    assert not torch.allclose(reversed_output.temporal_logits, output.temporal_logits, atol=1e-5)


def test_reduced_cotlstm_trains_both_streams() -> None:
    torch.manual_seed(0)
    model = cotlstm_reduced(num_classes=5)
    rgb, flow = _inputs(batch=2, steps=10, size=112)
    labels = torch.tensor([0, 3])
    output = model(rgb, flow)
    assert output.logits.shape == output.spatial_logits.shape == output.temporal_logits.shape == (2, 5)
    loss = cotlstm_loss(output, labels, aux_weight=0.5)
    expected = F.cross_entropy(output.logits, labels) + 0.5 * (
        F.cross_entropy(output.spatial_logits, labels) + F.cross_entropy(output.temporal_logits, labels)
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for parameter in (
        model.spatial_backbone.conv1.weight,
        model.temporal_backbone.conv1.weight,
        model.lstm.weight_ih_l0,
        model.fc2[1].weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_full_size_cotlstm_on_two_videos() -> None:
    torch.manual_seed(0)
    model = CoTLSTM(num_classes=101).eval()
    spatial_params = sum(p.numel() for p in model.spatial_backbone.parameters())
    assert abs(spatial_params - 36.22e6) / 36.22e6 < 0.005  # headless CoTNet-101
    assert model.temporal_backbone.conv1.weight.shape == (64, 2, 7, 7)
    assert len(model.temporal_backbone.layer3) == 23
    rgb, flow = _inputs(batch=2, steps=10, size=64)
    with torch.no_grad():
        output = model(rgb, flow)
    assert output.logits.shape == output.spatial_logits.shape == output.temporal_logits.shape == (2, 101)
    assert all(torch.isfinite(logits).all() for logits in output)


def test_cpu_bf16_autocast_forward() -> None:
    torch.manual_seed(0)
    model = cotlstm_reduced(num_classes=5).eval()
    rgb, flow = _inputs(batch=2, steps=4, size=64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(rgb, flow)
    assert output.logits.dtype == torch.bfloat16
    assert all(torch.isfinite(logits.float()).all() for logits in output)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_forward_backward(dtype: torch.dtype) -> None:
    model = cotlstm_reduced(num_classes=5).cuda()
    seen = []  # the cuDNN LSTM in float32 with autocast off (its autocast rule would cast to fp16 even under bf16)
    model.lstm.register_forward_pre_hook(
        lambda module, inputs: seen.append((inputs[0].dtype, torch.is_autocast_enabled("cuda"))))
    rgb, flow = (x.cuda() for x in _inputs(batch=2, steps=4, size=64))
    with torch.autocast("cuda", dtype=dtype):
        output = model(rgb, flow)
        loss = cotlstm_loss(output, torch.tensor([1, 2], device="cuda"))
    assert output.logits.dtype == dtype and seen == [(torch.float32, False)]
    loss.backward()
    assert model.lstm.weight_ih_l0.grad.dtype == torch.float32
    assert torch.isfinite(model.lstm.weight_ih_l0.grad).all()


def test_lstm_runs_in_float32_outside_autocast() -> None:
    """Under (bf16) autocast the LSTM sees float32 inputs with autocast off, so no autocast rule (CUDA's casts
    cuDNN RNNs to fp16) can lower its inputs or weights; the rest of the model stays in bf16."""
    torch.manual_seed(0)
    model = cotlstm_reduced(num_classes=5)
    for backbone in (model.spatial_backbone, model.temporal_backbone):
        backbone.requires_grad_(False)  # backward through the heads and the LSTM only: a fast test
    seen = []
    model.lstm.register_forward_pre_hook(
        lambda module, inputs: seen.append((inputs[0].dtype, torch.is_autocast_enabled("cpu"))))
    model.lstm.register_forward_hook(lambda module, inputs, output: seen.append(output[1][0].dtype))
    rgb, flow = _inputs(batch=2, steps=2, size=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(rgb, flow)
        loss = cotlstm_loss(output, torch.tensor([1, 2]))
    assert seen == [(torch.float32, False), torch.float32]
    assert output.logits.dtype == torch.bfloat16  # FC-2 and the backbones keep autocast
    loss.backward()
    for name, parameter in model.lstm.named_parameters():
        assert parameter.dtype == parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name
