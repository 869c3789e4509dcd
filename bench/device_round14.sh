#!/usr/bin/env bash
# Issue 16: Wan2.1 BF16 denoising step, ours vs diffusers (eager, torch.compile), same H200: 1.3B at 81x480x832
# (32,760 tokens, B=2), then 14B (ours and eager).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
timeout 330 python3 bench/bench_step.py --model wan2.1-1.3b --iters 5 --warmup 1 --json $OUT/wan13b_step.json 2>&1 | tail -12
for impl in jax torch; do
  timeout 120 python3 bench/bench_step.py --model wan2.1-14b --impl $impl --iters 3 --warmup 1 2>&1 | grep RESULT | tee -a $OUT/wan14b_step.jsonl | cut -c1-400
done
