#!/usr/bin/env bash
# Issue 15, next GPU call: exponentials in packed fp16 (ex2.approx.f16x2, two per instruction; P·V in fp16), written
# and lowered on CPU in the fourth session: the attention tests, then each variant against cuDNN at 2B, 5B and Wan.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_attention_int8.py -k "default or exp16 or lowers or fp8" 2>&1 | tee $OUT/attn_tests.log | grep -v "^  " | tail -15
timeout 200 python3 bench/bench_attention.py --no-correctness --iters 8 --configs bq=64 bq=64,exp16=1 bq=128,exp16=1 \
  --out $OUT/attention.json 2>&1 | tee $OUT/attention.log | grep '^{' | cut -c1-200
