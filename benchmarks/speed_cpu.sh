#!/usr/bin/env bash
# The CPU rows of the README's speed table: each benchmark on this machine, its results
# appended to benchmarks/records/cpu.jsonl (with the machine, torch and commit), then the
# table rewritten from the records. Usage: bash benchmarks/speed_cpu.sh [RECORDS]
# (GPU rows: benchmarks/gpu_check.sh on a GPU machine, records copied to records/gpu.jsonl.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
REC=${1:-benchmarks/records/cpu.jsonl}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
: > "$REC.new"
$PY benchmarks/bench_make_cam.py --device cpu --record "$REC.new"
$PY benchmarks/bench_refine.py --device cpu --images 8 --threads "$(nproc)" --record "$REC.new"
$PY benchmarks/bench_vqa.py --device cpu --record "$REC.new"
$PY benchmarks/bench_eval_cam.py 40 --record "$REC.new"
$PY benchmarks/bench_eval_cam.py 40 --coco --record "$REC.new"
$PY benchmarks/bench_train_ritc.py --record "$REC.new"
$PY benchmarks/bench_dataset.py --images 1000 --workers 1 "$(nproc)" --record "$REC.new"
$PY benchmarks/bench_dag.py --repeat 3 --record "$REC.new"  # time with the SLURM cluster up
mv "$REC.new" "$REC"  # a crashed benchmark leaves the old records in place
$PY -m qaclims.report.readme --speed benchmarks/records/*.jsonl --write README.md
