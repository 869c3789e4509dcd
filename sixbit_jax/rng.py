"""Random draws that compile fast on XLA:CPU.

`jax.random.normal(key, shape)` with the (default) partitionable threefry compiles for 13-16 s on XLA:CPU when the
shape has three or more axes (jax 0.10.2, 2-core machine: [3, 4, 8, 12] 16 s, [1152] 0.3 s). Threefry's counters are
the flat element indices, so drawing flat and reshaping gives the same values (tested) at the flat compile time."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """jax.random.normal(key, shape, dtype), bit for bit, drawn as one flat vector."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def uniform(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """jax.random.uniform(key, shape, dtype) in [0, 1), bit for bit, drawn as one flat vector."""
    return jax.random.uniform(key, (math.prod(shape),), dtype).reshape(shape)
