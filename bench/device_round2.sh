#!/usr/bin/env bash
# Second device call: tile/occupancy sweep, the GPU tests of the Mosaic kernels and quantized paths, the shapes
# model's quality on the new paths, 20-step runs (bf16, int8), and the BF16 step against diffusers eager and
# torch.compile. Needs .whl (diffusers) carried.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
timeout 105 python3 bench/probe_tune.py --out $OUT/tune.json 2>&1 | grep -v Warning | cut -c1-200
timeout 60 python3 -m pytest -q tests/test_kernels.py tests/test_quant_linear.py -k "mosaic or whole_tiles or shared or float32_before" -p no:cacheprovider 2>&1 | tail -4
timeout 90 sh -c "python3 -m sixbit_jax convert sixbit_jax/assets/cogvideox-shapes /tmp/ck --dtype fp32 >/dev/null 2>&1 && python3 -m sixbit_jax eval /tmp/ck --modes int8 nvfp4 --prompts 64 --seeds 0 1 --guidance 2 --quiet --out $OUT/eval 2>&1 | grep -v Warning | tail -8"
timeout 120 python3 bench/bench_sixbit.py --modes bf16 int8 --steps 20 --out $OUT/sixbit.json 2>&1 | grep -v Warning | tail -4
timeout 180 python3 bench/bench_step.py --model cogvideox-2b --iters 10 --json $OUT/step.json 2>&1 | grep -v Warning | tail -9
