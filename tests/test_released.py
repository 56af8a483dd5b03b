"""Released CAM networks (res50_cam.pth / res50_qa_clims.pth) in the reference's naming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from qaclims import released
from qaclims.config import from_mapping
from qaclims.errors import DataError
from qaclims.models.cam_resnet import CamModelConfig, CamNet

CFG = from_mapping(
    CamModelConfig,
    {"backbone": {"arch": "resnet50", "weights": "none", "strides": [2, 2, 2, 1]}},
    "train_cam.model",
)


class ReferenceNet(nn.Module):
    """The module layout of IRN's resnet50_cam.Net / QA-CLIMS's resnet50_clims.Net, built
    from torchvision's ResNet-50 (strides (2, 2, 2, 1)), so its state_dict has the
    reference's keys and aliases, independently of the project's network."""

    def __init__(self, n_classes: int = 20) -> None:
        super().__init__()
        self.resnet50 = torchvision.models.resnet50(weights=None)
        self.resnet50.layer4[0].conv2.stride = (1, 1)
        self.resnet50.layer4[0].downsample[0].stride = (1, 1)
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
        self.stage2 = nn.Sequential(r.layer2)
        self.stage3 = nn.Sequential(r.layer3)
        self.stage4 = nn.Sequential(r.layer4)
        self.classifier = nn.Conv2d(2048, n_classes, 1, bias=False)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4])
        self.newly_added = nn.ModuleList([self.classifier])

    def cam(self, x: torch.Tensor) -> torch.Tensor:  # IRN's CAM.forward, without the flip
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return torch.relu(nn.functional.conv2d(x, self.classifier.weight))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReferenceNet, Path]:
    torch.manual_seed(0)
    net = ReferenceNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("rel") / "res50_cam.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_released_network_gives_the_references_cams(reference: tuple[ReferenceNet, Path]) -> None:
    ref, path = reference
    assert {"stage1.0.weight", "backbone.0.4.0.conv1.weight", "resnet50.fc.weight",
            "newly_added.0.weight"} <= set(torch.load(path, weights_only=True))  # fmt: skip
    net = released.load(path, CFG, 20)
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net.cam(x), ref.cam(x), rtol=1e-4, atol=1e-5)


def test_written_model_loads_as_the_projects_camnet(
    reference: tuple[ReferenceNet, Path], tmp_path: Path
) -> None:
    ref, path = reference
    released.run(path, CFG, 20, tmp_path / "model.safetensors", tmp_path / "history.parquet")
    net = CamNet.from_weights(tmp_path / "model.safetensors", CFG, 20).eval()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net.cam(x), ref.cam(x), rtol=1e-4, atol=1e-5)


def test_a_ddp_save_with_module_prefix_loads(
    reference: tuple[ReferenceNet, Path], tmp_path: Path
) -> None:
    ref, path = reference
    state = {f"module.{k}": v for k, v in torch.load(path, weights_only=True).items()}
    torch.save(state, tmp_path / "ddp.pth")
    net = released.load(tmp_path / "ddp.pth", CFG, 20)
    torch.testing.assert_close(net.classifier.weight, ref.classifier.weight)


def test_mismatches_list_missing_unexpected_and_shapes(
    reference: tuple[ReferenceNet, Path], tmp_path: Path
) -> None:
    _, path = reference
    state = torch.load(path, weights_only=True)
    bad = dict(state)
    del bad["classifier.weight"]
    bad["head.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(DataError, match=r"bad\.pth.*missing 1 \['classifier\.weight'\].*"
                                        r"unexpected 1 \['head\.extra\.weight'\]"):  # fmt: skip
        released.load(tmp_path / "bad.pth", CFG, 20)
    with pytest.raises(DataError, match=r"shape mismatches \['classifier\.weight: \(20, "):
        released.load(path, CFG, 21)
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.pth: not a tensor state dict"):
        released.load(tmp_path / "junk.pth", CFG, 20)
    with pytest.raises(DataError, match="missing released model"):
        released.load(tmp_path / "none.pth", CFG, 20)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    torch.save({"classifier.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(DataError, match=r"evil\.pth: not a tensor state dict"):
        released.read_state(tmp_path / "evil.pth")
