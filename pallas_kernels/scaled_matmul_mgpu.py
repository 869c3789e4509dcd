"""Scaled GEMM on Hopper through Pallas Mosaic GPU: a [rows, K] x b [N, K] (both K-major) -> [m, N], with the
epilogue y = acc * row_scale[:, None] * col_scale[None, :] + bias fused.

Operands are int8 (wgmma s8.s8 -> int32 accumulators, exact) or bf16 (fp32 accumulators). The INT8 path calls it
with per-token activation scales and per-output-channel weight scales; the W4A4 path with NVFP4 operands decoded to
bf16 and their second-level scales.

Why Mosaic GPU and not Triton: Pallas Triton's int8 GEMM measured 446-889 TOP/s on an H200 (BENCHMARKS.md, issue 3),
half the 8-bit tensor-core rate; this kernel is JAX's own Hopper matmul design (`ops/gpu/hopper_matmul_mgpu.py`:
persistent grid, a TMA memory warpgroup feeding two wgmma compute warpgroups through a multi-stage shared-memory
pipeline) with 8-bit K-major operands and our epilogue. Hopper's 8-bit wgmma takes both operands K-major only, which
is the layout our quantized weights already have ([N, K], PyTorch's Linear layout).

The two compute warpgroups split the CTA's tile along M (`tile_m` rows each, the same `tile_n` columns), so N needs
only be a multiple of `tile_n` (1920 = 15 x 128). Rows: `a` and `row_scale` carry `rows` >= m rows (the activation
kernels pad to `common.ROW_ALIGN`); the output has m rows (rounded up to 8 for TMA), the store drops the rest.

Mosaic GPU kernels cannot run in Pallas' CPU interpret mode on jax 0.10; on CPU the INT8 path runs
`int8_gemm.int8_matmul_reference`, and the `gpu` tests compare this kernel with it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import mosaic
from pallas_kernels.common import activation_fn, require
from pallas_kernels.mosaic import plgpu, smem_transforms
from pallas_kernels.tuning import MatmulConfig, mosaic_gemm_config


# ---------------------------------------------------------------------------------------------------------- reference
def scaled_matmul_reference(a, b, row_scale, col_scale, bias=None, *, m: int | None = None, out_dtype=jnp.bfloat16,
                            activation: str | None = None) -> jax.Array:
    """The same function in plain jnp: exact int32 (or fp32) products, then the scales, bias and activation in fp32.
    A 2-D row_scale [rows, K / group] scales each K group's partial product before the groups are summed."""
    m = a.shape[0] if m is None else m
    acc_dtype = jnp.int32 if jnp.issubdtype(a.dtype, jnp.integer) else jnp.float32
    if row_scale.ndim == 2:
        groups = row_scale.shape[1]
        partial = jnp.einsum("mgk,ngk->gmn", a[:m].reshape(m, groups, -1), b.reshape(b.shape[0], groups, -1),
                             preferred_element_type=acc_dtype, precision=lax.Precision.HIGHEST)
        acc = jnp.einsum("gmn,mg->mn", partial.astype(jnp.float32), row_scale[:m], precision=lax.Precision.HIGHEST)
        y = acc * col_scale[None, :]
    else:
        acc = lax.dot_general(a[:m], b, (((1,), (1,)), ((), ())), preferred_element_type=acc_dtype,
                              precision=lax.Precision.HIGHEST)
        y = acc.astype(jnp.float32) * row_scale[:m, None] * col_scale[None, :]
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return activation_fn(activation)(y).astype(out_dtype)


# ------------------------------------------------------------------------------------------------------------- kernel
def _kernel(a_gmem, b_gmem, rs_gmem, cs_gmem, bias_gmem, out_gmem, *, config: MatmulConfig, m_iters: int,
            n_iters: int, k_iters: int, activation: str | None):
    """rs_gmem is [rows] (one scale per row, applied in the epilogue) or [k_iters, rows] (one per row and K tile:
    each K step's exact product is scaled into a float32 register accumulator, the pipeline's carry)."""
    tile_m, tile_n, tile_k = config.tile_m, config.tile_n, config.tile_k
    grouped = rs_gmem.ndim == 2
    cta_tile_m = 2 * tile_m
    operand_dtype, out_dtype = a_gmem.dtype, out_gmem.dtype
    acc_dtype = jnp.int32 if jnp.issubdtype(operand_dtype, jnp.integer) else jnp.float32
    in_transforms = smem_transforms(tile_k, operand_dtype)
    epi_m, epi_n = config.epi_tile_m, config.epi_tile_n
    out_slots = min(2, (tile_m * tile_n) // (epi_m * epi_n))

    in_specs = [
        plgpu.BlockSpec((cta_tile_m, tile_k), lambda k: (0, k), transforms=in_transforms, memory_space=plgpu.SMEM),
        plgpu.BlockSpec((tile_n, tile_k), lambda k: (0, k), transforms=in_transforms, memory_space=plgpu.SMEM),
    ]
    if grouped:  # this K step's scales of the CTA's rows travel with its operand tiles
        in_specs.append(plgpu.BlockSpec((1, cta_tile_m), lambda k: (k, 0), memory_space=plgpu.SMEM))

    def pipeline(body, compute_context):
        return plgpu.emit_pipeline_warp_specialized(
            body,
            grid=(k_iters,),
            memory_registers=40,
            in_specs=in_specs,
            wg_axis="wg",
            num_compute_wgs=2,
            max_concurrent_steps=config.stages,
            compute_context=compute_context,
        )

    ignore = lambda *_, **__: None  # noqa: E731 (allocations do not depend on the bodies)

    def operands(m_idx, n_idx):
        """The gmem views the pipeline walks along K for output tile (m_idx, n_idx)."""
        cta_rows, cols = pl.ds(m_idx * cta_tile_m, cta_tile_m), pl.ds(n_idx * tile_n, tile_n)
        views = [a_gmem.at[cta_rows, :], b_gmem.at[cols, :]]
        return views + [rs_gmem.at[:, cta_rows]] if grouped else views

    @functools.partial(
        pl.run_scoped,
        allocations=pipeline(ignore, ignore).get_allocations(*operands(0, 0)),
        out_smem=plgpu.SMEM((2, out_slots, epi_m, epi_n), out_dtype, transforms=smem_transforms(epi_n, out_dtype)),
        collective_axes="wg",
    )
    def _scope(allocations, out_smem):
        wg = lax.axis_index("wg")

        @plgpu.nd_loop((m_iters * n_iters,), collective_axes="sm")
        def _tiles(loop_info):
            (linear,) = loop_info.index
            m_idx, n_idx = plgpu.planar_snake(linear, (m_iters, n_iters), 0 if config.grid_minor_m else 1,
                                              config.grid_tile_width)
            wg_row0 = m_idx * cta_tile_m + wg * tile_m
            cols = pl.ds(n_idx * tile_n, tile_n)

            shape = (tile_m, tile_n)

            def mma(_, a_smem, b_smem, acc_ref):
                plgpu.wgmma(acc_ref, a_smem.at[pl.ds(wg * tile_m, tile_m)], plgpu.transpose_ref(b_smem, (1, 0)))
                plgpu.wgmma_wait(0)
                return acc_ref

            def mma_grouped(_, a_smem, b_smem, s_smem, acc):
                def product(part_ref):
                    mma(_, a_smem, b_smem, part_ref)
                    return part_ref[...]

                part = pl.run_scoped(product, plgpu.ACC(shape, acc_dtype)).astype(jnp.float32)
                scale = mosaic.load(s_smem.at[0, pl.ds(wg * tile_m, tile_m)], plgpu.Layout.WGMMA.reduce(1))
                return acc + part * lax.broadcast_in_dim(scale, shape, [0])

            def epilogue(run_pipeline):
                def scaled_accumulator():
                    """acc x row scale (unless applied per K step) x column scale, in float32 registers."""
                    if grouped:
                        return run_pipeline(plgpu.layout_cast(jnp.zeros(shape, jnp.float32), plgpu.Layout.WGMMA))
                    acc = pl.run_scoped(lambda acc_ref: run_pipeline(acc_ref)[...], plgpu.ACC(shape, acc_dtype))
                    row_scale = mosaic.load(rs_gmem.at[pl.ds(wg_row0, tile_m)], plgpu.Layout.WGMMA.reduce(1))
                    return acc.astype(jnp.float32) * lax.broadcast_in_dim(row_scale, shape, [0])

                col_scale = mosaic.load(cs_gmem.at[cols], plgpu.Layout.WGMMA.reduce(0))
                bias = mosaic.load(bias_gmem.at[cols], plgpu.Layout.WGMMA.reduce(0))
                y = scaled_accumulator() * lax.broadcast_in_dim(col_scale, shape, [1])
                y = activation_fn(activation)(y + lax.broadcast_in_dim(bias, shape, [1])).astype(out_dtype)
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)
                for i in range(tile_m // epi_m):
                    for j in range(tile_n // epi_n):
                        slot = (i * (tile_n // epi_n) + j) % 2
                        plgpu.wait_smem_to_gmem(1, wait_read_only=True)
                        out_smem[wg, slot] = y[i * epi_m:(i + 1) * epi_m, j * epi_n:(j + 1) * epi_n]
                        plgpu.commit_smem()
                        plgpu.copy_smem_to_gmem(
                            out_smem.at[wg, slot],
                            out_gmem.at[pl.ds(wg_row0 + i * epi_m, epi_m),
                                        pl.ds(n_idx * tile_n + j * epi_n, epi_n)],
                        )

            pipeline(mma_grouped if grouped else mma, epilogue)(*operands(m_idx, n_idx), allocations=allocations)

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


# ------------------------------------------------------------------------------------------------------------ wrapper
SMEM_BYTES = 227 * 1024  # shared memory a Hopper CTA may use (232,448 bytes)
SMEM_RESERVE = 2 * 1024  # barriers and the compiler's own scratch


def fit_stages(config: MatmulConfig, dtype, out_dtype, grouped: bool = False) -> MatmulConfig:
    """The configuration with as many pipeline stages as fit next to the epilogue tile (a float32 output needs twice
    a bf16 one's), at most the configured number. `grouped`: each stage also holds the CTA's row scales."""
    itemsize = jnp.dtype(dtype).itemsize
    per_stage = (2 * config.tile_m + config.tile_n) * config.tile_k * itemsize + (8 * config.tile_m if grouped else 0)
    epilogue = 2 * 2 * config.epi_tile_m * config.epi_tile_n * jnp.dtype(out_dtype).itemsize
    stages = min(config.stages, (SMEM_BYTES - SMEM_RESERVE - epilogue) // per_stage)
    require(stages >= 2, f"Mosaic GPU scaled GEMM: tiles {config} do not fit shared memory")
    return dataclasses.replace(config, stages=stages)


def scaled_matmul(
    a: jax.Array,
    b: jax.Array,
    row_scale: jax.Array,
    col_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    m: int | None = None,
    out_dtype=jnp.bfloat16,
    activation: str | None = None,
    config: MatmulConfig | None = None,
) -> jax.Array:
    """a [rows, K] and b [N, K] of one dtype (int8 or bf16); row_scale float32 [rows], or [rows, K / tile_k] (one
    scale per row and K group, the group being the K tile: 128 for int8); col_scale, bias [N].
    Returns out_dtype [m, N] = act((a b^T) * row_scale * col_scale + bias), for the first m rows (default: all);
    `activation` names one of `common.ACTIVATIONS`, applied in fp32 before rounding."""
    what = "Mosaic GPU scaled GEMM"
    rows, k = a.shape
    n = b.shape[0]
    m = rows if m is None else m
    config = config or mosaic_gemm_config(k, n, a.dtype)
    require(a.dtype == b.dtype and a.dtype in (jnp.int8, jnp.bfloat16),
            f"{what}: operands must both be int8 or both bf16, got {a.dtype} and {b.dtype}")
    require(b.shape[1] == k, f"{what}: a has K = {k} but b has K = {b.shape[1]}")
    grouped = row_scale.ndim == 2
    require(row_scale.shape in ((rows,), (rows, k // config.tile_k)),
            f"{what}: row_scale must be [{rows}] or [{rows}, {k // config.tile_k}] (per {config.tile_k}-wide K group), "
            f"got {tuple(row_scale.shape)}")
    require(col_scale.shape == (n,), f"{what}: col_scale must be [{n}], got {tuple(col_scale.shape)}")
    require(rows % (2 * config.tile_m) == 0, f"{what}: {rows} rows are not a multiple of {2 * config.tile_m}")
    require(n % config.tile_n == 0, f"{what}: N = {n} is not a multiple of tile_n = {config.tile_n}")
    require(k % config.tile_k == 0, f"{what}: K = {k} is not a multiple of tile_k = {config.tile_k}")
    require(0 < m <= rows, f"{what}: m = {m} must be in 1..{rows}")
    activation_fn(activation)  # a clear error for an unknown name
    config = fit_stages(config, a.dtype, out_dtype, grouped)
    bias = jnp.zeros((n,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    # TMA stores whole 8-row tiles of the output array and drops the rows past its end, so the output is allocated
    # with m rounded up to 8 (a copy trims it only when m itself is not a multiple of 8).
    out_rows = min(-(-m // 8) * 8, rows)
    kernel = plgpu.kernel(
        functools.partial(_kernel, config=config, m_iters=rows // (2 * config.tile_m), n_iters=n // config.tile_n,
                          k_iters=k // config.tile_k, activation=activation),
        out_type=jax.ShapeDtypeStruct((out_rows, n), out_dtype),
        grid=(mosaic.num_sms(),),
        grid_names=("sm",),
        num_threads=3,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    )
    # Grouped scales go K-major, so each K step's scales for a CTA's rows are one contiguous TMA copy.
    row_scale = row_scale.astype(jnp.float32).T if grouped else row_scale.astype(jnp.float32)
    y = kernel(a, b, row_scale, col_scale.astype(jnp.float32), bias)
    return y if out_rows == m else y[:m]
