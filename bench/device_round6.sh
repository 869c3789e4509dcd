#!/usr/bin/env bash
# Issue 13 on the GPU, second call: the pipeline tests with imageio-ffmpeg present, then the whole-pipeline
# benchmark with tiled VAE decodes, working memory and the INT8-mode pipeline.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_t5.py tests/test_pipeline_cogvideox.py tests/test_vae_cogvideox.py 2>&1 | grep -v Warning | tail -8
timeout 380 python3 bench/bench_pipeline.py --steps ${STEPS:-50} --out $OUT/pipeline.json 2>&1 | grep -v Warning | tail -30
