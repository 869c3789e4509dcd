#!/usr/bin/env bash
# Fifth session, second call: the Wan pipeline / VAE / Wan2.2 tests on the GPU (never run there: not gpu-marked),
# then every `gpu` test on this session's tree (sampler mesh argument, the block stack's sequence-shard
# constraints, the VAE run_cached refactor, the 8-bit attention kernels).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE --durations=5 tests/test_pipeline_wan.py tests/test_vae_wan.py 2>&1 \
  | tee $OUT/wan_tests.log | grep -v "^  " | tail -15
timeout 420 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu --durations=10 tests/ 2>&1 | tee $OUT/gpu.log | tail -30
