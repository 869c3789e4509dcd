"""Tile and occupancy sweep for the Mosaic GPU kernels at CogVideoX-2B's linear shapes (one JSON line each).

    python3 bench/probe_tune.py --out $OUT/tune.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.bench_linear import M, median_seconds, tflops  # noqa: E402
from pallas_kernels import act_quant_mgpu, scaled_matmul_mgpu  # noqa: E402
from pallas_kernels.tuning import MatmulConfig  # noqa: E402
from sixbit_jax.quant import formats  # noqa: E402

GEMM = [MatmulConfig(tile_m=tm, tile_n=tn, stages=st, grid_minor_m=minor)
        for tm, tn, st, minor in [(128, 128, 4, True), (64, 128, 6, True), (64, 192, 4, True), (128, 192, 3, True),
                                  (64, 256, 4, True)]]
ACT = [(4, 1), (2, 2), (3, 1), (2, 1), (1, 3)]  # stages, ctas_per_sm


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tune.json")
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--shapes", nargs="+", default=["1920x1920", "1920x7680", "7680x1920"],
                        help="K x N of the GEMMs (1920x5760: CogVideoX-2B's q, k and v as one GEMM)")
    args = parser.parse_args()
    rows = []

    def record(**row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))

    for k, n in (tuple(int(v) for v in shape.split("x")) for shape in args.shapes):
        x = jax.random.normal(jax.random.PRNGKey(k + n), (M, k), jnp.bfloat16)
        w = formats.prepare_weight(jax.random.normal(jax.random.PRNGKey(1), (n, k)) * k**-0.5)
        a8, w8 = act_quant_mgpu.quantize_int8(x), formats.int8_weight(w)
        for config in GEMM:
            try:
                fn = jax.jit(lambda a, b, rs, cs, config=config: scaled_matmul_mgpu.scaled_matmul(
                    a, b, rs, cs, m=M, config=config))
                t = median_seconds(fn, a8.values, w8.values, a8.scale, w8.scale, iters=args.iters)
                record(kind="gemm", k=k, n=n, config=str(config), ms=t * 1e3, tops=tflops(k, n, t))
            except Exception as error:  # noqa: BLE001
                record(kind="gemm", k=k, n=n, config=str(config), error=str(error)[:200])
        if n == 1920 or k == 7680:  # the activation kernel once per K
            for stages, ctas in ACT:
                try:
                    fn = jax.jit(lambda x, s=stages, c=ctas: act_quant_mgpu.quantize_int8(x, stages=s, ctas_per_sm=c))
                    t = median_seconds(fn, x, iters=args.iters)
                    record(kind="act", k=k, stages=stages, ctas_per_sm=ctas, ms=t * 1e3, tb_s=x.nbytes / t / 1e12)
                except Exception as error:  # noqa: BLE001
                    record(kind="act", k=k, stages=stages, ctas_per_sm=ctas, error=str(error)[:200])
        t = median_seconds(jax.jit(formats.int8_weight), w, iters=args.iters)
        t_loop = median_seconds(jax.jit(lambda w: [formats.int8_weight(w) for _ in range(10)]), w, iters=args.iters)
        record(kind="derive", k=k, n=n, ms=t * 1e3, ms_per_call_in_a_loop_of_10=t_loop * 1e2)


if __name__ == "__main__":
    main()
