#!/usr/bin/env bash
# Issue 15, second GPU call (round 18 failed to lower: jax 0.11 defaults to warpgroup semantics; now Lane): the 8-bit
# attention kernel's tests, its speed and accuracy at 2B/5B/Wan shapes, then (only if the tests pass) 10 CFG steps of
# CogVideoX-2B with and without 8-bit attention.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE -x tests/test_attention_int8.py 2>&1 | tee $OUT/attn_tests.log | tail -25
ok=$?
timeout 240 python3 bench/bench_attention.py --configs heads:4 q:4 heads:2 --out $OUT/attention.json 2>&1 | tee $OUT/attention.log | grep '^{' | cut -c1-400
if [ $ok -eq 0 ]; then
  timeout 180 python3 bench/bench_sixbit.py --model cogvideox-2b --steps 10 --modes bf16 bf16+attn8 int8+attn8 \
    --out $OUT/sixbit_attn.json 2>&1 | tail -8
fi
