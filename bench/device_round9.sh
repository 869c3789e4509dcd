#!/usr/bin/env bash
# Issue 11: q, k and v as one INT8 GEMM (1920 x 5760 tiles, one block, 20 sampling steps against BF16); then the
# non-gpu tests of the pipeline, T5, VAE, rng, quantized-linear and sampling files on the GPU (the fallbacks and
# the tokenizer changes of the previous session, and the stacked q/k/v GEMM).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 60 python3 bench/probe_tune.py --shapes 1920x5760 --out $OUT/tune-qkv.json 2>&1 | grep -v Warning | tail -7
timeout 100 python3 bench/bench_block.py --paths bf16 int8 --out $OUT/block.json 2>&1 | grep -v Warning | tail -6
timeout 170 python3 bench/bench_sixbit.py --modes bf16 int8 --steps 20 --out $OUT/sixbit.json 2>&1 | grep -v Warning | tail -6
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE -m "not gpu" tests/test_pipeline_cogvideox.py \
  tests/test_t5.py tests/test_vae_cogvideox.py tests/test_rng.py tests/test_quant_linear.py tests/test_sampling.py \
  2>&1 | grep -v Warning | tail -8
