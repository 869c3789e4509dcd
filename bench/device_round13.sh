#!/usr/bin/env bash
# Issue 12, PDR: a fresh calibration of the shipped model (now also PDR's outlier threshold, 5% of refresh linears,
# and the outlier ratios' distribution per linear), then the delta cache with and without PDR at 30-50% skipped.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
python3 -m sixbit_jax convert sixbit_jax/assets/cogvideox-shapes /tmp/ck --dtype fp32 >/dev/null 2>&1 || echo "convert failed"
timeout 200 python3 -m sixbit_jax calibrate /tmp/ck --prompts 64 --quiet --out $OUT/calibration-pdr.json \
  --plot $OUT/routes.png 2>&1 | grep -v Warning | tail -22
timeout 330 python3 -m sixbit_jax eval /tmp/ck --prompts 64 --seeds 0 1 --guidance 2 --quiet --out $OUT/pdr \
  --modes dmpq+tdc dmpq+tdc+pdr int8+tdc+pdr --tau-c 0.15 0.3 0.5 --calibration $OUT/calibration-pdr.json 2>&1 \
  | grep -v Warning | tail -16
