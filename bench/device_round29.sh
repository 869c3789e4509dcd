#!/usr/bin/env bash
# Sixth session, first call (issue 15): the 8-bit attention kernel's new schedules (no ping-pong, three compute
# warpgroups, FlashAttention-3's intra-warpgroup overlap, 256-key blocks): GPU tests against the reference, ptxas
# register/spill reports per configuration, then timings against cuDNN at the 2B, 5B and Wan shapes.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu tests/test_attention_int8.py -k "not overlap" 2>&1 \
  | tee $OUT/attn_tests.log | grep -v "^  " | tail -12
timeout 90 python3 -m pytest -q -p no:cacheprovider -rfE -m gpu tests/test_attention_int8.py -k "overlap" 2>&1 \
  | tee $OUT/attn_tests_overlap.log | grep -v "^  " | tail -12
for run in bq=64:64 bq=128:64 pp=0:64 wgs=3,pp=0:64 bkv=256:64 overlap=1,pp=0:64 overlap=1,pp=0,wgs=3:64 \
           bq=64:128 overlap=1,pp=0:128; do
  cfg=${run%:*}; d=${run#*:}
  echo "== ptxas $cfg d=$d"
  MOSAIC_GPU_DUMP_PTXAS=1 timeout 60 python3 bench/probe_ptxas.py --config $cfg --head-dim $d 2>&1 \
    | grep -iE "registers|spill|C75|serializ|compiled|Error" | sort | uniq -c | head -8
done 2>&1 | tee $OUT/ptxas.log
timeout 260 python3 bench/bench_attention.py --no-correctness --iters 8 --configs bq=64 pp=0 wgs=3,pp=0 bkv=256 \
  wgs=3,pp=0,pv=fp8 overlap=1,pp=0 overlap=1,pp=0,wgs=3 --out $OUT/attention.json 2>&1 | tee $OUT/attention.log \
  | grep '^{' | cut -c1-200
