#!/usr/bin/env bash
# Issue 15, fourth GPU call: the int32 -> float conversion of the logits by an integer add and a bitcast (cvt runs at
# the exponential's rate): the attention tests, then each variant against cuDNN at the 2B, 5B and Wan shapes.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 110 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_attention_int8.py -k "default or cvt or lowers" 2>&1 | tee $OUT/attn_tests.log | grep -v "^  " | tail -12
timeout 150 python3 bench/bench_attention.py --no-correctness --iters 8 --configs bq=64 bq=64,magic=0 bq=128 bq=128,pv=fp8 \
  --out $OUT/attention.json 2>&1 | tee $OUT/attention.log | grep '^{' | cut -c1-200
