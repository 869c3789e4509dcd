"""INT8 activations per row against per row and 128-wide K group, on the Mosaic GPU kernels, at CogVideoX's shapes.

    python bench/probe_grouped.py --models 2b

Per (K, N), in one process: XLA bf16 (the baseline), the activation kernel and the GEMM alone in each scale layout,
and the whole INT8 path (bf16 x -> bf16 y, weight derived from NVFP4) in each; plus the grouped path's error against
its jnp reference and both paths' error against float64. Each time is the median over --iters calls of a jitted
`lax.map` over --reps different inputs, divided by --reps: per-call dispatch (0.1-0.3 ms here) is left out, as it
is inside a model's jitted step. One JSON line per shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_linear import CONTRACT_K, M, SHAPES, median_seconds  # noqa: E402
from pallas_kernels import act_quant_mgpu, scaled_matmul_mgpu, tuning  # noqa: E402
from sixbit_jax.quant import formats, linear  # noqa: E402


SWEEP_ACT = [(2, 2), (4, 1), (3, 3), (2, 4)]  # (stages, CTAs per SM) of the grouped activation kernel, beside (4, 2)


def per_call_ms(fn, stacked, *args, iters: int) -> float:
    mapped = jax.jit(lambda xs, *a: jax.lax.map(lambda x: fn(x, *a), xs))
    return round(median_seconds(mapped, stacked, *args, iters=iters) / stacked.shape[0] * 1e3, 4)


def probe(k: int, n: int, reps: int, iters: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(k + n), 3)
    xs = jax.random.normal(keys[0], (reps, M, k), jnp.bfloat16)
    w = jax.random.normal(keys[1], (n, k), jnp.float32) * k**-0.5
    b = jax.random.normal(keys[2], (n,), jnp.bfloat16)
    weight = jax.jit(formats.prepare_weight)(w)
    w16 = w.astype(jnp.bfloat16)
    w8 = jax.jit(formats.int8_weight)(weight)
    config = tuning.mosaic_gemm_config(k, n)
    ms = {"xla_bf16": per_call_ms(
        lambda x, w, b: (jax.lax.dot_general(x, w, CONTRACT_K, preferred_element_type=jnp.float32) + b).astype(
            jnp.bfloat16), xs, w16, b, iters=iters)}
    for name, group in (("token", None), ("group", 128)):
        ms[f"act_quant_{name}"] = per_call_ms(lambda x: act_quant_mgpu.quantize_int8(x, group_size=group).values,
                                              xs, iters=iters)
        q = [act_quant_mgpu.quantize_int8(xs[i], group_size=group) for i in range(reps)]
        values, scales = jnp.stack([a.values for a in q]), jnp.stack([a.scale for a in q])
        gemm = jax.jit(lambda v, s: jax.lax.map(
            lambda vs: scaled_matmul_mgpu.scaled_matmul(vs[0], w8.values, vs[1], w8.scale, b, m=M, config=config),
            (v, s)))
        ms[f"gemm_{name}"] = round(median_seconds(gemm, values, scales, iters=iters) / reps * 1e3, 4)
        ms[f"int8_path_{name}"] = per_call_ms(
            lambda x, weight, b: linear.int8_linear(x, weight, b, group_size=group, backend="pallas"),
            xs, weight, b, iters=iters)
    for stages, ctas in SWEEP_ACT:
        ms[f"act_quant_group_{stages}x{ctas}"] = per_call_ms(
            lambda x: act_quant_mgpu.quantize_int8(x, group_size=128, stages=stages, ctas_per_sm=ctas).values,
            xs, iters=iters)
    ops = 2 * M * k * n
    row = {"K": k, "N": n, "M": M, "ms": ms,
           "gemm_tops": {name: round(ops / ms[f"gemm_{name}"] / 1e9) for name in ("token", "group")},
           "act_quant_tb_s_in": {name: round(M * k * 2 / ms[f"act_quant_{name}"] / 1e9, 3)
                                 for name in ("token", "group")},
           "speedup_vs_xla_bf16": {name: round(ms["xla_bf16"] / ms[f"int8_path_{name}"], 3)
                                   for name in ("token", "group")}}
    x = xs[0][:4096]
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
    errors = {}
    for name, group in (("token", None), ("group", 128)):
        y = np.asarray(linear.int8_linear(x, weight, b, group_size=group, backend="pallas"), np.float64)
        ref = np.asarray(linear.int8_linear(x, weight, b, group_size=group, backend="reference"), np.float64)
        errors[f"{name}_vs_reference"] = float(np.abs(y - ref).max() / np.abs(ref).max())
        errors[f"{name}_vs_float64"] = float(np.linalg.norm(y - exact) / np.linalg.norm(exact))
    row["errors"] = errors
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["2b"], choices=sorted(SHAPES))
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for model in args.models:
        for k, n in SHAPES[model]:
            rows.append({"model": model, **probe(k, n, args.reps, args.iters)})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                                        "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
