"""The quantized linear paths, composed from the formats and the kernels: what a quantized dense layer calls.

- `int8_linear` (W4A8): Hadamard + per-token INT8 activations, the int8 weight derived from the NVFP4 one, int8 GEMM.
- `nvfp4_linear` (W4A4): Hadamard + NVFP4 activations, NVFP4 GEMM.
- `weight_only_linear`: bf16 activations, NVFP4 weight (small M: the AdaLN modulation linears).

Each runs on one of three backends: "pallas" (the Triton kernels, compiled on a GPU), "interpret" (the same kernels in
Pallas interpret mode: tests on CPU) and "reference" (the plain-jnp definitions: fast on CPU, used by the demo).
All three compute the same function; tests hold them to it.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from pallas_kernels import act_quant, int8_gemm, nvfp4_gemm, nvfp4_weight_only
from sixbit_jax.errors import InputError
from sixbit_jax.quant import formats
from sixbit_jax.quant.formats import QuantizedWeight

Backend = Literal["pallas", "interpret", "reference"]
BACKENDS = ("pallas", "interpret", "reference")


def default_backend() -> Backend:
    return "pallas" if jax.default_backend() == "gpu" else "reference"


def _as_rows(x: jax.Array, weight: QuantizedWeight, backend: Backend | None):
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise InputError(f"unknown quantized backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise InputError(f"the input's last axis is {x.shape[-1]} but the quantized weight expects K = {k}")
    # Quantized paths take bf16 activations: the kernels rotate them on bf16 tensor cores, and 4- or 8-bit
    # quantization discards far more than bf16 rounding does.
    return x.reshape(-1, k).astype(jnp.bfloat16), x.shape[:-1], n, backend


def int8_linear(
    x: jax.Array,
    weight: QuantizedWeight,
    bias: jax.Array | None = None,
    *,
    group_size: int | None = None,
    backend: Backend | None = None,
) -> jax.Array:
    """y = x W^T + b with W4A8: INT8 activations (per token, or per token and 128-wide group) x the INT8 operand
    derived from the NVFP4 weight. bf16 [..., N]."""
    rows, lead, n, backend = _as_rows(x, weight, backend)
    w8 = formats.int8_weight(weight)
    if backend == "reference":
        a = act_quant.int8_reference(rows, weight.hadamard_block, group_size)
        y = int8_gemm.int8_matmul_reference(a, w8, bias)
    else:
        interpret = backend == "interpret"
        a = act_quant.quantize_int8(rows, hadamard_block=weight.hadamard_block, group_size=group_size, interpret=interpret)
        y = int8_gemm.int8_matmul(a, w8, bias, m=rows.shape[0], interpret=interpret)
    return y.reshape(*lead, n)


def nvfp4_linear(
    x: jax.Array, weight: QuantizedWeight, bias: jax.Array | None = None, *, backend: Backend | None = None
) -> jax.Array:
    """y = x W^T + b with W4A4: NVFP4 activations (per-token second-level scale) x the NVFP4 weight. bf16 [..., N]."""
    rows, lead, n, backend = _as_rows(x, weight, backend)
    if backend == "reference":
        a = act_quant.nvfp4_reference(rows, weight.hadamard_block)
        y = nvfp4_gemm.nvfp4_matmul_reference(a, weight.nvfp4, bias)
    else:
        interpret = backend == "interpret"
        a = act_quant.quantize_nvfp4(rows, hadamard_block=weight.hadamard_block, interpret=interpret)
        y = nvfp4_gemm.nvfp4_matmul(a, weight.nvfp4, bias, m=rows.shape[0], interpret=interpret)
    return y.reshape(*lead, n)


def weight_only_linear(
    x: jax.Array, weight: QuantizedWeight, bias: jax.Array | None = None, *, backend: Backend | None = None
) -> jax.Array:
    """y = x W^T + b with bf16 activations and the NVFP4 weight (for small M). bf16 [..., N].
    The weight's folded Hadamard transform is applied to x in jnp first (cheap at one row per sample)."""
    rows, lead, n, backend = _as_rows(x, weight, backend)
    if weight.hadamard_block:
        rows = formats.block_hadamard(rows, weight.hadamard_block).astype(jnp.bfloat16)
    if backend == "reference":
        y = nvfp4_weight_only.weight_only_matmul_reference(rows, weight.nvfp4, bias)
    else:
        y = nvfp4_weight_only.weight_only_matmul(rows, weight.nvfp4, bias, interpret=backend == "interpret")
    return y.reshape(*lead, n)
