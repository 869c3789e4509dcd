"""What the causal 3D VAEs share: channels-last convolutions in PyTorch's arithmetic, SiLU rounded as torch rounds
it, and the lookup into their per-chunk cache trees."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sixbit_jax import rng
from sixbit_jax.layers.dense import full_precision


def silu(x: jax.Array) -> jax.Array:
    """SiLU in float32, rounded once (torch's bf16/fp16 silu does the same)."""
    return jax.nn.silu(x.astype(jnp.float32)).astype(x.dtype)


def cache_part(cache, key):
    """The entry of a cache tree for one sub-module; None when there is no cache (the first chunk)."""
    return None if cache is None else cache[key]


def run_cached(modules, x, caches, *args):
    """Run `modules` in order, module i with caches[i] (caches None: the first chunk, no cache) and `args`; returns
    the output and the modules' new caches, a list."""
    new = []
    for i, module in enumerate(modules):
        x, c = module(x, cache_part(caches, i), *args)
        new.append(c)
    return x, new


class Conv(nnx.Module):
    """A PyTorch Conv2d/Conv3d on channels-last input [N, *spatial, C]. `weight` is [*kernel, in, out]; `padding`
    holds (before, after) zero padding per spatial axis."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...], *,
                 stride: int | tuple[int, ...] = 1, padding: tuple[tuple[int, int], ...] | None = None, dtype,
                 rngs: nnx.Rngs):
        fan_in = in_channels * math.prod(kernel)
        self.weight = nnx.Param((rng.normal(rngs.params(), (*kernel, in_channels, out_channels), jnp.float32)
                                 * fan_in**-0.5).astype(dtype))
        self.bias = nnx.Param(jnp.zeros((out_channels,), dtype))
        self.stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride,) * len(kernel)
        self.padding = tuple(padding) if padding is not None else ((0, 0),) * len(kernel)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.weight[...]
        x = x.astype(w.dtype)
        pointwise = (all(k == 1 for k in w.shape[:-2]) and all(s == 1 for s in self.stride)
                     and not any(map(any, self.padding)))
        if pointwise:  # 1x1(x1) conv: a matmul over channels
            y = jnp.einsum("...i,io->...o", x, w.reshape(w.shape[-2:]), precision=full_precision(w.dtype))
        else:
            layout = "NDHWC" if w.ndim == 5 else "NHWC"
            y = jax.lax.conv_general_dilated(
                x, w, window_strides=self.stride, padding=self.padding,
                dimension_numbers=(layout, layout[1:-1] + "IO", layout), precision=full_precision(w.dtype))
        return y + self.bias[...]
