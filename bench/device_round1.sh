#!/usr/bin/env bash
# One device call: Mosaic GPU kernel probe, their GPU tests, and the one-block benchmark. Results under $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
timeout 330 python3 bench/probe_mgpu.py --out $OUT/probe.json --iters 10 2>&1 | grep -v Warning | tee $OUT/probe.log | cut -c1-600
timeout 100 python3 -m pytest -q -x tests/test_kernels.py -k mosaic -p no:cacheprovider 2>&1 | tail -15 | tee $OUT/pytest.log
timeout 120 python3 bench/bench_block.py --paths bf16 int8 --iters 10 --out $OUT/block.json 2>&1 | grep -v Warning | tail -12
