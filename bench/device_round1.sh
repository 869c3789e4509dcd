#!/usr/bin/env bash
# One device call: Mosaic GPU kernel probe and GPU tests, one-block and 50-step benchmarks, BF16 step against
# diffusers + torch.compile. Results under $OUT. Needs .whl (diffusers) carried.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
timeout 200 python3 bench/probe_mgpu.py --out $OUT/probe.json --iters 8 2>&1 | grep -v Warning | tee $OUT/probe.log | cut -c1-400
timeout 60 python3 -m pytest -q -x tests/test_kernels.py -k mosaic -p no:cacheprovider 2>&1 | tail -4
timeout 70 python3 bench/bench_block.py --paths bf16 int8 nvfp4 --iters 10 --out $OUT/block.json 2>&1 | grep -v Warning | tail -8
timeout 110 python3 bench/bench_sixbit.py --modes bf16 int8 --steps 50 --out $OUT/sixbit.json 2>&1 | grep -v Warning | tail -5
timeout 130 python3 bench/bench_step.py --model cogvideox-2b --iters 10 --json $OUT/step.json 2>&1 | grep -v Warning | tail -6
