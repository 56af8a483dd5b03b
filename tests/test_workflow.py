"""The workflow as users drive it: schema errors, dry runs of every shipped config, a real
smoke-size run of the demo DAG, rerun semantics, lint."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.workflow_util import (
    CONFIG,
    ROOT,
    SMOKE,
    copy_repo,
    dry_run_jobs,
    fake_checkpoints,
    fake_coco,
    fake_voc,
    snakemake,
    write_overlay,
)

pytestmark = pytest.mark.workflow


def test_unknown_key_is_rejected_naming_it(tmp_path: Path) -> None:
    bad = write_overlay(tmp_path / "bad.yaml", {"train_cam": {"learning_rate": 0.1}})
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    assert r.returncode != 0
    assert "learning_rate" in r.stderr + r.stdout


def test_wrong_type_is_rejected_naming_it(tmp_path: Path) -> None:
    bad = write_overlay(tmp_path / "bad.yaml", {"make_cam": {"scales": "1.0"}})
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    out = r.stderr + r.stdout
    assert r.returncode != 0
    assert "scales" in out and "make_cam" in out


@pytest.mark.parametrize(
    ("overlay", "key", "value"),
    [
        ({"dataset": {"name": "voc13"}}, "name", "voc13"),
        ({"vqa": {"backend": "blop"}}, "backend", "blop"),
        ({"train_cam": {"batch_size": -3}}, "batch_size", "-3"),
        ({"train_ritc": {"region_encoding": "foo"}}, "region_encoding", "foo"),
        ({"infer_deeplab": {"fusion": "median"}}, "fusion", "median"),
        ({"train_cam": {"model": {"backbone": {"arch": "resnet77"}}}}, "arch", "resnet77"),
        ({"train_deeplab": {"lr": -0.1}}, "lr", "-0.1"),
        ({"eval_cam": {"threshold": 2.0}}, "threshold", "2.0"),
        ({"make_cam": {"scales": []}}, "scales", "[]"),
        ({"make_cam": {"rescale": "pillow"}}, "rescale", "pillow"),
        ({"corpus": {"rules": "strict"}}, "rules", "strict"),
        ({"corpus": {"synonyms": {"dog": ["puppy"]}}}, "corpus.synonyms", "dog"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_wrong_values_stop_the_run_before_any_job_naming_the_key(
    tmp_path: Path, overlay: dict, key: str, value: str
) -> None:
    bad = write_overlay(tmp_path / "bad.yaml", overlay)
    r = snakemake(tmp_path, "--cores", "1", configfiles=(CONFIG, bad), check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert key in out and value in out, out[-3000:]
    assert "Job stats" not in out and not (tmp_path / "results").exists()


def test_cross_field_config_errors_stop_the_run_at_parse_time(tmp_path: Path) -> None:
    """A check only the typed config knows (tiny backbones have no ImageNet weights)."""
    bad = write_overlay(
        tmp_path / "bad.yaml", {"train_cam": {"model": {"backbone": {"weights": "imagenet"}}}}
    )
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "imagenet" in out and "tiny" in out, out[-3000:]


def test_irn_backbone_from_train_cam_reads_that_network_and_must_fit_it(tmp_path: Path) -> None:
    """The demo's IRN takes train_cam's network as its frozen backbone: the DAG has the edge
    (and has not with backbone_from: weights), and a backbone it cannot take stops the run
    at parse time naming the keys."""
    target = ("--", "results/demo/train_irn/ritc/model.safetensors")
    r = snakemake(tmp_path, "-n", "--cores", "1", *target, configfiles=(CONFIG,))
    inputs = r.stdout.split("rule train_irn:", 1)[1].split("input:", 1)[1].splitlines()[0]
    assert "results/demo/train_cam/model.safetensors" in inputs, inputs
    own = write_overlay(tmp_path / "own.yaml", {"train_irn": {"backbone_from": "weights"}})
    r = snakemake(tmp_path, "-n", "--cores", "1", *target, configfiles=(CONFIG, own))
    inputs = r.stdout.split("rule train_irn:", 1)[1].split("input:", 1)[1].splitlines()[0]
    assert "cam_to_ir_label" in inputs and "train_cam" not in inputs, inputs
    bad = write_overlay(
        tmp_path / "bad.yaml", {"train_irn": {"model": {"backbone": {"widths": [16, 32, 64, 128]}}}}
    )
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Job stats" not in out, out[-3000:]
    assert (
        "config key train_irn.model.backbone (widths [16, 32, 64, 128] vs [32, 64, 128, 128]" in out
    )


def test_released_deeplab_needs_the_caffe_v2_network_at_parse_time(tmp_path: Path) -> None:
    (tmp_path / "dl.pth").write_bytes(b"x")
    bad = write_overlay(tmp_path / "bad.yaml", {"released": {"deeplab": str(tmp_path / "dl.pth")}})
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "released.deeplab" in out and "style: caffe" in out, out[-3000:]
    assert "Job stats" not in out


def _nested(key: str, value: object) -> dict:
    out: dict = {}
    node = out
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


MISSING = [  # (key, path the key names, other settings that make the path needed)
    ("dataset.root", "no/such/VOC2012", {"dataset": {"name": "voc12"}}),
    ("train_irn.model.backbone.weights", "w/irn.pth", {"train_irn": {"backbone_from": "weights"}}),
    ("clip.pretrained", "ckpt/clip.pt", {"clip": {"name": "ViT-B-32"}}),
    ("clip.ovseg_checkpoint", "ckpt/ovseg.pth", {"clip": {"name": "ViT-B-32"}}),
    ("vqa.model", "./models/blip", {"vqa": {"backend": "blip"}}),
    ("released.cam", "models/res50_cam.pth", {}),
    ("released.ritc", "models/res50_qa_clims.pth", {}),
    ("released.deeplab", "models/checkpoint_30000.pth", {}),
    ("train_deeplab.model.backbone.weights", "ckpt/deeplabv1_resnet101-imagenet.pth", {}),
]


@pytest.mark.parametrize(("key", "path", "extra"), MISSING, ids=[m[0] for m in MISSING])
def test_missing_inputs_stop_the_run_naming_key_and_absolute_path(
    tmp_path: Path, key: str, path: str, extra: dict
) -> None:
    overlay = extra | _nested(key, path)
    if key.split(".")[0] in extra:
        overlay[key.split(".")[0]] = (
            extra[key.split(".")[0]] | _nested(key, path)[key.split(".")[0]]
        )
    bad = write_overlay(tmp_path / "bad.yaml", overlay)
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"config key {key}" in out and str((tmp_path / path).resolve()) in out, out[-3000:]


def test_every_schema_key_has_a_description_and_runtime_keys_are_marked() -> None:
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    keys, runtime = [], []

    def walk(node: dict, path: str) -> None:
        for k, v in (node.get("properties") or {}).items():
            keys.append(path + k)
            assert v.get("description"), f"{path + k} has no description"
            if v.get("x-result") is False:
                runtime.append(path + k)
            walk(v, path + k + ".")

    walk(schema, "")
    assert len(keys) > 250
    for k in (
        "train_cam.num_workers",
        "make_cam.batch_size",
        "vqa.cache_flush_batches",
        "train_ritc.resume_every",
        "dataset.io_workers",
        "train_deeplab.log_every",
    ):
        assert k in runtime, k  # fmt: skip
    for k in ("train_cam.lr", "make_cam.scales", "vqa.batch_size", "train_ritc.w_bg"):
        assert k not in runtime or k == "vqa.batch_size", k


def test_split_mismatch_is_rejected(tmp_path: Path) -> None:
    bad = write_overlay(tmp_path / "bad.yaml", {"splits": {"eval_cam": "test"}})
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, bad), check=False)
    assert r.returncode != 0 and "'test'" in r.stderr + r.stdout


def test_demo_dry_run_has_every_stage_sharded(tmp_path: Path) -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    jobs = dry_run_jobs(tmp_path, configfiles=(CONFIG,))
    # QA-CLIMS CAMs of train (IRN's ir labels) and val (evaluation); the baseline's of val
    # only, the one split it is evaluated on
    assert cfg["splits"]["cam"] == ["train", "val"] and cfg["splits"]["eval_cam"] == "val"
    assert jobs["make_cam"] == cfg["shards"] * 3
    for rule in ("synthetic", "dataset", "train_cam", "eval_cam", "all"):
        assert jobs[rule] >= 1, rule


@pytest.mark.parametrize("name", ["voc12", "coco14"])
def test_paper_configs_dry_run_on_fake_trees(tmp_path: Path, name: str) -> None:
    data = tmp_path / "data"
    if name == "voc12":
        fake_voc(data, {"train_aug": ["a", "b", "c"], "train": ["a", "b"], "val": ["d"]})
    else:
        fake_coco(data)
    cfg_file = ROOT / "config" / f"{name}.yaml"
    fake_checkpoints(tmp_path, cfg_file)
    over = write_overlay(tmp_path / "o.yaml", {"dataset": {"root": str(data)}})
    # build the manifests for real, then dry-run the whole DAG on top of them
    snakemake(tmp_path, "--cores", "1", "dataset", configfiles=(cfg_file, over))
    run = yaml.safe_load(cfg_file.read_text())["run"]
    manifests = sorted(p.name for p in (tmp_path / "results" / run / "data/manifest").iterdir())
    assert manifests == sorted(
        f"{s}.parquet" for s in yaml.safe_load(cfg_file.read_text())["dataset"]["splits"]
    )
    jobs = dry_run_jobs(tmp_path, configfiles=(cfg_file, over))
    cfg = yaml.safe_load(cfg_file.read_text())
    # both networks over the CAM split only: VOC train_aug (the evaluated train split lies
    # inside it), COCO train2014 (evaluated there, as the authors do; no CAMs of val2014)
    assert jobs["make_cam"] == cfg["shards"] * 2
    assert set(jobs) >= {"infer_deeplab", "eval_deeplab"}  # DeepLab is scored on val
    assert jobs["vqa"] == cfg["shards"]  # fg and bg in one job per shard
    assert "dataset" not in jobs  # already built


def test_the_slurm_profile_covers_every_multi_threaded_and_gpu_rule(tmp_path: Path) -> None:
    # a rule whose config threads exceed 1 but that the profile leaves out asks SLURM for the
    # workstation's thread count; on a small partition such a job pends forever
    data = tmp_path / "data"
    fake_voc(data, {"train_aug": ["a", "b", "c"], "train": ["a", "b"], "val": ["d"]})
    cfg_file = ROOT / "config" / "voc12.yaml"
    fake_checkpoints(tmp_path, cfg_file)
    over = write_overlay(tmp_path / "o.yaml", {"dataset": {"root": str(data)}})
    ablations = ROOT / "config" / "ablations-voc12.yaml"  # the experiment cells' twin rules
    files = (cfg_file, ablations, over)
    out = snakemake(tmp_path, "-n", "--cores", "64", configfiles=files).stdout
    threads: dict[str, int] = {}
    gpu_rules: set[str] = set()
    rule = ""
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
        m = re.match(r"^threads: (\d+)$", line.strip())
        if m and rule:
            threads[rule] = max(threads.get(rule, 0), int(m.group(1)))
        if rule and re.match(r"^resources: .*\bgpu=[1-9]", line.strip()):
            gpu_rules.add(rule)
    assert {"eval_cam", "eval_cam_cell", "train_ritc_cell", "cam_to_ir_label"} <= set(threads)
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.v8+.yaml").read_text())
    missing = sorted(r for r, n in threads.items() if n > 1 and r not in profile["set-threads"])
    assert not missing, missing
    # and every GPU rule, twins included, goes to the GPU partition
    assert {"train_ritc", "train_ritc_cell", "make_cam_cell"} <= gpu_rules, sorted(gpu_rules)
    res = profile["set-resources"]
    off = sorted(r for r in gpu_rules if res.get(r, {}).get("slurm_partition") != "gpu")
    assert not off, off


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One real run of the demo DAG at smoke size, from a copy of the repo (so a test can
    edit its library code), shared by the tests below. Returns (repo copy, workdir)."""
    base = tmp_path_factory.mktemp("smoke")
    repo = copy_repo(base / "repo")
    work = base / "work"
    work.mkdir()
    snakemake(work, "--cores", "2", "--resources", "gpu=1", repo=repo)
    return repo, work


def test_smoke_run_outputs(smoke: tuple[Path, Path]) -> None:
    run = smoke[1] / "results" / "demo"
    cfg = yaml.safe_load(CONFIG.read_text())
    n_val = yaml.safe_load(SMOKE.read_text())["synthetic"]["num_images"]["val"]
    for model in cfg["methods"]:
        s = json.loads((run / "eval_cam" / model / "val" / "summary.json").read_text())
        assert s["num_images"] == n_val
        assert 0.0 <= s["miou"] <= 1.0
        assert s["best_miou"] >= s["miou"] - 1e-12
        cams = sorted((run / "make_cam" / model / "val").glob("*/*.npz"))
        assert len(cams) == n_val
    assert not (run / ".resume" / "train_cam" / "state.pt").exists()


def _jobs(smoke: tuple[Path, Path], overlay: dict | None = None) -> set[str]:
    repo, work = smoke
    files: tuple[Path, ...] = (CONFIG, SMOKE)
    if overlay is not None:
        files += (write_overlay(work / "change.yaml", overlay),)
    # run_config (the record of the resolved config) reruns on any config change, by design
    return set(dry_run_jobs(work, configfiles=files, repo=repo)) - {"run_config"}


def _jobs_after_editing(smoke: tuple[Path, Path], module: str) -> set[str]:
    """The jobs a dry run plans with the code of ``src/qaclims/<module>`` of the smoke repo
    edited (a new module-level name; the edit is undone afterwards)."""
    return _jobs_after(smoke, module, lambda text: text + "\n_EDITED = True\n")


def _jobs_after(smoke: tuple[Path, Path], module: str, edit: Callable[[str], str]) -> set[str]:
    src = smoke[0] / "src" / "qaclims" / module
    original = src.read_text()
    try:
        src.write_text(edit(original))
        return _jobs(smoke)
    finally:
        src.write_text(original)


def test_nothing_to_do_after_a_run(smoke: tuple[Path, Path]) -> None:
    assert _jobs(smoke) == set()


def test_an_experiment_reuses_the_run_and_tables_its_cells(smoke: tuple[Path, Path]) -> None:
    """Two variants x two seeds on the smoke run: only the cells' own stages run, the cell
    with the run's settings and seed is the run itself (none of its jobs runs), a cell's
    jobs see the run's config with the cell's seed, and every row of the comparison is the
    mean, sd and n of the cells' own summaries."""
    repo, work = smoke
    variants = {"same": {}, "class_only": {"text_features": {"class_weight": 1.0}}}
    exp = {"experiments": {"seeds": [0, 1], "until": "eval_cam", "variants": variants,
                           "reference": "same"}}  # fmt: skip
    files = (CONFIG, SMOKE, write_overlay(work / "experiment.yaml", exp))
    planned = dry_run_jobs(work, configfiles=files, repo=repo)
    shared = {r for r in planned if not r.endswith("_cell")} - {"run_config", "all"}
    assert shared == {"compare_experiments"}  # nothing of the run itself reruns
    # same/seed0 is the run (its settings, seed 0): three cells train, four are tabled
    assert planned["train_ritc_cell"] == 3 and planned["eval_cam_cell"] == 3
    assert planned["text_features_cell"] == 1 and planned["run_config_cell"] == 4
    snakemake(work, "--cores", "2", "--resources", "gpu=1", configfiles=files, repo=repo)
    run = work / "results" / "demo"
    cell = run / "experiments"

    def miou(path: Path) -> float:
        return 100 * json.loads(path.read_text())["miou"]

    def digest(path: Path) -> bytes:
        return hashlib.sha256(path.read_bytes()).digest()

    def summary(v: str, s: int) -> Path:
        base = run if (v, s) == ("same", 0) else cell / v / f"seed{s}"
        return base / "eval_cam" / "ritc" / "val" / "summary.json"

    assert not (cell / "same" / "seed0" / "train_ritc").exists()
    assert (cell / "same" / "seed0" / "config.yaml").is_file()
    weights = "train_ritc/model.safetensors"
    assert digest(cell / "same" / "seed1" / weights) != digest(run / weights)
    assert digest(cell / "class_only" / "seed0" / weights) != digest(run / weights)
    table = pd.read_csv(cell / "comparison.csv").set_index(["variant", "metric"])
    for v in variants:
        vals = [miou(summary(v, s)) for s in (0, 1)]
        row = table.loc[(v, "cam_miou")]
        assert row["n"] == 2 and row["seeds"] == "0 1"
        assert row["mean"] == pytest.approx(np.mean(vals), abs=1e-4)
        assert row["sd"] == pytest.approx(np.std(vals, ddof=1), abs=1e-4)
    assert table.loc[("class_only", "cam_miou"), "delta"] == pytest.approx(
        table.loc[("class_only", "cam_miou"), "mean"] - table.loc[("same", "cam_miou"), "mean"],
        abs=1e-3,
    )
    # the class-only text is made once for both seeds, and differs from the run's
    feats = cell / "class_only" / "common" / "text_features" / "features.safetensors"
    assert feats.is_file() and not (cell / "class_only" / "seed0" / "text_features").exists()
    assert digest(feats) != digest(run / "text_features" / "features.safetensors")
    assert (cell / "comparison.html").is_file() and (cell / "comparison.png").is_file()
    seen = yaml.safe_load((cell / "class_only" / "seed1" / "config.yaml").read_text())
    assert seen["train_ritc"]["seed"] == 1 and seen["text_features"]["class_weight"] == 1.0
    assert seen["train_cam"]["seed"] == 0  # the run's own baseline CAM, not reseeded
    assert set(dry_run_jobs(work, configfiles=files, repo=repo)) - {"run_config"} == set()
    # the jobs of same/seed1 see the run's config with seed 1 in the seeded stages from
    # train_ritc on (by hand: RITC, IRN, DeepLab) and nothing else changed
    run_cfg = yaml.safe_load((run / "config.yaml").read_text())
    seen = yaml.safe_load((cell / "same" / "seed1" / "config.yaml").read_text())
    assert set(seen) == set(run_cfg)
    for key in set(run_cfg) - {"experiments"}:
        want = run_cfg[key]
        if key in ("train_ritc", "train_irn", "train_deeplab"):
            want = {**want, "seed": 1}
        assert seen[key] == want, key
    # leave the run as the tests after this one expect it: its config record without experiments
    snakemake(work, "--cores", "1", "--", "results/demo/config.yaml", repo=repo)
    assert _jobs(smoke) == set()


@pytest.mark.parametrize(
    "overlay",
    [
        {"dataset": {"io_workers": 7}},
        {"train_cam": {"num_workers": 3, "log_every": 7, "resume_every": 9}},
        {"make_cam": {"batch_size": 3, "num_workers": 1}},
        {"vqa": {"cache_flush_batches": 3, "batch_size": 5}},
        {"train_ritc": {"resume_every": 7, "log_every": 3}},
        {"train_irn": {"num_workers": 2}},
        {"train_deeplab": {"log_every": 3, "iter_size": 2}},
        {"device": "cpu"},
        {"threads": {"gpu_job": 2, "cpu_shard": 2}},
        {"gpus": {"train_ritc": 2, "train_deeplab": 2}},
    ],
    ids=lambda o: ",".join(o),
)
def test_settings_that_cannot_change_a_result_rerun_nothing(
    smoke: tuple[Path, Path], overlay: dict
) -> None:
    assert _jobs(smoke, overlay) - {"all"} == set()


def test_changing_eval_thresholds_reruns_only_eval(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"eval_cam": {"threshold": 0.2}})
    assert jobs - {"all", "report"} == {"eval_cam"}


def test_changing_make_cam_scales_keeps_the_model(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"make_cam": {"scales": [1.0]}})
    assert "make_cam" in jobs and not jobs & {"train_cam", "dataset", "synthetic"}


def test_one_shard_layout_through_the_chain(tmp_path: Path) -> None:
    """Shard k of cam_to_ir_label and make_sem_seg reads shard k of make_cam and nothing
    else of it; evaluations read the shards of their own split only (edges linear in the
    shard count)."""
    import re

    over = write_overlay(tmp_path / "s.yaml", {"shards": 3, "splits": {"cam": ["train", "val"]}})
    r = snakemake(tmp_path, "-n", "--forceall", configfiles=(CONFIG, SMOKE, over))
    blocks = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", r.stdout + r.stderr, re.M)
    seen = {"cam_to_ir_label": 0, "make_sem_seg": 0, "eval_cam": 0}
    for rule, body in blocks:
        if rule not in seen:
            continue
        inputs = re.search(r"^    input: (.*)$", body, re.M).group(1).split(", ")  # type: ignore[union-attr]
        output = re.search(r"^    output: (.*)$", body, re.M).group(1).split(", ")  # type: ignore[union-attr]
        cams = [p for p in inputs if "/make_cam/" in p]
        if rule == "eval_cam":  # its own split's shards, not the other split's
            model, split = output[0].split("/")[-3:-1]
            assert sorted(cams) == [f"results/demo/make_cam/{model}/{split}/{k:03d}"
                                    for k in range(3)], body  # fmt: skip
        else:
            model, split, shard = output[0].split("/")[-3:]
            assert cams == [f"results/demo/make_cam/{model}/{split}/{shard}"], body
        seen[rule] += 1
    # ritc CAMs are refined (both splits, 3 shards); eval_cam for both methods on train
    assert seen == {"cam_to_ir_label": 6, "make_sem_seg": 6, "eval_cam": 2}, seen


def test_changing_train_cam_reruns_downstream_not_upstream(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"train_cam": {"lr": 0.05}})
    assert {"train_cam", "make_cam", "eval_cam"} <= jobs
    assert not jobs & {"synthetic", "dataset", "vqa", "corpus"}


UPSTREAM_OF_CAMS = {"synthetic", "dataset", "train_cam"}


def test_changing_a_vqa_question_reruns_qape_and_after(smoke: tuple[Path, Path]) -> None:
    q = "What colour is the {}?"
    fg = (
        list(yaml.safe_load(SMOKE.read_text()).get("vqa", {}).get("questions", {}).get("fg", []))
        or None
    )
    from qaclims.core.questions import FG_QUESTIONS

    jobs = _jobs(smoke, {"vqa": {"questions": {"fg": [*(fg or FG_QUESTIONS), q]}}})
    assert {"vqa", "corpus", "text_features", "train_ritc", "make_cam", "eval_cam"} <= jobs
    assert not jobs & UPSTREAM_OF_CAMS


def test_changing_crf_parameters_reruns_refinement_only(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"cam_to_ir_label": {"crf": {"iterations": 3}}})
    assert {"cam_to_ir_label", "train_irn", "make_sem_seg", "eval_sem_seg"} <= jobs
    assert not jobs & (UPSTREAM_OF_CAMS | {"make_cam", "train_ritc", "eval_cam", "vqa"})


def test_changing_deeplab_iterations_reruns_deeplab_only(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs(smoke, {"train_deeplab": {"iterations": 21}})
    deeplab = {"train_deeplab", "infer_deeplab", "eval_deeplab"}
    assert jobs - {"all", "report"} == deeplab | {"overlay_sample"}  # its overlay column


def test_a_retrained_tiny_blip_is_asked_again_not_served_from_the_cache(
    smoke: tuple[Path, Path], tmp_path: Path
) -> None:
    """A changed train_tiny_blip setting retrains the tiny BLIP into the same folder (same
    file sizes, other weights); the vqa jobs it reruns must ask the new model every
    question, not read the old one's answers from the run's VQA cache. Run in a copy of the
    smoke run (mtimes and Snakemake's records kept), so the shared run stays as it is."""
    repo, work = smoke
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    overlay = write_overlay(copy / "change.yaml", {"train_tiny_blip": {"seed": 7}})
    targets = [f"results/demo/vqa/{k}/000.parquet" for k in ("fg", "bg")]
    old = {k: pd.read_parquet(copy / f"results/demo/vqa/{k}/000.parquet") for k in ("fg", "bg")}
    snakemake(copy, "--cores", "2", "--resources", "gpu=1", "--", *targets,
              configfiles=(CONFIG, SMOKE, overlay), repo=repo)  # fmt: skip
    log = (copy / "logs/demo/vqa/000.log").read_text()
    asked = re.findall(r"(\d+) questions: (\d+) cached, (\d+) to ask", log)
    assert len(asked) >= 2, log[-2000:]  # this job's fg and bg (the log may also hold the last)
    for (total, cached, todo), kind in zip(asked[-2:], ("fg", "bg"), strict=True):
        assert int(cached) == 0 and int(todo) == int(total) == len(old[kind]) > 0, (kind, log)


def test_report_settings_and_plotting_code_redo_the_report_alone(smoke: tuple[Path, Path]) -> None:
    """Neither report.num_overlays nor the figures' code is an input of overlay_sample, whose
    CAMs may be temp() and gone: redoing it would redo make_cam and everything after it."""
    assert _jobs(smoke, {"report": {"num_overlays": 3}}) == {"report", "all"}
    assert _jobs_after_editing(smoke, "report/figures.py") == {"report", "all"}


def test_report_holds_tables_and_figures(smoke: tuple[Path, Path]) -> None:
    repo, work = smoke
    out = work / "report.html"
    snakemake(work, "--report", str(out), repo=repo)
    html = out.read_text(errors="replace")
    for item in (
        "index.html",
        "per_class_iou.png",
        "sweep.png",
        "overlays.png",
        "losses.png",
        "corpus.html",
        "eval_cam",
    ):
        assert item in html, item
    table = (work / "results" / "demo" / "report" / "index.html").read_text()
    s = json.loads((work / "results/demo/eval_cam/cam/val/summary.json").read_text())
    assert f"{100 * s['miou']:.2f}" in table
    for png in ("per_class_iou", "sweep", "overlays", "losses"):
        data = (work / "results" / "demo" / "report" / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_editing_library_code_reruns_its_stage(smoke: tuple[Path, Path]) -> None:
    jobs = _jobs_after_editing(smoke, "cam/eval_cam.py")
    assert "eval_cam" in jobs and not jobs & {"train_cam", "make_cam", "dataset"}


def test_lint_is_clean(tmp_path: Path) -> None:
    r = snakemake(ROOT, "--lint", configfiles=(CONFIG,), check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_snakefmt_is_clean() -> None:
    import subprocess
    import sys

    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    r = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_code_params_are_each_scripts_transitive_library_imports() -> None:
    """Every rule with a script tracks ``code=code("<that script>")``, and the files that
    digest covers equal what the script imports inside qaclims, found by a second method
    (the standard library's bytecode-scanning ModuleFinder), plus, for a training script,
    what the stage module it names to ``launch.run_rule`` imports (its worker runs it)."""
    import modulefinder
    import re

    from qaclims.workflow import codegraph
    from qaclims.workflow.codegraph import code_digests, library_files

    src = ROOT / "src"
    scripts: dict[str, str] = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for body in re.split(r"\n *rule ", smk.read_text())[1:]:
            rule = body.split(":", 1)[0]
            s = re.search(r'script:\s*\n\s*"\.\./scripts/(\w+)\.py"', body)
            assert s, rule
            params = re.split(r"\n +params:\n", body, maxsplit=1)[1]
            tracked = re.search(r'^ +code=code\("(\w+)"\),$', params, re.M)
            assert tracked and tracked.group(1) == s.group(1), rule
            scripts[rule] = s.group(1)
    assert len(scripts) >= 20 and {"released_cam", "released_ritc"} <= set(scripts)
    for rule, script in scripts.items():
        path = ROOT / "workflow" / "scripts" / f"{script}.py"
        finder = modulefinder.ModuleFinder(path=[str(src)])
        finder.run_script(str(path))
        named = re.search(r'run_rule\(snakemake, "([\w.]+)"\)', path.read_text())
        if named:
            finder.run_script(str(src / (named.group(1).replace(".", "/") + ".py")))
            finder.import_hook(named.group(1))  # the module itself and its parent packages
        expected = {
            str(Path(mod.__file__))
            for name, mod in finder.modules.items()
            if name.split(".")[0] == "qaclims" and mod.__file__
        }
        assert set(library_files(path, src)) == expected, rule
        digests = code_digests(path, src)
        assert {str(src / k) for k in digests} == expected, rule
        for k, v in digests.items():
            want = hashlib.sha256(codegraph.code_text((src / k).read_bytes()).encode())
            assert v == want.hexdigest()[:16], (rule, k)
        want = hashlib.sha256(codegraph.code_text(path.read_bytes()).encode())
        assert codegraph.script_digest(path) == want.hexdigest()[:16], rule


def test_editing_only_documentation_reruns_nothing(smoke: tuple[Path, Path]) -> None:
    """A docstring reworded, a comment added and blank lines added in a module every rule
    imports (the job glue) plan nothing; the same file with a code edit plans every stage."""

    def reword(text: str) -> str:
        assert text.startswith('"""')
        return '"""Reworded.\n\n' + text[3:].replace("\n\n\n", "\n\n\n\n# a comment\n", 1)

    assert _jobs_after(smoke, "workflow/smk.py", reword) == set()
    assert {"dataset", "train_cam", "eval_cam"} <= _jobs_after_editing(smoke, "workflow/smk.py")


def test_workflow_scripts_count_by_content_not_by_mtime(smoke: tuple[Path, Path]) -> None:
    """A workflow script rewritten unchanged (a git checkout), or with only its documentation
    changed, reruns nothing; a change of its code reruns its rule and what follows. Snakemake
    alone would rerun a script's rule whenever the file is newer than the outputs."""
    script = smoke[0] / "workflow" / "scripts" / "eval_cam.py"
    original = script.read_text()
    assert not original.startswith('"""')
    try:
        st = script.stat()
        os.utime(script, (st.st_atime + 3600, st.st_mtime + 3600))
        assert _jobs(smoke) == set()
        script.write_text('"""A docstring added."""\n\n' + original.replace("\n\n", "\n\n\n", 1))
        assert _jobs(smoke) == set()
        script.write_text(original + "\n_EDITED = True\n")
        assert _jobs(smoke) - {"all", "report"} == {"eval_cam"}
    finally:
        script.write_text(original)
    assert _jobs(smoke) == set()


def test_touch_records_an_update_judged_neutral(smoke: tuple[Path, Path]) -> None:
    """The README's way past an update whose code change the user judges result-neutral:
    ``snakemake --touch`` records the new code params without computing anything, after
    which nothing is planned; the outputs are the same files."""
    repo, work = smoke
    src = repo / "src" / "qaclims" / "evaluation" / "metrics.py"
    summary = work / "results" / "demo" / "eval_cam" / "ritc" / "val" / "summary.json"
    before = summary.read_bytes()
    original = src.read_text()
    try:
        src.write_text(original + "\n_EDITED = True\n")
        assert "eval_cam" in _jobs(smoke)
        snakemake(work, "--touch", "--cores", "1", repo=repo)
        assert _jobs(smoke) == set()
        assert summary.read_bytes() == before
    finally:
        src.write_text(original)
    snakemake(work, "--touch", "--cores", "1", repo=repo)  # back to the state of the others
    assert _jobs(smoke) == set()


def test_touching_library_code_reruns_nothing(smoke: tuple[Path, Path]) -> None:
    """Only content counts: a newer mtime (git checkout, editor save without change)
    reruns nothing."""
    repo, _ = smoke
    src = repo / "src" / "qaclims" / "evaluation" / "metrics.py"
    st = src.stat()
    os.utime(src, (st.st_atime + 3600, st.st_mtime + 3600))
    assert _jobs(smoke) == set()


def test_logs_carry_no_unrounded_floats(smoke: tuple[Path, Path]) -> None:
    import re

    for log in (smoke[1] / "logs").rglob("*.log"):
        text = log.read_text()
        assert not re.search(r"\d\.\d{7,}", text), (log, re.findall(r"\S*\d\.\d{7,}\S*", text)[:3])


def test_outputs_follow_the_umask(smoke: tuple[Path, Path]) -> None:
    """Every result file has the mode a plain open() gives (0666 less the umask), not 0600."""
    from qaclims.core.io import current_umask

    want = 0o666 & ~current_umask()  # the smoke run inherited this process's umask
    files = [p for p in (smoke[1] / "results" / "demo").rglob("*") if p.is_file()]
    assert len(files) > 50
    other = [(p, oct(p.stat().st_mode & 0o777)) for p in files if p.stat().st_mode & 0o777 != want]
    assert not other, other[:5]


def test_only_eval_cam_the_refinement_and_overlay_samples_read_cam_folders(
    tmp_path: Path,
) -> None:
    """In the whole DAG (``--dag``), the jobs that read make_cam's folders are eval_cam,
    cam_to_ir_label, make_sem_seg and overlay_sample: so temp() CAM folders go once the
    refinement is done, not when the report runs after DeepLab."""
    over = write_overlay(tmp_path / "k.yaml", {"keep_cams": False})
    dot = snakemake(tmp_path, "--dag", "--cores", "1", configfiles=(CONFIG, SMOKE, over)).stdout
    rule = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)', dot, re.M))
    edges = {(rule[a], rule[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)}
    readers = {b for a, b in edges if a == "make_cam"}
    assert readers == {"eval_cam", "cam_to_ir_label", "make_sem_seg", "overlay_sample"}
    assert ("overlay_sample", "report") in edges


def test_cam_folders_can_be_temporary(tmp_path: Path) -> None:
    """``keep_cams: false``: make_cam's shard folders are temp() outputs, gone once their
    readers (here eval_cam) are done; the scores stay."""
    over = write_overlay(tmp_path / "k.yaml", {"keep_cams": False})
    target = "results/demo/eval_cam/cam/val/summary.json"
    sample = "results/demo/report/overlays/cam_cam.npz"  # the report's copy of a few CAMs
    snakemake(tmp_path, "--cores", "2", "--", target, sample, configfiles=(CONFIG, SMOKE, over))
    assert json.loads((tmp_path / target).read_text())["num_images"] > 0
    assert np.load(tmp_path / sample)["image_ids"].size > 0
    cams = tmp_path / "results/demo/make_cam/cam/val"
    assert not any(cams.glob("*/*.npz")), sorted(cams.rglob("*"))
    assert (tmp_path / "logs/demo/make_cam/cam_val_000.log").is_file()  # it did run
