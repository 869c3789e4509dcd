#!/usr/bin/env bash
# Issue 12 on the GPU: a 64-prompt calibration on the model-output signal (16 rollouts), then the 128-clip
# comparison of the three signals against one BF16 reference (block: shipped; linear: 2026-11-21; output: fresh).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
python3 -m sixbit_jax convert sixbit_jax/assets/cogvideox-shapes /tmp/ck --dtype fp32 >/dev/null 2>&1 || echo "convert failed"
timeout 200 python3 -m sixbit_jax calibrate /tmp/ck --prompts 64 --signal output --quiet --out $OUT/calibration-output.json \
  --plot $OUT/routes-output.png 2>&1 | grep -v Warning | tail -12
timeout 330 python3 -m sixbit_jax eval /tmp/ck --prompts 64 --seeds 0 1 --guidance 2 --quiet --out $OUT/signals \
  --modes dmpq dmpq+tdc+pdr --calibration sixbit_jax/assets/cogvideox-shapes/calibration.json \
  bench/eval-shapes-2026-12-02/calibration-linear-signal-2026-11-21.json $OUT/calibration-output.json 2>&1 \
  | grep -v Warning | tail -12
