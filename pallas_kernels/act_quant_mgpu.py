"""Per-token INT8 activation quantization with the 128-wide block Hadamard transform, on Hopper through Pallas
Mosaic GPU: bf16 [M, K] -> INT8 of x H (values [rows, K], scales [rows]), rows padded to `common.ROW_ALIGN`.

Each CTA walks row tiles of 64 (one warpgroup, the wgmma height) over a persistent grid. A row tile makes two
pipelined passes over K in 128-wide tiles: the first rotates each tile on the tensor cores (bf16 x the +-1 Hadamard
matrix held in shared memory, fp32 accumulators; exact products) and keeps the running row amax; the second rotates
again and writes the int8 codes through shared memory and TMA. The rotation is recomputed rather than stored because
a 64-row tile of rotated values is 0.5-3 MB, far over shared memory; the second read of x mostly hits L2 at K <= 3072.
Rows past M are read as zeros by TMA (which moves whole 8-row tiles: an M that is not a multiple of 8 is padded to
one first) and quantize to zeros, as the Triton kernel's padding does.

Same function as `act_quant.int8_reference` (per-row scales, round half away from zero); the `gpu` tests compare them.
Measured on an H200 (BENCHMARKS.md, issue 11): 0.49-0.78 TB/s of input, ahead of the Triton kernel
(`act_quant.quantize_int8`) but latency-bound, not memory-bound: one warpgroup per CTA runs each tile's TMA wait,
wgmma, reductions and stores in sequence. Several CTAs per SM (`ctas_per_sm`, from the tuning table) overlap some of
that; more warpgroups per CTA, or fusing this into the producer of x, is the way to the memory bound.

`group_size=128` gives one scale per row and 128-wide K group and needs only one pass (each tile is quantized on
its own). It measured no faster (0.26 against 0.27 ms at 35,552 x 1920; 0.23 tuned), so the second read of x is not
what bounds this kernel: the per-tile chain is. With the per-group GEMM 30-40% slower (it scales every K step's
product into an fp32 carry), the INT8 path keeps per-row scales by default (BENCHMARKS.md, issue 11).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import mosaic
from pallas_kernels.common import K_TILE, check_k, padded_rows, require
from pallas_kernels.mosaic import plgpu, smem_transforms
from pallas_kernels.tuning import mosaic_act_config
from sixbit_jax.quant import formats
from sixbit_jax.quant.formats import INT8

ROW_TILE = 64  # one warpgroup's wgmma height


def _rotation(h_smem):
    """x_smem (a 64 x 128 bf16 tile) -> float32 x H / sqrt(128), on the tensor cores (exact products)."""
    norm = 1.0 / math.sqrt(K_TILE)

    def rotate(x_smem):
        def product(acc_ref):
            plgpu.wgmma(acc_ref, x_smem, h_smem)
            plgpu.wgmma_wait(0)
            return acc_ref[...]

        return pl.run_scoped(product, plgpu.ACC((ROW_TILE, K_TILE), jnp.float32)) * norm

    return rotate


X_SPEC_SHAPE = (ROW_TILE, K_TILE)


def _tile_specs():
    """Pipeline specs of a 64 x 128 tile of x (bf16) and of its codes (int8), stepping along K."""
    return (plgpu.BlockSpec(X_SPEC_SHAPE, lambda k: (0, k), transforms=smem_transforms(K_TILE, jnp.bfloat16)),
            plgpu.BlockSpec(X_SPEC_SHAPE, lambda k: (0, k), transforms=smem_transforms(K_TILE, jnp.int8)))


def _for_each_row_tile(h_gmem, row_tiles: int, body) -> None:
    """Load the Hadamard matrix into shared memory once per CTA, then call body(rows, rotate) for each of the CTA's
    64-row tiles of the persistent grid."""

    @functools.partial(
        pl.run_scoped,
        h_smem=plgpu.SMEM((K_TILE, K_TILE), jnp.bfloat16, transforms=smem_transforms(K_TILE, jnp.bfloat16)),
        h_barrier=plgpu.Barrier(num_arrivals=1),
    )
    def _scope(h_smem, h_barrier):
        plgpu.copy_gmem_to_smem(h_gmem, h_smem, h_barrier)
        plgpu.barrier_wait(h_barrier)
        rotate = _rotation(h_smem)

        @plgpu.nd_loop((row_tiles,), collective_axes="sm")
        def _rows(loop_info):
            (tile,) = loop_info.index
            body(pl.ds(tile * ROW_TILE, ROW_TILE), rotate)


def _codes(y, amax):
    """float32 tile y [64, 128] and its rows' amax [64] -> int8 codes of y * 127 / amax (zeros where amax is 0)."""
    inverse = jnp.where(amax > 0, formats.INT8_MAX / jnp.where(amax > 0, amax, 1.0), 0.0)
    y = y * lax.broadcast_in_dim(inverse, X_SPEC_SHAPE, [0])
    return jnp.clip(formats.round_half_away(y), -formats.INT8_MAX, formats.INT8_MAX).astype(jnp.int8)


def _kernel(x_gmem, h_gmem, q_gmem, s_gmem, *, row_tiles: int, k_tiles: int, stages: int):
    """Two passes per row tile: the rows' amax over all of K, then the codes; scales [rows]."""
    x_spec, q_spec = _tile_specs()

    def per_row_tile(rows, rotate):
        def amax_step(_, x_smem, amax):
            return jnp.maximum(amax, jnp.max(jnp.abs(rotate(x_smem)), axis=1))

        amax = plgpu.emit_pipeline(
            amax_step, grid=(k_tiles,), in_specs=[x_spec], max_concurrent_steps=stages,
            init_carry=plgpu.layout_cast(jnp.zeros((ROW_TILE,), jnp.float32), plgpu.Layout.WGMMA.reduce(1)),
        )(x_gmem.at[rows, :])

        def quantize_step(_, x_smem, q_smem):
            q_smem[...] = _codes(rotate(x_smem), amax)

        plgpu.emit_pipeline(
            quantize_step, grid=(k_tiles,), in_specs=[x_spec], out_specs=[q_spec], max_concurrent_steps=stages,
        )(x_gmem.at[rows, :], q_gmem.at[rows, :])
        s_gmem[rows] = amax / formats.INT8_MAX

    _for_each_row_tile(h_gmem, row_tiles, per_row_tile)


def _grouped_kernel(x_gmem, h_gmem, q_gmem, s_gmem, *, row_tiles: int, k_tiles: int, stages: int):
    """One pass: each 64 x 128 tile is rotated, scaled by its own rows' amax and written; scales [k_tiles, rows]."""
    x_spec, q_spec = _tile_specs()

    def per_row_tile(rows, rotate):
        def quantize_step(indices, x_smem, q_smem):
            (k,) = indices
            y = rotate(x_smem)
            amax = jnp.max(jnp.abs(y), axis=1)
            q_smem[...] = _codes(y, amax)
            s_gmem[k, rows] = amax / formats.INT8_MAX

        plgpu.emit_pipeline(
            quantize_step, grid=(k_tiles,), in_specs=[x_spec], out_specs=[q_spec], max_concurrent_steps=stages,
        )(x_gmem.at[rows, :], q_gmem.at[rows, :])

    _for_each_row_tile(h_gmem, row_tiles, per_row_tile)


def quantize_int8(x: jax.Array, *, group_size: int | None = None, stages: int | None = None,
                  ctas_per_sm: int | None = None) -> INT8:
    """bf16 [M, K] -> INT8 of x H (128-wide blocks), rows padded to ROW_ALIGN (zeros there). Scales per row, or with
    `group_size` 128 per row and 128-wide K group (one pass over x: each tile is quantized on its own).
    `stages` (pipeline depth) and `ctas_per_sm` default to the tuning table's for K."""
    what = "INT8 activation quantization (Mosaic GPU)"
    require(x.ndim == 2, f"{what}: expected activations [M, K], got shape {tuple(x.shape)}")
    require(group_size in (None, K_TILE), f"{what}: groups must be {K_TILE} wide (or none), got {group_size}")
    m, k = x.shape
    check_k(k, what)
    rows = padded_rows(m)
    table_stages, table_ctas = mosaic_act_config(k, grouped=group_size is not None)
    stages, ctas_per_sm = stages or table_stages, ctas_per_sm or table_ctas
    if m % 8:  # TMA moves whole 8-row tiles of x and reads rows past its end as zeros; only a ragged tile is padded
        x = jnp.pad(x, ((0, -m % 8), (0, 0)))
    body, scale_shape = (_kernel, (rows,)) if group_size is None else (_grouped_kernel, (k // K_TILE, rows))
    kernel = plgpu.kernel(
        functools.partial(body, row_tiles=rows // ROW_TILE, k_tiles=k // K_TILE, stages=stages),
        out_type=(jax.ShapeDtypeStruct((rows, k), jnp.int8), jax.ShapeDtypeStruct(scale_shape, jnp.float32)),
        grid=(min(rows // ROW_TILE, ctas_per_sm * mosaic.num_sms()),),
        grid_names=("sm",),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    )
    values, scale = kernel(x.astype(jnp.bfloat16), jnp.asarray(formats.hadamard_matrix(K_TILE), jnp.bfloat16))
    return INT8(values, scale if group_size is None else scale.T)
