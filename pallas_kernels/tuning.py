"""Block sizes for every kernel, from one small table measured per shape.

Each kernel asks `block_config(kernel, m, k, n)`. A shape in the table gets its measured configuration; any other
shape gets the kernel's default, fitted to the shape (blocks halved until they divide K and N, block_m cut down for
small M). The table entries come from `python bench/bench_linear.py --tune` on the GPU named beside them.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    block_m: int
    block_n: int = 128  # unused by the activation kernels
    block_k: int = 128  # unused by the activation kernels
    num_warps: int = 4
    num_stages: int = 3
    n_outer: bool = False  # grid order: True walks M fastest, so a weight tile stays in L2 across M tiles


@dataclasses.dataclass(frozen=True)
class MatmulConfig:
    """Tiles of the Mosaic GPU scaled GEMM (`scaled_matmul_mgpu`)."""

    tile_m: int = 128  # rows per compute warpgroup (a CTA has two: 2 * tile_m rows)
    tile_n: int = 128
    tile_k: int = 128  # 128 bytes of int8 = one 128-byte swizzle row; bf16 uses 64
    stages: int = 4  # shared-memory pipeline depth
    epi_tile_m: int = 64
    epi_tile_n: int = 64
    grid_minor_m: bool = True  # walk M fastest, so a weight tile is reused across consecutive output tiles
    grid_tile_width: int = 8


# (K, N) -> Mosaic GPU GEMM tiles for int8 operands (bf16 operands halve tile_k). CogVideoX-2B's block linears at
# M = 35,552, measured on an H200 (jax 0.11.2), 2026-12-02, `bench/probe_tune.py`, best of 5 tilings; comments: the
# rate then, and the default tiling's (128 x 128, 4 stages) in the same run. Other shapes take the default.
_TILE_64x192 = MatmulConfig(tile_m=64, tile_n=192, stages=4)
MOSAIC_GEMM_TABLE: dict[tuple[int, int], MatmulConfig] = {
    (1920, 1920): _TILE_64x192,  # 773 TOP/s (default 626)
    (1920, 7680): _TILE_64x192,  # 997 TOP/s (default 935)
    (7680, 1920): _TILE_64x192,  # 1086 TOP/s (default 1037)
    # q, k and v as one GEMM; 2026-12-03, same probe: the default won (64 x 192: 801, 64 x 128 x 6 stages: 888)
    (1920, 5760): MatmulConfig(),  # 1095 TOP/s
}

# K -> (pipeline stages, CTAs per SM) of the Mosaic GPU INT8 activation kernel, same run (input bytes per second).
MOSAIC_ACT_TABLE: dict[int, tuple[int, int]] = {
    1920: (4, 1),  # 0.49 TB/s (2 stages x 2 CTAs: 0.44)
    7680: (2, 2),  # 0.78 TB/s (4 stages x 1 CTA: 0.60)
}


# The one-pass kernel with per-group scales, every K: 2 stages x 2 CTAs/SM was the fastest of five candidates at all
# three 2B shapes (H200, 2026-12-02, `bench/probe_grouped.py`; 0.23 ms at K = 1920 against 0.26 for 4 x 2).
MOSAIC_GROUPED_ACT_DEFAULT = (2, 2)


def mosaic_act_config(k: int, grouped: bool = False) -> tuple[int, int]:
    """(stages, CTAs per SM) for the Mosaic GPU activation kernel at this K (`grouped`: per-group scales)."""
    return MOSAIC_GROUPED_ACT_DEFAULT if grouped else MOSAIC_ACT_TABLE.get(k, (4, 1))


def mosaic_gemm_config(k: int, n: int, dtype="int8") -> MatmulConfig:
    """The tiles for this shape: for int8 the table's, else the default; 16-bit operands take the default with
    tile_k halved (the same bytes per K step; the table was measured for int8 only)."""
    if np.dtype(dtype).itemsize == 2:
        return dataclasses.replace(MatmulConfig(), tile_k=MatmulConfig().tile_k // 2)
    return MOSAIC_GEMM_TABLE.get((k, n), MatmulConfig())


# Measured defaults for shapes not in the table.
DEFAULTS: dict[str, BlockConfig] = {
    "act_quant_int8": BlockConfig(block_m=64, num_warps=4, num_stages=3),
    "act_quant_nvfp4": BlockConfig(block_m=64, num_warps=8, num_stages=2),
    "int8_gemm": BlockConfig(block_m=128, block_n=128, block_k=64, num_warps=4, num_stages=5, n_outer=True),
    "nvfp4_gemm": BlockConfig(block_m=256, block_n=128, block_k=128, num_warps=8, num_stages=3, n_outer=True),
    "nvfp4_weight_only": BlockConfig(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=3),
}

# (kernel, K, N) -> configuration. N is 0 for the activation kernels (they only see K). CogVideoX-2B and 5B block
# linears at M = 35,552; measured on an H200 (jax 0.11.2), 2026-11-21, `bench/bench_linear.py --tune --iters 8`,
# best of 10 GEMM and 6 activation candidates. Comments: the rate measured then (activation kernels: input bytes/s).
TABLE: dict[tuple[str, int, int], BlockConfig] = {
    ("act_quant_int8", 12288, 0): BlockConfig(block_m=64, num_warps=4, num_stages=3),  # 0.614 TB/s in (retuned)
    ("act_quant_int8", 1920, 0): BlockConfig(block_m=64, num_warps=4, num_stages=3),  # 0.277 TB/s in
    ("act_quant_int8", 3072, 0): BlockConfig(block_m=64, num_warps=8, num_stages=2),  # 0.61 TB/s in (retuned)
    ("act_quant_int8", 7680, 0): BlockConfig(block_m=64, num_warps=4, num_stages=3),  # 0.463 TB/s in
    ("act_quant_nvfp4", 12288, 0): BlockConfig(block_m=16, num_warps=4, num_stages=2),  # 0.385 TB/s in
    ("act_quant_nvfp4", 1920, 0): BlockConfig(block_m=32, num_warps=4, num_stages=2),  # 0.34 TB/s in (retuned)
    ("act_quant_nvfp4", 3072, 0): BlockConfig(block_m=16, num_warps=4, num_stages=2),  # 0.34 TB/s in (retuned)
    ("act_quant_nvfp4", 7680, 0): BlockConfig(block_m=64, num_warps=8, num_stages=2),  # 0.301 TB/s in
    ("int8_gemm", 12288, 3072): BlockConfig(128, 128, 64, 4, 5, n_outer=True),  # 844.7 TFLOP/s
    ("int8_gemm", 1920, 1920): BlockConfig(128, 128, 256, 8, 3, n_outer=True),  # 446.2 TFLOP/s
    ("int8_gemm", 1920, 7680): BlockConfig(256, 128, 128, 8, 3, n_outer=True),  # 594.0 TFLOP/s
    ("int8_gemm", 3072, 12288): BlockConfig(128, 128, 64, 4, 5, n_outer=True),  # 764.1 TFLOP/s
    ("int8_gemm", 3072, 3072): BlockConfig(128, 128, 256, 8, 3, n_outer=True),  # 540.8 TFLOP/s
    ("int8_gemm", 7680, 1920): BlockConfig(128, 256, 64, 4, 4, n_outer=True),  # 801.9 TFLOP/s
    ("nvfp4_gemm", 12288, 3072): BlockConfig(256, 128, 128, 8, 3, n_outer=True),  # 111.5 TFLOP/s
    ("nvfp4_gemm", 1920, 1920): BlockConfig(128, 128, 64, 4, 5, n_outer=True),  # 90.3 TFLOP/s
    ("nvfp4_gemm", 1920, 7680): BlockConfig(256, 128, 128, 8, 3, n_outer=True),  # 106.6 TFLOP/s
    ("nvfp4_gemm", 3072, 12288): BlockConfig(256, 128, 128, 8, 3, n_outer=True),  # 112.1 TFLOP/s
    ("nvfp4_gemm", 3072, 3072): BlockConfig(256, 128, 128, 8, 3, n_outer=True),  # 100.2 TFLOP/s
    ("nvfp4_gemm", 7680, 1920): BlockConfig(256, 256, 64, 8, 3, n_outer=True),  # 110.1 TFLOP/s
}


def _largest_power_of_two_dividing(value: int, start: int, floor: int) -> int:
    block = start
    while block > floor and value % block:
        block //= 2
    return block


def _fit_rows(block_m: int, m: int) -> int:
    """No block taller than the (power-of-two rounded) row count; 16 rows at least (the MMA minimum)."""
    rows = 16
    while rows < m and rows < block_m:
        rows *= 2
    return rows


def fit(config: BlockConfig, m: int, k: int, n: int = 0) -> BlockConfig:
    """The configuration with its blocks cut to the shape: block_k and block_n halved until they divide K and N,
    block_m no taller than M needs."""
    return dataclasses.replace(
        config,
        block_m=_fit_rows(config.block_m, m),
        block_n=_largest_power_of_two_dividing(n, config.block_n, 16) if n else config.block_n,
        block_k=_largest_power_of_two_dividing(k, config.block_k, 32),
    )


def block_config(kernel: str, m: int, k: int, n: int = 0, override: BlockConfig | None = None) -> BlockConfig:
    """The configuration for this kernel and shape: `override` if given, else the table's, else the default;
    always fitted to the shape."""
    if kernel not in DEFAULTS:
        raise KeyError(f"no block sizes for kernel {kernel!r}; known: {sorted(DEFAULTS)}")
    return fit(override or TABLE.get((kernel, k, n), DEFAULTS[kernel]), m, k, n)
