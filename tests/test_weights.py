"""Weights files and resume states: deterministic bytes, named errors, strict loading,
content digests, corrupt and stale resume states."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from qaclims.artifacts import weights
from qaclims.core.errors import DataError
from qaclims.models.backbone import BackboneConfig, build_backbone, load_state_file
from qaclims.training import ResumeState, load_weights, save_weights


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_identical_weights_and_metadata_give_identical_bytes(tmp_path: Path) -> None:
    """safetensors writes several metadata entries in a random order; ours are one entry."""
    meta = {"num_classes": "5", "model": '{"a": 1}', "method": "qa-clims", "z": "last"}
    digests = set()
    for i in range(6):
        save_weights(tmp_path / f"w{i}.safetensors", _net(), metadata=dict(reversed(meta.items())))
        digests.add(_sha(tmp_path / f"w{i}.safetensors"))
    assert len(digests) == 1
    assert weights.read_metadata(tmp_path / "w0.safetensors") == meta


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_unreadable_weights_name_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.safetensors"
    if damage == "garbage":
        path.write_bytes(b"\x00\x01 not a safetensors file at all" * 10)
    elif damage == "truncated":
        save_weights(path, _net())
        path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="model.safetensors"):
        load_weights(path, _net())
    with pytest.raises(DataError, match="model.safetensors"):
        load_state_file(path)


def test_strict_load_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    state = _net().state_dict()
    del state["2.bias"]
    state["3.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 3, 5, 5)
    weights.write_tensors(path, state)
    with pytest.raises(DataError) as e:
        load_weights(path, _net())
    msg = str(e.value)
    assert "w.safetensors" in msg and "missing 1 ['2.bias']" in msg
    assert "unexpected 1 ['3.weight']" in msg and "0.weight: (4, 3, 5, 5) vs (4, 3, 3, 3)" in msg
    save_weights(path, _net(seed=3))
    loaded = load_weights(path, _net(seed=4))
    for a, b in zip(loaded.state_dict().values(), _net(seed=3).state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_backbone_init_file_must_give_every_tensor(tmp_path: Path) -> None:
    """A torchvision-named ResNet-18 file: whole (its fc of another shape) loads; one tensor
    short, or one foreign tensor, is an error listing it (never a silent partial load)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None, num_classes=7).state_dict()
    torch.save(state, tmp_path / "full.pth")
    bb = build_backbone(BackboneConfig(arch="resnet18", weights=str(tmp_path / "full.pth")))
    torch.testing.assert_close(bb.stages[3][1].conv2.weight, state["layer4.1.conv2.weight"])
    cut = {k: v for k, v in state.items() if k != "layer3.0.bn1.running_var"}
    torch.save(cut | {"head.weight": torch.zeros(2)}, tmp_path / "cut.pth")
    with pytest.raises(DataError) as e:
        build_backbone(BackboneConfig(arch="resnet18", weights=str(tmp_path / "cut.pth")))
    msg = str(e.value)
    assert "cut.pth" in msg and "layer3.0.bn1.running_var" in msg and "head.weight" in msg


def test_tensor_digest_follows_the_tensors_not_the_bytes(tmp_path: Path) -> None:
    net = _net()
    save_weights(tmp_path / "a.safetensors", net, metadata={"note": "one"})
    save_weights(tmp_path / "b.safetensors", net, metadata={"note": "two"})
    assert _sha(tmp_path / "a.safetensors") != _sha(tmp_path / "b.safetensors")
    assert weights.tensors_digest(tmp_path / "a.safetensors") == weights.tensors_digest(
        tmp_path / "b.safetensors"
    )
    with torch.no_grad():
        net[2].bias[0] += 1e-6
    save_weights(tmp_path / "c.safetensors", net)
    assert weights.tensors_digest(tmp_path / "c.safetensors") != weights.tensors_digest(
        tmp_path / "a.safetensors"
    )


@pytest.mark.parametrize("content", [b"", b"garbage" * 50, b"PK\x03\x04 half a zip"])
def test_corrupt_resume_state_is_reported_and_discarded(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.pt"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert ResumeState(path, "fp").load() is None
    assert not path.exists()
    assert any(
        "state.pt" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records
    )
    ResumeState(path, "fp").save(3, x=torch.ones(2))
    assert ResumeState(path, "fp").load()["step"] == 3  # type: ignore[index]
    with caplog.at_level(logging.WARNING):
        assert ResumeState(path, "other").load() is None
    assert any("other settings or inputs" in r.getMessage() for r in caplog.records)
