"""INT8 GEMM: int8 activations [M, K] x int8 weights [N, K] (K-major) -> bf16 [M, N], with a fused epilogue.

int8 MMA with int32 accumulation over K; the epilogue applies the activation scale (per row), the weight scale (per
output channel), the bias, and casts to bf16, so the int32 product never reaches memory. With per-group activation
scales (one per row and 128-wide K group) each K step's int32 partial product is scaled into an fp32 accumulator.

The weight operand is derived from the resident NVFP4 weight (`sixbit_jax.quant.formats.int8_weight`). Both operands
are K-major: Hopper's 8-bit tensor-core instructions need both contiguous along K, and [K, N] weights run 2-4x slower
(`../shared/reference/gpu-baseline.md`).
Reference: `int8_matmul_reference` below.
"""

from __future__ import annotations

import dataclasses
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
    gemm_grid,
    K_TILE,
    masked_store,
    require,
    resolve_interpret,
)
from pallas_kernels.tuning import BlockConfig, block_config
from sixbit_jax.quant.formats import INT8

_CONTRACT_K = (((1,), (1,)), ((), ()))  # both operands [rows, K]


# ---------------------------------------------------------------------------------------------------------- reference
def int8_matmul_reference(
    a: INT8, w: INT8, bias: jax.Array | None = None, *, m: int | None = None, out_dtype=jnp.bfloat16
) -> jax.Array:
    """The same function in plain jnp: exact int32 products, then the same scales in fp32."""
    m = a.values.shape[0] if m is None else m
    values = a.values[:m]
    if a.group_size is None:
        acc = jax.lax.dot_general(values, w.values, _CONTRACT_K, preferred_element_type=jnp.int32)
        y = acc.astype(jnp.float32) * a.scale[:m, None]
    else:
        g = a.group_size
        grouped_a = values.reshape(m, -1, g)
        grouped_w = w.values.reshape(w.values.shape[0], -1, g)
        partial = jnp.einsum("mgk,ngk->gmn", grouped_a, grouped_w, preferred_element_type=jnp.int32)
        y = jnp.einsum("gmn,mg->mn", partial.astype(jnp.float32), a.scale[:m], precision=jax.lax.Precision.HIGHEST)
    y = y * w.scale[None, :]
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)


# ------------------------------------------------------------------------------------------------------------- kernel
def _kernel(a_ref, as_ref, w_ref, ws_ref, b_ref, o_ref, *, m: int, k: int, block_k: int, per_group: bool, row_axis: int):
    block_m, block_n = o_ref.shape

    def int_product(step):
        a = a_ref[:, pl.ds(step * block_k, block_k)]
        w = w_ref[:, pl.ds(step * block_k, block_k)]
        return jax.lax.dot_general(a, w, _CONTRACT_K, preferred_element_type=jnp.int32)

    if per_group:  # block_k is the group: scale each step's int32 product into fp32
        def step_fn(step, acc):
            return acc + int_product(step).astype(jnp.float32) * as_ref[:, pl.ds(step, 1)]

        y = jax.lax.fori_loop(0, k // block_k, step_fn, jnp.zeros((block_m, block_n), jnp.float32))
    else:
        acc = jax.lax.fori_loop(
            0, k // block_k, lambda step, acc: acc + int_product(step), jnp.zeros((block_m, block_n), jnp.int32)
        )
        y = acc.astype(jnp.float32) * as_ref[...][:, None]
    masked_store(o_ref, epilogue(y, ws_ref, b_ref), row_axis, m)


# ------------------------------------------------------------------------------------------------------------ wrapper
def int8_matmul(
    a: INT8,
    w: INT8,
    bias: jax.Array | None = None,
    *,
    m: int | None = None,
    out_dtype=jnp.bfloat16,
    config: BlockConfig | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """a: INT8 [rows, K] from `act_quant.quantize_int8` (rows padded); w: INT8 [N, K] with per-row scales.
    m: the real row count (default: all rows). Returns out_dtype [m, N]."""
    what = "INT8 GEMM"
    rows, k = a.values.shape
    n = w.values.shape[0]
    m = rows if m is None else m
    require(w.values.shape[1] == k, f"{what}: activations have K = {k} but the weight has K = {w.values.shape[1]}")
    require(w.group_size is None and w.scale.shape == (n,), f"{what}: the weight needs one scale per output row")
    check_k(k, what)
    check_n(n, what)
    config = block_config("int8_gemm", m, k, n, override=config)
    per_group = a.group_size is not None
    if per_group:
        require(a.group_size == K_TILE, f"{what}: activation groups must be {K_TILE} wide, got {a.group_size}")
        config = dataclasses.replace(config, block_k=K_TILE)
    require(
        rows % config.block_m == 0,
        f"{what}: {rows} activation rows are not a multiple of block_m = {config.block_m} (quantize with act_quant)",
    )
    bias = bias_or_zeros(bias, n)
    grid, row_of, col_of, row_axis = gemm_grid(config, rows, n)
    bm, bn = config.block_m, config.block_n
    a_scale_spec = (
        pl.BlockSpec((bm, k // K_TILE), lambda *ids: (row_of(*ids), 0))
        if per_group
        else pl.BlockSpec((bm,), lambda *ids: (row_of(*ids),))
    )
    return pl.pallas_call(
        functools.partial(
            _kernel, m=m, k=k, block_k=config.block_k, per_group=per_group, row_axis=row_axis
        ),
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
        grid=grid,
        in_specs=[
            pl.BlockSpec((bm, k), lambda *ids: (row_of(*ids), 0)),
            a_scale_spec,
            pl.BlockSpec((bn, k), lambda *ids: (col_of(*ids), 0)),
            pl.BlockSpec((bn,), lambda *ids: (col_of(*ids),)),
            pl.BlockSpec((bn,), lambda *ids: (col_of(*ids),)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda *ids: (row_of(*ids), col_of(*ids))),
        compiler_params=compiler_params(config),
        interpret=resolve_interpret(interpret),
        name="int8_gemm",
    )(a.values, a.scale, w.values, w.scale, bias)
