"""LayerNorm with PyTorch's parameter names (weight, bias). Statistics are taken in float32 and the result is
rounded once to the input dtype, which is what torch's layer_norm does for bf16/fp16 inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def layer_norm(x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, features: int, *, eps: float, dtype=jnp.bfloat16, rngs: nnx.Rngs | None = None):
        del rngs  # deterministic init; accepted so every layer is built the same way
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((features,), dtype))
        self.bias = nnx.Param(jnp.zeros((features,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.weight[...], self.bias[...], self.eps)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * weight over the last axis, statistics in float32, rounded once to x's dtype."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps) * weight.astype(jnp.float32)
    return y.astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, features: int, *, eps: float, dtype=jnp.bfloat16, rngs: nnx.Rngs | None = None):
        del rngs
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((features,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.weight[...], self.eps)
