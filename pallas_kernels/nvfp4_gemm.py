"""NVFP4 GEMM (W4A4): NVFP4 activations [M, K] x NVFP4 weights [N, K] (K-major) -> bf16 [M, N].

Hopper has no FP4 tensor cores, so each K step unpacks both operands' E2M1 codes in registers, multiplies them by
their E4M3 block scales (exact in bf16) and runs bf16 MMAs with fp32 accumulation. Both operands pack element 2j in
a byte's low nibble and 2j+1 in its high one, so a K step is `even . even + odd . odd`: no interleaving. The
epilogue applies the activation's per-row scale, the weight's per-tensor scale and the bias.
What it saves over bf16 is memory traffic and footprint (a weight is 4.5 bits per element), not MMA time.
Reference: `nvfp4_matmul_reference` below.
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
    gemm_grid,
    masked_store,
    require,
    resolve_interpret,
)
from pallas_kernels.tuning import BlockConfig, block_config
from sixbit_jax.quant import formats
from sixbit_jax.quant.formats import NVFP4, NVFP4_BLOCK

_CONTRACT_K = (((1,), (1,)), ((), ()))


# ---------------------------------------------------------------------------------------------------------- reference
def nvfp4_matmul_reference(
    a: NVFP4, w: NVFP4, bias: jax.Array | None = None, *, m: int | None = None, out_dtype=jnp.bfloat16
) -> jax.Array:
    """Dequantize both operands exactly to fp32 and multiply in fp32."""
    m = a.packed.shape[0] if m is None else m
    a = NVFP4(a.packed[:m], a.block_scales[:m], a.scale[:m])
    y = jax.lax.dot_general(
        formats.dequantize_nvfp4(a), formats.dequantize_nvfp4(w), _CONTRACT_K, precision=jax.lax.Precision.HIGHEST
    )
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(out_dtype)


# ------------------------------------------------------------------------------------------------------------- kernel
def dequantized_k_step(packed_ref, scales_ref, step: int, block_k: int) -> tuple[jax.Array, jax.Array]:
    """One K step of an NVFP4 operand, as (even, odd) bf16 [rows, block_k / 2]: codes times block scales."""
    packed = packed_ref[:, pl.ds(step * (block_k // 2), block_k // 2)]
    scales = scales_ref[:, pl.ds(step * (block_k // NVFP4_BLOCK), block_k // NVFP4_BLOCK)].astype(jnp.float32)
    return formats.decode_pairs(packed, scales, dtype=jnp.bfloat16)


def _kernel(a_ref, abs_ref, as_ref, w_ref, wbs_ref, ws_ref, b_ref, o_ref, *, m: int, k: int, block_k: int, row_axis: int):
    def step_fn(step, acc):
        a_even, a_odd = dequantized_k_step(a_ref, abs_ref, step, block_k)
        w_even, w_odd = dequantized_k_step(w_ref, wbs_ref, step, block_k)
        # Native FP4 MMA goes here: on Blackwell these two bf16 dots become one block-scaled e2m1 MMA fed with the
        # packed codes and E4M3 scales directly, and the decode above disappears.
        acc += jax.lax.dot_general(a_even, w_even, _CONTRACT_K, preferred_element_type=jnp.float32)
        return acc + jax.lax.dot_general(a_odd, w_odd, _CONTRACT_K, preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, k // block_k, step_fn, jnp.zeros(o_ref.shape, jnp.float32))
    masked_store(o_ref, epilogue(acc * as_ref[...][:, None], ws_ref, b_ref), row_axis, m)


# ------------------------------------------------------------------------------------------------------------ wrapper
def nvfp4_matmul(
    a: NVFP4,
    w: NVFP4,
    bias: jax.Array | None = None,
    *,
    m: int | None = None,
    out_dtype=jnp.bfloat16,
    config: BlockConfig | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """a: NVFP4 [rows, K] with per-row scales from `act_quant.quantize_nvfp4` (rows padded); w: NVFP4 [N, K] with
    one scale. m: the real row count (default: all rows). Returns out_dtype [m, N]."""
    what = "NVFP4 GEMM"
    rows, k = a.shape
    n = w.shape[0]
    m = rows if m is None else m
    require(w.shape[1] == k, f"{what}: activations have K = {k} but the weight has K = {w.shape[1]}")
    require(a.scale.shape == (rows,), f"{what}: activations need one second-level scale per row")
    require(w.scale.ndim == 0, f"{what}: the weight needs one second-level scale per tensor")
    check_k(k, what)
    check_n(n, what)
    config = block_config("nvfp4_gemm", m, k, n, override=config)
    require(rows % config.block_m == 0, f"{what}: {rows} activation rows are not a multiple of block_m = {config.block_m}")
    bias = bias_or_zeros(bias, n)
    weight_scale = jnp.broadcast_to(w.scale.astype(jnp.float32), (n,))  # same epilogue as a per-channel scale
    grid, row_of, col_of, row_axis = gemm_grid(config, rows, n)
    bm, bn = config.block_m, config.block_n
    return pl.pallas_call(
        functools.partial(_kernel, m=m, k=k, block_k=config.block_k, row_axis=row_axis),
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
        grid=grid,
        in_specs=[
            pl.BlockSpec((bm, k // 2), lambda *ids: (row_of(*ids), 0)),
            pl.BlockSpec((bm, k // NVFP4_BLOCK), lambda *ids: (row_of(*ids), 0)),
            pl.BlockSpec((bm,), lambda *ids: (row_of(*ids),)),
            pl.BlockSpec((bn, k // 2), lambda *ids: (col_of(*ids), 0)),
            pl.BlockSpec((bn, k // NVFP4_BLOCK), lambda *ids: (col_of(*ids), 0)),
            pl.BlockSpec((bn,), lambda *ids: (col_of(*ids),)),
            pl.BlockSpec((bn,), lambda *ids: (col_of(*ids),)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda *ids: (row_of(*ids), col_of(*ids))),
        compiler_params=compiler_params(config),
        interpret=resolve_interpret(interpret),
        name="nvfp4_gemm",
    )(a.packed, a.block_scales, a.scale, w.packed, w.block_scales, weight_scale, bias)
