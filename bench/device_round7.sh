#!/usr/bin/env bash
# GPU tests after this session's changes to the quantized linears' backend choice, the sampler's noise draw, the
# jitted T5 encode and the pipeline: every `gpu` test, then the other tests of the files those changes touch.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 380 python3 -m pytest -q -p no:cacheprovider -rfE --durations=5 -m gpu tests/ 2>&1 | grep -v Warning | tail -12
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE -m "not gpu" tests/test_pipeline_cogvideox.py \
  tests/test_t5.py tests/test_vae_cogvideox.py tests/test_rng.py tests/test_quant_linear.py tests/test_sampling.py \
  2>&1 | grep -v Warning | tail -8
