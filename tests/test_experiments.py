"""Experiments (config ``experiments``): which stages a variant computes itself, the cell
configs, the checks of variant names, keys and values, the comparison table, and dry runs of
the shipped experiment configs (the demo's, and the VOC ablation preset on a fake VOC tree)
that count the jobs of every rule. The real run of two variants x two seeds is in
tests/test_workflow.py (it reuses the smoke run)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

from qaclims.core.errors import ConfigError, DataError
from qaclims.report import experiments as compare
from qaclims.workflow import experiments as ex
from tests.workflow_util import (
    CONFIG,
    ROOT,
    copy_repo,
    dry_run_jobs,
    expected_config,
    fake_checkpoints,
    fake_voc,
    snakemake,
)

SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
AFTER_RITC = {
    "train_ritc",
    "make_cam",
    "eval_cam",
    "cam_to_ir_label",
    "eval_seeds",
    "train_irn",
    "make_sem_seg",
    "eval_sem_seg",
    "train_deeplab",
    "infer_deeplab",
    "eval_deeplab",
}


def demo(variants: dict[str, Any], **exp: Any) -> dict[str, Any]:
    cfg = expected_config([CONFIG])
    cfg["experiments"].update(exp, variants=variants)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """What common.smk checks a variant's config with (the JSON schema part)."""
    jsonschema.Draft202012Validator(SCHEMA).validate(cfg)


# ---------------------------------------------------------------- reach, folders, configs


@pytest.mark.parametrize(
    ("overrides", "extra"),
    [
        ({}, set()),  # seeds only: from train_ritc on
        ({"train_ritc": {"w_bg": 0.0}}, set()),
        ({"text_features": {"class_weight": 1.0}}, {"text_features"}),
        ({"corpus": {"top_k": 5}}, {"corpus", "text_features"}),
        ({"vqa": {"num_beams": 3}}, {"vqa", "corpus", "text_features"}),
        ({"train_tiny_blip": {"epochs": 1}}, {"train_tiny_blip", "vqa", "corpus", "text_features"}),
        ({"clip": {"tiny": {"embed_dim": 32}}}, {"train_tiny_clip", "text_features"}),
        ({"train_cam": {"lr": 0.05}}, {"train_cam"}),
        ({"infer_deeplab": {"flip": False}}, set()),
    ],
)
def test_reach_is_the_overridden_stages_and_everything_after_them(
    overrides: dict[str, Any], extra: set[str]
) -> None:
    # by hand from the DAG in docs/DESIGN.md: what reads the overridden sections, and after
    cfg = demo({"v": overrides})
    assert ex.reach(cfg, "v") == AFTER_RITC | extra


def test_from_moves_where_seeds_start() -> None:
    cfg = demo({"v": {"infer_deeplab": {"flip": False}}}, **{"from": "infer_deeplab"})
    assert ex.reach(cfg, "v") == {"infer_deeplab", "eval_deeplab"}
    cfg = demo({"v": {"make_sem_seg": {"beta": 5.0}}}, **{"from": "infer_deeplab"})
    assert ex.reach(cfg, "v") == {
        "make_sem_seg",
        "eval_sem_seg",
        "train_deeplab",
        "infer_deeplab",
        "eval_deeplab",
    }


def test_stages_no_seed_changes_are_shared_by_the_variants_seeds() -> None:
    cfg = demo({"v": {"vqa": {"num_beams": 3}}}, seeds=[3, 4])
    # vqa, corpus and text_features have no seed and read nothing seeded: common
    for stage in ("vqa", "corpus", "text_features"):
        assert ex.folder(cfg, "v", 3, stage) == ex.COMMON
    assert ex.folder(cfg, "v", 3, "train_ritc") == "seed3"
    assert ex.folder(cfg, "v", 4, "eval_cam") == "seed4"  # downstream of a seeded stage
    assert ex.folder(cfg, "v", 3, "train_cam") is None  # the run's own
    assert ex.folder(cfg, "v", 3, "train_tiny_clip") is None


def test_a_cell_that_is_the_run_reads_the_runs_own_outputs() -> None:
    """A stage computing exactly what the run's does (same settings, same seed, same inputs)
    is the run's, not computed again; one differing setting or upstream stage makes it the
    cell's own."""
    run_seed = demo({})["train_ritc"]["seed"]
    cfg = demo(
        {
            "same": {},
            "equal": {"train_ritc": {"w_bg": demo({})["train_ritc"]["w_bg"]}},
            "text": {"text_features": {"class_weight": 1.0}},
            "scales": {"make_cam": {"scales": [1.0]}},
        },
        seeds=[run_seed, run_seed + 1],
    )
    for variant in ("same", "equal"):
        assert ex.same_as_run(cfg, variant, run_seed) == AFTER_RITC
        for stage in AFTER_RITC:
            assert ex.folder(cfg, variant, run_seed, stage) is None, (variant, stage)
        assert ex.same_as_run(cfg, variant, run_seed + 1) == set()
        assert ex.folder(cfg, variant, run_seed + 1, "train_ritc") == f"seed{run_seed + 1}"
    # the text differs, so RITC trained on it does too, whatever the seed
    assert ex.same_as_run(cfg, "text", run_seed) == set()
    assert ex.folder(cfg, "text", run_seed, "text_features") == ex.COMMON
    assert ex.folder(cfg, "text", run_seed, "train_ritc") == f"seed{run_seed}"
    # only make_cam and what reads it differ: the run's RITC network, the cell's CAMs
    assert ex.same_as_run(cfg, "scales", run_seed) == {"train_ritc"}
    assert ex.folder(cfg, "scales", run_seed, "make_cam") == f"seed{run_seed}"
    assert ex.folder(cfg, "scales", run_seed, "eval_cam") == f"seed{run_seed}"


def test_cell_config_merges_the_overrides_and_seeds_only_the_stages_in_reach() -> None:
    cfg = demo({"v": {"train_ritc": {"w_bg": 0.0}}, "w": {"train_tiny_blip": {"epochs": 1}}})
    cell = ex.cell_config(cfg, "v", 7)
    assert cell["train_ritc"]["w_bg"] == 0.0
    assert cell["train_ritc"]["w_fg"] == cfg["train_ritc"]["w_fg"]  # siblings kept
    assert cell["train_ritc"]["seed"] == 7
    assert cell["train_irn"]["seed"] == 7 and cell["train_deeplab"]["seed"] == 7
    assert cell["train_cam"]["seed"] == cfg["train_cam"]["seed"] == 0  # shared, not reseeded
    assert cell["train_tiny_clip"]["seed"] == 0
    assert cfg["train_ritc"]["w_bg"] == 8.0 and cfg["train_ritc"]["seed"] == 0  # untouched
    assert cell["vqa"]["model"] == cfg["vqa"]["model"] == "results/demo/train_tiny_blip"
    # a variant that retrains the demo's tiny BLIP asks its own
    w = ex.cell_config(cfg, "w", 2)
    assert w["vqa"]["model"] == "results/demo/experiments/w/seed2/train_tiny_blip"
    assert w["train_tiny_blip"] == {**cfg["train_tiny_blip"], "epochs": 1, "seed": 2}


def test_job_config_is_the_cells_for_a_cell_job_and_the_runs_otherwise() -> None:
    cfg = demo({"v": {"text_features": {"class_weight": 1.0}}}, seeds=[5, 6])
    assert ex.job_config(cfg, {"split": "val", "shard": "000"}) is cfg
    assert ex.job_config(cfg, {"exp": "v", "cell": "seed6"})["train_ritc"]["seed"] == 6
    common = ex.job_config(cfg, {"exp": "v", "cell": "common"})
    assert common["text_features"]["class_weight"] == 1.0
    assert common == ex.cell_config(cfg, "v", 5)  # the variant's first seed


def test_cells_use_a_variants_own_seeds() -> None:
    cfg = demo({"a": {}, "b": {"seeds": [9], "train_ritc": {"w_bg": 1.0}}}, seeds=[0, 1])
    assert [(c.variant, c.seed) for c in ex.cells(cfg)] == [("a", 0), ("a", 1), ("b", 9)]
    assert ex.variants(cfg)["b"] == {"train_ritc": {"w_bg": 1.0}}


@pytest.mark.parametrize(
    ("variants", "exp", "message"),
    [
        ({"v": {"dataset": {"name": "voc12"}}}, {}, "experiments.variants.v.dataset.name"),
        ({"v": {"shards": 3}}, {}, "experiments.variants.v.shards"),
        ({"v": {"train_ritc": {"w_bgg": 1.0}}}, {}, "unknown setting 'w_bgg'"),
        ({"v": {"train_ritc": {"num_workers": 1}}}, {}, "v.train_ritc.num_workers: changes no"),
        ({"v": {"train_ritc": {"w_bg": "x"}}}, {}, "config experiments.variants.v:"),
        ({"v": {"train_ritc": {"w_bg": -1.0}}}, {}, "config experiments.variants.v:"),
        ({"v w": {}}, {}, "experiments.variants.v w: a variant name"),
        ({"v": {"seeds": [1, 1]}}, {}, "experiments.variants.v.seeds: [1, 1] repeats"),
        ({"v": {"seeds": []}}, {}, "experiments.variants.v.seeds: a non-empty list"),
        ({"v": {}}, {"reference": "paper"}, "experiments.reference: 'paper'"),
        ({"v": {}}, {"from": "train_crf"}, "experiments.from: 'train_crf'"),
    ],
)
def test_a_bad_variant_is_an_error_naming_it_and_the_key(
    variants: dict[str, Any], exp: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        ex.check(demo(variants, **exp), SCHEMA, validate)
    assert message in str(e.value)


def test_good_variants_pass_the_check() -> None:
    cfg = yaml.safe_load((ROOT / "config/experiments-demo.yaml").read_text())
    ex.check(demo(cfg["experiments"]["variants"]), SCHEMA, validate)


# ---------------------------------------------------------------- the comparison table


def _cell_files(tmp: Path, name: str, summary: dict[str, float], ious: list[float]) -> dict:
    d = tmp / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame({"class": ["background", "dog"], "iou": ious}).to_parquet(d / "per_class.parquet")
    return {"summary": str(d / "summary.json"), "per_class": str(d / "per_class.parquet")}


def test_the_comparison_is_mean_sd_and_n_over_seeds_with_deltas(tmp_path: Path) -> None:
    values = {("ref", 0): 0.50, ("ref", 1): 0.54, ("abl", 0): 0.40, ("abl", 1): 0.41}
    ious = {("ref", 0): [0.9, 0.1], ("ref", 1): [0.8, 0.3], ("abl", 0): [0.7, 0.2],
            ("abl", 1): [0.7, 0.4]}  # fmt: skip
    plan = []
    for (v, s), miou in values.items():
        files = _cell_files(
            tmp_path, f"{v}{s}", {"miou": miou, "best_miou": miou + 0.01}, ious[v, s]
        )
        plan.append({"variant": v, "seed": s, "stage": "eval_cam", **files})
    out = {k: tmp_path / f"out.{k}" for k in ("parquet", "csv", "pc.csv", "html", "png")}
    compare.run(plan, "ref", out["parquet"], out["csv"], out["pc.csv"], out["html"], out["png"])
    table = pd.read_parquet(out["parquet"]).set_index(["variant", "metric"])
    # by hand: mean and sample sd of the two seeds, in percent
    assert table.loc[("ref", "cam_miou"), "mean"] == pytest.approx(52.0)
    assert table.loc[("ref", "cam_miou"), "sd"] == pytest.approx(math.sqrt(2 * 2.0**2))
    assert table.loc[("abl", "cam_miou"), "mean"] == pytest.approx(40.5)
    assert table.loc[("abl", "cam_miou"), "sd"] == pytest.approx(np.std([40, 41], ddof=1))
    assert table.loc[("abl", "cam_miou"), "delta"] == pytest.approx(-11.5)
    assert table.loc[("ref", "cam_miou"), "delta"] == 0
    assert table.loc[("abl", "cam_best_miou"), "mean"] == pytest.approx(41.5)
    assert table.loc[("abl", "cam_miou"), "n"] == 2
    assert table.loc[("abl", "cam_miou"), "seeds"] == "0 1"
    csv = pd.read_csv(out["csv"]).set_index(["variant", "metric"])
    assert csv.loc[("abl", "cam_miou"), "mean"] == pytest.approx(40.5, abs=1e-4)
    pc = pd.read_csv(out["pc.csv"]).set_index(["variant", "class"])
    assert pc.loc[("abl", "dog"), "mean"] == pytest.approx(30.0)
    assert pc.loc[("abl", "dog"), "delta"] == pytest.approx(30.0 - 20.0)
    assert pc.loc[("abl", "background"), "delta"] == pytest.approx(70.0 - 85.0)
    page = out["html"].read_text()
    assert "52.00 ± 2.83 (2)" in page and "-11.50" in page and "ref (reference)" in page
    assert out["png"].stat().st_size > 1000


def test_one_seed_has_no_sd_and_a_missing_summary_is_named(tmp_path: Path) -> None:
    files = _cell_files(tmp_path, "a", {"miou": 0.5}, [0.5, 0.5])
    plan = [{"variant": "a", "seed": 0, "stage": "eval_sem_seg", **files}]
    metrics, per_class = compare.collect(plan)
    table, _ = compare.summarise(metrics, per_class, "a")
    assert table["n"].tolist() == [1] and math.isnan(table["sd"].iloc[0])
    broken = copy.deepcopy(plan)
    broken[0]["summary"] = str(tmp_path / "gone" / "summary.json")
    with pytest.raises(DataError, match="gone/summary.json"):
        compare.collect(broken)
    plan[0]["stage"] = "eval_seeds"  # its summaries carry coverage; this one does not
    with pytest.raises(DataError, match="miou_covered"):
        compare.collect(plan)


# ---------------------------------------------------------------- dry runs


DEMO_EXPERIMENT = ROOT / "config" / "experiments-demo.yaml"


@pytest.mark.workflow
def test_the_demo_experiment_computes_each_shared_stage_once(tmp_path: Path) -> None:
    jobs = dry_run_jobs(tmp_path, configfiles=(CONFIG, DEMO_EXPERIMENT))
    cfg = yaml.safe_load(DEMO_EXPERIMENT.read_text())["experiments"]
    n_cells = len(cfg["variants"]) * len(cfg["seeds"])
    shards = expected_config([CONFIG])["shards"]
    for rule in ("dataset", "train_tiny_blip", "train_tiny_clip", "train_cam", "corpus",
                 "text_features", "compare_experiments"):  # fmt: skip
        assert jobs[rule] == 1, rule
    assert jobs["vqa"] == shards
    # the cell qa_clims/seed0 is the run itself (the demo's settings and seed): its RITC,
    # CAMs and evaluation are the run's, made once; every other cell trains its own
    assert jobs["train_ritc"] == 1
    assert jobs["make_cam"] == 2 * shards  # the baseline's and the run's RITC CAM on val
    assert jobs["eval_cam"] == 2
    assert jobs["run_config_cell"] == n_cells
    assert jobs["train_ritc_cell"] == n_cells - 1
    assert jobs["make_cam_cell"] == (n_cells - 1) * shards  # val only: what eval_cam reads
    assert jobs["eval_cam_cell"] == n_cells - 1
    # class_name_only changes the text only: its text features once for both seeds
    assert jobs["text_features_cell"] == 1
    assert not {"corpus_cell", "vqa_cell", "train_cam_cell"} & set(jobs)


@pytest.mark.workflow
def test_the_voc_ablation_preset_shares_every_stage_before_ritc(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    voc = yaml.safe_load((repo / "config/voc12.yaml").read_text())["dataset"]["root"]
    ids = {"train_aug": [f"2007_{i:06d}" for i in range(8)], "train": ["2007_000000"],
           "val": ["2008_000001"]}  # fmt: skip
    fake_voc(repo / voc, ids, size=(24, 32))
    fake_checkpoints(repo, repo / "config" / "voc12.yaml")
    files = (repo / "config/voc12.yaml", repo / "config/ablations-voc12.yaml")
    jobs = dry_run_jobs(repo, configfiles=files, repo=repo)
    cfg = yaml.safe_load(files[1].read_text())["experiments"]
    n_cells = len(cfg["variants"]) * len(cfg["seeds"])
    shards = yaml.safe_load(files[0].read_text())["shards"]
    assert n_cells >= 18
    for rule in ("dataset", "corpus", "text_features", "train_cam", "train_ritc",
                 "compare_experiments"):  # fmt: skip
        assert jobs[rule] == 1, rule
    assert jobs["vqa"] == shards
    # qa_clims at voc12's own seed is the run: one cell fewer
    assert cfg["variants"]["qa_clims"] in ({}, None) and 0 in cfg["seeds"]
    assert jobs["train_ritc_cell"] == n_cells - 1
    assert jobs["make_cam_cell"] == (n_cells - 1) * shards  # train_aug: eval_cam scores it
    assert jobs["eval_cam_cell"] == n_cells - 1
    assert jobs["text_features_cell"] == 1  # no_foreground_answers, shared by its seeds
    assert not {"vqa_cell", "corpus_cell", "train_cam_cell", "train_irn_cell"} & set(jobs)


# ---------------------------------------------------------------- the twin rules


def _input_names(text: str, header: str) -> list[str]:
    """Named inputs (and spread helpers) of the rule block starting at ``header``."""
    block = text.split(header, 1)[1]
    m = block.split("\n    input:\n", 1)
    if len(m) == 1 or "\n\n" in m[0] or "\nrule " in m[0] or "\nuse rule" in m[0]:
        return []  # the block has no input section of its own
    names = []
    for line in m[1].splitlines():
        if line and not line.startswith("        "):
            break
        item = line.strip()
        if line[8:9] != " " and re.match(r"\*\*\w+\(|unpack\(|\w+=", item):
            names.append(item.split("=", 1)[0].rstrip(","))
    return names


SPREADS = {"unpack(clip_weight_inputs)": "**_cell_clip_weights()",
           "**vqa_inputs(None)": "**_cell_vqa_inputs()",
           "unpack(irn_backbone_inputs)": "unpack(_cell_irn_backbone)"}  # fmt: skip


def test_every_twin_names_all_of_its_rules_inputs() -> None:
    # `use rule ... with: input:` replaces the whole input list: a twin that forgot one
    # would fail only when its script reads it
    rules = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    twins = (ROOT / "workflow/rules/experiments.smk").read_text()
    pairs = [line.split()[2] for line in twins.splitlines() if line.startswith("use rule ")]
    assert len(pairs) == 18
    for rule in pairs:
        own = _input_names(twins, f"use rule {rule} as {rule}_cell with:")
        if not own:
            continue  # inherits the rule's inputs unchanged
        base = [SPREADS.get(n, n) for n in _input_names(rules, f"\nrule {rule}:")]
        assert sorted(own) == sorted(base), rule


# ---------------------------------------------------------------- released networks


def test_a_released_network_replaces_the_training_once_for_all_seeds() -> None:
    cfg = demo({"rel": {"released": {"ritc": "res50_qa_clims.pth"}}, "own": {}}, seeds=[0, 1])
    assert ex.replaced(cfg, "rel") == {"train_ritc"} and ex.replaced(cfg, "own") == set()
    assert ex.folder(cfg, "rel", 1, "train_ritc") == "common/released_ritc"
    # a released file has no seed: the CAMs made from it are the same for every seed
    for stage in ("make_cam", "eval_cam", "cam_to_ir_label"):
        assert ex.folder(cfg, "rel", 1, stage) == ex.COMMON
    assert ex.folder(cfg, "rel", 1, "train_irn") == "seed1"  # IRN itself is seeded
    assert ex.folder(cfg, "own", 1, "train_ritc") == "seed1"


@pytest.mark.workflow
def test_a_released_network_is_a_variant(tmp_path: Path) -> None:
    (tmp_path / "res50_qa_clims.pth").write_bytes(b"placeholder")  # a dry run opens nothing
    exp = yaml.safe_load(DEMO_EXPERIMENT.read_text())
    exp["experiments"]["variants"]["released"] = {"released": {"ritc": "res50_qa_clims.pth"}}
    over = tmp_path / "exp.yaml"
    over.write_text(yaml.safe_dump(exp, sort_keys=False))
    jobs = dry_run_jobs(tmp_path, configfiles=(CONFIG, over))
    shards = expected_config([CONFIG])["shards"]
    # every variant but the released one trains RITC per seed, except qa_clims at seed 0:
    # that cell is the run itself (its settings and seed), made by the run's own rules
    trained = (len(exp["experiments"]["variants"]) - 1) * 2 - 1
    assert jobs["released_cell"] == 1  # once, for both seeds
    assert jobs["train_ritc_cell"] == trained and jobs["train_ritc"] == 1
    assert jobs["make_cam_cell"] == (trained + 1) * shards
    assert jobs["eval_cam_cell"] == trained + 1
    (tmp_path / "res50_qa_clims.pth").unlink()
    r = snakemake(tmp_path, "-n", configfiles=(CONFIG, over), check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "experiments.variants.released" in out and "released.ritc" in out


def test_the_comparison_figure_has_a_panel_per_metric_on_its_own_scale() -> None:
    """One panel per metric, a bar per variant ending at its mean (values by hand), each
    panel's axis spanning its own values (a CAM change of 0.4 points is not squeezed onto a
    0-100 scale shared with the seeds' coverage), the reference's mean dashed."""
    rows = [("ref", 0, "cam_miou", 78.0), ("ref", 1, "cam_miou", 78.4),
            ("abl", 0, "cam_miou", 78.6), ("abl", 1, "cam_miou", 79.0),
            ("ref", 0, "seeds_coverage", 97.0), ("ref", 1, "seeds_coverage", 97.0),
            ("abl", 0, "seeds_coverage", 96.0), ("abl", 1, "seeds_coverage", 96.2)]  # fmt: skip
    metrics = pd.DataFrame(rows, columns=["variant", "seed", "metric", "value"])
    table = pd.DataFrame({
        "variant": ["ref", "ref", "abl", "abl"],
        "metric": ["cam_miou", "seeds_coverage", "cam_miou", "seeds_coverage"],
        "mean": [78.2, 97.0, 78.8, 96.1], "sd": [0.28, 0.0, 0.28, 0.14],
    })  # fmt: skip
    fig = compare.figure(metrics, table, "ref")
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["CAM mIoU", "seeds coverage"]
    for ax, means in zip(axes, ([78.2, 78.8], [97.0, 96.1]), strict=True):
        ends = sorted((p.get_y(), p.get_x() + p.get_width()) for p in ax.patches)
        assert [e for _, e in ends][::-1] == pytest.approx(means)  # ref on top, then abl
        lo, hi = ax.get_xlim()
        assert lo <= min(means) - 0.2 and hi >= max(means) + 0.2 and hi - lo < 5
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == 1 and dashed[0].get_xdata()[0] == pytest.approx(means[0])
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert sorted(labels) == ["abl", "ref"]
