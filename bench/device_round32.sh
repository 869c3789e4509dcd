#!/usr/bin/env bash
# Next session's first call (issue 15): does the whole 2B method finish, and how fast, with the 8-bit attention
# kernel's overlapped schedule (rounds 30-31 ran out of time in the replay mode's set-up: the 2B model quantized on
# the host, the shapes model's own run, compilation). BF16, the classic schedule and the overlapped one in one run,
# then the remaining attention tests (rounds 30-31 stopped 3 short of the end).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
/usr/bin/time -f "bench_sixbit wall %e s" timeout 480 python3 bench/bench_sixbit.py --model cogvideox-2b --steps 50 \
  --modes bf16 replay-int8+attn8o replay-int8+attn8 --out $OUT/sixbit_2b_50.json 2>&1 | tee $OUT/sixbit_2b_50.log | tail -8
timeout 100 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu tests/test_attention_int8.py -k "overlap" 2>&1 \
  | tee $OUT/attn_tests.log | grep -v "^  " | tail -6
