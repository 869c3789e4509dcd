"""The one dense layer every linear of the DiT goes through.

The weight is kept in PyTorch's Linear layout, [out_features, in_features] ("N x K", K-major). That layout is what
the 8-bit and 4-bit tensor-core paths need (both operands contiguous along the reduction axis), so the quantized
paths added later can own their formats here without the model or the converter changing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pallas_kernels.common import activation_fn
from sixbit_jax.layers.quant_dense import project_quantized


def full_precision(dtype):
    """HIGHEST for float32 operands, so float32 models stay true float32 on GPU (no TF32), as PyTorch does by
    default. bf16/fp16 products are exact in the float32 accumulator, so they need no precision setting."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class Dense(nnx.Module):
    def __init__(self, in_features: int, out_features: int, *, dtype=jnp.bfloat16, rngs: nnx.Rngs):
        self.in_features, self.out_features = in_features, out_features
        scale = in_features**-0.5
        self.weight = nnx.Param(
            (jax.random.normal(rngs.params(), (out_features, in_features), jnp.float32) * scale).astype(dtype)
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    def prepare(self, x: jax.Array, runtime=None) -> jax.Array:
        """A float layer consumes x as it is (the quantized layer's `prepare` may quantize it once for several)."""
        del runtime
        return x

    def __call__(self, x: jax.Array, runtime=None, activation: str | None = None) -> jax.Array:
        """`runtime` (a quant_dense.LinearRuntime) is accepted and ignored: a float layer has one path.
        `activation` names an elementwise function applied to the output (`pallas_kernels.common.ACTIVATIONS`)."""
        del runtime
        w, b = self.weight[...], self.bias[...]
        y = jnp.einsum("...k,nk->...n", x.astype(w.dtype), w, precision=full_precision(w.dtype))
        return activation_fn(activation)(y + b)


def project(layers, x: jax.Array, runtime=None) -> list[jax.Array]:
    """x through several linears that all read it (attention's q, k and v). Float layers run as one GEMM over their
    concatenated weights (one wide GEMM keeps the tensor cores busier than three narrow ones; the concatenation is a
    copy of the weights, small next to the products); quantized layers as `quant_dense.project_quantized` runs them."""
    if all(isinstance(layer, Dense) for layer in layers):
        w = jnp.concatenate([layer.weight[...] for layer in layers])
        b = jnp.concatenate([layer.bias[...] for layer in layers])
        y = jnp.einsum("...k,nk->...n", x.astype(w.dtype), w, precision=full_precision(w.dtype)) + b
        return jnp.split(y, np.cumsum([layer.out_features for layer in layers])[:-1].tolist(), axis=-1)
    return project_quantized(layers, x, runtime)
