"""What every kernel wrapper shares: interpret-or-compile, compiler parameters, shape checks, row masks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.tuning import BlockConfig
from sixbit_jax.errors import InputError

# Activations quantized by our kernels are allocated with their row count rounded up to this, so every GEMM block_m
# (a power of two up to 256) tiles them without masked loads; only the GEMM's output store is masked.
ROW_ALIGN = 256

# Kernels walk K in tiles of this width (the Hadamard block, and the INT8 group when there are groups).
K_TILE = 128


def resolve_interpret(interpret: bool | None) -> bool:
    """Compiled through Triton on a GPU; Pallas interpret mode anywhere else (the only way to run them on CPU)."""
    return jax.default_backend() != "gpu" if interpret is None else interpret


def compiler_params(config: BlockConfig) -> pltriton.CompilerParams:
    # Always explicit: without Triton params, jax 0.10 lowers pallas_call to Mosaic GPU and jax 0.11 to Triton.
    return pltriton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)


def padded_rows(m: int) -> int:
    return -(-m // ROW_ALIGN) * ROW_ALIGN


def require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def check_k(k: int, what: str) -> None:
    require(k > 0 and k % K_TILE == 0, f"{what}: K = {k} is not supported; the kernels need K to be a multiple of {K_TILE}")


def check_n(n: int, what: str) -> None:
    require(n > 0 and n % 16 == 0, f"{what}: N = {n} is not supported; the kernels need N to be a multiple of 16")


def valid_rows(row_block: jax.Array, block_m: int, m: int) -> jax.Array:
    """[block_m, 1] mask of the rows of this block that exist (the last block of a ragged M is partly outside)."""
    rows = row_block * block_m + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0)
    return rows < m


def gemm_grid(config: BlockConfig, rows: int, n: int):
    """Grid and block index maps for an (M, N) output. Returns (grid, row_map, col_map, row_axis), where row_map
    and col_map turn program ids into the block index along M and along N."""
    gm, gn = rows // config.block_m, n // config.block_n
    if config.n_outer:
        return (gn, gm), (lambda j, i: i), (lambda j, i: j), 1
    return (gm, gn), (lambda i, j: i), (lambda i, j: j), 0


def masked_store(o_ref, value: jax.Array, row_axis: int, m: int) -> None:
    block_m = o_ref.shape[0]
    pltriton.store(o_ref, value.astype(o_ref.dtype), mask=valid_rows(pl.program_id(row_axis), block_m, m))


# Elementwise activations a GEMM may apply in its epilogue (float32, before the output is rounded), by name.
ACTIVATIONS = {"gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}


def activation_fn(name: str | None):
    """The named epilogue activation, or the identity for None."""
    if name is None:
        return lambda y: y
    require(name in ACTIVATIONS, f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def bias_or_zeros(bias: jax.Array | None, n: int) -> jax.Array:
    """The kernels always take a bias operand; a missing one is zeros (N floats, nothing next to the weight)."""
    return jnp.zeros((n,), jnp.float32) if bias is None else bias


def epilogue(y: jax.Array, col_scale_ref, bias_ref) -> jax.Array:
    """The GEMMs' shared output step: fp32 [block_m, block_n] (row scales already applied) times the per-column
    weight scale, plus the bias."""
    return y * col_scale_ref[...][None, :] + bias_ref[...].astype(jnp.float32)[None, :]
