"""Where does the NVFP4 path on the GPU part from its jnp reference? (BENCHMARKS.md, issue 11: 7.6% at full size.)

Compares, at one linear shape, each stage of the path three ways: the Pallas kernels on the GPU, the jnp reference
on the GPU, and the jnp reference on the host CPU (which the CPU tests hold the kernels to). Prints one JSON line
per comparison: relative L2 and max error and the fraction of differing elements.

    python bench/diag_nvfp4.py --m 4096 --k 1920 --n 1920
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

from pallas_kernels import act_quant  # noqa: E402
from sixbit_jax.quant import formats, linear  # noqa: E402


def compare(name: str, a, b) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b)
    print(json.dumps({"compare": name, "rel_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)),
                      "rel_max": float(diff.max() / max(np.abs(b).max(), 1e-30)),
                      "differing": float((diff > 0).mean())}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", type=int, default=4096)
    parser.add_argument("--k", type=int, default=1920)
    parser.add_argument("--n", type=int, default=1920)
    args = parser.parse_args()
    gpu, cpu = jax.devices("gpu")[0], jax.devices("cpu")[0]
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (args.m, args.k), jnp.float32).astype(jnp.bfloat16)
    w = jax.random.normal(kw, (args.n, args.k), jnp.float32) * args.k**-0.5
    with jax.default_device(cpu):
        weight_cpu = jax.jit(formats.prepare_weight)(jax.device_put(w, cpu))
    weight_gpu = jax.device_put(weight_cpu, gpu)

    def values_ref(rows):
        v = act_quant.nvfp4_values_reference(rows, formats.HADAMARD_BLOCK)
        return v.values.astype(jnp.float32) * v.scale[:, None]

    def values_kernel(rows):
        v = act_quant.quantize_nvfp4_values(rows, hadamard_block=formats.HADAMARD_BLOCK)
        return v.values.astype(jnp.float32)[: rows.shape[0]] * v.scale[: rows.shape[0], None]

    with jax.default_device(cpu):
        v_cpu = jax.jit(values_ref)(jax.device_put(x, cpu))
        y_cpu = jax.jit(lambda a, q: linear.nvfp4_linear(a, q, backend="reference"))(jax.device_put(x, cpu),
                                                                                   weight_cpu)
        wv_cpu = jax.jit(lambda q: formats.dequantize_nvfp4(q.nvfp4))(weight_cpu)
    xg = jax.device_put(x, gpu)
    v_gpu_ref = jax.jit(values_ref)(xg)
    v_gpu_kernel = jax.jit(values_kernel)(xg)
    wv_gpu = jax.jit(lambda q: formats.dequantize_nvfp4(q.nvfp4))(weight_gpu)
    wv_values = jax.jit(lambda q: (lambda v: v.values.astype(jnp.float32) * v.scale)(
        formats.block_scaled_values(q.nvfp4)))(weight_gpu)
    y_gpu_ref = jax.jit(lambda a, q: linear.nvfp4_linear(a, q, backend="reference"))(xg, weight_gpu)
    y_gpu_kernel = jax.jit(lambda a, q: linear.nvfp4_linear(a, q, backend="pallas"))(xg, weight_gpu)
    compare("activation values: GPU reference vs CPU reference", v_gpu_ref, v_cpu)
    compare("activation values: GPU kernel vs CPU reference", v_gpu_kernel, v_cpu)
    compare("activation values: GPU kernel vs GPU reference", v_gpu_kernel, v_gpu_ref)
    compare("weight dequantized: GPU vs CPU", wv_gpu, wv_cpu)
    compare("weight block-scaled values (GPU) vs dequantized (CPU)", wv_values, wv_cpu)
    compare("output: GPU reference vs CPU reference", y_gpu_ref, y_cpu)
    compare("output: GPU kernels vs CPU reference", y_gpu_kernel, y_cpu)
    compare("output: GPU kernels vs GPU reference", y_gpu_kernel, y_gpu_ref)
    exact = np.asarray(v_cpu, np.float64) @ np.asarray(wv_cpu, np.float64).T
    compare("output: CPU reference vs float64 of CPU-quantized operands", y_cpu, exact)
    compare("output: GPU kernels vs float64 of CPU-quantized operands", y_gpu_kernel, exact)


if __name__ == "__main__":
    main()
