"""The README's demo figures come from a run's outputs: the block is made from summaries and
the seed benchmark's table, and replaces only what lies between its markers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from qaclims.core.errors import DataError
from qaclims.report import readme, speed

ROOT = Path(__file__).resolve().parents[1]


def _summary(path: Path, miou: float, **extra: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    body = {"num_images": 80, "miou": miou, "all_background_miou": 0.1123, **extra}
    (path / "summary.json").write_text(json.dumps(body))


def test_block_from_a_run_and_its_seed_table(tmp_path: Path) -> None:
    run = tmp_path / "results" / "demo"
    _summary(run / "eval_cam" / "cam" / "val", 0.6007, best_miou=0.7291)
    _summary(run / "eval_cam" / "ritc" / "val", 0.7535, best_miou=0.7556)
    _summary(run / "eval_seeds" / "ritc" / "val", 0.9059, coverage=0.9355)
    (run / "config.yaml").write_text("threads: {train_torch: 2}\ntrain_ritc: {seed: 0}\n")
    (run / "benchmarks").mkdir()
    (run / "benchmarks" / "make_demo_seconds.txt").write_text("540\n")
    seeds = tmp_path / "results" / "demo-seeds"
    (seeds / "benchmarks").mkdir(parents=True)
    pd.DataFrame({
        "stage": ["cam", "ritc"], "mean": [60.07, 70.0], "sd": [0.0, 1.2], "n": [3, 3],
        "min_class_gain": [float("nan"), -1.5], "min_class": ["", "kite"],
        "wins": [-1, 2], "min_seed_gain": [float("nan"), -0.75], "min_seed": [-1, 1],
        "keys": "synthetic.seed train_ritc.seed", "seeds": "0 1 2",
        "machine": "x86_64, 2 CPUs, --cores 2",
        "seconds_per_seed": 180.0,
    }).to_csv(seeds / "benchmarks" / "seeds_summary.csv", index=False)  # fmt: skip
    text = readme.block(run, seeds)
    assert text.startswith(readme.BEGIN) and text.endswith(readme.END)
    assert "| CAM, baseline classifier (IRN recipe) | 60.07 | 72.91 |  |" in text
    assert "| CAM, QA-CLIMS (RITC) | 75.35 | 75.56 |  |" in text
    assert "| confident seeds after dense CRF | 90.59 | – | 93.55 % |" in text
    assert "| all background (the floor) | 11.23 | | |" in text
    assert "torch training threads 2" in text and "took 9.0 min" in text
    assert "| CAM, QA-CLIMS | 70.00 ± 1.20 | 3 |" in text and "Gain +9.93 points" in text
    assert "-1.50 (kite)" in text
    assert "of `synthetic.seed`, `train_ritc.seed`; QA-CLIMS beats the baseline in 2 of 3" in text
    assert "the smallest gain of one seed is -0.75 (seed 1)" in text
    assert "CPU's kernels" not in text  # bench_demo_kernels.py has not run
    assert "IRN" not in text.split("Gain ")[1]  # no refinement rows: no sentence on them
    pd.DataFrame({
        "kernels": ["default", "avx2"], "native": [False, True], "threads": [2, 2],
        "cam": 60.07, "ritc": [77.25, 80.75], "seconds": 90.0, "seed": 0,
        "machine": "x86_64, 2 CPUs, native kernels avx2",
    }).to_csv(seeds / "benchmarks" / "kernels.csv", index=False)  # fmt: skip
    text = readme.block(run, seeds)
    assert (
        "On identical inputs and seed (0) at 2 training threads, the CPU's kernels alone give "
        "QA-CLIMS 77.25 (DEFAULT), 80.75 (AVX2 native): a spread of 3.50 points" in text
    )
    # bench_demo_seeds.py --to deeplab: rows of every stage, IRN against QA-CLIMS's CAMs
    pd.DataFrame({
        "stage": ["cam", "ritc", "seeds", "irn", "deeplab", "deeplab_crf"],
        "mean": [60.07, 70.0, 91.0, 73.5, 70.25, 78.0], "sd": [0.0, 1.2, 0.5, 2.0, 1.0, 1.5],
        "n": 3, "min_class_gain": [float("nan"), -1.5] + [float("nan")] * 4,
        "min_class": ["", "kite", "", "", "", ""],
        "against": ["", "cam", "", "ritc", "", ""], "wins": [-1, 2, -1, 3, -1, -1],
        "min_seed_gain": [float("nan"), -0.75, float("nan"), 0.25, float("nan"), float("nan")],
        "min_seed": [-1, 1, -1, 2, -1, -1],
        "keys": "synthetic.seed train_irn.seed", "seeds": "0 1 2",
        "machine": "x86_64, 2 CPUs, --cores 2", "seconds_per_seed": 300.0,
    }).to_csv(seeds / "benchmarks" / "seeds_summary.csv", index=False)  # fmt: skip
    text = readme.block(run, seeds)
    assert "| confident seeds after dense CRF (labelled pixels) | 91.00 ± 0.50 | 3 |" in text
    assert "| IRN random-walk pseudo masks | 73.50 ± 2.00 | 3 |" in text
    assert "| DeepLab-v2 (tiny), with CRF | 78.00 ± 1.50 | 3 |" in text
    assert (
        "IRN's pseudo masks beat QA-CLIMS's CAMs by +3.50 points on average and in 3 of 3 "
        "seeds, the smallest gain of one seed is +0.25 (seed 2)." in text
    )
    doc = f"intro\n{readme.BEGIN}\nold figures\n{readme.END}\nrest\n"
    assert readme.replace_block(doc, text) == f"intro\n{text}\nrest\n"
    with pytest.raises(DataError, match="no <!-- demo-figures:begin -->"):
        readme.replace_block("no markers", text)
    with pytest.raises(DataError, match="no evaluation summaries"):
        readme.block(tmp_path / "empty")


def test_the_readme_holds_one_generated_block() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count(readme.BEGIN) == 1 and text.count(readme.END) == 1
    inner = text.split(readme.BEGIN)[1].split(readme.END)[0]
    assert "| stage | mIoU (%) |" in inner and "Run of " in inner


def test_experiments_block_from_the_comparison_and_the_recorded_time(tmp_path: Path) -> None:
    run = tmp_path / "results" / "demo"
    (run / "experiments" / "benchmarks").mkdir(parents=True)
    pd.DataFrame({
        "variant": ["ref", "ref", "abl", "abl"], "metric": ["cam_miou", "cam_best_miou"] * 2,
        "mean": [80.0, 81.0, 70.5, 72.0], "sd": [0.5, 0.25, 1.0, float("nan")],
        "n": [2, 2, 2, 1], "seeds": ["0 1", "0 1", "0 1", "0"], "delta": [0.0, 0.0, -9.5, -9.0],
    }).to_csv(run / "experiments" / "comparison.csv", index=False)  # fmt: skip
    (run / "experiments" / "benchmarks" / "wall.json").write_text(json.dumps({
        "seconds": 612.0, "command": "snakemake --cores 2", "machine": "x86_64, 2 CPUs",
        "jobs": {"train_ritc_cell": 4, "eval_cam_cell": 4, "compare_experiments": 1, "all": 1},
        "cores": 2,
    }))  # fmt: skip
    text = readme.experiments_block(run)
    assert text.startswith(readme.EXP_BEGIN) and text.endswith(readme.EXP_END)
    assert "| ref (reference) | 80.00 ± 0.50 | 81.00 ± 0.25 |" in text
    assert "| abl | 70.50 ± 1.00 (-9.50) | 72.00 (-9.00) |" in text
    assert "took 10.2 min after the run's own stages" in text
    assert "8 jobs of the cells and 1 of the run itself" in text
    w = json.loads((run / "experiments" / "benchmarks" / "wall.json").read_text())
    w["jobs"].update(synthetic=1, train_cam=1)
    (run / "experiments" / "benchmarks" / "wall.json").write_text(json.dumps(w))
    text = readme.experiments_block(run)
    assert "took 10.2 min from a fresh clone (the run's own stages included)" in text
    assert "8 jobs of the cells and 3 of the run itself" in text
    doc = f"a\n{readme.EXP_BEGIN}\nold\n{readme.EXP_END}\nb\n"
    markers = (readme.EXP_BEGIN, readme.EXP_END)
    assert readme.replace_block(doc, text, markers=markers) == f"a\n{text}\nb\n"
    with pytest.raises(DataError, match="comparison.csv is missing"):
        readme.experiments_block(tmp_path / "nothing")


def _rec(**kw: object) -> dict[str, object]:
    base = {"bench": "b.py", "what": "w", "unit": "img/s", "reference": 2.0, "ours": 8.0,
            "device": "cpu", "threads": 2, "machine": "CPU X, 2 CPUs", "torch": "2.9",
            "date": "2026-12-06", "commit": "abc1234"}  # fmt: skip
    return base | kw


def test_speed_records_make_the_table_latest_record_per_row(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    rec = speed.append(path, bench="b.py", what="w", unit="img/s", ours=8.0, reference=2.0,
                       threads=2)  # fmt: skip
    assert speed.read([path]) == [rec] and rec["device"] == "cpu" and rec["machine"]
    torch = pytest.importorskip("torch")
    default = speed.append(path, bench="b.py", what="v", unit="img/s", ours=1.0)
    assert default["threads"] == torch.get_num_threads() and default["reference"] is None
    assert (
        speed.append(path, bench="b.py", what="v", unit="img/s", ours=1.0, threads=None)["threads"]
        is None
    )
    recs = [
        _rec(ours=3.0),  # replaced by the next record of the same row
        _rec(),
        _rec(what="t", unit="ms/img", reference=7.5, ours=2.5),  # times: reference / ours
        _rec(
            what="g",
            device="NVIDIA H200",
            threads=None,
            reference=None,
            ours=134.0,
            machine="CPU Y, 16 CPUs",
        ),  # fmt: skip
    ]
    text = speed.table(recs)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [
        "| g | NVIDIA H200 |  | 134 img/s |  |",  # GPU rows first
        "| w | cpu, 2 threads | 2.00 img/s | 8.00 img/s | 4.00× |",
        "| t | cpu, 2 threads | 7.50 ms/img | 2.50 ms/img | 3.00× |",
    ]
    assert "CPU X, 2 CPUs (torch 2.9, 2026-12-06, commit abc1234)" in text
    assert "CPU Y, 16 CPUs" in text
    with pytest.raises(ValueError, match="ours must be positive"):
        speed.append(path, bench="b", what="w", unit="img/s", ours=float("nan"))
    path.write_text('{"bench": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"r\.jsonl:1: a speed record lacks \['what'"):
        speed.read([path])
    path.write_text(json.dumps(_rec()) + "\nnot json\n")
    with pytest.raises(DataError, match=r"r\.jsonl:2: not JSON"):
        speed.read([path])
    with pytest.raises(DataError, match="do not exist"):
        speed.read([tmp_path / "none.jsonl"])


def test_the_readme_speed_table_is_the_one_its_records_make() -> None:
    text = (ROOT / "README.md").read_text()
    records = sorted((ROOT / "benchmarks" / "records").glob("*.jsonl"))
    assert records, "benchmarks/records/ holds the README's speed records"
    # A fresh clone gets only what git tracks: an ignored record would leave the
    # README's table without its source there (stop 22's CI failed on exactly this).
    ignored = subprocess.run(
        ["git", "check-ignore", *map(str, records)], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.returncode == 1, f"git ignores speed records: {ignored.stdout}"
    rel = [p.relative_to(ROOT) for p in records]
    want = speed.block(rel)
    assert text.count(speed.BEGIN) == 1 and want in text
    assert text.count(speed.DAG_BEGIN) == 1 and speed.dag_block(rel) in text
    coco = [
        r
        for r in speed.read(rel)
        if r.get("table") == "dag" and r["config"].endswith("coco14.yaml")
    ]
    assert {8, 32, 128} <= {r["shards"] for r in coco}, "the COCO dry run at 8/32/128 shards"
    r = subprocess.run(["make", "-n", "speed-table"], cwd=ROOT, capture_output=True, text=True)
    recipe = "-m qaclims.report.readme --speed benchmarks/records/*.jsonl --write README.md"
    assert recipe in r.stdout


def test_dry_run_records_make_their_own_table(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    speed.append(path, bench="b.py", what="w", unit="img/s", ours=8.0, reference=2.0, threads=2)
    kw = {"config": "config/coco14.yaml", "snakemake": "9.0"}
    speed.append_dag(path, shards=128, jobs=786, edges=3113, seconds=2.64, floor=2.4, **kw)
    speed.append_dag(path, shards=8, jobs=66, edges=233, seconds=9.0, floor=1.0, **kw)
    speed.append_dag(path, shards=8, jobs=66, edges=233, seconds=1.5, floor=1.2, **kw)
    speed.append_dag(path, shards=32, jobs=210, edges=809, seconds=1.75, floor=1.4, **kw)
    recs = speed.read([path])
    assert "bench_dag" not in speed.table(recs) and "786" not in speed.table(recs)
    text = speed.dag_table(recs)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows == [  # by shard count as numbers; the latest record of 8 shards; ratio by hand
        "| `config/coco14.yaml` | 8 | 66 | 233 | 1.50 s | 1.20 s | 1.25 |",
        "| `config/coco14.yaml` | 32 | 210 | 809 | 1.75 s | 1.40 s | 1.25 |",
        "| `config/coco14.yaml` | 128 | 786 | 3,113 | 2.64 s | 2.40 s | 1.10 |",
    ]
    assert "(Snakemake 9.0, " in text and speed.cpu_model() in text
    assert f"Records: `{path.as_posix()}`." in speed.dag_block([path])
    with pytest.raises(DataError, match="no dry-run records"):
        speed.dag_table(recs[:1])
    with pytest.raises(ValueError, match="floor must be positive"):
        speed.append_dag(path, shards=8, jobs=66, edges=233, seconds=1.0, floor=0.0, **kw)
    with pytest.raises(ValueError, match="edges must be >= 1"):
        speed.append_dag(path, shards=8, jobs=66, edges=0, seconds=1.0, floor=1.0, **kw)
    path.write_text('{"bench": "bench_dag.py", "table": "dag", "config": "c", "shards": 8}\n')
    with pytest.raises(DataError, match=r"r\.jsonl:1: a dag record lacks \['jobs', 'edges'"):
        speed.read([path])
    path.write_text(json.dumps(_rec(table="rates")) + "\n")
    with pytest.raises(DataError, match=r"r\.jsonl:1: unknown record table 'rates'"):
        speed.read([path])
