#!/usr/bin/env bash
# Issue 11: the tile-parallel INT8 activation kernels against the row-walking ones (bench/probe_tiles.py), then every
# `gpu` test (the first GPU run of the previous session's backend fallback, tokenizer and rng changes, and of the
# new kernels compiled).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
timeout 210 python3 bench/probe_tiles.py --reps 4 --iters 6 --out $OUT/tiles.json 2>&1 | grep -v Warning | tail -5
timeout 350 python3 -m pytest -q -p no:cacheprovider -rfE --durations=5 -m gpu tests/ 2>&1 | grep -v Warning | tail -14
