"""Weight-only NVFP4 matmul for small M: bf16 x [M, K] times an NVFP4 weight [N, K] -> bf16 [M, N].

For the AdaLN modulation linears, whose input is one row per sample: the work is reading the weight, so it stays
4-bit in memory and is decoded in registers. The activation is split into its even and odd K columns outside the
kernel (a few rows, negligible), matching the weight's nibble pairs, so the kernel needs no interleave.
Rows are padded to a multiple of block_m (at least 16, the MMA minimum). Reference: `weight_only_matmul_reference`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.common import (
    bias_or_zeros,
    check_k,
    check_n,
    compiler_params,
    epilogue,
    require,
    resolve_interpret,
)
from pallas_kernels.nvfp4_gemm import dequantized_k_step
from pallas_kernels.tuning import BlockConfig, block_config
from sixbit_jax.quant import formats
from sixbit_jax.quant.formats import NVFP4, NVFP4_BLOCK

_CONTRACT_K = (((1,), (1,)), ((), ()))


# ---------------------------------------------------------------------------------------------------------- reference
def weight_only_matmul_reference(
    x: jax.Array, w: NVFP4, bias: jax.Array | None = None, *, out_dtype=jnp.bfloat16
) -> jax.Array:
    y = jax.lax.dot_general(
        x.astype(jnp.float32), formats.dequantize_nvfp4(w), _CONTRACT_K, precision=jax.lax.Precision.HIGHEST
    )
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)


# ------------------------------------------------------------------------------------------------------------- kernel
def _kernel(xe_ref, xo_ref, w_ref, wbs_ref, ws_ref, b_ref, o_ref, *, k: int, block_k: int):
    half = block_k // 2

    def step_fn(step, acc):
        w_even, w_odd = dequantized_k_step(w_ref, wbs_ref, step, block_k)
        x_even = xe_ref[:, pl.ds(step * half, half)]
        x_odd = xo_ref[:, pl.ds(step * half, half)]
        acc += jax.lax.dot_general(x_even, w_even, _CONTRACT_K, preferred_element_type=jnp.float32)
        return acc + jax.lax.dot_general(x_odd, w_odd, _CONTRACT_K, preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, k // block_k, step_fn, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = epilogue(acc, ws_ref, b_ref).astype(o_ref.dtype)


# ------------------------------------------------------------------------------------------------------------ wrapper
def weight_only_matmul(
    x: jax.Array,
    w: NVFP4,
    bias: jax.Array | None = None,
    *,
    out_dtype=jnp.bfloat16,
    config: BlockConfig | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """x: [M, K] (cast to bf16); w: NVFP4 [N, K] with one scale. Returns out_dtype [M, N]."""
    what = "weight-only NVFP4 matmul"
    require(x.ndim == 2, f"{what}: expected x [M, K], got shape {tuple(x.shape)}")
    m, k = x.shape
    n = w.shape[0]
    require(w.shape[1] == k, f"{what}: x has K = {k} but the weight has K = {w.shape[1]}")
    require(w.scale.ndim == 0, f"{what}: the weight needs one second-level scale per tensor")
    check_k(k, what)
    check_n(n, what)
    config = block_config("nvfp4_weight_only", m, k, n, override=config)
    bm, bn, bk = config.block_m, config.block_n, config.block_k
    rows = -(-m // bm) * bm
    x = jnp.pad(x.astype(jnp.bfloat16), ((0, rows - m), (0, 0)))
    x_even, x_odd = x[:, 0::2], x[:, 1::2]
    bias = bias_or_zeros(bias, n)
    weight_scale = jnp.broadcast_to(w.scale.astype(jnp.float32), (n,))
    y = pl.pallas_call(
        functools.partial(_kernel, k=k, block_k=bk),
        out_shape=jax.ShapeDtypeStruct((rows, n), out_dtype),
        grid=(rows // bm, n // bn),
        in_specs=[
            pl.BlockSpec((bm, k // 2), lambda i, j: (i, 0)),
            pl.BlockSpec((bm, k // 2), lambda i, j: (i, 0)),
            pl.BlockSpec((bn, k // 2), lambda i, j: (j, 0)),
            pl.BlockSpec((bn, k // NVFP4_BLOCK), lambda i, j: (j, 0)),
            pl.BlockSpec((bn,), lambda i, j: (j,)),
            pl.BlockSpec((bn,), lambda i, j: (j,)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=compiler_params(config),
        interpret=resolve_interpret(interpret),
        name="nvfp4_weight_only",
    )(x_even, x_odd, w.packed, w.block_scales, weight_scale, bias)
    return y[:m]
