#!/usr/bin/env bash
# Fifth session, first call (issues 15 and 16): the packed-fp16 exponentials (exp16) tested and timed against cuDNN
# at 2B, 5B and Wan shapes (round 23's content), then Wan2.1-1.3B at 81x480x832, 10 CFG steps of flow UniPC: BF16
# against the shapes model's replayed route mix with INT8 for NVFP4 and 8-bit attention (round 21's content).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 90 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_attention_int8.py -k "default or exp16 or lowers" 2>&1 \
  | tee $OUT/attn_tests.log | grep -v "^  " | tail -12
timeout 170 python3 bench/bench_attention.py --no-correctness --iters 8 --configs bq=64 bq=64,exp16=1 bq=128,exp16=1 \
  --out $OUT/attention.json 2>&1 | tee $OUT/attention.log | grep '^{' | cut -c1-220
timeout 300 python3 bench/bench_sixbit.py --model wan2.1-1.3b --steps 10 --modes bf16 replay-int8+attn8 \
  --out $OUT/wan_sixbit.json 2>&1 | tee $OUT/wan.log | tail -8
