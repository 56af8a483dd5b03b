#!/usr/bin/env bash
# What only a GPU shows, in one run that fits a lent GPU machine's call (10 min): the GPU
# benchmarks of the paper's networks (their records, with a `stage`, make the README's
# GPU-hours table), the dataset stage at 1 vs 8 workers (16 cores there), the CUDA tests and
# the demo DAG at smoke size with every job on the GPU. The stage-carrying runs use the
# paper config's batch sizes (make_cam 8 images, vqa 128 questions, RITC 8, train_cam 16,
# IRN 32).
#
#   python benchmarks/gpu_wheels.py            # here, with PyPI: what the machine lacks -> .whl/
#   bash benchmarks/gpu_check.sh OUT_DIR       # there (device tool: carry [".whl"])
#
# Steps run most-wanted first, each under its own time cap and all under one deadline
# ($GPU_CHECK_BUDGET seconds, default 540): a slow step is cut and said so, the next runs.
# The benchmarks append to OUT_DIR/speed.jsonl as they finish (copy it to
# benchmarks/records/gpu.jsonl, then `make speed-table`); OUT_DIR/gpu_check.log has the
# whole output. If .whl/ exists its wheels go to /tmp/site (no index needed); pydensecrf2
# (a source archive) builds in the background meanwhile, for the demo DAG's CRF stages.
set -uo pipefail
OUT=${1:-gpu_check_out}; mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"; REC="$OUT/speed.jsonl"
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET:-540}))
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
  if ls .whl/pydensecrf2-*.tar.gz >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site \
      .whl/pydensecrf2-*.tar.gz > "$OUT/densecrf_build.log" 2>&1 &
    CRF_BUILD=$!
  fi
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PATH=/tmp/site/bin:$PATH
{ nvidia-smi -L; nproc; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  python3 -c "import snakemake, open_clip, transformers, pycocotools, lemminflect, jsonschema; print('imports ok')"
} 2>&1 | tee -a "$LOG"

# step NAME CAP_SECONDS CMD...: run CMD for at most CAP seconds and never past the deadline
step() {
  local name=$1 cap=$2; shift 2
  local left=$((DEADLINE - SECONDS - 10))
  ((left < cap)) && cap=$left
  if ((cap < 20)); then echo "=== $name: skipped, $((DEADLINE - SECONDS)) s of the budget left" | tee -a "$LOG"; return; fi
  echo "=== $name (at most $cap s)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout -k 5 "$cap" "$@" 2>&1 | tee -a "$LOG" | tail -25
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc $rc in $((SECONDS - t0)) s$( ((rc == 124)) && echo ' (cut at its cap)')" | tee -a "$LOG"
}

if [ "${2:-all}" = all ]; then
step "RITC (ViT-L/14 + ResNet-50, batch 8) + train_cam (ResNet-50, batch 16, 512 px) steps" 150 \
  python3 benchmarks/bench_train_ritc.py --gpu --train-cam --steps 5 --record "$REC"
step "make_cam resnet50 500x375 fp32, batch 8" 90 \
  python3 benchmarks/bench_make_cam.py --device cuda --arch resnet50 --size 500x375 --images 64 --batch-size 8 --record "$REC"
step "IRN step (batch 32) + random walk" 90 \
  python3 benchmarks/bench_refine.py --device cuda --skip-crf --irn --irn-batch 32 --irn-steps 5 --record "$REC"
step "DeepLab-v2 R101 inference + MSC step" 90 \
  python3 benchmarks/bench_deeplab_infer.py --arch resnet101 --device cuda --images 8 --batch 10 --crop 321 --record "$REC"
step "VQA, BLIP-large shapes, 480 px, fp32, 3 beams" 120 \
  python3 benchmarks/bench_vqa.py --blip-large --device cuda --image-size 480 --dtype fp32 --images 4 --batch-size 128 --record "$REC"
# not a GPU figure: the dataset stage's worker scaling, on this machine's 16 cores
step "dataset, 1 vs 8 workers" 90 \
  python3 benchmarks/bench_dataset.py --images 2000 --workers 1 8 --record "$REC"
step "CUDA tests" 90 \
  python3 -m pytest -q -p no:cacheprovider tests/test_random_walk.py tests/test_vqa.py tests/test_cam_infer.py
step "make_cam resnet50 500x375 bf16, batch 16" 60 \
  python3 benchmarks/bench_make_cam.py --device cuda --arch resnet50 --size 500x375 --images 64 --batch-size 16 --amp --record "$REC"
fi
if [ -n "${CRF_BUILD:-}" ]; then
  wait "$CRF_BUILD" && echo "pydensecrf2 built" || echo "pydensecrf2 build failed (densecrf_build.log)"
fi | tee -a "$LOG"
step "demo DAG (smoke) with jobs on the GPU" 300 \
  python3 -m snakemake --cores 16 --resources gpu=1 --scheduler greedy \
  --configfiles config/config.yaml config/smoke.yaml --directory /tmp/gpu_demo -s Snakefile --workflow-profile none
grep -h "rule .* on \|using GPUs" /tmp/gpu_demo/logs/demo/*.log /tmp/gpu_demo/logs/demo/*/*.log 2>/dev/null |
  sort | uniq -c | head -40 | tee -a "$LOG"
python3 -m qaclims.report.summary /tmp/gpu_demo/results/demo 2>&1 | tee -a "$LOG"
echo "gpu_check: $SECONDS s; records: $(wc -l < "$REC" 2>/dev/null || echo 0) in $REC" | tee -a "$LOG"
