#!/usr/bin/env bash
# Completes round 11 (which ran out of time after 84 of 87 `gpu` tests, all passing): the three `gpu` tests of the
# model and the sampler, then the Wan sampler/runtime tests on the GPU (cuDNN attention and the kernels' paths).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu tests/test_model.py tests/test_sampling.py 2>&1 | tee $OUT/gpu3.log | tail -4
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_wan_runtime.py 2>&1 | tee $OUT/wan.log | tail -6
