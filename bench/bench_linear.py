"""The quantized linear paths against XLA at CogVideoX's linear shapes, on one GPU, in one run.

    python bench/bench_linear.py                   # every row of BENCHMARKS.md's kernel table, prints JSON lines
    python bench/bench_linear.py --tune            # sweep tile configurations per kernel and shape
    python bench/bench_linear.py --models 2b --tune --out tune.json

M = 2 x 17,776 = 35,552 tokens (the CFG batch of 49 frames at 480x720). Per shape (K, N), in the same process:
- xla_bf16: XLA `dot` of bf16 x [M, K] and the bf16 weight (the faster of [N, K] and [K, N] storage);
- xla_int8_scale: XLA int8 `dot` (int32 out, the faster weight layout) plus a separate pass applying the per-row
  and per-column scales and casting to bf16 (operands pre-quantized: no activation quantization);
- int8_path: ours, from bf16 x to bf16 y: Hadamard + INT8 activation kernel, int8 weight derived from the NVFP4
  one, INT8 GEMM (Mosaic GPU kernels on Hopper); int8_path_triton: the Pallas Triton composition it replaces;
- nvfp4_path: ours: Hadamard + NVFP4 activations as bf16 block-scaled values, the weight's likewise, Mosaic GPU bf16
  GEMM with both second-level scales in its epilogue; nvfp4_path_triton: the Triton decode-in-loop kernel;
- for FFN up, both with their GELU (fused into our epilogue; a separate fusion after XLA's dot);
- the parts of each path alone, and both paths' error against their references at full size.
Also the weight-only NVFP4 path at the AdaLN shape (M = 2, K = 512, N = 6 D) against XLA bf16, and the device's
measured peaks (8192^3 GEMMs through XLA and through our kernel, a large device copy). Times are medians of --iters
runs after warm-up, device-synchronised.
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

from pallas_kernels import act_quant, act_quant_mgpu, int8_gemm, mosaic, nvfp4_gemm, scaled_matmul_mgpu  # noqa: E402
from pallas_kernels import tuning  # noqa: E402
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


def device_peaks(iters) -> dict:
    """The card's rates in this run: 8192^3 GEMMs through XLA (bf16, int8) and through our Mosaic GPU kernel (int8,
    bf16; the best 8-bit path JAX offers here), and a large device copy."""
    n = 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    a8 = jax.random.randint(jax.random.PRNGKey(1), (n, n), -127, 128, jnp.int32).astype(jnp.int8)
    ones = jnp.ones((n,), jnp.float32)
    rate = lambda fn, *args: round(2 * n**3 / median_seconds(jax.jit(fn), *args, iters=iters) / 1e12)  # noqa: E731
    peaks = {
        "bf16_tflops": rate(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16), a, a),
        "int8_tops": rate(lambda a, b: jax.lax.dot_general(a, b, CONTRACT_K, preferred_element_type=jnp.int32), a8, a8),
    }
    if mosaic.available():
        peaks["int8_tops_mgpu"] = rate(lambda a, b: scaled_matmul_mgpu.scaled_matmul(a, b, ones, ones), a8, a8)
        peaks["bf16_tflops_mgpu"] = rate(lambda a, b: scaled_matmul_mgpu.scaled_matmul(a, b, ones, ones), a, a)
    big = jax.random.normal(jax.random.PRNGKey(2), (1 << 30,), jnp.bfloat16)
    copy = median_seconds(jax.jit(lambda v: v * 2), big, iters=iters)
    return peaks | {"copy_tb_s": round(2 * big.nbytes / copy / 1e12, 2)}


# --------------------------------------------------------------------------------------------------------- our paths
def _rel_max(y, ref) -> float:
    y, ref = y.astype(jnp.float32), ref.astype(jnp.float32)
    return float(jnp.max(jnp.abs(y - ref)) / jnp.max(jnp.abs(ref)))


def ours(x, w, b, iters, ffn_up: bool) -> dict:
    """Our paths from bf16 x to bf16 y (Mosaic GPU kernels on Hopper), the Triton compositions they replace, and
    their parts alone."""
    prepared = formats.prepare_weight(w)
    time = functools.partial(median_seconds, iters=iters)
    paths = {
        "int8_path": jax.jit(lambda x, p, b: linear.int8_linear(x, p, b, backend="pallas")),
        "nvfp4_path": jax.jit(lambda x, p, b: linear.nvfp4_linear(x, p, b, backend="pallas")),
        "int8_path_triton": jax.jit(lambda x, p, b: int8_gemm.int8_matmul(
            act_quant.quantize_int8(x), formats.int8_weight(p), b, m=M)),
        "nvfp4_path_triton": jax.jit(lambda x, p, b: nvfp4_gemm.nvfp4_matmul(
            act_quant.quantize_nvfp4(x), p.nvfp4, b, m=M)),
    }
    row = {name: time(fn, x, prepared, b) for name, fn in paths.items()}
    if ffn_up:  # FFN up with its GELU: fused into our epilogue, a separate XLA fusion after XLA's dot
        row["int8_path_gelu"] = time(jax.jit(lambda x, p, b: linear.int8_linear(
            x, p, b, activation="gelu_tanh", backend="pallas")), x, prepared, b)
        row["xla_bf16_gelu"] = time(jax.jit(lambda x, w, b: jax.nn.gelu(jax.lax.dot_general(
            x, w, CONTRACT_K, preferred_element_type=jnp.float32).astype(jnp.bfloat16) + b, approximate=True)), x, w, b)
    # the parts, alone
    a8, w8 = act_quant_mgpu.quantize_int8(x), formats.int8_weight(prepared)
    a4, w4 = act_quant.quantize_nvfp4_values(x), formats.block_scaled_values(prepared.nvfp4)
    row["act_quant_int8"] = time(jax.jit(act_quant_mgpu.quantize_int8), x)
    row["act_quant_int8_triton"] = time(jax.jit(act_quant.quantize_int8), x)
    row["derive_int8_weight"] = time(jax.jit(formats.int8_weight), prepared)
    row["int8_gemm"] = time(jax.jit(lambda a, w, b: scaled_matmul_mgpu.scaled_matmul(
        a.values, w.values, a.scale, w.scale, b, m=M)), a8, w8, b)
    row["int8_gemm_triton"] = time(jax.jit(lambda a, w, b: int8_gemm.int8_matmul(a, w, b, m=M)), a8, w8, b)
    row["act_quant_nvfp4_values"] = time(jax.jit(act_quant.quantize_nvfp4_values), x)
    row["nvfp4_weight_values"] = time(jax.jit(lambda p: formats.block_scaled_values(p.nvfp4)), prepared)
    scales = jnp.broadcast_to(w4.scale, (w.shape[0],))
    row["bf16_gemm_on_nvfp4_values"] = time(jax.jit(lambda a, w, s, b: scaled_matmul_mgpu.scaled_matmul(
        a.values, w.values, a.scale, s, b, m=M)), a4, w4, scales, b)
    # correctness at full size against the references
    row["int8_path_max_rel_err"] = _rel_max(paths["int8_path"](x, prepared, b),
                                            linear.int8_linear(x, prepared, b, backend="reference"))
    row["nvfp4_path_max_rel_err"] = _rel_max(paths["nvfp4_path"](x, prepared, b),
                                             linear.nvfp4_linear(x, prepared, b, backend="reference"))
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


PATH_ROWS = ("xla_bf16", "xla_int8_scale", "int8_path", "nvfp4_path", "int8_path_triton", "nvfp4_path_triton")
GEMM_ROWS = ("int8_gemm", "int8_gemm_triton", "bf16_gemm_on_nvfp4_values")


def bench(models, iters) -> list[dict]:
    peaks = device_peaks(iters)
    rows = [{"peaks": peaks, "device": jax.devices()[0].device_kind, "jax": jax.__version__}]
    print(json.dumps(rows[0]), flush=True)
    for model in models:
        for index, (k, n) in enumerate(SHAPES[model]):
            x, w, b = inputs(k, n)
            t = {"xla_bf16": xla_bf16(x, w, b, iters), "xla_int8_scale": xla_int8_scale(x, w, b, iters)}
            t.update(ours(x, w, b, iters, ffn_up=index == 1))
            rate = {name: tflops(k, n, v) for name, v in t.items() if name in PATH_ROWS + GEMM_ROWS}
            row = {"model": model, "M": M, "K": k, "N": n,
                   "ms": {name: round(v * 1e3, 3) for name, v in t.items() if not name.endswith("err")},
                   "tflops": rate,
                   "fraction_of_int8_peak": {name: round(rate[name] / peaks["int8_tops_mgpu"], 3)
                                             for name in ("int8_path", "int8_gemm") if peaks.get("int8_tops_mgpu")},
                   "speedup_vs_xla_bf16": {name: round(t["xla_bf16"] / t[name], 2) for name in PATH_ROWS[1:]},
                   "weight_bytes": {"bf16": n * k * 2, "int8": n * k, "nvfp4": n * k // 2 + n * k // 16 + 4},
                   **{name: t[name] for name in t if name.endswith("err")}}
            if "int8_path_gelu" in t:
                row["gelu_speedup_vs_xla_bf16_gelu"] = round(t["xla_bf16_gelu"] / t["int8_path_gelu"], 2)
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
            results.append(tune_mosaic(k, n, act_quant_mgpu.quantize_int8(x), w8, iters))
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


MOSAIC_CANDIDATES = [  # tile_m, tile_n, stages, grid_minor_m, grid_tile_width
    (128, 128, 4, True, 8), (128, 128, 5, True, 8), (128, 128, 4, False, 8), (128, 128, 4, True, 16),
    (128, 256, 3, True, 8), (64, 256, 4, True, 8), (128, 64, 6, True, 8), (64, 128, 6, True, 8),
]


def tune_mosaic(k, n, a8, w8, iters) -> dict:
    timings = []
    for tile_m, tile_n, stages, minor_m, width in MOSAIC_CANDIDATES:
        config = tuning.MatmulConfig(tile_m=tile_m, tile_n=tile_n, stages=stages, grid_minor_m=minor_m,
                                     grid_tile_width=width)
        fn = jax.jit(functools.partial(scaled_matmul_mgpu.scaled_matmul, m=M, config=config))
        try:
            seconds = median_seconds(fn, a8.values, w8.values, a8.scale, w8.scale, iters=iters, warmup=2)
            timings.append((tflops(k, n, seconds), dataclasses.asdict(config)))
        except Exception as error:  # shared memory, or a tile that does not divide N
            timings.append((0.0, dataclasses.asdict(config) | {"error": str(error)[:160]}))
    timings.sort(key=lambda t: -t[0])
    print(json.dumps({"kernel": "mosaic_int8_gemm", "K": k, "N": n, "top3": timings[:3]}), flush=True)
    return {"kernel": "mosaic_int8_gemm", "K": k, "N": n, "best": timings[0], "all": timings}


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
