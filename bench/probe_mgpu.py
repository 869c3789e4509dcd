"""Probe the Mosaic GPU kernels on a Hopper GPU: correctness against the references, then speed at CogVideoX's
linear shapes against XLA and the Pallas Triton kernels, in one run. Prints one JSON line per measurement and a
table at the end; writes everything to --out.

    python3 bench/probe_mgpu.py --out $OUT/probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_linear import CONTRACT_K, M, SHAPES, median_seconds, tflops  # noqa: E402
from pallas_kernels import act_quant, act_quant_mgpu, int8_gemm, mosaic, scaled_matmul_mgpu  # noqa: E402
from pallas_kernels.tuning import MatmulConfig  # noqa: E402
from sixbit_jax.quant import formats, linear  # noqa: E402

RESULTS: list[dict] = []


def record(**row):
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def attempt(name, fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 (a probe reports every failure and goes on)
        text = "".join(traceback.format_exception(error))
        record(name=name, error=str(error)[-1500:], trace=text[-3000:])


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b)), bool(np.isfinite(a).all())


def check_gemm(dtype, m, k, n, config=None, activation=None):
    key = jax.random.PRNGKey(m + k + n)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    rows = -(-m // 256) * 256
    if dtype == jnp.int8:
        a = jax.random.randint(k1, (rows, k), -127, 128, jnp.int8)
        b = jax.random.randint(k2, (n, k), -127, 128, jnp.int8)
    else:
        a = jax.random.normal(k1, (rows, k), jnp.bfloat16)
        b = jax.random.normal(k2, (n, k), jnp.bfloat16)
    rs = jax.random.uniform(k3, (rows,), minval=0.5, maxval=2.0)
    cs = jax.random.uniform(k4, (n,), minval=0.5, maxval=2.0) * 1e-3
    bias = jax.random.normal(k5, (n,))
    jnp.full((1 << 28,), 0xFF, jnp.uint8).block_until_ready()  # poison the allocator's free memory
    out = jax.jit(lambda *args: scaled_matmul_mgpu.scaled_matmul(*args, m=m, config=config, activation=activation))(
        a, b, rs, cs, bias)
    ref = scaled_matmul_mgpu.scaled_matmul_reference(a, b, rs, cs, bias, m=m, out_dtype=jnp.float32,
                                                     activation=activation)
    err, finite = rel(out.astype(jnp.float32), ref)
    record(name="check_gemm", dtype=str(jnp.dtype(dtype)), m=m, k=k, n=n, shape=list(out.shape), rel_err=err,
           finite=finite, config=str(config), activation=activation)


def check_act(m, k):
    x = (jax.random.normal(jax.random.PRNGKey(m * k), (m, k)) * 3).astype(jnp.bfloat16)
    jnp.full((1 << 28,), 0xFF, jnp.uint8).block_until_ready()
    ours = jax.jit(act_quant_mgpu.quantize_int8)(x)
    ref = act_quant.int8_reference(x, formats.HADAMARD_BLOCK)
    rows = ours.values.shape[0]
    codes_ours, codes_ref = np.asarray(ours.values[:m], np.int64), np.asarray(ref.values, np.int64)
    record(name="check_act", m=m, k=k, rows=rows, codes_differ=float((codes_ours != codes_ref).mean()),
           max_code_diff=int(np.abs(codes_ours - codes_ref).max()),
           scale_rel=rel(ours.scale[:m], ref.scale)[0],
           pad_rows_zero=bool((np.asarray(ours.values[m:]) == 0).all() and (np.asarray(ours.scale[m:]) == 0).all()))


def time_shape(k, n, iters, configs):
    kx, kw = jax.random.split(jax.random.PRNGKey(k * n))
    x = jax.random.normal(kx, (M, k), jnp.bfloat16)
    w = (jax.random.normal(kw, (n, k), jnp.float32) * k**-0.5).astype(jnp.bfloat16)
    row = dict(name="time_shape", k=k, n=n)
    xla_bf16 = jax.jit(lambda x, w: jax.lax.dot_general(x, w, CONTRACT_K, preferred_element_type=jnp.float32)
                       .astype(jnp.bfloat16))
    row["xla_bf16_ms"] = median_seconds(xla_bf16, x, w, iters=iters) * 1e3
    a8 = act_quant.int8_reference(x, formats.HADAMARD_BLOCK)
    a8 = formats.INT8(jnp.pad(a8.values, ((0, -M % 256), (0, 0))), jnp.pad(a8.scale, (0, -M % 256)))
    w8 = formats.quantize_int8(w)
    xla_int8 = jax.jit(lambda a, w: jax.lax.dot_general(a, w, CONTRACT_K, preferred_element_type=jnp.int32))
    row["xla_int8_ms"] = median_seconds(xla_int8, a8.values, w8.values, iters=iters) * 1e3
    triton = jax.jit(lambda a, w: int8_gemm.int8_matmul(a, w, m=M))
    row["triton_int8_ms"] = median_seconds(triton, a8, w8, iters=iters) * 1e3
    for name, config in configs.items():
        def run(config=config, name=name):
            fn = jax.jit(lambda a, b, rs, cs: scaled_matmul_mgpu.scaled_matmul(a, b, rs, cs, m=M, config=config))
            row[f"mgpu_int8_{name}_ms"] = median_seconds(fn, a8.values, w8.values, a8.scale, w8.scale, iters=iters) * 1e3
        attempt(f"mgpu_int8_{name}_{k}x{n}", run)

    def run_bf16():
        xp = jnp.pad(x, ((0, -M % 256), (0, 0)))
        ones = jnp.ones((xp.shape[0],), jnp.float32)
        fn = jax.jit(lambda a, b, rs, cs: scaled_matmul_mgpu.scaled_matmul(a, b, rs, cs, m=M))
        row["mgpu_bf16_ms"] = median_seconds(fn, xp, w, ones, jnp.ones((n,), jnp.float32), iters=iters) * 1e3
    attempt(f"mgpu_bf16_{k}x{n}", run_bf16)
    row["triton_act_ms"] = median_seconds(jax.jit(act_quant.quantize_int8), x, iters=iters) * 1e3
    wq = formats.prepare_weight(w)
    row["derive_int8_weight_ms"] = median_seconds(jax.jit(formats.int8_weight), wq, iters=iters) * 1e3

    def full_path():
        def path(x, wq):
            a = act_quant_mgpu.quantize_int8(x)
            w8 = formats.int8_weight(wq)
            return scaled_matmul_mgpu.scaled_matmul(a.values, w8.values, a.scale, w8.scale, m=M)
        row["int8_path_mgpu_ms"] = median_seconds(jax.jit(path), x, wq, iters=iters) * 1e3
        ref = jax.jit(lambda x, wq: act_quant.int8_reference(x, formats.HADAMARD_BLOCK))(x, wq)
        out = jax.jit(path)(x, wq)
        want = int8_gemm.int8_matmul_reference(ref, formats.int8_weight(wq))
        row["int8_path_rel_err"] = rel(out.astype(jnp.float32), want.astype(jnp.float32))[0]
    attempt(f"int8_path_{k}x{n}", full_path)

    def nvfp4_path():
        row["nvfp4_act_values_ms"] = median_seconds(jax.jit(act_quant.quantize_nvfp4_values), x, iters=iters) * 1e3
        row["nvfp4_weight_values_ms"] = median_seconds(jax.jit(lambda w: formats.block_scaled_values(w.nvfp4)), wq,
                                                       iters=iters) * 1e3
        path = jax.jit(lambda x, w: linear.nvfp4_linear(x, w, backend="pallas"))
        row["nvfp4_path_mgpu_ms"] = median_seconds(path, x, wq, iters=iters) * 1e3
        want = jax.jit(lambda x, w: linear.nvfp4_linear(x, w, backend="reference"))(x, wq)
        row["nvfp4_path_rel_err"] = rel(path(x, wq).astype(jnp.float32), want.astype(jnp.float32))[0]
    attempt(f"nvfp4_path_{k}x{n}", nvfp4_path)
    attempt(f"mgpu_act_{k}", lambda: row.__setitem__(
        "mgpu_act_ms", median_seconds(jax.jit(act_quant_mgpu.quantize_int8), x, iters=iters) * 1e3))
    for key in list(row):
        if key.endswith("_ms") and "act" not in key:
            row[key.replace("_ms", "_tflops")] = tflops(k, n, row[key] / 1e3)
    record(**row)


def peaks(iters):
    n = 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    t = median_seconds(jax.jit(lambda a, b: a @ b), a, b, iters=iters)
    a8 = jax.random.randint(jax.random.PRNGKey(2), (n, n), -127, 128, jnp.int8)
    b8 = jax.random.randint(jax.random.PRNGKey(3), (n, n), -127, 128, jnp.int8)
    t8 = median_seconds(jax.jit(lambda a, b: jax.lax.dot_general(a, b, CONTRACT_K, preferred_element_type=jnp.int32)),
                        a8, b8, iters=iters)
    row = dict(name="peaks", xla_bf16_tflops=2 * n**3 / t / 1e12, xla_int8_tops=2 * n**3 / t8 / 1e12)
    ones = jnp.ones((n,), jnp.float32)

    def ours():
        tm = median_seconds(jax.jit(lambda a, b: scaled_matmul_mgpu.scaled_matmul(a, b, ones, ones)), a8, b8, iters=iters)
        row["mgpu_int8_tops"] = 2 * n**3 / tm / 1e12
    attempt("peak_mgpu", ours)
    big = jnp.ones((1 << 30,), jnp.bfloat16)
    tc = median_seconds(jax.jit(lambda v: v * 2), big, iters=iters)
    row["copy_tb_s"] = 2 * big.nbytes / tc / 1e12
    record(**row)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="probe.json")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--models", nargs="+", default=["2b", "5b"])
    args = parser.parse_args()
    record(name="device", device=str(jax.devices()[0]), jax=jax.__version__,
           available=mosaic.available())
    attempt("check_gemm_int8", lambda: check_gemm(jnp.int8, 1000, 384, 256))
    attempt("check_gemm_int8_big", lambda: check_gemm(jnp.int8, M, 1920, 1920))
    attempt("check_gemm_gelu", lambda: check_gemm(jnp.int8, 1000, 384, 256, activation="gelu_tanh"))
    attempt("check_gemm_bf16", lambda: check_gemm(jnp.bfloat16, 1000, 384, 256))
    attempt("check_act", lambda: check_act(1000, 384))
    attempt("check_act_ragged", lambda: check_act(77, 384))
    attempt("check_act_big", lambda: check_act(M, 1920))
    attempt("peaks", lambda: peaks(args.iters))
    configs = {
        "m128n128k128s4": MatmulConfig(),
        "m128n256k128s3": MatmulConfig(tile_n=256, stages=3),
        "m128n128k128s5": MatmulConfig(stages=5),
        "m64n256k128s4": MatmulConfig(tile_m=64, tile_n=256, stages=4, epi_tile_n=64),
    }
    for model in args.models:
        for k, n in SHAPES[model]:
            attempt(f"time_{k}x{n}", lambda k=k, n=n: time_shape(k, n, args.iters, configs))
    Path(args.out).write_text(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
