"""INT8 activation quantization: the tile-parallel Triton kernels against the row-walking kernels, at CogVideoX-2B's
block-linear shapes, and the whole INT8 path with each.

    python bench/probe_tiles.py --out tiles.json

Per (K, N), in one process: XLA bf16 (the baseline), each activation kernel alone (the Mosaic GPU one the INT8
path uses today, the Triton row-walking one, the Triton tile-parallel one at several block sizes, and the same
function written in plain jnp for XLA), the whole INT8 path with the Mosaic and with the tile-parallel activations
(bf16 x -> bf16 y, Mosaic GEMM), and the LayerNorm + modulation that produces the q/k/v and FFN-up inputs (for
scale). Times as in `probe_grouped.py`: medians of a jitted `lax.map` over --reps inputs, divided by --reps.
Codes of each kernel are compared with the Mosaic kernel's at the full shape. One JSON line per shape.
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

from bench.bench_linear import CONTRACT_K, M, SHAPES  # noqa: E402
from bench.probe_grouped import per_call_ms  # noqa: E402
from pallas_kernels import act_quant, act_quant_mgpu, scaled_matmul_mgpu, tuning  # noqa: E402
from pallas_kernels.tuning import BlockConfig  # noqa: E402
from sixbit_jax.layers.norm import layer_norm  # noqa: E402
from sixbit_jax.quant import formats, linear  # noqa: E402

TILE_CONFIGS = [(32, 4), (64, 4), (128, 4), (64, 8), (128, 8)]  # (block_m, warps)


def xla_quantize(x):
    """The same function for XLA: bf16 x the +-1 Hadamard matrix on the tensor cores, fp32 sums, amax, codes."""
    h = jnp.asarray(formats.hadamard_matrix(128), jnp.bfloat16)
    blocks = x.reshape(x.shape[0], -1, 128)
    y = jnp.einsum("mgi,ij->mgj", blocks, h, preferred_element_type=jnp.float32) * (128**-0.5)
    amax = jnp.max(jnp.abs(y), axis=(1, 2))
    codes, _ = formats.int8_encode(y, amax[:, None, None])
    return codes.reshape(x.shape)


def tiles(config):
    return lambda x: act_quant.quantize_int8_tiles(x, config=config).values


def probe(k: int, n: int, reps: int, iters: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(k + n), 4)
    xs = jax.random.normal(keys[0], (reps, M, k), jnp.bfloat16)
    w = jax.random.normal(keys[1], (n, k), jnp.float32) * k**-0.5
    b = jax.random.normal(keys[2], (n,), jnp.bfloat16)
    weight = jax.jit(formats.prepare_weight)(w)
    w16, w8 = w.astype(jnp.bfloat16), jax.jit(formats.int8_weight)(weight)
    config = tuning.mosaic_gemm_config(k, n)
    ms = {"xla_bf16": per_call_ms(
        lambda x, w, b: (jax.lax.dot_general(x, w, CONTRACT_K, preferred_element_type=jnp.float32) + b).astype(
            jnp.bfloat16), xs, w16, b, iters=iters)}
    kernels = {"mosaic": lambda x: act_quant_mgpu.quantize_int8(x).values,
               "triton_rows": lambda x: act_quant.quantize_int8(x).values,
               "xla": xla_quantize}
    kernels.update({f"tiles_{bm}x{warps}": tiles(BlockConfig(block_m=bm, num_warps=warps, num_stages=1))
                    for bm, warps in TILE_CONFIGS})
    reference = np.asarray(jax.jit(kernels["mosaic"])(xs[0])[:M])
    differ = {}
    for name, fn in kernels.items():
        try:
            ms[f"act_{name}"] = per_call_ms(fn, xs, iters=iters)
            differ[name] = float((np.asarray(jax.jit(fn)(xs[0])[:M]) != reference).mean())
        except Exception as error:  # noqa: BLE001 (a probe: record and go on)
            ms[f"act_{name}"] = f"failed: {type(error).__name__}: {str(error)[:300]}"
    tile_times = {name: ms[f"act_{name}"] for name in kernels if name.startswith("tiles_")
                  and isinstance(ms[f"act_{name}"], float)}
    best = min(tile_times, key=tile_times.get) if tile_times else None

    def path(act):
        def run(x, w8v, w8s, b):
            q = act(x)
            return scaled_matmul_mgpu.scaled_matmul(q.values, w8v, q.scale, w8s, b, m=M, config=config)
        return run

    ms["int8_path_mosaic"] = per_call_ms(path(act_quant_mgpu.quantize_int8), xs, w8.values, w8.scale, b,
                                         iters=iters)
    if best:
        bm, warps = (int(v) for v in best.removeprefix("tiles_").split("x"))
        cfg = BlockConfig(block_m=bm, num_warps=warps, num_stages=1)
        ms["int8_path_tiles"] = per_call_ms(path(lambda x: act_quant.quantize_int8_tiles(x, config=cfg)), xs,
                                            w8.values, w8.scale, b, iters=iters)
    ms["int8_path_library"] = per_call_ms(lambda x, wt, b: linear.int8_linear(x, wt, b, backend="pallas"), xs,
                                          weight, b, iters=iters)
    shift, scale = (jax.random.normal(key, (k,), jnp.bfloat16) for key in jax.random.split(keys[3]))
    ones, zeros = jnp.ones((k,), jnp.bfloat16), jnp.zeros((k,), jnp.bfloat16)
    ms["xla_layernorm_modulation"] = per_call_ms(
        lambda x: layer_norm(x, ones, zeros, 1e-5) * (1 + scale) + shift, xs, iters=iters)
    return {"K": k, "N": n, "M": M, "ms": ms, "codes_differing_from_mosaic": differ, "best_tiles": best,
            "act_tb_s_in": {name: round(M * k * 2 / t / 1e9, 3) for name, t in ms.items()
                            if name.startswith("act_") and isinstance(t, float)},
            "speedup_vs_xla_bf16": {name: round(ms["xla_bf16"] / t, 3) for name, t in ms.items()
                                    if name.startswith("int8_path") and isinstance(t, float)}}


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
