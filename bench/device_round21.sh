#!/usr/bin/env bash
# Issues 15 and 16: Wan2.1-1.3B at 81x480x832 (CFG, flow UniPC), 10 steps per mode: BF16, the full method's replayed
# route mix with INT8 in place of NVFP4 (Hopper's fast path), and the same with 8-bit attention. Each mode in its own
# process; the JSON is written after every mode.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 280 python3 bench/bench_sixbit.py --model wan2.1-1.3b --steps 10 --modes bf16 replay-int8+attn8 replay-int8 \
  --out $OUT/wan_sixbit.json 2>&1 | tail -12
