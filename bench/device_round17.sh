#!/usr/bin/env bash
# Session 4, first call: every `gpu` test on the tree as the third session left it (the Wan VAE/pipeline, Wan2.2's
# experts and the layers/stacked.py refactor had not run on a GPU yet), with the durations of the slowest.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
timeout 540 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu --durations=15 tests/ 2>&1 | tee $OUT/gpu.log | tail -40
