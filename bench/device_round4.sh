#!/usr/bin/env bash
# Fourth device call of issue 11: the per-group INT8 kernels (GPU tests, per-linear probe, one block).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 170 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_quant_linear.py tests/test_kernels.py -k "mosaic or group or whole_tiles or shared or float32_before" 2>&1 | grep -v Warning | tail -15
timeout 200 python3 bench/probe_grouped.py --models 2b --out $OUT/grouped.json 2>&1 | grep -v Warning | tail -5
timeout 130 python3 bench/bench_block.py --paths bf16 int8 int8-group --iters 10 --out $OUT/block.json 2>&1 | grep -v Warning | tail -7
