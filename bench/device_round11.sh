#!/usr/bin/env bash
# First GPU call of 2026-12-03 (third session): every `gpu` test, then the CPU-verified paths no GPU has run yet
# (CogVideoX 1.5 and image-to-video pipelines, the family-agnostic sampler and runtime, Wan and its 6Bit modes).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 330 python3 -m pytest -q -p no:cacheprovider -rfE --durations=5 -m gpu tests/ 2>&1 | grep -v Warning | tail -10
timeout 240 python3 -m pytest -q -p no:cacheprovider -rfE -m "not gpu" tests/test_wan_runtime.py tests/test_wan.py \
  tests/test_pipeline_cogvideox.py tests/test_runtime.py -k "wan or 1.5 or i2v or image or sampler or calibrat or pdr" \
  2>&1 | grep -v Warning | tail -8
