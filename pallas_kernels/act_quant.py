"""Activation quantization fused with the block Hadamard transform: bf16 [M, K] -> INT8 or NVFP4, in one kernel.

Each program owns `block_m` rows and walks K in 128-wide tiles. A tile is rotated on the tensor cores (bf16 x the
+-1 Hadamard matrix, exact products, fp32 sums, then 1/sqrt(128)) and quantized in registers; the rotated values
never reach memory. Per-row scales need the row's amax first, so those variants make two passes over the row
(amax, then quantize), recomputing the cheap rotation instead of storing it. Per-group INT8 needs one pass.

Outputs are padded to a multiple of `ROW_ALIGN` rows (zeros there) so the GEMMs read them without masks.
References: `int8_reference` and `nvfp4_reference` below, straight from `sixbit_jax.quant.formats`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.common import K_TILE, check_k, compiler_params, padded_rows, require, resolve_interpret, valid_rows
from pallas_kernels.tuning import BlockConfig, block_config
from sixbit_jax.quant import formats
from sixbit_jax.quant.formats import INT8, NVFP4, NVFP4_BLOCK


# ---------------------------------------------------------------------------------------------------------- reference
def int8_reference(x: jax.Array, hadamard_block: int, group_size: int | None = None) -> INT8:
    return formats.quantize_int8(formats.rotate_activations(x, hadamard_block), group_size=group_size)


def nvfp4_reference(x: jax.Array, hadamard_block: int) -> NVFP4:
    return formats.quantize_nvfp4(formats.rotate_activations(x, hadamard_block), per_row=True)


def nvfp4_values_reference(x: jax.Array, hadamard_block: int) -> formats.BlockScaledValues:
    return formats.block_scaled_values(nvfp4_reference(x, hadamard_block))


# ------------------------------------------------------------------------------------------------------------- kernel
def _rotated_tile(x_ref, h: jax.Array | None, tile: int, rows_valid: jax.Array) -> jax.Array:
    """Tile `tile` of this block's rows, times the Hadamard block (if any), in fp32. Rows past M read as zero."""
    x = pltriton.load(x_ref.at[:, pl.ds(tile * K_TILE, K_TILE)], mask=rows_valid, other=0)
    if h is None:
        return x.astype(jnp.float32)
    return jnp.dot(x, h, preferred_element_type=jnp.float32) * (1.0 / math.sqrt(K_TILE))


def _row_amax(tile_fn, n_tiles: int, block_m: int) -> jax.Array:
    def body(t, amax):
        return jnp.maximum(amax, jnp.max(jnp.abs(tile_fn(t)), axis=1, keepdims=True))

    return jax.lax.fori_loop(0, n_tiles, body, jnp.zeros((block_m, 1), jnp.float32))


def _int8_kernel(x_ref, *refs, m: int, k: int, hadamard: bool, per_group: bool):
    h, (q_ref, s_ref) = (refs[0][...] if hadamard else None), refs[-2:]  # H loaded once, outside the K loops
    block_m, n_tiles = q_ref.shape[0], k // K_TILE
    tile_fn = functools.partial(_rotated_tile, x_ref, h, rows_valid=valid_rows(pl.program_id(0), block_m, m))

    if per_group:  # each 128-wide tile is a group: one pass
        def quantize_group(t, carry):
            y = tile_fn(t)
            codes, scale = formats.int8_encode(y, jnp.max(jnp.abs(y), axis=1, keepdims=True))
            q_ref[:, pl.ds(t * K_TILE, K_TILE)] = codes
            s_ref[:, pl.ds(t, 1)] = scale
            return carry

        jax.lax.fori_loop(0, n_tiles, quantize_group, 0)
        return

    amax = _row_amax(tile_fn, n_tiles, block_m)

    def quantize_tile(t, carry):
        codes, _ = formats.int8_encode(tile_fn(t), amax)
        q_ref[:, pl.ds(t * K_TILE, K_TILE)] = codes
        return carry

    jax.lax.fori_loop(0, n_tiles, quantize_tile, 0)
    s_ref[...] = amax[:, 0] / formats.INT8_MAX


def _nvfp4_kernel(x_ref, *refs, m: int, k: int, hadamard: bool, values: bool):
    """values=False: packed codes, E4M3 block scales and row scales; values=True: each element's code times its
    block scale in bf16 (exact) and the row scales, the operand a bf16 GEMM takes."""
    h = refs[0][...] if hadamard else None
    q_ref, bs_ref, s_ref = (refs[-2], None, refs[-1]) if values else refs[-3:]
    block_m, n_tiles = q_ref.shape[0], k // K_TILE
    blocks_per_tile = K_TILE // NVFP4_BLOCK
    tile_fn = functools.partial(_rotated_tile, x_ref, h, rows_valid=valid_rows(pl.program_id(0), block_m, m))
    scale = formats.second_level_scale(_row_amax(tile_fn, n_tiles, block_m))  # [block_m, 1]

    def quantize_tile(t, carry):
        blocks = tile_fn(t).reshape(block_m, blocks_per_tile, NVFP4_BLOCK)
        codes, block_scale = formats.nvfp4_block_encode(blocks, scale)
        if values:
            scaled = formats.e2m1_value(codes) * block_scale.astype(jnp.float32)[..., None]
            q_ref[:, pl.ds(t * K_TILE, K_TILE)] = scaled.reshape(block_m, K_TILE).astype(q_ref.dtype)
            return carry
        q_ref[:, pl.ds(t * (K_TILE // 2), K_TILE // 2)] = formats.pack_pairs(codes.reshape(block_m, K_TILE)).astype(
            jnp.uint8
        )
        bs_ref[:, pl.ds(t * blocks_per_tile, blocks_per_tile)] = block_scale
        return carry

    jax.lax.fori_loop(0, n_tiles, quantize_tile, 0)
    s_ref[...] = scale[:, 0]


# ------------------------------------------------------------------------------------------------------------ wrapper
def _prepare(x: jax.Array, hadamard_block: int, what: str, kernel: str, config: BlockConfig | None):
    require(x.ndim == 2, f"{what}: expected activations [M, K], got shape {tuple(x.shape)}")
    m, k = x.shape
    check_k(k, what)
    require(
        hadamard_block in (0, K_TILE),
        f"{what}: hadamard_block = {hadamard_block} is not supported by the kernels (0 or {K_TILE})",
    )
    config = block_config(kernel, m, k, override=config)
    rows = padded_rows(m)
    in_specs = [pl.BlockSpec((config.block_m, k), lambda i: (i, 0))]
    operands = [x.astype(jnp.bfloat16)]
    if hadamard_block:
        in_specs.append(pl.BlockSpec((K_TILE, K_TILE), lambda i: (0, 0)))
        operands.append(jnp.asarray(formats.hadamard_matrix(K_TILE), jnp.bfloat16))
    return m, k, rows, config, in_specs, operands


def quantize_int8(
    x: jax.Array,
    *,
    hadamard_block: int = formats.HADAMARD_BLOCK,
    group_size: int | None = None,
    config: BlockConfig | None = None,
    interpret: bool | None = None,
) -> INT8:
    """bf16 [M, K] -> INT8 of x H, rows padded to ROW_ALIGN. Scales per row, or per row and 128-wide group."""
    what = "INT8 activation quantization"
    require(group_size in (None, K_TILE), f"{what}: group_size = {group_size} is not supported (None or {K_TILE})")
    m, k, rows, config, in_specs, operands = _prepare(x, hadamard_block, what, "act_quant_int8", config)
    bm = config.block_m
    scale_spec = pl.BlockSpec((bm, k // K_TILE), lambda i: (i, 0)) if group_size else pl.BlockSpec((bm,), lambda i: (i,))
    scale_shape = (rows, k // K_TILE) if group_size else (rows,)
    values, scale = pl.pallas_call(
        functools.partial(_int8_kernel, m=m, k=k, hadamard=bool(hadamard_block), per_group=bool(group_size)),
        out_shape=(jax.ShapeDtypeStruct((rows, k), jnp.int8), jax.ShapeDtypeStruct(scale_shape, jnp.float32)),
        grid=(rows // bm,),
        in_specs=in_specs,
        out_specs=(pl.BlockSpec((bm, k), lambda i: (i, 0)), scale_spec),
        compiler_params=compiler_params(config),
        interpret=resolve_interpret(interpret),
        name="act_quant_int8",
    )(*operands)
    return INT8(values, scale)


def quantize_nvfp4(
    x: jax.Array,
    *,
    hadamard_block: int = formats.HADAMARD_BLOCK,
    config: BlockConfig | None = None,
    interpret: bool | None = None,
) -> NVFP4:
    """bf16 [M, K] -> NVFP4 of x H with a per-row second-level scale, rows padded to ROW_ALIGN."""
    m, k, rows, config, in_specs, operands = _prepare(
        x, hadamard_block, "NVFP4 activation quantization", "act_quant_nvfp4", config
    )
    bm = config.block_m
    packed, block_scales, scale = pl.pallas_call(
        functools.partial(_nvfp4_kernel, m=m, k=k, hadamard=bool(hadamard_block), values=False),
        out_shape=(
            jax.ShapeDtypeStruct((rows, k // 2), jnp.uint8),
            jax.ShapeDtypeStruct((rows, k // NVFP4_BLOCK), jnp.float8_e4m3fn),
            jax.ShapeDtypeStruct((rows,), jnp.float32),
        ),
        grid=(rows // bm,),
        in_specs=in_specs,
        out_specs=(
            pl.BlockSpec((bm, k // 2), lambda i: (i, 0)),
            pl.BlockSpec((bm, k // NVFP4_BLOCK), lambda i: (i, 0)),
            pl.BlockSpec((bm,), lambda i: (i,)),
        ),
        compiler_params=compiler_params(config),
        interpret=resolve_interpret(interpret),
        name="act_quant_nvfp4",
    )(*operands)
    return NVFP4(packed, block_scales, scale)


def quantize_nvfp4_values(
    x: jax.Array,
    *,
    hadamard_block: int = formats.HADAMARD_BLOCK,
    config: BlockConfig | None = None,
    interpret: bool | None = None,
) -> formats.BlockScaledValues:
    """bf16 [M, K] -> the NVFP4 quantization of x H as bf16 values (E2M1 code times E4M3 block scale, exact) and
    per-row second-level scales, rows padded to ROW_ALIGN: the W4A4 path's operand for a bf16 tensor-core GEMM."""
    m, k, rows, config, in_specs, operands = _prepare(
        x, hadamard_block, "NVFP4 activation quantization", "act_quant_nvfp4", config
    )
    bm = config.block_m
    values, scale = pl.pallas_call(
        functools.partial(_nvfp4_kernel, m=m, k=k, hadamard=bool(hadamard_block), values=True),
        out_shape=(jax.ShapeDtypeStruct((rows, k), jnp.bfloat16), jax.ShapeDtypeStruct((rows,), jnp.float32)),
        grid=(rows // bm,),
        in_specs=in_specs,
        out_specs=(pl.BlockSpec((bm, k), lambda i: (i, 0)), pl.BlockSpec((bm,), lambda i: (i,))),
        compiler_params=compiler_params(config),
        interpret=resolve_interpret(interpret),
        name="act_quant_nvfp4_values",
    )(*operands)
    return formats.BlockScaledValues(values, scale)
