"""Position and time encodings every model family shares: the diffusion timestep sinusoid and rotary embeddings
on interleaved (even, odd) pairs, with their host-side float64 tables."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sixbit_jax.layers.dense import Dense


def timestep_sinusoid(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0):
    """diffusers' get_timestep_embedding, op for op in float32 (its error against float64 is part of the model)."""
    half = dim // 2
    exponent = jnp.float32(-math.log(10000)) * jnp.arange(half, dtype=jnp.float32) / jnp.float32(half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    return jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


def rope_1d(dim: int, positions: np.ndarray, theta: float = 10000.0):
    """float64 (cos, sin) [len(positions), dim] of one axis, each angle repeated for its (even, odd) pair."""
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    args = np.outer(positions, freqs)
    return np.repeat(np.cos(args), 2, axis=1), np.repeat(np.sin(args), 2, axis=1)


def rope_3d(dims: tuple[int, int, int], positions: tuple[np.ndarray, np.ndarray, np.ndarray]):
    """float64 (cos, sin) [T * H * W, sum(dims)] of a 3D grid of tokens in (t, h, w) raster order: the head dim split
    into three parts, part i rotating with the token's position along axis i."""
    shape = tuple(len(p) for p in positions)
    axes = [rope_1d(dim, np.asarray(pos, np.float64)) for dim, pos in zip(dims, positions)]
    where = [(slice(None), None, None), (None, slice(None), None), (None, None, slice(None))]

    def table(part: int) -> np.ndarray:
        return np.concatenate([np.broadcast_to(axis[part][index], shape + axis[part].shape[-1:])
                               for axis, index in zip(axes, where)], axis=-1).reshape(-1, sum(dims))

    return table(0), table(1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate (even, odd) pairs of x [B, N, H, d] by per-token angles; float32 math, result in x's dtype."""
    xf = x.astype(jnp.float32)
    pairs = xf.reshape(*x.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    return (xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]).astype(x.dtype)


class TimestepEmbedding(nnx.Module):
    """Sinusoid table [B, in_dim] -> linear_1 -> SiLU -> linear_2 -> [B, out_dim] (no SiLU after)."""

    def __init__(self, in_dim: int, out_dim: int, *, dtype, rngs: nnx.Rngs):
        self.linear_1 = Dense(in_dim, out_dim, dtype=dtype, rngs=rngs)
        self.linear_2 = Dense(out_dim, out_dim, dtype=dtype, rngs=rngs)

    def __call__(self, sinusoid: jax.Array) -> jax.Array:
        return self.linear_2(jax.nn.silu(self.linear_1(sinusoid)))
