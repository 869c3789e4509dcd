#!/usr/bin/env bash
# Fifth session, last call (issues 11 and 15): the whole method at CogVideoX-2B shape over 50 CFG steps (49 x 480 x
# 720, DDIM): BF16 against the shapes model's replayed DMPQ + TDC + PDR route mix with INT8 for NVFP4 and 8-bit
# attention in every computed block.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 400 python3 bench/bench_sixbit.py --model cogvideox-2b --steps 50 --modes bf16 replay-int8+attn8 \
  --out $OUT/sixbit_2b_50.json 2>&1 | tee $OUT/sixbit_2b_50.log | tail -6
