#!/usr/bin/env bash
# Issue 13 on the GPU: the T5, VAE and pipeline tests compiled, then the whole-pipeline benchmark against diffusers.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
timeout 240 python3 -m pytest -q -p no:cacheprovider -rfE --durations=8 tests/test_t5.py tests/test_pipeline_cogvideox.py tests/test_vae_cogvideox.py 2>&1 | grep -v Warning | tail -25
timeout 340 python3 bench/bench_pipeline.py --steps ${STEPS:-50} --out $OUT/pipeline.json 2>&1 | grep -v Warning | tail -30
