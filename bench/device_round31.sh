#!/usr/bin/env bash
# Sixth session, third call (issue 15): each block's K scale loaded one block ahead and carried (rounds 29-30 showed
# a load used, or multiplied, before the block's matrix products are issued stalls the warpgroup); the GPU tests of
# the changed schedules, the classic and tuned kernels at 2B/5B against cuDNN, then the 2B 50-step whole method.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 90 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu tests/test_attention_int8.py \
  -k "default or overlap or 3wg or free or cvt or fp8" 2>&1 | tee $OUT/attn_tests.log | grep -v "^  " | tail -6
timeout 100 python3 bench/bench_attention.py --no-correctness --iters 8 --shapes 2b 5b --configs bq=64 tuned \
  --out $OUT/attention_d64.json 2>&1 | tee $OUT/attention_d64.log | grep '^{' | grep -v accuracy | cut -c1-120
timeout 230 python3 bench/bench_sixbit.py --model cogvideox-2b --steps 50 --modes bf16 replay-int8+attn8 \
  --out $OUT/sixbit_2b_50.json 2>&1 | tee $OUT/sixbit_2b_50.log | tail -4
