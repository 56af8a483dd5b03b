#!/usr/bin/env bash
# What only a GPU shows, in one run (used on a lent GPU machine; also useful on a
# workstation): CUDA tests, make_cam / random-walk / VQA throughput, and the demo DAG at
# smoke size with jobs on the GPU. The runs that carry a `stage` (the GPU-hours table) use
# the paper config's batch sizes (make_cam 8 images, vqa 128 questions).
# Usage: bash benchmarks/gpu_check.sh OUT_DIR [all|demo]
# The benchmarks' results go to OUT_DIR/speed.jsonl (with the machine); copy it to
# benchmarks/records/gpu.jsonl and run `make speed-table` to put them in the README (the
# records of the paper's networks carry a `stage`: they make the GPU-hours table).
# If .whl/ holds wheels (packages the machine lacks), they are installed to /tmp/site first.
set -uo pipefail
OUT=${1:-gpu_check_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
  if ls .whl/pydensecrf2-*.tar.gz >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/pydensecrf2-*.tar.gz \
      > "$OUT/densecrf_build.log" 2>&1 || echo "pydensecrf2 build failed (see densecrf_build.log)"
  fi
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PATH=/tmp/site/bin:$PATH
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
step() { echo "=== $1"; shift; /usr/bin/time -f "%e s" "$@" 2>&1 | tee -a "$OUT/gpu_check.log" | tail -25; }
if [ "${2:-all}" = all ]; then
step "CUDA tests" python3 -m pytest -q -p no:cacheprovider tests/test_random_walk.py tests/test_vqa.py tests/test_cam_infer.py
REC="$OUT/speed.jsonl"  # the records the README's speed table is made from
step "make_cam resnet50 500x375 fp32" python3 benchmarks/bench_make_cam.py --device cuda --arch resnet50 --size 500x375 --images 64 --batch-size 8 --record "$REC"
step "make_cam resnet50 500x375 bf16" python3 benchmarks/bench_make_cam.py --device cuda --arch resnet50 --size 500x375 --images 64 --batch-size 16 --amp --record "$REC"
step "random walk + IRN" python3 benchmarks/bench_refine.py --device cuda --skip-crf --irn --irn-batch 32 --irn-steps 5 --record "$REC"
step "VQA BLIP-large shapes, 480 px, fp32" python3 benchmarks/bench_vqa.py --blip-large --device cuda --image-size 480 --dtype fp32 --images 4 --batch-size 128 --record "$REC"
step "RITC + train_cam steps" python3 benchmarks/bench_train_ritc.py --gpu --train-cam --steps 5 --record "$REC"
step "DeepLab-v2 R101" python3 benchmarks/bench_deeplab_infer.py --arch resnet101 --device cuda --images 8 --batch 10 --crop 321 --record "$REC"
# not a GPU figure: the dataset stage's worker scaling, where the machine has 8+ cores
step "dataset 1 vs 8 workers" python3 benchmarks/bench_dataset.py --images 2000 --workers 1 8 --record "$REC"
fi
step "demo DAG (smoke) on the GPU" python3 -m snakemake --cores 16 --resources gpu=1 --scheduler greedy \
  --configfiles config/config.yaml config/smoke.yaml --directory /tmp/gpu_demo -s Snakefile --workflow-profile none
grep -h "rule .* on \|using GPUs" /tmp/gpu_demo/logs/demo/*.log /tmp/gpu_demo/logs/demo/*/*.log 2>/dev/null | sort | uniq -c | head -40
python3 -m qaclims.summary /tmp/gpu_demo/results/demo
