#!/usr/bin/env bash
# Next session, first call: every `gpu` test and the Wan pipeline tests on the tree as the fifth session left it
# (not yet run on a GPU: the Wan block's per-frame modulation and the TI2V image mode, the sampler's condition_mode,
# the calibrate-only output sensitivity, the gathered-keys attention path).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE --durations=5 tests/test_pipeline_wan.py tests/test_wan.py 2>&1 \
  | tee $OUT/wan_tests.log | grep -v "^  " | tail -12
timeout 420 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu --durations=10 tests/ 2>&1 | tee $OUT/gpu.log | tail -25
