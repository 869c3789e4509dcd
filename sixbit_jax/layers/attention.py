"""Full (non-causal, unmasked) multi-head attention on [batch, tokens, heads, head_dim] arrays.

GPU with bf16/fp16: cuDNN flash attention through `jax.nn.dot_product_attention`. Everywhere else (CPU, float32):
an exact softmax attention in float32 that walks over query chunks, so memory is batch x heads x chunk x tokens
instead of tokens squared. "int8": 8-bit Q·Kᵀ (`pallas_kernels.attention_int8_mgpu`: the Mosaic GPU kernel on
Hopper, its jnp reference elsewhere), which the 6Bit runtime selects for the blocks' self-attention."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels.attention_int8_mgpu import int8_attention
from sixbit_jax import parallel
from sixbit_jax.layers.dense import full_precision

# Largest logits block (elements) the chunked path materialises at once: 64 Mi float32 values = 256 MiB.
_MAX_LOGITS_ELEMENTS = 64 * 1024 * 1024


def default_implementation(dtype) -> str:
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "cudnn"
    return "xla"


def block_implementation(module_default: str | None, runtime) -> str | None:
    """The implementation a block's self-attention runs under a block runtime (`LinearRuntime` or None): the 8-bit
    kernel when the runtime asks for int8 attention, else the module's own choice."""
    return "int8" if getattr(runtime, "attention", "bf16") == "int8" else module_default


def dot_product_attention(q, k, v, *, implementation: str | None = None, cross: bool = False) -> jax.Array:
    """softmax(q kᵀ / sqrt(d)) v, for q [B, N, H, d] and k, v [B, M, H, d]; the output has q's dtype. Inside
    `parallel.sequence_parallel(mesh)`, split over the mesh's devices along the tokens: self-attention (k, v from
    q's tokens) by Ulysses or gathered keys, `cross`-attention (k, v from a context each device holds) locally."""
    mesh = parallel.active_mesh()
    if mesh is not None:
        return parallel.sequence_attention(q, k, v, mesh, attention=_local_attention, implementation=implementation,
                                           cross=cross)
    return _local_attention(q, k, v, implementation=implementation)


def _local_attention(q, k, v, *, implementation: str | None = None) -> jax.Array:
    implementation = implementation or default_implementation(q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1])
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    if implementation == "int8":
        return int8_attention(q, k, v)
    if implementation != "xla":
        raise ValueError(f"unknown attention implementation {implementation!r} (use 'cudnn', 'xla' or 'int8')")
    return _chunked_attention(q, k, v, scale)


def _attention_block(q, k, v, scale):
    hi = full_precision(q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=hi, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return out.astype(q.dtype)


def _chunked_attention(q, k, v, scale):
    batch, n_q, heads, _ = q.shape
    n_k = k.shape[1]
    chunk = max(1, _MAX_LOGITS_ELEMENTS // (batch * heads * n_k))
    if chunk >= n_q:
        return _attention_block(q, k, v, scale)
    n_chunks = -(-n_q // chunk)
    pad = n_chunks * chunk - n_q
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(batch, n_chunks, chunk, heads, -1)
    out = jax.lax.map(lambda qc: _attention_block(qc, k, v, scale), jnp.moveaxis(qp, 1, 0))
    return jnp.moveaxis(out, 0, 1).reshape(batch, n_chunks * chunk, heads, -1)[:, :n_q]
