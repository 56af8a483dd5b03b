"""make_cam: multi-scale CAM sizes and values, flip equivariance, CAM files, batching,
sharding and the partial-folder resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from qaclims.artifacts import camfile, partial
from qaclims.cam import make_cam as cam_infer
from qaclims.cam import multiscale
from qaclims.cam.make_cam import MakeCamConfig
from qaclims.cam.multiscale import multiscale_cam
from qaclims.core.config import from_mapping
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_npz, write_image
from qaclims.data.manifest import manifest_frame, write_manifest
from qaclims.models.cam_resnet import CamModelConfig, CamNet
from qaclims.training import save_weights

C = 3
MODEL_CFG = from_mapping(
    CamModelConfig,
    {"backbone": {"arch": "tiny", "weights": "none", "widths": [8, 16, 16, 32]}},
    "model",
)
SIZES = [(37, 45), (45, 37), (37, 45), (29, 29), (37, 45), (45, 37), (37, 45)]
LABELS = [[0], [1, 2], [0, 2], [], [2], [0, 1, 2], [1]]


def tiny_net(seed: int = 0) -> CamNet:
    torch.manual_seed(seed)
    net = CamNet(MODEL_CFG, C).eval()
    with torch.no_grad():  # mostly positive class weights so every CAM has support
        net.classifier.weight.copy_(net.classifier.weight.abs() - 0.02)
    return net


def cfg(**over: Any) -> MakeCamConfig:
    base = {"scales": [1.0, 0.5, 1.5], "batch_size": 3, "num_workers": 0, "amp": False}
    return from_mapping(MakeCamConfig, {**base, **over}, "make_cam")


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    rows = []
    for i, ((h, w), labels) in enumerate(zip(SIZES, LABELS, strict=True)):
        path = tmp_path / "img" / f"im{i}.png"
        write_image(path, rng.integers(0, 256, (h, w, 3)).astype(np.uint8))
        rows.append(
            {
                "image_id": f"im{i}",
                "image_path": str(path),
                "height": h,
                "width": w,
                "labels": labels,
                "gt_path": "",
            }
        )
    write_manifest(tmp_path / "m.parquet", manifest_frame(rows))
    save_weights(tmp_path / "w.safetensors", tiny_net())
    return {
        "manifest": tmp_path / "m.parquet",
        "weights": tmp_path / "w.safetensors",
        "root": tmp_path,
    }


def make(s: dict[str, Path], out: str, c: MakeCamConfig, shard: int = 0, n: int = 1) -> Path:
    out_dir = s["root"] / out
    cam_infer.run(s["manifest"], s["weights"], MODEL_CFG, C, c, out_dir, shard, n, "cpu")
    return out_dir


def test_multiscale_sizes_for_odd_images() -> None:
    net = tiny_net()
    x = torch.randn(2, 3, 97, 131)
    st, hr = multiscale_cam(net, x, [1.0, 0.5, 1.5, 2.0], flip=True)
    assert st.shape == (2, C, 25, 33) and hr.shape == (2, C, 97, 131)
    st1, hr1 = multiscale_cam(net, x[1], [1.0, 0.5], flip=True, classes=[2, 0])
    assert st1.shape == (2, 25, 33) and hr1.shape == (2, 97, 131)


def pil_rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Rescale 3xHxW float with PIL bicubic, each channel as a float image."""
    h, w = x.shape[1:]
    size = (int(np.round(w * scale)), int(np.round(h * scale)))
    chans = [
        np.asarray(Image.fromarray(c.numpy(), mode="F").resize(size, Image.BICUBIC)) for c in x
    ]
    return torch.from_numpy(np.stack(chans))


def test_multiscale_matches_irn_recipe_by_hand() -> None:
    net = tiny_net()
    x = torch.randn(3, 53, 70)
    scales = [1.0, 0.5, 1.5]
    st, hr = multiscale_cam(net, x, scales, flip=True)
    st_ref = torch.zeros(C, 14, 18)
    hr_ref = torch.zeros(C, 64, 80)  # ceil(53/16)*16 x ceil(70/16)*16, cropped at the end
    with torch.no_grad():
        for s in scales:
            xs = pil_rescale(x, s)[None]
            cam = net.cam(xs)[0].clamp(min=0) + net.cam(xs.flip(-1))[0].clamp(min=0).flip(-1)
            st_ref += F.interpolate(cam[None], (14, 18), mode="bilinear")[0]
            hr_ref += F.interpolate(cam[None], (64, 80), mode="bilinear")[0]
    # PIL and torch's antialiased bicubic agree to ~1e-6 here; stretching the CAMs straight to
    # 53x70 instead of IRN's pad-to-stride-and-crop would differ by ~1e-1.
    torch.testing.assert_close(st, st_ref, rtol=0, atol=1e-4 * float(st_ref.max()))
    torch.testing.assert_close(hr, hr_ref[:, :53, :70], rtol=0, atol=1e-4 * float(hr_ref.max()))


def test_flip_equivariance() -> None:
    net = tiny_net()
    x = torch.randn(2, 3, 97, 128)  # width a multiple of the output stride (IRN's crop)
    scales = [1.0, 0.5, 1.5]
    st, hr = multiscale_cam(net, x, scales, flip=True)
    st_f, hr_f = multiscale_cam(net, x.flip(-1), scales, flip=True)
    torch.testing.assert_close(st_f, st.flip(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(hr_f, hr.flip(-1), rtol=0, atol=1e-5)
    sym = (x + x.flip(-1)) / 2
    _, hr_sym = multiscale_cam(net, sym, scales, flip=True)
    torch.testing.assert_close(hr_sym, hr_sym.flip(-1), rtol=0, atol=1e-5)
    # without the flip the strided network is not equivariant, so the test can fail
    _, hr_noflip = multiscale_cam(net, sym, scales, flip=False)
    assert (hr_noflip - hr_noflip.flip(-1)).abs().max() > 1e-2
    # the stride-4 map is flip-equivariant at any width
    y = torch.randn(1, 3, 61, 131)
    st_y, _ = multiscale_cam(net, y, scales, flip=True)
    st_yf, _ = multiscale_cam(net, y.flip(-1), scales, flip=True)
    torch.testing.assert_close(st_yf, st_y.flip(-1), rtol=0, atol=1e-5)


def test_max_normalise() -> None:
    cam = torch.rand(2, 4, 9, 7) * torch.tensor([0.0, 1.0, 5.0, 100.0]).view(1, 4, 1, 1)
    out = multiscale.max_normalise(cam, 1e-5)
    peak = cam.amax(dim=(2, 3))
    torch.testing.assert_close(out.amax(dim=(2, 3)), peak / (peak + 1e-5))
    assert out.min() >= 0 and out.max() < 1


def check_file(arrays: dict[str, np.ndarray], labels: list[int], h: int, w: int) -> None:
    k = len(labels)
    assert arrays["keys"].dtype == np.int16 and arrays["keys"].tolist() == labels
    assert arrays["cam"].dtype == np.uint8 and arrays["cam"].shape == (k, h, w)
    assert arrays["cam_strided"].dtype == np.float16 and int(arrays["format"]) == 2
    assert arrays["cam_strided"].shape == (k, math.ceil(h / 4), math.ceil(w / 4))
    for name in ("cam", "cam_strided"):
        if k:
            a = arrays[name]
            a = camfile.dequantise(a) if a.dtype == np.uint8 else a.astype(np.float32)
            a = a.reshape(k, -1)
            assert a.min() >= 0 and a.max() <= 1
            np.testing.assert_allclose(a.max(axis=1), 1.0, atol=1e-3)


def test_run_writes_present_classes_batched_equals_single(setup: dict[str, Path]) -> None:
    batched = make(setup, "batched", cfg(batch_size=3, num_workers=2))
    single = make(setup, "single", cfg(batch_size=1))
    assert not partial.partial_path(batched).exists()
    names = sorted(p.name for p in batched.iterdir())
    assert names == sorted(f"im{i}.npz" for i in range(len(SIZES)))
    for i, ((h, w), labels) in enumerate(zip(SIZES, LABELS, strict=True)):
        a, b = read_npz(batched / f"im{i}.npz"), read_npz(single / f"im{i}.npz")
        check_file(a, labels, h, w)
        assert a.keys() == b.keys() and np.array_equal(a["keys"], b["keys"])
        for name in ("cam", "cam_strided"):
            np.testing.assert_allclose(
                a[name].astype(np.float32), b[name].astype(np.float32), atol=2e-3
            )


@pytest.mark.parametrize("rescale", ["image", "tensor"])
def test_run_agrees_with_multiscale_cam(setup: dict[str, Path], rescale: str) -> None:
    from PIL import Image

    from qaclims.core.io import read_image

    out = make(setup, f"out_{rescale}", cfg(rescale=rescale))
    img = read_image(setup["root"] / "img" / "im5.png")
    h, w = img.shape[:2]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

    def norm(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32))

    scales = [1.0, 0.5, 1.5]
    pyramid = None
    if rescale == "image":  # IRN's pil_rescale: PIL bicubic on uint8 at np.round'ed sizes
        pyramid = [
            norm(np.asarray(Image.fromarray(img).resize(
                (int(np.round(w * s)), int(np.round(h * s))), Image.BICUBIC)))
            for s in scales
        ]  # fmt: skip
    st, hr = multiscale_cam(tiny_net(), norm(img), scales, True, [0, 1, 2], pyramid=pyramid)
    got = read_npz(out / "im5.npz")
    expect = (hr / (hr.amax(dim=(1, 2), keepdim=True) + 1e-5)).numpy()
    # format 2 stores ceil(200 v): the quantised expectation (up to float rounding)
    levels = camfile.quantise(expect)
    assert got["cam"].dtype == np.uint8
    assert np.abs(got["cam"].astype(int) - levels.astype(int)).max() <= 1
    assert np.mean(got["cam"] == levels) > 0.999
    np.testing.assert_allclose(camfile.dequantise(got["cam"]), expect, atol=1 / 200 + 1e-5)
    if rescale == "image":  # the two rescalings are different computations
        other = read_npz(make(setup, "t", cfg(rescale="tensor")) / "im5.npz")["cam"]
        assert np.abs(camfile.dequantise(other) - expect).max() > 1e-3


def test_image_pyramid_is_pil_on_uint8() -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (25, 31, 3)).astype(np.uint8)
    got = multiscale.image_pyramid(img, [0.5, 1.5], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for s, x in zip([0.5, 1.5], got, strict=True):
        size = (int(np.round(31 * s)), int(np.round(25 * s)))  # 16 (15.5 rounds to even) x 12
        ref = np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC)).astype(np.float32)
        np.testing.assert_array_equal(x.numpy(), (ref / 255.0).transpose(2, 0, 1))


def test_shards_are_strided_rows(setup: dict[str, Path]) -> None:
    out = make(setup, "shard1", cfg(), shard=1, n=3)
    assert sorted(p.name for p in out.iterdir()) == ["im1.npz", "im4.npz"]
    with pytest.raises(ConfigError, match="shard"):
        make(setup, "bad", cfg(), shard=3, n=3)


def test_partial_folder_resume(setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    real_write, calls = cam_infer.write_cam, []

    def crash_after_two(path: Path, arrays: dict[str, np.ndarray]) -> None:
        calls.append(Path(path).name)
        if len(calls) > 2:
            raise OSError("disk full (simulated)")
        real_write(path, arrays)

    monkeypatch.setattr(cam_infer, "write_cam", crash_after_two)
    with pytest.raises(OSError, match="simulated"):
        make(setup, "out", cfg())
    part = partial.partial_path(setup["root"] / "out")
    first = {p.name: p.stat().st_mtime_ns for p in part.glob("*.npz")}
    assert len(first) == 2 and not (setup["root"] / "out").exists()

    computed: list[str] = []
    real_batch = multiscale.batch_cams

    def counting(model: CamNet, x: torch.Tensor, labels: Any, c: MakeCamConfig, **k: Any) -> Any:
        computed.extend(str(len(lab)) for lab in labels)
        return real_batch(model, x, labels, c, **k)

    monkeypatch.setattr(cam_infer, "write_cam", real_write)
    monkeypatch.setattr(cam_infer, "batch_cams", counting)
    out = make(setup, "out", cfg())
    assert len(computed) == len(SIZES) - 2
    assert not part.exists()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz") if p.name in first} == first
    assert len(list(out.glob("*.npz"))) == len(SIZES)
    assert not list(out.glob(".*"))


def test_partial_folder_from_other_settings_is_discarded(setup: dict[str, Path]) -> None:
    part = partial.partial_path(setup["root"] / "out")
    part.mkdir()
    (part / "im0.npz").write_bytes(b"stale")
    (part / partial.STAMP).write_text('"something else"\n')
    out = make(setup, "out", cfg())
    check_file(read_npz(out / "im0.npz"), LABELS[0], *SIZES[0])


def test_errors_name_the_culprit(setup: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="nope.safetensors"):
        cam_infer.run(
            setup["manifest"],
            setup["root"] / "nope.safetensors",
            MODEL_CFG,
            C,
            cfg(),
            setup["root"] / "o",
            0,
            1,
            "cpu",
        )
    with pytest.raises(DataError, match="image im1 has labels.*outside"):
        cam_infer.run(
            setup["manifest"],
            setup["weights"],
            MODEL_CFG,
            2,
            cfg(),
            setup["root"] / "o",
            0,
            1,
            "cpu",
        )
    with pytest.raises(ConfigError, match="make_cam.scales"):
        make(setup, "o", cfg(scales=[]))


def test_store_float16_writes_format_1_and_levels_round_it_up(setup: dict[str, Path]) -> None:
    """``store: float16`` keeps half precision (format 1); the default levels are the same
    CAMs rounded up to the 0.005 grid (the float16 values differ by their own rounding)."""
    half = make(setup, "half", cfg(store="float16"))
    levels = make(setup, "levels", cfg())
    for i in range(len(SIZES)):
        a, b = read_npz(half / f"im{i}.npz"), read_npz(levels / f"im{i}.npz")
        assert a["cam"].dtype == np.float16 and int(a["format"]) == 1
        assert b["cam"].dtype == np.uint8 and int(b["format"]) == 2
        diff = camfile.dequantise(b["cam"]) - a["cam"].astype(np.float32)
        assert diff.size == 0 or (diff.min() > -1e-3 and diff.max() < 1 / 200 + 1e-3)
        np.testing.assert_array_equal(a["cam_strided"], b["cam_strided"])
    with pytest.raises(ConfigError, match="make_cam.store"):
        cam_infer.check_config(cfg(store="int4"))
