"""The user's path, as written: the README's command lines, run from the root of a clone
(a copy of this repository) with the shipped config files and profiles, against fake VOC and
COCO trees placed where the shipped configs look for them.

- every README ``snakemake`` line dry-runs as printed;
- the config every job sees (recorded by the ``run_config`` job) equals the schema defaults
  plus the given files, for every shipped config, from the root and from another folder;
- ``snakemake --cores 8 --resources gpu=4 --configfile config/voc12.yaml`` keeps four
  single-GPU jobs in flight on four distinct (emulated) GPUs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.workflow_util import (
    NO_WEB,
    ROOT,
    copy_repo,
    expected_config,
    fake_checkpoints,
    fake_coco,
    fake_voc,
    user_env,
)

pytestmark = pytest.mark.workflow

VOC_IDS = {
    "train_aug": [f"2007_{i:06d}" for i in range(16)],
    "train": [f"2007_{i:06d}" for i in range(4)],
    "val": ["2008_000001", "2008_000002"],
    "test": ["2008_000003", "2009_000012", "2010_000005"],  # images only, as VOC2012test.tar
}


def readme_commands(doc: str = "README.md", program: str = "snakemake") -> list[str]:
    """The ``program`` lines of a document's bash blocks (``snakemake``, possibly after
    ``VAR=value`` assignments), without their comments."""
    text = (ROOT / doc).read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            cmd = line.split("#", 1)[0].strip()
            if re.match(rf"(\w+=\S*\s+)*{re.escape(program)} ", cmd):
                lines.append(cmd)
    return lines


def run(
    cmd: str, cwd: Path, env: dict[str, str], timeout: int = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the repository with fake VOC and COCO trees where the paper configs look."""
    repo = copy_repo(tmp_path_factory.mktemp("user") / "qaclims")
    voc = yaml.safe_load((repo / "config/voc12.yaml").read_text())["dataset"]["root"]
    coco = yaml.safe_load((repo / "config/coco14.yaml").read_text())["dataset"]["root"]
    fake_voc(repo / voc, VOC_IDS, size=(24, 32), unlabelled=("test",))
    fake_coco(repo / coco)
    for name in ("voc12", "coco14", "deeplab/clims-imagenet", "deeplab/deeplab-pytorch-coco"):
        fake_checkpoints(repo, repo / "config" / f"{name}.yaml")
    yield repo


# ---------------------------------------------------------------- the resolved config


CASES = {
    "demo (no --configfile)": [],
    "smoke overlay": ["config/config.yaml", "config/smoke.yaml"],
    "voc12": ["config/voc12.yaml"],
    "coco14": ["config/coco14.yaml"],
    "voc12 + user overlay": ["config/voc12.yaml", "mine.yaml"],
    "voc12 + VOC test set": ["config/voc12.yaml", "config/voc12-test.yaml"],
    "voc12 + DeepLab COCO-init recipe": [
        "config/voc12.yaml",
        "config/deeplab/deeplab-pytorch-coco.yaml",
    ],
}


RESOLVE = [(c, False) for c in CASES] + [
    ("demo (no --configfile)", True),
    ("voc12 + user overlay", True),
]


@pytest.mark.parametrize(
    ("case", "elsewhere"),
    RESOLVE,
    ids=[f"{c}, {'from elsewhere' if e else 'from the root'}" for c, e in RESOLVE],
)
def test_a_job_sees_schema_defaults_plus_the_given_files(
    clone: Path, tmp_path: Path, case: str, elsewhere: bool
) -> None:
    (clone / "mine.yaml").write_text(yaml.safe_dump({"train_ritc": {"w_bg": 4.0}, "run": "mine"}))
    files = [clone / f for f in CASES[case]]
    expected = expected_config(files or [clone / "config/config.yaml"])
    cwd = tmp_path / "elsewhere" if elsewhere else clone
    if elsewhere:  # the shipped configs' relative data roots, seen from there
        cwd.mkdir()
        (cwd / "data").symlink_to(clone / "data")
        (cwd / "checkpoints").symlink_to(clone / "checkpoints")
    snakefile = f"-s {clone / 'Snakefile'} " if elsewhere else ""
    given = " ".join(str(f) if elsewhere else str(f.relative_to(clone)) for f in files)
    cmd = f"snakemake {snakefile}--cores 1 {'--configfile ' + given if files else ''} "
    target = f"results/{expected['run']}/config.yaml"
    r = run(cmd + "-- " + target, cwd, user_env(tmp_path))  # --configfile takes several files
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    seen = yaml.safe_load((cwd / target).read_text())
    assert seen == expected
    if not files:
        assert seen["dataset"]["name"] == "synthetic"
    elif "voc12" in case:  # the demo leaks nothing into a paper run
        assert seen["clip"]["name"] == "ViT-L-14" and seen["train_ritc"]["lr"] == 0.00035
        assert seen["vqa"]["precomputed"]["format"] == "qaclims_npy"


# ------------------------------------------------------------------ the docs' commands

DOCS = ("docs/REPRODUCING.md", "docs/EXPERIMENTS.md", "config/README.md")
DOC_COMMANDS = [(d, c) for d in DOCS for c in readme_commands(d) if c not in readme_commands()]


def doc_overlays(doc: str) -> dict[str, str]:
    """The YAML blocks of a document that name their file on their first line
    (``# mine.yaml``): file name -> the block as printed."""
    text = (ROOT / doc).read_text()
    out = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        m = re.match(r"# ([\w.-]+\.yaml)\n", block)
        if m:
            out[m.group(1)] = block
    return out


def test_the_docs_name_their_commands_and_overlays() -> None:
    """What the next test runs exists: REPRODUCING's commands and its two overlays."""
    commands = [c for d, c in DOC_COMMANDS if d == "docs/REPRODUCING.md"]
    assert any("mine.yaml" in c for c in commands) and any("released.yaml" in c for c in commands)
    assert any("config/deviations-demo.yaml" in c for c in commands)
    assert set(doc_overlays("docs/REPRODUCING.md")) == {"mine.yaml", "released.yaml"}


@pytest.mark.parametrize(("doc", "cmd"), DOC_COMMANDS, ids=[c for _, c in DOC_COMMANDS])
def test_docs_command_dry_runs_as_printed(clone: Path, tmp_path: Path, doc: str, cmd: str) -> None:
    """Every snakemake command of docs/ and config/README.md (those the README does not
    already give) dry-runs from the repository root as printed, with the overlay files the
    document prints written as printed and fakes of the files they name (the authors'
    answer files and networks) where they say."""
    import torch

    from tests.test_released import ReferenceNet
    from tests.test_vqa import authors_npy

    work = copy_repo(tmp_path / "qaclims", src=clone)
    for name, text in doc_overlays(doc).items():
        (work / name).write_text(text)
        cfg = yaml.safe_load(text)
        for i, path in enumerate((cfg.get("released") or {}).values()):
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(i)
            torch.save(ReferenceNet().state_dict(), work / path)
        pre = (cfg.get("vqa") or {}).get("precomputed") or {}
        for kind in ("fg", "bg"):
            if kind in pre:
                (work / pre[kind]).parent.mkdir(parents=True, exist_ok=True)
                ids = VOC_IDS["train_aug"]
                authors_npy(work / pre[kind], ids, {i: ["dog"] for i in ids})
    r = run(cmd + " -n", work, user_env(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    planned = out.split("Job stats:")[1][:3000]
    if "released.yaml" in cmd:
        assert "released_cam" in planned and "released_ritc" in planned
        assert not re.search(r"^(train_ritc|vqa|corpus) ", planned, re.M)
    if "mine.yaml" in cmd:  # the authors' answers: no BLIP, no tiny networks
        assert re.search(r"^vqa ", planned, re.M) and "train_tiny" not in planned
    if "deviations-demo.yaml" in cmd:
        assert "compare_experiments" in planned and "train_deeplab_cell" in planned


# ------------------------------------------------------------------ README dry runs


DRY_RUNNABLE = [c for c in readme_commands() if "--report" not in c and "--unlock" not in c]


@pytest.mark.parametrize("cmd", DRY_RUNNABLE)
def test_readme_command_dry_runs_as_printed(clone: Path, tmp_path: Path, cmd: str) -> None:
    r = run(cmd + " -n", clone, user_env(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "Job stats:" in out
    if "config/voc12.yaml" in cmd or "config/coco14.yaml" in cmd:  # nothing of the demo
        assert "train_tiny_clip" not in out.split("Job stats:")[1][:2000]
    if "--profile profiles/slurm" in cmd:
        # the cluster run loads profiles/default too: it must add no cores and no GPU cap
        assert "--cores" not in cmd
        default = yaml.safe_load((clone / "profiles/default/config.v8+.yaml").read_text())
        assert not {"cores", "resources", "jobs"} & set(default)
        blocks = re.findall(r"rule make_cam:\n(?:    .*\n)+", out)
        assert blocks and all("gpu=1" in b and "slurm_partition=gpu" in b for b in blocks)
        assert all("cpus_per_gpu=8" in b for b in blocks), blocks[0]


def test_an_offline_run_without_the_models_stops_before_any_job_and_says_how_to_fetch(
    clone: Path, tmp_path: Path
) -> None:
    """The README's offline line, with caches that lack the models: the parse stops naming
    every key whose model is missing and the fetch command; the README's fetch line, as
    printed, names each model (here it cannot download: exit status 1); with the models
    cached (the test session's placeholders, as after a fetch) the same line plans the run."""
    offline = next(c for c in readme_commands() if c.startswith("HF_HUB_OFFLINE=1 snakemake"))
    fetch = readme_commands(program="python -m qaclims.workflow.pretrained")
    assert fetch == ["python -m qaclims.workflow.pretrained --configfile config/voc12.yaml --fetch"]
    env = user_env(tmp_path)
    cached = {k: env[k] for k in ("HF_HUB_CACHE", "TORCH_HOME")}  # conftest's, filled
    env.update(HF_HUB_CACHE=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"))
    r = run(offline + " -n", clone, env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    for key in ("vqa.model", "clip.pretrained", "train_cam.model.backbone.weights",
                "train_irn.model.backbone.weights"):  # fmt: skip
        assert f"  - {key}: " in out, key
    assert "python -m qaclims.workflow.pretrained --fetch" in out
    assert "Job stats:" not in out
    # not offline: nothing is checked at parse time (the jobs download on first use)
    online = {k: v for k, v in env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    r = run(offline.replace("HF_HUB_OFFLINE=1 ", "") + " -n", clone, online)
    assert r.returncode == 0 and "Job stats:" in r.stdout + r.stderr, r.stderr[-3000:]
    # the fetch line as printed, where nothing can be downloaded: each model named, status 1
    r = run(fetch[0], clone, {**env, **NO_WEB})
    assert r.returncode == 1, r.stdout + r.stderr
    assert sum("download failed" in line for line in r.stdout.splitlines()) == 3, r.stdout
    # with the models in the caches the offline line plans the whole run
    r = run(offline + " -n", clone, {**env, **cached})
    assert r.returncode == 0 and "Job stats:" in r.stdout + r.stderr, r.stderr[-3000:]


def test_readme_unlock_releases_a_stale_lock(clone: Path, tmp_path: Path) -> None:
    """A run killed with SIGKILL leaves Snakemake's lock; the README's --unlock line clears it."""
    cmd = next(c for c in readme_commands() if "--unlock" in c)
    env = user_env(tmp_path)
    locks = clone / ".snakemake" / "locks"
    job = "snakemake --cores 1 --configfile config/voc12.yaml -R run_config -- "
    job += "results/voc12/config.yaml"
    victim = subprocess.Popen(["bash", "-c", job], cwd=clone, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(locks.glob("*.lock")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert list(locks.glob("*.lock")), "the run ended before it locked"
    blocked = run(job, clone, env)
    assert blocked.returncode != 0 and "locked" in (blocked.stdout + blocked.stderr).lower()
    r = run(cmd, clone, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(locks.glob("*.lock"))
    assert run(job, clone, env).returncode == 0


def test_plain_snakemake_without_cores_says_what_to_do(clone: Path, tmp_path: Path) -> None:
    r = run("snakemake", clone, user_env(tmp_path), timeout=300)
    assert r.returncode != 0 and "cores" in (r.stdout + r.stderr).lower()


# ------------------------------------------------------------- four GPUs, four jobs


def _stamp(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_readme_command_keeps_four_gpu_jobs_in_flight(clone: Path, tmp_path: Path) -> None:
    """`snakemake --cores 8 --resources gpu=4 --configfile config/voc12.yaml` with 4 emulated
    GPUs: the 8 make_cam shards of the baseline run 4 at a time, each on its own GPU.

    The baseline CAM network is given (a released-model set-up: training a ResNet-50 on two
    CPU cores would take an hour), so the run starts at make_cam.
    """
    cmd = next(c for c in readme_commands() if "config/voc12.yaml" in c and "--resources" in c)
    assert cmd.startswith("snakemake --cores 8 --resources gpu=4 ")
    env = user_env(tmp_path, gpus=4)
    work = clone
    r = run(cmd + " -- results/voc12/data/classes.json", work, env)
    assert r.returncode == 0, r.stderr[-4000:]
    _released_cam_model(work)
    cfg = yaml.safe_load((work / "config/voc12.yaml").read_text())
    n = cfg["shards"]
    targets = " ".join(f"results/voc12/make_cam/cam/train_aug/{k:03d}" for k in range(n))
    r = run(f"{cmd} -- {targets}", work, env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "Shell command: None" not in out
    spans = []
    for k in range(n):
        log = (work / f"logs/voc12/make_cam/cam_train_aug_{k:03d}.log").read_text().splitlines()
        got = next(line for line in log if "using GPUs" in line)
        gpu = re.search(r"using GPUs \['(\d)'\]", got).group(1)  # type: ignore[union-attr]
        assert any("holds GPU(s)" in line and "running on the CPU" in line for line in log)
        spans.append((_stamp(got), _stamp(log[-1]), gpu))
        assert f"[make_cam cam/train_aug/{k:03d}] " in out  # terminal lines are tagged
    peak = 0
    for start, _, _ in spans:
        live = [s for s in spans if s[0] <= start < s[1]]
        peak = max(peak, len(live))
        assert len({g for *_, g in live}) == len(live), f"two running jobs share a GPU: {live}"
    assert peak == 4, spans
    assert {g for *_, g in spans} == {"0", "1", "2", "3"}


def _released_cam_model(work: Path) -> None:
    """A ResNet-50 CAM network in the project's format (random weights) and its history."""
    code = """
import pandas as pd, torch
from qaclims.core import io
from qaclims.core.config import from_mapping
from qaclims.models.cam_resnet import CamModelConfig, CamNet
from qaclims.training import save_weights
import dataclasses, yaml
cfg = yaml.safe_load(open("config/voc12.yaml"))["train_cam"]["model"]
m = from_mapping(CamModelConfig, cfg, "train_cam.model")
m = dataclasses.replace(m, backbone=dataclasses.replace(m.backbone, weights="none"))
torch.manual_seed(0)
save_weights("results/voc12/train_cam/model.safetensors", CamNet(m, 20))
io.write_parquet("results/voc12/train_cam/history.parquet", pd.DataFrame({"step": [0]}))
"""
    subprocess.run([sys.executable, "-c", code], cwd=work, check=True, timeout=300)


# --------------------------------------------------------------------- data edits


def _planned(out: str) -> set[str]:
    return set(re.findall(r"^rule (\w+):$", out, re.M))


def test_editing_voc_data_reruns_the_manifests(clone: Path, tmp_path: Path) -> None:
    env = user_env(tmp_path)
    build = "snakemake --cores 1 --configfile config/voc12.yaml -- results/voc12/data/classes.json"
    dry = build.replace("--cores 1", "--cores 1 -n")
    assert run(build, clone, env).returncode == 0
    assert _planned(run(dry, clone, env).stdout) == set()
    root = clone / "data/VOCdevkit/VOC2012"
    train = root / "ImageSets/Segmentation/train.txt"
    image = root / "JPEGImages" / f"{VOC_IDS['train'][0]}.jpg"
    xml = root / "Annotations" / f"{VOC_IDS['train'][1]}.xml"
    edits = {
        "split list": lambda: train.write_text("\n".join(VOC_IDS["train"][:-1]) + "\n"),
        "image": lambda: image.write_bytes(image.read_bytes()),  # rewritten in place
        "annotation": lambda: xml.write_text(
            "<annotation><object><name>cat</name></object></annotation>"
        ),
    }
    for what, edit in edits.items():
        time.sleep(0.01)
        edit()
        assert "dataset" in _planned(run(dry, clone, env).stdout), what
        assert run(build, clone, env).returncode == 0, what
    manifest = pd.read_parquet(clone / "results/voc12/data/manifest/train.parquet")
    assert len(manifest) == len(VOC_IDS["train"]) - 1


def test_coco_masks_are_outputs_and_follow_the_annotations(clone: Path, tmp_path: Path) -> None:
    env = user_env(tmp_path)
    build = (
        "snakemake --cores 1 --configfile config/coco14.yaml -- results/coco14/data/classes.json"
    )
    assert run(build, clone, env).returncode == 0
    masks = sorted((clone / "results/coco14/data/coco_masks/val").glob("*.png"))
    assert masks
    before = np.asarray(Image.open(masks[0]))
    manifest = clone / "results/coco14/data/manifest/val.parquet"
    labels_before = [list(x) for x in pd.read_parquet(manifest)["labels"]]
    ann_file = clone / "data/coco/annotations/instances_val2014.json"
    ann = json.loads(ann_file.read_text())
    for a in ann["annotations"]:
        a["category_id"] = 1  # dog -> person
    ann_file.write_text(json.dumps(ann))
    dry = run(build.replace("--cores 1", "--cores 1 -n"), clone, env).stdout
    assert "dataset" in _planned(dry)
    assert run(build, clone, env).returncode == 0
    after = np.asarray(Image.open(masks[0]))
    assert set(np.unique(before)) - {0, 255} != set(np.unique(after)) - {0, 255}
    labels_after = [list(x) for x in pd.read_parquet(manifest)["labels"]]
    assert labels_before != labels_after and all(x == [0] for x in labels_after)  # person: 0
    assert set(np.unique(after)) - {0, 255} == {1}  # label value = class index + 1


def test_released_models_replace_training_and_feed_make_cam(clone: Path, tmp_path: Path) -> None:
    """docs/REPRODUCING.md's first step: the authors' res50_cam.pth and res50_qa_clims.pth
    (state dicts in IRN's naming, built here from torchvision's ResNet-50) evaluated on the
    VOC config: no training, VQA, corpus or text job is planned; both CAMs are scored."""
    import torch

    from tests.test_released import ReferenceNet

    work = copy_repo(tmp_path / "qaclims", src=clone)
    for i, name in enumerate(("res50_cam.pth", "res50_qa_clims.pth")):
        torch.manual_seed(i)
        torch.save(ReferenceNet().state_dict(), work / name)
    (work / "released.yaml").write_text(
        "released: {cam: res50_cam.pth, ritc: res50_qa_clims.pth}\nshards: 2\n"
    )
    env = user_env(tmp_path)
    cmd = "snakemake --cores 2 --configfile config/voc12.yaml released.yaml --"
    targets = "".join(f" results/voc12/eval_cam/{m}/train/summary.json" for m in ("cam", "ritc"))
    r = run(cmd.replace("--cores 2", "-n --cores 2") + targets, work, env)
    assert r.returncode == 0, r.stderr[-4000:]
    planned = r.stdout + r.stderr
    assert "released_cam" in planned and "released_ritc" in planned
    for rule in ("train_cam", "train_ritc", "vqa", "corpus", "text_features"):
        assert not re.search(rf"^rule {rule}:", planned, re.M), rule
    r = run(cmd + targets, work, env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    scores = {}
    for model in ("cam", "ritc"):
        s = json.loads((work / f"results/voc12/eval_cam/{model}/train/summary.json").read_text())
        scores[model] = s["miou"]
        assert 0.0 <= s["miou"] <= 1.0
    assert scores["cam"] != scores["ritc"]  # two different networks were read


def test_released_deeplab_replaces_training_and_is_scored(clone: Path, tmp_path: Path) -> None:
    """A trained deeplab-pytorch DeepLab (full ``DeepLabV2_ResNet101_MSC`` state dict, ASPP
    included, built here in its naming) on the VOC config: nothing upstream of DeepLab is
    planned, the network is converted, val is segmented (MSC + CRF) and scored."""
    import torch

    from tests.test_released import random_deeplab_pytorch_net

    work = copy_repo(tmp_path / "qaclims", src=clone)
    torch.save(random_deeplab_pytorch_net(21, seed=0).state_dict(), work / "checkpoint_30000.pth")
    (work / "released.yaml").write_text("released: {deeplab: checkpoint_30000.pth}\nshards: 2\n")
    env = user_env(tmp_path)
    cmd = "snakemake --cores 2 --configfile config/voc12.yaml released.yaml --"
    target = " results/voc12/eval_deeplab/val/crf/summary.json"
    r = run(cmd.replace("--cores 2", "-n --cores 2") + target, work, env)
    assert r.returncode == 0, r.stderr[-4000:]
    planned = r.stdout + r.stderr
    assert re.search(r"^rule released_deeplab:", planned, re.M)
    for rule in ("train_deeplab", "make_sem_seg", "train_irn", "train_cam", "make_cam"):
        assert not re.search(rf"^rule {rule}:", planned, re.M), rule
    r = run(cmd + target, work, env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    s = json.loads((work / "results/voc12/eval_deeplab/val/crf/summary.json").read_text())
    assert 0.0 <= s["miou"] <= 1.0
    assert len(list((work / "results/voc12/infer_deeplab/val/crf").glob("*/*.png"))) == 2


def test_voc_test_submission_added_to_a_finished_run(clone: Path, tmp_path: Path) -> None:
    """`--configfile config/voc12.yaml config/voc12-test.yaml` on a run whose DeepLab is done
    (here a released one, scored on val first): only the test manifest, DeepLab on test and
    the archive are planned (and the config record); the archive holds one VOC-palette PNG
    per test id under comp5_test_cls (CLIMS's folder), equal to infer_deeplab's CRF masks,
    and no label of the test split is read (its ids have no annotation or label PNG)."""
    import tarfile

    import torch

    from tests.test_released import random_deeplab_pytorch_net

    work = copy_repo(tmp_path / "qaclims", src=clone)
    torch.save(random_deeplab_pytorch_net(21, seed=0).state_dict(), work / "checkpoint_30000.pth")
    (work / "released.yaml").write_text("released: {deeplab: checkpoint_30000.pth}\nshards: 2\n")
    env = user_env(tmp_path)
    val = " results/voc12/eval_deeplab/val/crf/summary.json results/voc12/config.yaml"
    r = run("snakemake --cores 2 --configfile config/voc12.yaml released.yaml --" + val, work, env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]

    overlays = "config/voc12.yaml config/voc12-test.yaml released.yaml"
    cmd = f"snakemake --cores 2 --configfile {overlays} --"
    archive = "results/voc12/submission/test.tar.gz"
    r = run(cmd.replace("--cores 2", "-n --cores 2") + val + " " + archive, work, env)
    assert r.returncode == 0, r.stderr[-4000:]
    planned = re.findall(r"^(?:local)?rule (\w+):", r.stdout + r.stderr, re.M)
    assert sorted(planned) == sorted(
        ["run_config", "test_manifest", "infer_deeplab", "infer_deeplab", "voc_submission"]
    )
    r = run(cmd + val + " " + archive, work, env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]

    m = pd.read_parquet(work / "results/voc12/data/manifest/test.parquet")
    assert sorted(m["image_id"]) == VOC_IDS["test"]
    assert all(len(lab) == 0 for lab in m["labels"]) and set(m["gt_path"]) == {""}
    crf = {p.stem: p for p in (work / "results/voc12/infer_deeplab/test/crf").glob("*/*.png")}
    assert sorted(crf) == VOC_IDS["test"]
    with tarfile.open(work / archive) as tar:
        files = [t for t in tar.getmembers() if t.isfile()]
        names = [t.name for t in files]
        assert names == [
            f"results/VOC2012/Segmentation/comp5_test_cls/{i}.png" for i in VOC_IDS["test"]
        ]
        for t in files:
            im = Image.open(tar.extractfile(t))  # type: ignore[arg-type]
            assert im.mode == "P" and im.size == (32, 24)
            want = np.asarray(Image.open(crf[Path(t.name).stem]))
            np.testing.assert_array_equal(np.asarray(im), want)
    summary = json.loads((work / "results/voc12/submission/test.json").read_text())
    assert (summary["images"], summary["variant"], summary["competition"]) == (3, "crf", "comp5")
    # editing a test image reruns the test branch only
    voc = yaml.safe_load((work / "config/voc12.yaml").read_text())["dataset"]["root"]
    img = work / voc / "JPEGImages" / f"{VOC_IDS['test'][0]}.jpg"
    Image.new("RGB", (32, 24), (9, 9, 9)).save(img)
    r = run(cmd.replace("--cores 2", "-n --cores 2") + val + " " + archive, work, env)
    assert r.returncode == 0, r.stderr[-4000:]
    planned = re.findall(r"^(?:local)?rule (\w+):", r.stdout + r.stderr, re.M)
    assert sorted(planned) == sorted(["test_manifest", "infer_deeplab", "infer_deeplab",
                                      "voc_submission"])  # fmt: skip
    # the report quotes the archive under its stage table
    r = run(
        cmd.replace("--cores 2", "-n --cores 2") + " results/voc12/report/index.html", work, env
    )
    assert r.returncode == 0, r.stderr[-4000:]
    block = re.search(r"^rule report:\n((?:    .*\n)+)", r.stdout + r.stderr, re.M)
    assert block and "results/voc12/submission/test.json" in block.group(1)
