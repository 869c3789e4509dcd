#!/usr/bin/env bash
# Next session's first GPU call: every `gpu` test, then the CPU-verified paths of 2026-12-03 that no GPU has run
# yet (CogVideoX 1.5, image-to-video, the image latents in the sampler, PDR calibration, eval over calibrations).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 360 python3 -m pytest -q -p no:cacheprovider -rfE --durations=5 -m gpu tests/ 2>&1 | grep -v Warning | tail -10
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE -m "not gpu" tests/test_pipeline_cogvideox.py \
  tests/test_model.py -k "1.5 or i2v or image or calibrate_route or pdr_threshold" tests/test_runtime.py 2>&1 \
  | grep -v Warning | tail -6
