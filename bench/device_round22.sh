#!/usr/bin/env bash
# Issues 11 and 15 end to end: CogVideoX-2B (CFG, 49 x 480 x 720), 10 steps per mode: BF16, the full method's
# replayed route mix with INT8 in place of NVFP4, and the same with 8-bit attention. One process per mode.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 225 python3 bench/bench_sixbit.py --model cogvideox-2b --steps 10 --modes bf16 replay-int8+attn8 replay-int8 \
  --out $OUT/sixbit_2b.json 2>&1 | tail -12
