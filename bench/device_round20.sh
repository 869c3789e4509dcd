#!/usr/bin/env bash
# Issue 15, third GPU call: the kernel with fp8 P·V (P through shared memory) and with 128-row query tiles: tests
# against the reference, then speed/accuracy of each variant against cuDNN at the 2B, 5B and Wan shapes.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_attention_int8.py 2>&1 | tee $OUT/attn_tests.log | grep -v "^  " | tail -25
timeout 330 python3 bench/bench_attention.py --no-correctness --configs bq=64 bq=128 pv=fp8 bq=128,pv=fp8 bq=64,pv=fp8,stages=2 \
  --out $OUT/attention.json 2>&1 | tee $OUT/attention.log | grep '^{' | cut -c1-300
