"""CamNet: shapes and output stride, CAM = classifier applied to features, IRN freezing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from qaclims.core.config import from_mapping
from qaclims.core.errors import DataError
from qaclims.models.cam_resnet import CamModelConfig, CamNet
from qaclims.training import save_weights


def tiny_cfg(backbone: dict[str, object] | None = None, **model: object) -> CamModelConfig:
    bb: dict[str, object] = {"arch": "tiny", "weights": "none", "widths": [8, 16, 16, 32]}
    bb.update(backbone or {})
    return from_mapping(CamModelConfig, {"backbone": bb, **model}, "model")


def conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def expected_size(n: int, strides: tuple[int, ...]) -> int:
    """Feature size by conv arithmetic: stem conv 7/2/3, max-pool 3/2/1, 3x3 convs pad 1."""
    n = conv_out(conv_out(n, 7, 2, 3), 3, 2, 1)
    for s in strides[1:]:
        n = conv_out(n, 3, s, 1)
    return n


@pytest.mark.parametrize("strides", [(2, 2, 2, 1), (2, 2, 1, 1)])
def test_shapes_and_stride_for_odd_sizes(strides: tuple[int, ...]) -> None:
    net = CamNet(tiny_cfg(backbone={"strides": list(strides)}), num_classes=5).eval()
    x = torch.randn(2, 3, 97, 131)
    h, w = expected_size(97, strides), expected_size(131, strides)
    os_ = 4 * math.prod(strides[1:])
    assert net.output_stride == os_
    assert (h, w) == (math.ceil(97 / os_), math.ceil(131 / os_))
    with torch.no_grad():
        assert net(x).shape == (2, 5)
        assert net.features(x).shape == (2, 32, h, w)
        assert net.cam(x).shape == (2, 5, h, w)


def test_cam_and_logits_by_hand() -> None:
    torch.manual_seed(0)
    net = CamNet(tiny_cfg(), num_classes=4).eval()
    x = torch.randn(3, 3, 45, 61)
    with torch.no_grad():
        f = net.features(x)
        w = net.classifier.weight[:, :, 0, 0]  # C x D
        by_hand = torch.einsum("bdhw,cd->bchw", f, w)
        torch.testing.assert_close(net.cam(x), by_hand.clamp(min=0), rtol=1e-5, atol=1e-5)
        logits = by_hand.mean(dim=(2, 3))  # the classifier is linear: GAP commutes with it
        torch.testing.assert_close(net(x), logits, rtol=1e-5, atol=1e-5)
    assert net.classifier.bias is None
    assert (net.cam(x) >= 0).all() and (by_hand < 0).any()


def _grads_after_backward(net: CamNet) -> dict[str, bool]:
    net.train()
    net(torch.randn(2, 3, 64, 64)).sum().backward()
    return {n: p.grad is not None for n, p in net.named_parameters()}


@pytest.mark.parametrize("bn_affine", [True, False])
def test_irn_freezing(bn_affine: bool) -> None:
    cfg = tiny_cfg(
        {"frozen_bn": True}, freeze_stem=True, detach_stage2=True, train_bn_affine=bn_affine
    )
    net = CamNet(cfg, num_classes=3)
    stem_conv, stem_bn = net.backbone.stages[0][0][0], net.backbone.stages[0][0][1]
    assert not any(p.requires_grad for p in [*stem_conv.parameters(), *stem_bn.parameters()])
    got = _grads_after_backward(net)
    for name, has_grad in got.items():
        in_stage12 = name.startswith(("backbone.stages.0.", "backbone.stages.1."))
        is_bn = ".bn" in name or ".down.1." in name
        assert has_grad == (not in_stage12 and (bn_affine or not is_bn)), name
    backbone, new = net.param_groups()
    assert new == [net.classifier.weight]
    assert {id(p) for p in backbone} == {
        id(p) for p in net.backbone.parameters() if p.requires_grad
    }


def test_everything_trains_when_switches_are_off() -> None:
    net = CamNet(tiny_cfg(freeze_stem=False, detach_stage2=False, backbone={"frozen_bn": False}), 3)
    got = _grads_after_backward(net)
    assert all(got.values()), [n for n, g in got.items() if not g]
    backbone, new = net.param_groups()
    assert len(backbone) + len(new) == len(list(net.parameters()))


@pytest.mark.parametrize("frozen", [True, False])
def test_batchnorm_statistics_fixed_only_when_frozen(frozen: bool) -> None:
    net = CamNet(tiny_cfg(backbone={"frozen_bn": frozen}), 3).train()
    bn = net.backbone.stages[2].bn1
    before = bn.running_mean.clone()
    net(torch.randn(2, 3, 48, 48) * 3 + 1)
    assert torch.equal(bn.running_mean, before) == frozen


def test_from_weights_round_trip_without_download(tmp_path: Path) -> None:
    bare = from_mapping(CamModelConfig, {"backbone": {"arch": "resnet18", "weights": "none"}}, "m")
    torch.manual_seed(1)
    net = CamNet(bare, 6)
    save_weights(tmp_path / "m.safetensors", net)
    pretrained = from_mapping(CamModelConfig, {"backbone": {"arch": "resnet18"}}, "m")
    assert pretrained.backbone.weights == "imagenet"
    loaded = CamNet.from_weights(tmp_path / "m.safetensors", pretrained, 6)
    for (n, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    with pytest.raises(DataError, match="m.safetensors"):
        CamNet.from_weights(tmp_path / "m.safetensors", pretrained, 7)
