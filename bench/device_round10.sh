#!/usr/bin/env bash
# The pipeline tests on the GPU (the quantized tiny pipeline failed in round 7); LayerNorm + modulation against
# PyTorch (bench/probe_norm.py); issue 12 on the GPU: the paper's ablation on the shapes model, 128 clips (64
# prompts x 2 seeds, guidance 2), with the shipped calibration (block signal, one tau_q), the per-block tau_q
# calibration and the earlier linear signal.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 130 python3 -m pytest -q -p no:cacheprovider -rfE -m "not gpu" -k 2b tests/test_pipeline_cogvideox.py 2>&1 \
  | grep -v Warning | tail -4
timeout 80 python3 bench/probe_norm.py --torch 2>&1 | grep -v Warning | tail -2
python3 -m sixbit_jax convert sixbit_jax/assets/cogvideox-shapes /tmp/ck --dtype fp32 >/dev/null 2>&1 || echo "convert failed"
CAL=bench/eval-shapes-2026-12-02
run() { local name=$1 limit=$2; shift 2; local start=$SECONDS
  timeout $limit python3 -m sixbit_jax eval /tmp/ck --prompts 64 --seeds 0 1 --guidance 2 --quiet --out $OUT/$name "$@" \
    2>&1 | grep -v Warning | tail -12; echo "[$name: $((SECONDS - start)) s]"; }
run shipped 140 --modes nvfp4 int8 dmpq dmpq+tdc dmpq+tdc+pdr
run per-block 90 --modes dmpq dmpq+tdc --calibration $CAL/calibration-per-block.json
run linear-signal 60 --modes dmpq --calibration $CAL/calibration-linear-signal-2026-11-21.json
