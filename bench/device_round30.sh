#!/usr/bin/env bash
# Sixth session, second call (issue 15, then the sixth session's model-path checks): the 8-bit attention kernel with
# each block's K scale loaded before its Q·Kᵀ is issued (round 29 loaded it after the wait), its GPU tests, timings
# at the 2B/5B shapes (classic schedule, the tuned one, four warpgroups of 64-key blocks), the whole 2B method over
# 50 steps with the tuned kernel, Wan-shape timings, then the Wan pipeline/VAE tests and the model/sampler gpu tests.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
timeout 110 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu tests/test_attention_int8.py 2>&1 \
  | tee $OUT/attn_tests.log | grep -v "^  " | tail -8
timeout 130 python3 bench/bench_attention.py --no-correctness --iters 8 --shapes 2b 5b \
  --configs bq=64 tuned overlap=1,pp=0,wgs=4,bkv=64 --out $OUT/attention_d64.json 2>&1 \
  | tee $OUT/attention_d64.log | grep '^{' | grep -v accuracy | cut -c1-120
timeout 190 python3 bench/bench_sixbit.py --model cogvideox-2b --steps 50 --modes bf16 replay-int8+attn8 \
  --out $OUT/sixbit_2b_50.json 2>&1 | tee $OUT/sixbit_2b_50.log | tail -4
timeout 140 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_pipeline_wan.py tests/test_vae_wan.py \
  tests/test_model.py tests/test_sampling.py -m "gpu or not slow" -k "wan or Wan or gpu" 2>&1 \
  | tee $OUT/model_tests.log | grep -v "^  " | tail -8
timeout 80 python3 bench/bench_attention.py --no-correctness --iters 8 --shapes wan1.3b \
  --configs bq=64 overlap=1,pp=0 overlap=1,pp=0,wgs=3 --out $OUT/attention_d128.json 2>&1 \
  | tee $OUT/attention_d128.log | grep '^{' | grep -v accuracy | cut -c1-120
