#!/usr/bin/env bash
# Issue 15, first GPU call: the 8-bit attention kernel's gpu tests (against the reference on the host CPU), then its
# speed and accuracy against cuDNN bf16 and JAX's Mosaic GPU example at the 2B, 5B and Wan-1.3B shapes.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE -x tests/test_attention_int8.py 2>&1 | tee $OUT/attn_tests.log | tail -25
timeout 360 python3 bench/bench_attention.py --configs heads:4 q:4 heads:2 --out $OUT/attention.json 2>&1 | tee $OUT/attention.log | grep -v "^  " | tail -60
