"""The quantized linear paths against XLA at CogVideoX's linear shapes, on one GPU, in one run.

    python bench/bench_linear.py                   # every row of BENCHMARKS.md's kernel table, prints JSON lines
    python bench/bench_linear.py --tune            # sweep block configurations per kernel and shape
    python bench/bench_linear.py --models 2b --tune --out tune.json

M = 2 x 17,776 = 35,552 tokens (the CFG batch of 49 frames at 480x720). Per shape (K, N), in the same process:
- xla_bf16: XLA `dot` of bf16 x [M, K] and the bf16 weight (the faster of [N, K] and [K, N] storage);
- xla_int8_scale: XLA int8 `dot` (int32 out, the faster weight layout) plus a separate pass applying the per-row
  and per-column scales and casting to bf16 (operands pre-quantized: no activation quantization);
- int8_path: ours, from bf16 x to bf16 y: Hadamard + INT8 activation kernel, int8 weight derived from the NVFP4
  one, INT8 GEMM; with its parts timed alone (act_quant_int8, derive_int8_weight, int8_gemm);
- nvfp4_path: ours: Hadamard + NVFP4 activation kernel, NVFP4 GEMM; with its parts timed alone.
Also the weight-only NVFP4 path at the AdaLN shape (M = 2, K = 512, N = 6 D) against XLA bf16, and the device's
measured peaks (8192^3 bf16 and int8 XLA GEMMs, a large device copy). Times are medians of --iters runs after
warm-up, device-synchronised. Weight bytes: what each path must read (and for the INT8 path also write and re-read
for its transient int8 operand) per call.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from pallas_kernels import act_quant, int8_gemm, nvfp4_gemm, tuning  # noqa: E402
from pallas_kernels.tuning import BlockConfig  # noqa: E402
from sixbit_jax.quant import formats, linear  # noqa: E402

M = 2 * 17_776
SHAPES = {  # model -> (K, N) of its block linears: attention q/k/v/out, FFN up, FFN down
    "2b": [(1920, 1920), (1920, 7680), (7680, 1920)],
    "5b": [(3072, 3072), (3072, 12288), (12288, 3072)],
}
ADALN = {"2b": (512, 6 * 1920), "5b": (512, 6 * 3072)}
CONTRACT_K = (((1,), (1,)), ((), ()))

GEMM_CANDIDATES = [  # block_m, block_n, block_k, warps, stages, n_outer
    (128, 128, 64, 4, 5, True), (128, 256, 128, 8, 3, True), (128, 128, 128, 4, 4, False),
    (128, 128, 128, 4, 4, True), (256, 128, 128, 8, 3, True), (128, 256, 64, 4, 4, True),
    (256, 256, 64, 8, 3, True), (128, 256, 128, 8, 3, False), (64, 256, 128, 4, 4, True),
    (128, 128, 256, 8, 3, True),
]
ACT_CANDIDATES = [(16, 4, 2), (32, 4, 2), (64, 8, 2), (64, 4, 3), (128, 8, 2), (128, 8, 3), (256, 8, 2)]  # block_m, warps, stages


def median_seconds(fn, *args, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs(k: int, n: int, seed: int = 0):
    kx, kw, kb = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (M, k), jnp.bfloat16)
    w = (jax.random.normal(kw, (n, k), jnp.float32) * k**-0.5).astype(jnp.bfloat16)
    b = jax.random.normal(kb, (n,), jnp.bfloat16)
    return x, w, b


def tflops(k: int, n: int, seconds: float, m: int = M) -> float:
    return round(2 * m * k * n / seconds / 1e12, 1)


# --------------------------------------------------------------------------------------------------------- baselines
def xla_bf16(x, w, b, iters):
    nk = jax.jit(lambda x, w, b: jax.lax.dot_general(x, w, CONTRACT_K, preferred_element_type=jnp.float32).astype(
        jnp.bfloat16) + b)
    kn = jax.jit(lambda x, wt, b: (jnp.dot(x, wt, preferred_element_type=jnp.float32)).astype(jnp.bfloat16) + b)
    return min(median_seconds(nk, x, w, b, iters=iters), median_seconds(kn, x, w.T.copy(), b, iters=iters))


def xla_int8_scale(x, w, b, iters):
    a = formats.quantize_int8(x)
    w8 = formats.quantize_int8(w)

    def run(a_values, a_scale, w_values, w_scale, b, layout):
        if layout == "nk":
            acc = jax.lax.dot_general(a_values, w_values, CONTRACT_K, preferred_element_type=jnp.int32)
        else:
            acc = jnp.dot(a_values, w_values, preferred_element_type=jnp.int32)
        return (acc.astype(jnp.float32) * a_scale[:, None] * w_scale[None, :] + b).astype(jnp.bfloat16)

    nk = jax.jit(functools.partial(run, layout="nk"))
    kn = jax.jit(functools.partial(run, layout="kn"))
    return min(median_seconds(nk, a.values, a.scale, w8.values, w8.scale, b, iters=iters),
               median_seconds(kn, a.values, a.scale, w8.values.T.copy(), w8.scale, b, iters=iters))


def pallas_bf16_gemm(x, w, config: BlockConfig):
    """Diagnostic, not a project kernel: the NVFP4 GEMM's loop with bf16 operands and no decode, to show how much of
    its time the in-kernel unpacking takes."""
    from jax.experimental import pallas as pl

    from pallas_kernels.common import compiler_params

    m, k = x.shape
    n = w.shape[0]
    bm, bn, bk = config.block_m, config.block_n, config.block_k

    def kernel(x_ref, w_ref, o_ref):
        def step(i, acc):
            a, b = x_ref[:, pl.ds(i * bk, bk)], w_ref[:, pl.ds(i * bk, bk)]
            return acc + jax.lax.dot_general(a, b, CONTRACT_K, preferred_element_type=jnp.float32)

        o_ref[...] = jax.lax.fori_loop(0, k // bk, step, jnp.zeros(o_ref.shape, jnp.float32)).astype(o_ref.dtype)

    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((m, n), jnp.bfloat16), grid=(n // bn, m // bm),
        in_specs=[pl.BlockSpec((bm, k), lambda j, i: (i, 0)), pl.BlockSpec((bn, k), lambda j, i: (j, 0))],
        out_specs=pl.BlockSpec((bm, bn), lambda j, i: (i, j)), compiler_params=compiler_params(config))(x, w)


def device_peaks(iters) -> dict:
    n = 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    a8 = jax.random.randint(jax.random.PRNGKey(1), (n, n), -127, 128, jnp.int32).astype(jnp.int8)
    bf16 = median_seconds(jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(
        jnp.bfloat16)), a, a, iters=iters)
    int8 = median_seconds(jax.jit(lambda a, b: jax.lax.dot_general(a, b, CONTRACT_K, preferred_element_type=jnp.int32)),
                          a8, a8, iters=iters)
    big = jax.random.normal(jax.random.PRNGKey(2), (1 << 30,), jnp.bfloat16)
    copy = median_seconds(jax.jit(lambda v: v * 2), big, iters=iters)
    return {"bf16_tflops": round(2 * n**3 / bf16 / 1e12), "int8_tops": round(2 * n**3 / int8 / 1e12),
            "copy_tb_s": round(2 * big.nbytes / copy / 1e12, 2)}


# --------------------------------------------------------------------------------------------------------- our paths
def ours(x, w, b, iters) -> dict:
    prepared = formats.prepare_weight(w)
    row = {}
    int8_path = jax.jit(lambda x, p, b: linear.int8_linear(x, p, b, backend="pallas"))
    nvfp4_path = jax.jit(lambda x, p, b: linear.nvfp4_linear(x, p, b, backend="pallas"))
    row["int8_path"] = median_seconds(int8_path, x, prepared, b, iters=iters)
    grouped_path = jax.jit(lambda x, p, b: linear.int8_linear(x, p, b, group_size=128, backend="pallas"))
    row["int8_path_grouped"] = median_seconds(grouped_path, x, prepared, b, iters=iters)
    row["nvfp4_path"] = median_seconds(nvfp4_path, x, prepared, b, iters=iters)
    # the parts, alone
    quant8 = jax.jit(act_quant.quantize_int8)
    quant4 = jax.jit(act_quant.quantize_nvfp4)
    derive = jax.jit(formats.int8_weight)
    a8, a4, w8 = quant8(x), quant4(x), derive(prepared)
    row["act_quant_int8"] = median_seconds(quant8, x, iters=iters)
    row["act_quant_nvfp4"] = median_seconds(quant4, x, iters=iters)
    row["derive_int8_weight"] = median_seconds(derive, prepared, iters=iters)
    row["int8_gemm"] = median_seconds(jax.jit(lambda a, w, b: int8_gemm.int8_matmul(a, w, b, m=M)), a8, w8, b, iters=iters)
    row["nvfp4_gemm"] = median_seconds(
        jax.jit(lambda a, w, b: nvfp4_gemm.nvfp4_matmul(a, w, b, m=M)), a4, prepared.nvfp4, b, iters=iters)
    config = BlockConfig(128, 128, 64, num_warps=4, num_stages=4)
    x_rows = x[: M // config.block_m * config.block_m]
    row["pallas_bf16_gemm_diagnostic"] = median_seconds(
        jax.jit(functools.partial(pallas_bf16_gemm, config=config)), x_rows, w, iters=iters) * M / x_rows.shape[0]
    # correctness at full size, against the references on the same quantized operands
    y = jax.jit(lambda a, w, b: int8_gemm.int8_matmul(a, w, b, m=M))(a8, w8, b)
    ref = int8_gemm.int8_matmul_reference(a8, w8, b, m=M)
    row["int8_gemm_max_rel_err"] = float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref.astype(jnp.float32)))
                                         / jnp.max(jnp.abs(ref.astype(jnp.float32))))
    return row


def weight_only(model: str, iters: int) -> dict:
    k, n = ADALN[model]
    x, w, b = inputs(k, n)
    x = x[:2]
    prepared = formats.prepare_weight(w, hadamard_block=0)
    t_bf16 = median_seconds(jax.jit(lambda x, w, b: jax.lax.dot_general(
        x, w, CONTRACT_K, preferred_element_type=jnp.float32).astype(jnp.bfloat16) + b), x, w, b, iters=iters)
    t_ours = median_seconds(jax.jit(lambda x, p, b: linear.weight_only_linear(x, p, b, backend="pallas")),
                            x, prepared, b, iters=iters)
    return {"model": model, "shape": [2, k, n], "xla_bf16_us": round(t_bf16 * 1e6, 1),
            "weight_only_us": round(t_ours * 1e6, 1), "weight_bytes_bf16": n * k * 2,
            "weight_bytes_nvfp4": prepared.nbytes}


def bench(models, iters) -> list[dict]:
    rows = [{"peaks": device_peaks(iters), "device": jax.devices()[0].device_kind, "jax": jax.__version__}]
    print(json.dumps(rows[0]), flush=True)
    for model in models:
        for k, n in SHAPES[model]:
            x, w, b = inputs(k, n)
            t = {"xla_bf16": xla_bf16(x, w, b, iters), "xla_int8_scale": xla_int8_scale(x, w, b, iters)}
            t.update(ours(x, w, b, iters))
            row = {"model": model, "M": M, "K": k, "N": n,
                   "ms": {name: round(v * 1e3, 3) for name, v in t.items() if not name.endswith("err")},
                   "tflops": {name: tflops(k, n, v) for name, v in t.items() if name in (
                       "xla_bf16", "xla_int8_scale", "int8_path", "int8_path_grouped", "nvfp4_path", "int8_gemm",
                       "nvfp4_gemm", "pallas_bf16_gemm_diagnostic")},
                   "speedup_vs_xla_bf16": {name: round(t["xla_bf16"] / t[name], 2) for name in (
                       "xla_int8_scale", "int8_path", "int8_path_grouped", "nvfp4_path")},
                   "int8_path_vs_xla_int8_scale": round(t["xla_int8_scale"] / t["int8_path"], 2),
                   "weight_bytes": {"bf16": n * k * 2, "int8": n * k, "nvfp4": n * k // 2 + n * k // 16 + 4,
                                    "int8_path_incl_transient": n * k // 2 + n * k // 16 + 2 * n * k},
                   "int8_gemm_max_rel_err": t["int8_gemm_max_rel_err"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        rows.append(weight_only(model, iters))
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------------------ tuning
def tune(models, iters) -> list[dict]:
    results = []
    for model in models:
        for k, n in SHAPES[model]:
            x, w, b = inputs(k, n)
            prepared = formats.prepare_weight(w)
            a8 = act_quant.quantize_int8(x)
            a4 = act_quant.quantize_nvfp4(x)
            w8 = formats.int8_weight(prepared)
            for kernel in ("int8_gemm", "nvfp4_gemm"):
                fn_args = {"int8_gemm": (int8_gemm.int8_matmul, (a8, w8, b)),
                           "nvfp4_gemm": (nvfp4_gemm.nvfp4_matmul, (a4, prepared.nvfp4, b))}[kernel]
                timings = []
                for bm, bn, bk, warps, stages, n_outer in GEMM_CANDIDATES:
                    config = BlockConfig(bm, bn, bk, warps, stages, n_outer)
                    fn = jax.jit(functools.partial(fn_args[0], m=M, config=config))
                    try:
                        seconds = median_seconds(fn, *fn_args[1], iters=iters, warmup=2)
                        timings.append((tflops(k, n, seconds), dataclasses.asdict(config)))
                    except Exception as error:  # a configuration the compiler rejects (shared memory, registers)
                        timings.append((0.0, dataclasses.asdict(config) | {"error": str(error)[:160]}))
                timings.sort(key=lambda t: -t[0])
                results.append({"kernel": kernel, "K": k, "N": n, "best": timings[0], "all": timings})
                print(json.dumps({"kernel": kernel, "K": k, "N": n, "top3": timings[:3]}), flush=True)
    return results + tune_activations(models, iters)


def tune_activations(models, iters) -> list[dict]:
    results = []
    for model in models:
        for k in sorted({k for k, _ in SHAPES[model]}):
            x = inputs(k, 16)[0]
            for kernel, fn in (("act_quant_int8", act_quant.quantize_int8), ("act_quant_nvfp4", act_quant.quantize_nvfp4)):
                timings = []
                for bm, warps, stages in ACT_CANDIDATES:
                    config = BlockConfig(block_m=bm, num_warps=warps, num_stages=stages)
                    try:
                        seconds = median_seconds(jax.jit(functools.partial(fn, config=config)), x, iters=iters, warmup=2)
                        timings.append((round(x.nbytes / seconds / 1e12, 3), dataclasses.asdict(config)))
                    except Exception as error:
                        timings.append((0.0, dataclasses.asdict(config) | {"error": str(error)[:160]}))
                timings.sort(key=lambda t: -t[0])
                results.append({"kernel": kernel, "K": k, "N": 0, "best": timings[0], "all": timings})
                print(json.dumps({"kernel": kernel, "K": k, "input_TB_s_top3": timings[:3]}), flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--tune", action="store_true", help="sweep block configurations instead of benchmarking")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write all results to this JSON file")
    parser.add_argument("--retune-activations", action="store_true",
                        help="sweep the activation kernels first and benchmark with the winners in the table")
    args = parser.parse_args()
    if jax.default_backend() != "gpu":
        sys.exit("bench_linear.py needs a GPU: the kernels only run compiled there")
    print(f"table entries in use: {len(tuning.TABLE)}", flush=True)
    if args.tune:
        results = tune(args.models, args.iters)
    else:
        results = []
        if args.retune_activations:
            results = tune_activations(args.models, args.iters)
            for entry in results:
                tuning.TABLE[(entry["kernel"], entry["K"], 0)] = BlockConfig(**{
                    key: value for key, value in entry["best"][1].items() if key != "error"})
        results += bench(args.models, args.iters)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
