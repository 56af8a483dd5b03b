"""Core helpers: typed configs, atomic pickle-free I/O, GPU picking, training utilities."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from qaclims import training
from qaclims.core import devices, io
from qaclims.core.config import from_mapping, to_dict
from qaclims.core.errors import ConfigError, DataError
from qaclims.models.backbone import BackboneConfig, build_backbone


@dataclasses.dataclass(frozen=True)
class Inner:
    a: int = 1
    b: tuple[float, ...] = (0.5,)


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = dataclasses.field(default_factory=Inner)
    lr: float = 0.1


def test_from_mapping_builds_nested_and_converts() -> None:
    cfg = from_mapping(Outer, {"name": "x", "inner": {"a": 3, "b": [1, 2]}, "lr": 1}, "stage")
    assert cfg == Outer("x", Inner(3, (1.0, 2.0)), 1.0)
    assert to_dict(cfg) == {"name": "x", "inner": {"a": 3, "b": [1.0, 2.0]}, "lr": 1.0}


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"name": "x", "lrr": 1.0}, "stage.lrr"),
        ({"name": "x", "inner": {"a": "3"}}, "stage.inner.a"),
        ({"name": "x", "inner": {"b": [1, "z"]}}, "stage.inner.b[1]"),
        ({"name": "x", "lr": True}, "stage.lr"),
        ({}, "stage.name"),
    ],
)
def test_from_mapping_names_the_bad_key(mapping: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        from_mapping(Outer, mapping, "stage")


def test_atomic_path_keeps_old_file_on_crash(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    io.write_json(p, {"v": 1})
    with pytest.raises(RuntimeError), io.atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert io.read_json(p) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]


def test_npz_roundtrip_and_refuses_objects(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    io.write_npz(tmp_path / "a.npz", {"cam": a, "keys": np.array([1, 4], np.int16)})
    back = io.read_npz(tmp_path / "a.npz")
    assert back["cam"].dtype == np.float16 and np.array_equal(back["cam"], a)
    with pytest.raises(TypeError):
        io.write_npz(tmp_path / "b.npz", {"x": np.array([{"a": 1}], dtype=object)})


def test_label_png_roundtrip_and_errors(tmp_path: Path) -> None:
    lab = np.random.default_rng(0).integers(0, 21, (7, 9)).astype(np.uint8)
    lab[0, 0] = 255
    io.write_label_png(tmp_path / "l.png", lab)
    assert np.array_equal(io.read_label_png(tmp_path / "l.png"), lab)
    with pytest.raises(DataError, match="missing label image: .*nope.png"):
        io.read_label_png(tmp_path / "nope.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        io.read_image(tmp_path / "bad.jpg")


def test_poly_lr_matches_formula() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1}, {"params": [], "lr": 1.0}], lr=0.1)
    for step in (0, 7, 10):
        training.set_poly_lr(opt, step, 10, 0.9)
        f = (1 - step / 10) ** 0.9
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * f)
        assert opt.param_groups[1]["lr"] == pytest.approx(1.0 * f)


def test_resume_state_roundtrip_and_fingerprint(tmp_path: Path) -> None:
    training.seed_everything(5)
    state = training.ResumeState(tmp_path / "s.pt", fingerprint="abc")
    h = training.History()
    h.add(step=1, loss=0.5)
    rng = training.rng_state()
    expect = (torch.rand(3), np.random.rand(2))
    state.save(7, rng=rng, history=h.as_tensor_state())
    loaded = state.load()
    assert loaded is not None and loaded["step"] == 7
    training.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expect[0])
    assert np.array_equal(np.random.rand(2), expect[1])
    assert training.History.from_tensor_state(loaded["history"]).rows == [
        {"step": 1.0, "loss": 0.5}
    ]
    assert training.ResumeState(tmp_path / "s.pt", fingerprint="other").load() is None


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_backbone_strides(arch: str) -> None:
    bb = build_backbone(BackboneConfig(arch=arch, weights="none", strides=(2, 2, 2, 1)))
    feats = bb(torch.zeros(1, 3, 97, 131))
    sizes = [tuple(f.shape[-2:]) for f in feats]
    # stem stride 4 then strides 2, 2, 1 (each conv rounds up: ceil)
    h, w = 97, 131
    expect = []
    for s in (4, 2, 2, 1):
        for _ in range({4: 2, 2: 1, 1: 0}[s]):
            h, w = (h + 1) // 2, (w + 1) // 2
        expect.append((h, w))
    assert sizes == expect
    assert [f.shape[1] for f in feats] == list(bb.channels)


def test_backbone_loads_local_weights_and_frozen_bn(tmp_path: Path) -> None:
    cfg = BackboneConfig(arch="tiny", weights="none", frozen_bn=True)
    a = build_backbone(cfg)
    training.save_weights(tmp_path / "w.safetensors", a)
    b = build_backbone(dataclasses.replace(cfg, weights=str(tmp_path / "w.safetensors")))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    b.train()
    bns = [m for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training and not m.weight.requires_grad for m in bns)
    with pytest.raises(DataError, match="missing weights file"):
        build_backbone(dataclasses.replace(cfg, weights=str(tmp_path / "none.pth")))


def test_torch_device_resolves_idempotently() -> None:
    first = devices.torch_device("auto")
    assert devices.torch_device(first) == first
    assert devices.torch_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="gpu0"):
        devices.torch_device("gpu0")


def _square_sum(xs: list[int]) -> int:
    if 13 in xs:
        raise ValueError("thirteen in the chunk")
    return sum(x * x for x in xs)


@pytest.mark.parametrize("workers", [1, 3])
def test_run_chunks_returns_each_chunks_result_in_order(workers: int) -> None:
    from qaclims.core import parallel

    items = list(range(10))
    assert parallel.chunks(items, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    got = parallel.run_chunks(_square_sum, items, workers, desc="t", chunk_size=4)
    assert got == [0 + 1 + 4 + 9, 16 + 25 + 36 + 49, 64 + 81]
    default = parallel.run_chunks(_square_sum, items, workers, desc="t")
    assert sum(default) == sum(x * x for x in items)  # every item once, whatever the cut
    assert parallel.run_chunks(_square_sum, [], workers, desc="t") == []
    with pytest.raises(ValueError, match="thirteen"):
        parallel.run_chunks(_square_sum, list(range(20)), workers, desc="t", chunk_size=2)
    with pytest.raises(ValueError, match="chunk size"):
        parallel.chunks(items, 0)
