#!/usr/bin/env bash
# Next session's first call (issue 15). First every 8-bit attention GPU test on the final kernel code (the classic
# schedule traces to the same kernel jaxpr as round 24's; the overlapped one moved one row-vector multiply after
# round 31, and rounds 30-31 stopped short of the last overlap tests). Then: does the whole 2B method finish, and
# how fast, with the kernel's overlapped schedule (rounds 30-31 ran out of time in the replay mode, whose set-up
# quantizes the 2B model on the host, runs the shapes model's own 16-prompt rollout and compiles).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 170 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu tests/test_attention_int8.py 2>&1 \
  | tee $OUT/attn_tests.log | grep -v "^  " | tail -6
/usr/bin/time -f "bench_sixbit wall %e s" timeout 380 python3 bench/bench_sixbit.py --model cogvideox-2b --steps 50 \
  --modes bf16 replay-int8+attn8o replay-int8+attn8 --schedule-cache $OUT/schedule_2b_50.json \
  --out $OUT/sixbit_2b_50.json 2>&1 | tee $OUT/sixbit_2b_50.log | tail -6
# The route table comes back in schedule_2b_50.json: commit it and pass it with --schedule-cache to later runs (the
# replay modes then skip the shapes model's own rollout). Then, in a second call: round 28 (issue 12).
