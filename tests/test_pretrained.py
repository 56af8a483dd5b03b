"""The pretrained models a run downloads (qaclims.models.pretrained, model_cache and the
command qaclims.workflow.pretrained): which ones a config needs, that the cache lookup finds
exactly what the real loaders load (torchvision's ImageNet weights, a BLIP under its hub
name, open_clip's hub-hosted weights), the listing / fetching command, and the offline
parse-time check.

The cache tests run in a subprocess: huggingface_hub fixes its cache folder when imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qaclims.models import model_cache, pretrained
from qaclims.report.gpu_hours import load_config
from tests.workflow_util import NO_WEB, ROOT

VOC = ROOT / "config" / "voc12.yaml"
BLIP_HUB = "Salesforce/blip-vqa-capfilt-large"


def _load(tmp_path: Path, *overlays: dict[str, Any], base: Path = VOC) -> dict[str, Any]:
    files = [base]
    for i, over in enumerate(overlays):
        files.append(tmp_path / f"over{i}.yaml")
        files[-1].write_text(yaml.safe_dump(over))
    return load_config(files)


def _as_set(config: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {(p.key, p.source, p.name, p.tag) for p in pretrained.needed(config)}


VOC_RAW = yaml.safe_load(VOC.read_text())
BLIP = ("vqa.model", "transformers", VOC_RAW["vqa"]["model"], "")
CLIP = ("clip.pretrained", "open_clip", "ViT-L-14", "openai")  # docs/REPRODUCING.md
CAM = ("train_cam.model.backbone.weights", "torchvision", "resnet50", "IMAGENET1K_V1")
IRN = ("train_irn.model.backbone.weights", "torchvision", "resnet50", "IMAGENET1K_V1")

CASES: dict[str, tuple[list[dict[str, Any]], set[tuple[str, str, str, str]]]] = {
    # the paper config: BLIP, CLIP ViT-L/14 (OpenAI), ImageNet ResNet-50 for the CAM network
    # and IRN; DeepLab starts from a checkpoint file (checked as a file, not downloaded)
    "voc12": ([], {BLIP, CLIP, CAM, IRN}),
    "released CAM and RITC networks": (
        [{"released": {"cam": "a.pth", "ritc": "b.pth"}}],
        {IRN},
    ),
    "precomputed answers": ([{"vqa": {"backend": "precomputed"}}], {CLIP, CAM, IRN}),
    "BLIP from a local folder": ([{"vqa": {"model": "./models/blip"}}], {CLIP, CAM, IRN}),
    "CLIP weights from a file": (
        [{"clip": {"pretrained": "/models/vit-l-14.pt"}}],
        {BLIP, CAM, IRN},
    ),
    "IRN on train_cam's network": (
        [{"train_irn": {"backbone_from": "train_cam"}}],
        {BLIP, CLIP, CAM},
    ),
    "DeepLab from ImageNet ResNet-101": (
        [
            {
                "train_deeplab": {
                    "model": {"style": "torchvision", "backbone": {"weights": "imagenet"}}
                }
            }
        ],
        {
            BLIP,
            CLIP,
            CAM,
            IRN,
            ("train_deeplab.model.backbone.weights", "torchvision", "resnet101", "IMAGENET1K_V1"),
        },
    ),
    "baseline CAMs only": (
        [{"methods": ["cam"], "refine": {"enabled": False}, "deeplab": {"enabled": False}}],
        {CAM},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_needed_lists_what_the_planned_dag_downloads(tmp_path: Path, case: str) -> None:
    overlays, want = CASES[case]
    assert _as_set(_load(tmp_path, *overlays)) == want


def test_the_demo_downloads_nothing() -> None:
    assert pretrained.needed(load_config([ROOT / "config" / "config.yaml"])) == []


@pytest.mark.parametrize(
    ("value", "hub"),
    [
        (BLIP_HUB, True),
        ("results/demo/train_tiny_blip", False),  # two slashes: a folder
        ("./blip", False),
        ("~/blip", False),
        ("/abs/blip", False),
        ("blip", False),
    ],
)
def test_hub_names_and_folders(value: str, hub: bool) -> None:
    assert pretrained.is_hub_name(value) is hub


AGREE = r"""
import json, os, sys
from pathlib import Path
import torch
from torch import nn
from qaclims.models import model_cache as mc, pretrained as pt
from tests.workflow_util import hf_cache_put

out = {}
tmp = Path(sys.argv[1])
# torchvision: random resnet18 weights where locate says; the backbone's loader must read them
tv = pt.Pretrained("k", "torchvision", "resnet18", "IMAGENET1K_V1")
out["tv_before"] = mc.locate(tv)
import torchvision
sd = torchvision.models.resnet18().state_dict()
path = mc.torchvision_file("resnet18", "IMAGENET1K_V1")
path.parent.mkdir(parents=True)
torch.save(sd, path)
out["tv_after"] = str(mc.locate(tv))
from qaclims.core.config import from_mapping
from qaclims.models.backbone import BackboneConfig, build_backbone
net = build_backbone(from_mapping(BackboneConfig, {"arch": "resnet18", "weights": "imagenet"}, "b"))
conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
out["tv_loaded_equal"] = bool(torch.equal(conv.weight, sd["conv1.weight"]))

# transformers: a tiny BLIP put into the hub cache under the paper's hub name
from qaclims.qape import blip
from qaclims.core.config import from_mapping as fm
from qaclims.qape.vqa_config import VqaConfig
bl = pt.Pretrained("vqa.model", "transformers", sys.argv[2])
out["blip_before"] = mc.locate(bl)
folder = blip.write_tiny_blip(tmp / "tiny", ["dog", "grass"], seed=3)
for f in sorted(folder.iterdir()):
    hf_cache_put(Path(os.environ["HF_HUB_CACHE"]), sys.argv[2], f.name, f)
out["blip_after"] = str(mc.locate(bl))
ans = blip.BlipAnswerer.load(fm(VqaConfig, {"model": sys.argv[2], "image_size": 32}, "vqa"), "cpu")
out["blip_key"] = blip.model_key(fm(VqaConfig, {"model": sys.argv[2]}, "vqa"), torch.float32)
from safetensors.torch import load_file
saved = load_file(folder / "model.safetensors")
got = ans.model.state_dict()
out["blip_loaded_equal"] = all(torch.equal(got[k], v) for k, v in saved.items() if k in got)
out["blip_keys_compared"] = sum(k in got for k in saved)

# open_clip: ViT-L-14 / openai resolved by open_clip's own download_pretrained (offline)
import open_clip
oc = pt.Pretrained("clip.pretrained", "open_clip", "ViT-L-14", "openai")
cfg = open_clip.get_pretrained_cfg("ViT-L-14", "openai")
out["oc_before"] = mc.locate(oc)
try:
    open_clip.download_pretrained(cfg)
    out["oc_lib_before"] = "found"
except Exception as e:
    out["oc_lib_before"] = type(e).__name__
repo, files = mc.open_clip_files("ViT-L-14", "openai")
hf_cache_put(Path(os.environ["HF_HUB_CACHE"]), repo, files[-1], b"placeholder")
out["oc_after"] = str(mc.locate(oc))
out["oc_lib_after"] = str(Path(open_clip.download_pretrained(cfg)).resolve())
print(json.dumps(out))
"""


def test_locate_finds_what_the_real_loaders_load(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        HF_HUB_CACHE=str(tmp_path / "hf"),
        TORCH_HOME=str(tmp_path / "torch"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    )
    r = subprocess.run(
        [sys.executable, "-c", AGREE, str(tmp_path), BLIP_HUB],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # nothing cached: not found, and the libraries' own offline lookups fail as well
    assert out["tv_before"] is None and out["blip_before"] is None and out["oc_before"] is None
    assert out["oc_lib_before"] != "found"
    # torchvision: found where written, and the backbone's ImageNet loader read that file
    assert out["tv_after"] == str(
        tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    )
    assert out["tv_loaded_equal"]
    # BLIP under its hub name: the snapshot folder, and the VQA stage's loader loads it offline
    assert Path(out["blip_after"]).parent.name == "snapshots"
    assert (
        Path(out["blip_after"]).parent.parent.name == "models--Salesforce--blip-vqa-capfilt-large"
    )
    assert out["blip_loaded_equal"] and out["blip_keys_compared"] > 10
    # the VQA cache's model key names the revision the hub name resolved to
    assert out["blip_key"].startswith(f"{BLIP_HUB}@{Path(out['blip_after']).name}|")
    # open_clip: the same file open_clip itself resolves
    assert Path(out["oc_after"]).resolve() == Path(out["oc_lib_after"])


def _cli(args: list[str], env_over: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **env_over)
    return subprocess.run(
        [sys.executable, "-m", "qaclims.workflow.pretrained", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_the_listing_command_says_where_each_model_is_and_fails_while_one_is_missing(
    tmp_path: Path,
) -> None:
    args = ["--configfile", "config/voc12.yaml"]
    # the test session's caches hold every model of the paper configs (conftest)
    r = _cli(args, {})
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3  # BLIP, CLIP, one ResNet-50 for train_cam and train_irn
    assert any(
        line.startswith("train_cam.model.backbone.weights, train_irn.model.backbone.weights:")
        for line in lines
    )
    for line in lines:
        where = Path(line.rsplit(": ", 1)[1])
        assert where.exists() and (
            str(where).startswith(os.environ["HF_HUB_CACHE"])
            or str(where).startswith(os.environ["TORCH_HOME"])
        ), line
    # empty caches: every model is NOT CACHED, exit status 1
    empty = {"HF_HUB_CACHE": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    r = _cli(args, empty)
    assert r.returncode == 1
    assert sum("NOT CACHED" in line for line in r.stdout.splitlines()) == 3
    # --fetch without the internet (the hub offline, the web behind a closed proxy port, so
    # no test downloads even where the internet is reachable): each download fails, says
    # so, and the exit status is 1
    r = _cli([*args, "--fetch"], {**empty, **NO_WEB})
    assert r.returncode == 1
    assert sum("download failed" in line for line in r.stdout.splitlines()) == 3
    assert r.stdout.startswith("HF_HUB_OFFLINE is set")  # the tests' env: said first
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth").exists()


def test_the_demo_command_needs_nothing() -> None:
    r = _cli([], {})
    assert r.returncode == 0 and "downloads no pretrained model" in r.stdout


def test_the_command_names_a_bad_config_as_the_workflow_does(tmp_path: Path) -> None:
    r = _cli(["--configfile", "config/voc12.yaml", str(tmp_path / "nope.yaml")], {})
    assert r.returncode == 2 and f"config file {tmp_path / 'nope.yaml'} does not exist" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_cam:\n  batch_size: -3\n")
    r = _cli(["--configfile", "config/voc12.yaml", str(bad)], {})
    assert r.returncode == 2 and "train_cam.batch_size" in r.stderr, r.stderr


def test_the_offline_check_remembers_what_it_found_only_while_it_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qaclims.core.errors import ConfigError
    from qaclims.workflow import preflight

    cfg = load_config([VOC])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # BLIP, CLIP: conftest's caches
    monkeypatch.delenv("HF_HUB_OFFLINE")
    preflight.check_pretrained(cfg, cache_dir=tmp_path)  # online: nothing is checked
    assert not list(tmp_path.glob("pretrained-*.json"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        preflight.check_pretrained(cfg, cache_dir=tmp_path)
    msg = str(e.value)
    assert "train_cam.model.backbone.weights" in msg and "train_irn.model.backbone.weights" in msg
    assert "vqa.model" not in msg and "clip.pretrained" not in msg
    resnet = model_cache.torchvision_file("resnet50", "IMAGENET1K_V1")
    resnet.parent.mkdir(parents=True)
    resnet.write_bytes(b"placeholder")
    preflight.check_pretrained(cfg, cache_dir=tmp_path)
    (marker,) = tmp_path.glob("pretrained-*.json")
    assert str(resnet) in json.loads(marker.read_text())
    with monkeypatch.context() as m:  # remembered: no lookup at the next parse
        m.setattr(model_cache, "locate", lambda p: pytest.fail(f"looked up {p.key}"))
        preflight.check_pretrained(cfg, cache_dir=tmp_path)
    resnet.unlink()  # gone since: looked up again, and the run stops
    with pytest.raises(ConfigError, match="train_cam.model.backbone.weights"):
        preflight.check_pretrained(cfg, cache_dir=tmp_path)
