"""Helpers for tests that drive Snakemake as a user would (a subprocess per call)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "config.yaml"
SMOKE = ROOT / "config" / "smoke.yaml"


def snakemake(
    workdir: Path,
    *args: str,
    configfiles: tuple[Path, ...] = (CONFIG, SMOKE),
    check: bool = True,
    timeout: int = 1200,
    repo: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m snakemake`` on ``repo``'s Snakefile in ``workdir``, with ``repo``'s
    workflow profile (``profiles/default``, which Snakemake loads on a user's every run)."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(repo / "Snakefile"),
        "--directory",
        str(workdir),
        "--workflow-profile",  # the shipped one, as a user's run loads it
        str(repo / "profiles" / "default"),
        "--configfiles",
        *map(str, configfiles),
        *args,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
        )
    return r


def dry_run_jobs(workdir: Path, *args: str, **kw: Any) -> dict[str, int]:
    """Rule -> job count that a dry run would execute (parsed from the job stats table)."""
    r = snakemake(workdir, "-n", "--cores", "8", "--resources", "gpu=4", *args, **kw)
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return {}
    return job_counts(out)


def job_counts(out: str) -> dict[str, int]:
    """Rule -> job count of the job stats table in Snakemake's output ({} without one)."""
    if "Job stats:" not in out:
        return {}
    jobs: dict[str, int] = {}
    for line in out.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        jobs[m.group(1)] = int(m.group(2))
    jobs.pop("total", None)
    return jobs


def user_env(tmp: Path, gpus: int = 0) -> dict[str, str]:
    """The environment of a user whose venv is active (``snakemake`` on PATH), offline, with
    a private GPU lock folder and, for ``gpus > 0``, a fake ``nvidia-smi`` listing that many
    GPUs (the device picker then hands them out). SLURM_/CUDA_ variables are dropped."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    if gpus:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\nprintf '" + "".join(f"{i}\\n" for i in range(gpus)) + "'\n")
        smi.chmod(0o755)
        path = f"{bin_dir}{os.pathsep}{path}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_"))}
    env.update(
        PATH=path,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        QACLIMS_GPU_LOCK_DIR=str(tmp / "gpu-locks"),
    )
    return env


def copy_repo(dest: Path, src: Path = ROOT) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, library) to edit in a test
    (``src``: the repository, or a copy of it holding fake data)."""
    shutil.copytree(
        src,
        dest,
        ignore=shutil.ignore_patterns(
            ".venv",
            "results",
            ".snakemake",
            ".git",
            "logs",
            "__pycache__",
            "benchmarks",
            "tests",
            "*.egg-info",
            ".*_cache",
        ),
    )
    return dest


def write_overlay(path: Path, overlay: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(overlay))
    return path


def fake_voc(
    root: Path,
    ids: dict[str, list[str]],
    size: tuple[int, int] = (20, 30),
    unlabelled: tuple[str, ...] = (),
) -> None:
    """A VOC tree: random JPEGs, one dog box per label PNG and XML, the given split lists.
    Ids of the ``unlabelled`` splits (VOC's test) get a JPEG only."""
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for split, names in ids.items():
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    bare = {n for s in unlabelled for n in ids[s]}
    for name in sorted({n for names in ids.values() for n in names}):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg"
        )
        if name in bare:
            continue
        mask = np.zeros(size, np.uint8)
        mask[5:15, 5:20] = 12  # dog
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{name}.png")
        (root / "Annotations" / f"{name}.xml").write_text(
            "<annotation><object><name>dog</name></object></annotation>"
        )


def fake_checkpoints(workdir: Path, config: Path) -> None:
    """Placeholders (a few bytes) where a paper config names checkpoint files (OV-Seg, the
    DeepLab init), so a run that never loads them gets past the parse-time check that they
    exist."""
    cfg = yaml.safe_load(config.read_text())
    paths = [
        cfg.get("clip", {}).get("ovseg_checkpoint"),
        cfg.get("train_deeplab", {}).get("model", {}).get("backbone", {}).get("weights"),
    ]
    for path in paths:
        if path and path not in ("imagenet", "none"):
            (workdir / path).parent.mkdir(parents=True, exist_ok=True)
            (workdir / path).write_bytes(b"placeholder")


#: environment that sends every web request to a closed local port (and none around it), so
#: a test that tries a download fails at once even where the internet is reachable
NO_WEB = {
    **{k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
    "NO_PROXY": "",
    "no_proxy": "",
}


def hf_cache_put(cache: Path, repo: str, filename: str, data: bytes | Path) -> Path:
    """Put a file of model repository ``repo`` into a Hugging Face hub cache folder
    (``HF_HUB_CACHE``) the way huggingface_hub's downloads lay it out: ``refs/main`` names a
    snapshot folder that holds the file. ``data``: the bytes, or a file to copy."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    dest = folder / "snapshots" / commit / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, Path):
        shutil.copyfile(data, dest)
    else:
        dest.write_bytes(data)
    return dest


PAPER_CONFIGS = (ROOT / "config" / "voc12.yaml", ROOT / "config" / "coco14.yaml")


def pretrained_caches(root: Path, configs: tuple[Path, ...] = PAPER_CONFIGS) -> dict[str, str]:
    """Model caches under ``root`` with a placeholder (a few bytes, never loaded) for every
    pretrained model ``configs`` download, so an offline run's parse-time check passes.
    Returns the variables that point the libraries there (``HF_HUB_CACHE``, ``TORCH_HOME``)."""
    from qaclims.models import model_cache, pretrained
    from qaclims.report.gpu_hours import load_config

    env = {"HF_HUB_CACHE": str(root / "hf"), "TORCH_HOME": str(root / "torch")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # torch hub reads TORCH_HOME when asked for its folder
    try:
        for cfg in configs:
            for p in pretrained.needed(load_config([cfg])):
                if p.source == "transformers":
                    files = (*model_cache.HF_CONFIG_FILES, model_cache.HF_PROCESSOR_FILES[-1])
                    for f in (*files, model_cache.HF_WEIGHT_FILES[0]):
                        hf_cache_put(root / "hf", p.name, f, b"{}")
                elif p.source == "open_clip":
                    repo, files = model_cache.open_clip_files(p.name, p.tag)
                    assert repo is not None, f"{p.what} is not on the hub"
                    hf_cache_put(root / "hf", repo, str(files[0]), b"placeholder")
                else:
                    path = model_cache.torchvision_file(p.name, p.tag)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"placeholder")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return env


def fake_coco(root: Path) -> None:
    """A COCO 2014 tree: 3 images per split, one dog polygon each."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / f"{split}2014").mkdir(parents=True)
        images, anns = [], []
        for i in range(3):
            name = f"COCO_{split}2014_{i:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(
                root / f"{split}2014" / name
            )
            images.append({"id": i + 1, "file_name": name, "height": 16, "width": 24})
            anns.append(
                {
                    "id": i + 1,
                    "image_id": i + 1,
                    "category_id": 18,
                    "iscrowd": 0,
                    "area": 40.0,
                    "bbox": [2, 2, 8, 5],
                    "segmentation": [[2, 2, 10, 2, 10, 7, 2, 7]],
                }
            )
        cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )


# ---------------------------------------------------------------- the resolved config


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Config files merge key by key, nested mappings included (Snakemake's update_config)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def with_defaults(value: Any, node: dict[str, Any]) -> Any:
    """Fill every key a file leaves out with its schema default, objects recursively; a value
    a file gives (a free-form mapping such as corpus.synonyms included) is kept whole."""
    props = node.get("properties")
    if not props or not isinstance(value, dict):
        return value
    out = dict(value)
    for k, sub in props.items():
        if k in out:
            out[k] = with_defaults(out[k], sub)
        elif "default" in sub:
            out[k] = with_defaults(copy.deepcopy(sub["default"]), sub)
    return out


def expected_config(files: list[Path]) -> dict[str, Any]:
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    merged: dict[str, Any] = {}
    for f in files:
        merged = merge(merged, yaml.safe_load(f.read_text()) or {})
    cfg = with_defaults(merged, schema)
    pre = cfg["vqa"]["precomputed"]  # documented: {run} names this run's folder
    for kind in ("fg", "bg"):
        pre[kind] = pre[kind].replace("{run}", cfg["run"])
    cfg["vqa"]["model"] = cfg["vqa"]["model"].replace("{run}", cfg["run"])  # and in vqa.model
    return cfg
