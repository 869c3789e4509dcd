#!/usr/bin/env bash
# Issue 12 on the GPU in one eval call: the paper's ablation on the shapes model, 128 clips (64 prompts x 2 seeds,
# guidance 2), each calibrated mode once per calibration (shipped: block signal, one tau_q; per-block tau_q; the
# earlier linear signal), against one BF16 reference.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
python3 -m sixbit_jax convert sixbit_jax/assets/cogvideox-shapes /tmp/ck --dtype fp32 >/dev/null 2>&1 || echo "convert failed"
CAL=bench/eval-shapes-2026-12-02
timeout 540 python3 -m sixbit_jax eval /tmp/ck --prompts 64 --seeds 0 1 --guidance 2 --quiet --out $OUT/ablation \
  --modes nvfp4 int8 dmpq dmpq+tdc dmpq+tdc+pdr --calibration sixbit_jax/assets/cogvideox-shapes/calibration.json \
  $CAL/calibration-per-block.json $CAL/calibration-linear-signal-2026-11-21.json 2>&1 | grep -v Warning | tail -20
