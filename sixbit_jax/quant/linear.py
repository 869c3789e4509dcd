"""The quantized linear paths, composed from the formats and the kernels: what a quantized dense layer calls.

- `int8_linear` (W4A8): Hadamard + per-token INT8 activations, the int8 weight derived from the NVFP4 one, int8 GEMM.
  `quantize_int8_input` does the activation half alone, so linears that read the same x (attention's q, k and v)
  quantize it once and pass the `Int8Input` to `int8_linear`.
- `nvfp4_linear` (W4A4): Hadamard + NVFP4 activations, NVFP4 GEMM.
- `weight_only_linear`: bf16 activations, NVFP4 weight (small M: the AdaLN modulation linears).

Each runs on one of three backends: "pallas" (the kernels, compiled on a GPU), "interpret" (the Triton kernels in
Pallas interpret mode: tests on CPU) and "reference" (the plain-jnp definitions: fast on CPU, used by the demo).
All three compute the same function; tests hold them to it. On a Hopper GPU the INT8 path's "pallas" kernels are the
Mosaic GPU ones (`act_quant_mgpu`, `scaled_matmul_mgpu`) wherever the shape fits their tiles, else Pallas Triton.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import act_quant, act_quant_mgpu, int8_gemm, mosaic, nvfp4_gemm, nvfp4_weight_only, tuning
from pallas_kernels import scaled_matmul_mgpu
from pallas_kernels.common import K_TILE, activation_fn, bias_or_zeros
from sixbit_jax.errors import InputError
from sixbit_jax.quant import formats
from sixbit_jax.quant.formats import INT8, QuantizedWeight

Backend = Literal["pallas", "interpret", "reference"]
BACKENDS = ("pallas", "interpret", "reference")


def default_backend() -> Backend:
    return "pallas" if jax.default_backend() == "gpu" else "reference"


def _resolve(backend: Backend | None, k: int | None = None, n: int | None = None,
             hadamard_block: int | None = None) -> Backend:
    """The backend asked for, or by default the kernels on a GPU and the references elsewhere. The kernels tile K
    by 128 and N by 16 and rotate activations in 128-wide Hadamard blocks (or not at all): a layer outside that (the
    tiny test models) runs the reference by default, and fails with a message naming the constraint only when the
    kernels were asked for explicitly."""
    if backend is None:
        fits = ((k is None or k % K_TILE == 0) and (n is None or n % 16 == 0)
                and (hadamard_block is None or hadamard_block in (0, K_TILE)))
        backend = default_backend() if fits else "reference"
    if backend not in BACKENDS:
        raise InputError(f"unknown quantized backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def _as_rows(x: jax.Array, weight: QuantizedWeight, backend: Backend | None, *, rotates: bool = True):
    """(bf16 rows, leading shape, N, backend). `rotates`: the path's kernels apply the weight's Hadamard block."""
    n, k = weight.shape
    backend = _resolve(backend, k, n, weight.hadamard_block if rotates else None)
    if x.shape[-1] != k:
        raise InputError(f"the input's last axis is {x.shape[-1]} but the quantized weight expects K = {k}")
    # Quantized paths take bf16 activations: the kernels rotate them on bf16 tensor cores, and 4- or 8-bit
    # quantization discards far more than bf16 rounding does.
    return x.reshape(-1, k).astype(jnp.bfloat16), x.shape[:-1], n, backend


def _mosaic_gemm(k: int, n: int, dtype="int8") -> bool:
    """Whether the Mosaic GPU GEMM takes this shape on this device (else the Triton kernels do)."""
    config = tuning.mosaic_gemm_config(k, n, dtype)
    return k % config.tile_k == 0 and k % K_TILE == 0 and n % config.tile_n == 0 and mosaic.available()


@dataclasses.dataclass(frozen=True)
class Int8Input:
    """x rotated by the block Hadamard transform and quantized to per-token INT8, ready for any W4A8 linear whose
    weight has the same K and Hadamard block. `q` has its rows padded for the GEMM kernels; `m` rows are real."""

    q: INT8
    m: int
    lead: tuple[int, ...]
    hadamard_block: int
    group_size: int | None = None


def quantize_int8_input(x: jax.Array, hadamard_block: int, *, group_size: int | None = None,
                        backend: Backend | None = None) -> Int8Input:
    """The activation half of `int8_linear`: bf16 [..., K] -> Int8Input."""
    k = x.shape[-1]
    backend = _resolve(backend, k, hadamard_block=hadamard_block)
    rows = x.reshape(-1, k).astype(jnp.bfloat16)
    if backend == "reference":
        q = act_quant.int8_reference(rows, hadamard_block, group_size)
    elif backend == "pallas" and group_size in (None, K_TILE) and hadamard_block == K_TILE and k % K_TILE == 0 \
            and mosaic.available():
        q = act_quant_mgpu.quantize_int8(rows, group_size=group_size)
    else:
        q = act_quant.quantize_int8(rows, hadamard_block=hadamard_block, group_size=group_size,
                                    interpret=backend == "interpret")
    return Int8Input(q, rows.shape[0], x.shape[:-1], hadamard_block, group_size)


def int8_linear(
    x: jax.Array | Int8Input,
    weight: QuantizedWeight,
    bias: jax.Array | None = None,
    *,
    group_size: int | None = None,
    activation: str | None = None,
    backend: Backend | None = None,
) -> jax.Array:
    """y = act(x W^T + b) with W4A8: INT8 activations (per token, or per token and 128-wide group) x the INT8
    operand derived from the NVFP4 weight. x is bf16 [..., K] or an Int8Input from `quantize_int8_input`.
    `activation` (a name in `pallas_kernels.common.ACTIVATIONS`) is applied in float32 before rounding: fused into
    the Mosaic GPU GEMM's epilogue, after the GEMM elsewhere. bf16 [..., N]."""
    return int8_linears(x, [weight], [bias], group_size=group_size, activation=activation, backend=backend)[0]


def int8_linears(
    x: jax.Array | Int8Input,
    weights: list[QuantizedWeight],
    biases: list[jax.Array | None],
    *,
    group_size: int | None = None,
    activation: str | None = None,
    backend: Backend | None = None,
) -> list[jax.Array]:
    """Several W4A8 linears that read the same x (attention's q, k and v), as one GEMM over their stacked INT8
    weights: one wide GEMM keeps the tensor cores busier than several narrow ones, and the stacking copies only the
    transient INT8 operands. Each output as `int8_linear` gives it."""
    k, hadamard_block = weights[0].shape[1], weights[0].hadamard_block
    if any(w.shape[1] != k or w.hadamard_block != hadamard_block for w in weights):
        raise InputError("linears computed as one GEMM must share K and the Hadamard block, got "
                         + ", ".join(f"K = {w.shape[1]} (block {w.hadamard_block})" for w in weights))
    widths = [w.shape[0] for w in weights]
    n = sum(widths)
    backend = _resolve(backend, k, math.gcd(*widths), hadamard_block)  # the kernels must tile every width
    if not isinstance(x, Int8Input):
        if x.shape[-1] != k:
            raise InputError(f"the input's last axis is {x.shape[-1]} but the quantized weight expects K = {k}")
        x = quantize_int8_input(x, hadamard_block, group_size=group_size, backend=backend)
    if x.q.values.shape[-1] != k or x.hadamard_block != hadamard_block:
        raise InputError(f"a quantized input of K = {x.q.values.shape[-1]} (Hadamard block {x.hadamard_block}) "
                         f"cannot feed a weight of K = {k} (Hadamard block {hadamard_block})")
    w8 = _stacked(formats.int8_weight(w) for w in weights)
    bias = None if all(b is None for b in biases) else jnp.concatenate(
        [bias_or_zeros(b, width).astype(jnp.float32) for b, width in zip(biases, widths)])
    if backend == "pallas" and x.group_size in (None, K_TILE) and x.q.values.shape[0] % 256 == 0 \
            and _mosaic_gemm(k, n):
        y = scaled_matmul_mgpu.scaled_matmul(x.q.values, w8.values, x.q.scale, w8.scale, bias, m=x.m,
                                             activation=activation, config=tuning.mosaic_gemm_config(k, n))
    else:
        out_dtype = jnp.bfloat16 if activation is None else jnp.float32
        if backend == "reference":
            y = int8_gemm.int8_matmul_reference(x.q, w8, bias, m=x.m, out_dtype=out_dtype)
        else:
            y = int8_gemm.int8_matmul(x.q, w8, bias, m=x.m, out_dtype=out_dtype, interpret=backend == "interpret")
        y = activation_fn(activation)(y).astype(jnp.bfloat16)
    y = y.reshape(*x.lead, n)
    return jnp.split(y, np.cumsum(widths)[:-1].tolist(), axis=-1) if len(widths) > 1 else [y]


def _stacked(operands) -> INT8:
    """INT8 weights [N_i, K] with per-row scales -> one [sum N_i, K]."""
    operands = list(operands)
    if len(operands) == 1:
        return operands[0]
    return INT8(jnp.concatenate([w.values for w in operands]), jnp.concatenate([w.scale for w in operands]))


def nvfp4_linear(
    x: jax.Array, weight: QuantizedWeight, bias: jax.Array | None = None, *, backend: Backend | None = None,
    operands: str = "bf16",
) -> jax.Array:
    """y = x W^T + b with W4A4: NVFP4 activations (per-token second-level scale) x the NVFP4 weight. bf16 [..., N].

    On Hopper (no FP4 MMA) both operands become bf16 block-scaled values (code x block scale, exact) and the Mosaic
    GPU GEMM multiplies them on the bf16 tensor cores, applying both second-level scales in its epilogue: the same
    products as the reference, summed in fp32. Elsewhere the Triton kernel decodes inside its K loop.
    operands "fp8": both operands' block-scaled values rounded as FP8 tensor cores take them
    (`formats.fp8_rounded`: the numerics of NVFP4 at Hopper's 8-bit MMA rate), multiplied by the same GEMM."""
    if operands not in formats.NVFP4_OPERANDS:
        raise InputError(f"NVFP4 operands {operands!r}: use one of {', '.join(formats.NVFP4_OPERANDS)}")
    rows, lead, n, backend = _as_rows(x, weight, backend)
    k = weight.shape[1]
    if operands == "fp8" or (backend == "pallas" and _mosaic_gemm(k, n, "bfloat16")):
        y = _block_scaled_linear(rows, weight, bias, backend, fp8=operands == "fp8")
    elif backend == "reference":
        a = act_quant.nvfp4_reference(rows, weight.hadamard_block)
        y = nvfp4_gemm.nvfp4_matmul_reference(a, weight.nvfp4, bias)
    else:
        interpret = backend == "interpret"
        a = act_quant.quantize_nvfp4(rows, hadamard_block=weight.hadamard_block, interpret=interpret)
        y = nvfp4_gemm.nvfp4_matmul(a, weight.nvfp4, bias, m=rows.shape[0], interpret=interpret)
    return y.reshape(*lead, n)


def _block_scaled_linear(rows, weight: QuantizedWeight, bias, backend: Backend, *, fp8: bool) -> jax.Array:
    """NVFP4 x NVFP4 through both operands' block-scaled values (optionally `formats.fp8_rounded`), summed in fp32
    with the second-level scales applied after: on Hopper the Mosaic bf16 GEMM (fp8 operands would take the same
    values at twice the rate), elsewhere one fp32 dot."""
    k, n = weight.shape[1], weight.shape[0]
    if backend == "reference":
        a = act_quant.nvfp4_values_reference(rows, weight.hadamard_block)
    else:
        a = act_quant.quantize_nvfp4_values(rows, hadamard_block=weight.hadamard_block,
                                            interpret=backend == "interpret")
    w = formats.block_scaled_values(weight.nvfp4)
    if fp8:
        a, w = formats.fp8_rounded(a), formats.fp8_rounded(w)
    if backend == "pallas" and _mosaic_gemm(k, n, "bfloat16"):
        return scaled_matmul_mgpu.scaled_matmul(a.values, w.values, a.scale, jnp.broadcast_to(w.scale, (n,)), bias,
                                                m=rows.shape[0], config=tuning.mosaic_gemm_config(k, n, "bfloat16"))
    y = jax.lax.dot_general(a.values[:rows.shape[0]], w.values, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST)
    y = y * a.scale[:rows.shape[0], None] * w.scale
    return (y if bias is None else y + bias.astype(jnp.float32)).astype(jnp.bfloat16)


def weight_only_linear(
    x: jax.Array, weight: QuantizedWeight, bias: jax.Array | None = None, *, backend: Backend | None = None
) -> jax.Array:
    """y = x W^T + b with bf16 activations and the NVFP4 weight (for small M). bf16 [..., N].
    The weight's folded Hadamard transform is applied to x in jnp first (cheap at one row per sample)."""
    rows, lead, n, backend = _as_rows(x, weight, backend, rotates=False)
    if weight.hadamard_block:
        rows = formats.block_hadamard(rows, weight.hadamard_block).astype(jnp.bfloat16)
    if backend == "reference":
        y = nvfp4_weight_only.weight_only_matmul_reference(rows, weight.nvfp4, bias)
    else:
        y = nvfp4_weight_only.weight_only_matmul(rows, weight.nvfp4, bias, interpret=backend == "interpret")
    return y.reshape(*lead, n)
