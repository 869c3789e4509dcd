#!/usr/bin/env bash
# Third device call of issue 11 (2026-12-02, second session): the whole GPU test suite, where the NVFP4 path parts
# from its reference, the per-linear table with the tuned GEMM tiles, and one block per path. Carry .whl (diffusers).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 220 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 2>&1 | grep -v Warning | tail -25
timeout 60 python3 bench/diag_nvfp4.py 2>&1 | grep -v Warning | tail -12 | tee $OUT/diag_nvfp4.jsonl
timeout 160 python3 bench/bench_linear.py --models 2b --iters 10 --out $OUT/linear.json 2>&1 | grep -v Warning | cut -c1-400 | tail -30
timeout 110 python3 bench/bench_block.py --paths bf16 int8 nvfp4 --iters 10 --out $OUT/block.json 2>&1 | grep -v Warning | tail -6
