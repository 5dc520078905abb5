"""STILT: the co-attention of eqs. 1-3 / Algorithm 1, the two-stream model, its loss, and its sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from actrec.models import STILT, AlternatingCoAttention, stilt_loss, stilt_reduced
from actrec.models.stilt import AttentionStep


def _clips(batch: int, segments: int, size: int, flow_length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, segments, 3, size, size), torch.randn(batch, segments, 2 * flow_length, size, size)


def test_attention_step_computes_equations_1_to_3() -> None:
    torch.manual_seed(0)
    step = AttentionStep(feature_dim=6, hidden=4, guided=True)
    keys, guide = torch.randn(2, 5, 6), torch.randn(2, 6)
    attended, weights = step(keys, guide)
    for b in range(2):
        hidden = torch.tanh(step.key.weight @ keys[b].T + (step.guide.weight @ guide[b])[:, None])  # eq. 1, (h, n)
        expected_weights = torch.softmax(step.score.weight @ hidden, dim=1)[0]  # eq. 2, (n,)
        torch.testing.assert_close(weights[b], expected_weights)
        torch.testing.assert_close(attended[b], keys[b].T @ expected_weights)  # eq. 3


def test_unguided_first_step_has_no_guidance_weights() -> None:
    co_attention = AlternatingCoAttention(feature_dim=8, hidden=4, alternations=1)
    assert co_attention.summarise.guide is None
    assert co_attention.attend_temporal.guide is not None


@pytest.mark.parametrize("alternations", [1, 3])
def test_co_attention_weights_sum_to_one_and_follow_segment_permutations(alternations: int) -> None:
    torch.manual_seed(0)
    co_attention = AlternatingCoAttention(feature_dim=16, hidden=8, alternations=alternations)
    spatial, temporal = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    s, t, spatial_weights, temporal_weights = co_attention(spatial, temporal)
    assert s.shape == t.shape == (3, 16)
    torch.testing.assert_close(spatial_weights.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(temporal_weights.sum(dim=1), torch.ones(3))
    assert (spatial_weights > 0).all() and (temporal_weights > 0).all()
    order = torch.tensor([3, 0, 4, 1, 2])
    s_perm, t_perm, spatial_perm, temporal_perm = co_attention(spatial[:, order], temporal[:, order])
    torch.testing.assert_close(spatial_perm, spatial_weights[:, order])
    torch.testing.assert_close(temporal_perm, temporal_weights[:, order])
    torch.testing.assert_close(s_perm, s)
    torch.testing.assert_close(t_perm, t)


def test_more_alternations_change_the_result() -> None:
    torch.manual_seed(0)
    once = AlternatingCoAttention(feature_dim=16, hidden=8, alternations=1)
    twice = AlternatingCoAttention(feature_dim=16, hidden=8, alternations=2)
    twice.load_state_dict(once.state_dict())
    spatial, temporal = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    assert not torch.allclose(once(spatial, temporal)[0], twice(spatial, temporal)[0])


def test_reduced_stilt_trains_both_backbones_through_the_co_attention() -> None:
    torch.manual_seed(0)
    model = stilt_reduced(num_classes=7)
    rgb, flow = _clips(batch=2, segments=3, size=112)
    labels = torch.tensor([1, 4])
    output = model(rgb, flow)
    assert output.spatial_logits.shape == output.temporal_logits.shape == (2, 7)
    assert output.spatial_weights.shape == output.temporal_weights.shape == (2, 3)
    loss = stilt_loss(output, labels)
    expected = F.cross_entropy(output.spatial_logits, labels) + F.cross_entropy(output.temporal_logits, labels)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for parameter in (
        model.spatial_backbone.conv1.weight,
        model.temporal_backbone.conv1.weight,
        model.co_attention.summarise.key.weight,
        model.co_attention.attend_temporal.guide.weight,
        model.co_attention.attend_spatial.guide.weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_stilt_output_is_invariant_to_segment_order() -> None:
    torch.manual_seed(0)
    model = stilt_reduced(num_classes=7).eval()
    rgb, flow = _clips(batch=2, segments=3, size=64)
    order = torch.tensor([2, 0, 1])
    with torch.no_grad():
        output = model(rgb, flow)
        permuted = model(rgb[:, order], flow[:, order])
    torch.testing.assert_close(permuted.spatial_logits, output.spatial_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(permuted.temporal_weights, output.temporal_weights[:, order], rtol=1e-4, atol=1e-5)


def test_two_stream_ablation_averages_segments() -> None:
    torch.manual_seed(0)
    model = stilt_reduced(num_classes=7, co_attention=False).eval()
    assert model.co_attention is None
    rgb, flow = _clips(batch=2, segments=4, size=64)
    with torch.no_grad():
        output = model(rgb, flow)
        mean_features = model.spatial_backbone(rgb.flatten(0, 1)).view(2, 4, -1).mean(dim=1)
        expected = model.spatial_head(mean_features)
    torch.testing.assert_close(output.spatial_weights, torch.full((2, 4), 0.25))
    torch.testing.assert_close(output.spatial_logits, expected, rtol=1e-4, atol=1e-5)


def test_mismatched_segments_are_rejected() -> None:
    model = stilt_reduced(num_classes=3)
    with pytest.raises(ValueError, match="segments"):
        model(torch.randn(1, 3, 3, 64, 64), torch.randn(1, 2, 20, 64, 64))


def test_full_size_stilt_on_two_videos() -> None:
    torch.manual_seed(0)
    model = STILT(num_classes=101).eval()
    assert model.temporal_backbone.conv1.weight.shape == (64, 20, 7, 7)
    backbone_params = sum(p.numel() for p in model.spatial_backbone.parameters())
    assert backbone_params == 25_557_032 - 2048 * 1000 - 1000  # ResNet-50 without its classifier
    assert model.co_attention.attend_temporal.key.weight.shape == (512, 2048)
    assert [layer.weight.shape[0] for layer in model.spatial_head if hasattr(layer, "weight")] == [512, 1024, 101]
    rgb, flow = _clips(batch=2, segments=3, size=64)
    with torch.no_grad():
        output = model(rgb, flow)
    assert output.spatial_logits.shape == output.temporal_logits.shape == (2, 101)
    assert output.spatial_weights.shape == output.temporal_weights.shape == (2, 3)
    assert torch.isfinite(output.spatial_logits).all() and torch.isfinite(output.temporal_logits).all()


def test_cpu_bf16_autocast_forward() -> None:
    torch.manual_seed(0)
    model = stilt_reduced(num_classes=7).eval()
    rgb, flow = _clips(batch=2, segments=3, size=64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(rgb, flow)
    assert output.spatial_logits.dtype == torch.bfloat16
    assert torch.isfinite(output.temporal_logits.float()).all()
    torch.testing.assert_close(output.spatial_weights.sum(dim=1), torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_forward_backward(dtype: torch.dtype) -> None:
    model = stilt_reduced(num_classes=7).cuda()
    rgb, flow = (x.cuda() for x in _clips(batch=2, segments=3, size=64))
    with torch.autocast("cuda", dtype=dtype):
        output = model(rgb, flow)
        loss = stilt_loss(output, torch.tensor([0, 6], device="cuda"))
    assert output.spatial_logits.dtype == dtype
    loss.backward()
    assert torch.isfinite(model.temporal_backbone.conv1.weight.grad).all()
