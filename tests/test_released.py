"""Released CAM networks (res50_cam.pth / res50_qa_clims.pth) in the reference's naming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from qaclims.core.config import from_mapping
from qaclims.core.errors import DataError
from qaclims.models import released
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


# ---------------------------------------------------------------- DeepLab (deeplab-pytorch)


class _ConvBn(nn.Sequential):
    """deeplab-pytorch's conv (no bias) + batch norm (+ ReLU), children ``conv``, ``bn``."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int, d: int, relu: bool) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, k, s, p, d, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))
        if relu:
            self.add_module("relu", nn.ReLU())


class _Bottleneck(nn.Module):
    """reduce (1x1, carries the stride) -> conv3x3 (dilated) -> increase, + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, first: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.reduce = _ConvBn(cin, mid, 1, stride, 0, 1, True)
        self.conv3x3 = _ConvBn(mid, mid, 3, 1, dilation, dilation, True)
        self.increase = _ConvBn(mid, cout, 1, 1, 0, 1, False)
        self.shortcut = _ConvBn(cin, cout, 1, stride, 0, 1, False) if first else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class _Aspp(nn.Module):
    def __init__(self, cin: int, n_classes: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        for i, r in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(cin, n_classes, 3, 1, r, r, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(c(x) for c in self.children())  # type: ignore[return-value]


class DeeplabPytorchNet(nn.Module):
    """The module layout of deeplab-pytorch's ``DeepLabV2_ResNet101_MSC`` (its ``base``
    only: the MSC wrapper holds no tensors), written from its architecture so the
    state_dict carries its key names (``base.layer1.conv1.conv.weight``,
    ``base.layer3.block1.reduce.bn.running_mean``, ``base.aspp.c0.bias``...)."""

    def __init__(self, n_classes: int, blocks: tuple[int, ...] = (3, 4, 23, 3)) -> None:
        super().__init__()
        ch = [64 * 2**p for p in range(6)]
        base = nn.Sequential()
        stem = nn.Sequential()
        stem.add_module("conv1", _ConvBn(3, ch[0], 7, 2, 3, 1, True))
        stem.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        base.add_module("layer1", stem)
        plan = [
            (ch[0], ch[2], 1, 1),
            (ch[2], ch[3], 2, 1),
            (ch[3], ch[4], 1, 2),
            (ch[4], ch[5], 1, 4),
        ]
        for k, (n, (cin, cout, s, d)) in enumerate(zip(blocks, plan, strict=True)):
            layer = nn.Sequential()
            for i in range(n):
                block = _Bottleneck(cin if i == 0 else cout, cout, s if i == 0 else 1, d, i == 0)
                layer.add_module(f"block{i + 1}", block)
            base.add_module(f"layer{k + 2}", layer)
        base.add_module("aspp", _Aspp(ch[5], n_classes, (6, 12, 18, 24)))
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)


def random_deeplab_pytorch_net(n_classes: int, seed: int) -> DeeplabPytorchNet:
    """A DeeplabPytorchNet with random weights and random batch-norm statistics, in eval."""
    torch.manual_seed(seed)
    net = DeeplabPytorchNet(n_classes)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return net.eval()


def _deeplab_cfg(style: str = "caffe"):  # type: ignore[no-untyped-def]
    from qaclims.models.deeplab import DeeplabModelConfig

    mapping = {"version": "v2", "style": style, "backbone": {"weights": "none"}}
    return from_mapping(DeeplabModelConfig, mapping, "train_deeplab.model")


@pytest.fixture(scope="module")
def deeplab_pytorch_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    net = random_deeplab_pytorch_net(5, seed=0)
    path = tmp_path_factory.mktemp("dlp") / "checkpoint_30000.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_deeplab_pytorch_checkpoint_loads_whole_and_computes_the_same(
    deeplab_pytorch_file: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    from qaclims.models.deeplab import build_model
    from qaclims.training import load_weights

    path, ref = deeplab_pytorch_file
    assert any(k.startswith("base.aspp.c3.") for k in ref.state_dict())
    released.run_deeplab(path, _deeplab_cfg(), 5, tmp_path / "m.safetensors", tmp_path / "h.pq")
    net = load_weights(tmp_path / "m.safetensors", build_model(_deeplab_cfg(), 5, init=False))
    x = torch.randn(1, 3, 50, 66)  # even sizes: the Caffe layout's grid differs there
    with torch.no_grad():
        want, got = ref(x), net.eval()(x)
    assert got.shape == want.shape == (1, 5, 7, 9)  # 50 -> 25 -> ceil pool 13 -> 7
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_deeplab_pytorch_checkpoint_errors_name_file_and_keys(
    deeplab_pytorch_file: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    from qaclims.core.errors import ConfigError

    path, ref = deeplab_pytorch_file
    state = ref.state_dict()
    del state["base.aspp.c3.bias"]
    state["base.aspp.c9.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(DataError, match=r"cut\.pth.*missing 1 \['head\.convs\.3\.bias'\].*"
                       r"unexpected 1 \['base\.aspp\.c9\.weight'\]"):  # fmt: skip
        released.run_deeplab(
            tmp_path / "cut.pth", _deeplab_cfg(), 5, tmp_path / "m", tmp_path / "h"
        )
    with pytest.raises(DataError, match="shape mismatches"):
        released.run_deeplab(path, _deeplab_cfg(), 21, tmp_path / "m", tmp_path / "h")
    with pytest.raises(ConfigError, match="style: caffe"):
        released.run_deeplab(path, _deeplab_cfg("torchvision"), 5, tmp_path / "m", tmp_path / "h")
    assert not (tmp_path / "m").exists()
