#!/usr/bin/env bash
# Issue 16's 6Bit target on Wan: the full method at the shapes model's replayed route mix against our BF16, Wan2.1-1.3B
# at 81x480x832 (CFG, flow UniPC), 30 steps per mode (ms/step is what compares), each mode in its own process.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 560 python3 bench/bench_sixbit.py --model wan2.1-1.3b --steps 30 --modes bf16 int8 replay replay-int8 \
  --out $OUT/wan_sixbit.json 2>&1 | tail -12
