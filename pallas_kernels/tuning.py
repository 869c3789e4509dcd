"""Block sizes for every kernel, from one small table measured per shape.

Each kernel asks `block_config(kernel, m, k, n)`. A shape in the table gets its measured configuration; any other
shape gets the kernel's default, fitted to the shape (blocks halved until they divide K and N, block_m cut down for
small M). The table entries come from `python bench/bench_linear.py --tune` on the GPU named beside them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    block_m: int
    block_n: int = 128  # unused by the activation kernels
    block_k: int = 128  # unused by the activation kernels
    num_warps: int = 4
    num_stages: int = 3
    n_outer: bool = False  # grid order: True walks M fastest, so a weight tile stays in L2 across M tiles


# Measured defaults for shapes not in the table.
DEFAULTS: dict[str, BlockConfig] = {
    "act_quant_int8": BlockConfig(block_m=32, num_warps=4, num_stages=2),
    "act_quant_nvfp4": BlockConfig(block_m=32, num_warps=4, num_stages=2),
    "int8_gemm": BlockConfig(block_m=128, block_n=128, block_k=128, num_warps=4, num_stages=4),
    "nvfp4_gemm": BlockConfig(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=3),
    "nvfp4_weight_only": BlockConfig(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=3),
}

# (kernel, K, N) -> configuration. N is 0 for the activation kernels (they only see K).
TABLE: dict[tuple[str, int, int], BlockConfig] = {}


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
