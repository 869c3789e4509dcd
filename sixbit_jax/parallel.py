"""Sequence parallelism over a 1-D device mesh (issue 17): the tokens of a video split along the sequence, every
device running the whole model on its share.

Attention is the one place tokens meet (`sequence_attention`):
- Ulysses, where the heads divide by the device count: each device holds N / P tokens of every head; one all-to-all
  turns that into all N tokens of H / P heads, attention runs locally and unchanged (cuDNN, XLA or the 8-bit
  kernel), and a second all-to-all turns the output back into sequence shards. Per device it moves 4 N H d / P
  values (q, k, v, out).
- Gathered keys, where they do not (CogVideoX-2B's 30 heads over 4 or 8 devices, Wan2.1-1.3B's 12 over 8): each
  device gathers every token's k and v (an all-gather, 2 N H d values) and attends its own N / P queries to all of
  them, with the same local kernels. The alternative the issue names, ring attention, passes k/v blocks around and
  merges partial softmaxes; gathering them instead costs at most a few hundred MB per layer at these sizes, keeps
  each device's attention one exact kernel call (no log-sum-exp merge), and is the scheme Llama 3's context
  parallelism uses.
- Cross-attention to a context every device holds (Wan's text): local, no communication.

The sampler takes a mesh (`sample(..., mesh=)`, `sixbit sample|generate --devices N`): while its program is
traced, `sequence_parallel(mesh)` is active and every `layers.attention.dot_product_attention` call runs as above.
The rest of the program is one SPMD program XLA partitions. The block stack pins its token streams and the delta
cache to sequence shards (`split_tokens`), so the per-token work (linears, norms, modulation) and the largest buffer
stay split between the attention calls instead of wherever XLA's propagation would put them. Reductions (the 6Bit
runtime's Γ, r and PDR ratios) are over the whole tensors, so every device takes the same routes. On simulated CPU
devices the sampler's latents equal one device's within 1e-5 on the float path; with quantized routes (and the fp8
cache, a quantizer too) they differ by up to a few percent while the routes do not: the partitioned program fuses
and rounds its float arithmetic differently in the last bit, and a quantizer turns such a bit, now and then, into a
whole code step (tests/test_parallel.py). Not yet: a GPU measurement (no multi-GPU machine lent).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sixbit_jax.errors import InputError

SEQUENCE_AXIS = "seq"
# [B, N, H, d] sharded along N
TOKEN_SHARDED = PartitionSpec(None, SEQUENCE_AXIS, None, None)
_ACTIVE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("sixbit_sequence_mesh", default=None)


@contextlib.contextmanager
def sequence_parallel(mesh: Mesh | None):
    """While tracing inside this context, attention runs as Ulysses over `mesh` (None or one device: as it is). The
    sampler enters it inside its jitted function, whose static arguments include the mesh."""
    token = _ACTIVE_MESH.set(mesh if mesh is not None and mesh.size > 1 else None)
    try:
        yield
    finally:
        _ACTIVE_MESH.reset(token)


def active_mesh() -> Mesh | None:
    return _ACTIVE_MESH.get()


def sequence_mesh(devices: int) -> Mesh:
    """A 1-D mesh over the first `devices` devices, its axis named SEQUENCE_AXIS."""
    available = jax.devices()
    if not 1 <= devices <= len(available):
        raise InputError(f"--devices {devices}: this machine has {len(available)} {available[0].platform} "
                         f"device{'s' if len(available) > 1 else ''}")
    return Mesh(np.asarray(available[:devices]), (SEQUENCE_AXIS,))


def split_tokens(x: jax.Array, axis: int) -> jax.Array:
    """Inside `sequence_parallel`: x constrained to be split over the mesh along `axis` (its tokens); as it is without
    a mesh or where that axis does not divide by the device count (then XLA places it)."""
    mesh = active_mesh()
    if mesh is None or x.shape[axis] % mesh.size:
        return x
    spec = [None] * x.ndim
    spec[axis] = SEQUENCE_AXIS
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def replicate(tree, mesh: Mesh | None):
    """Every array of `tree` on all of the mesh's devices (what a program partitioned over the mesh takes); as it is
    without a mesh."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_tokens(x: jax.Array, mesh: Mesh) -> jax.Array:
    """x [B, N, H, d] placed with N split over the mesh."""
    return jax.device_put(x, NamedSharding(mesh, TOKEN_SHARDED))


def sequence_attention(q: jax.Array, k: jax.Array, v: jax.Array, mesh: Mesh, *, attention: Callable,
                       implementation: str | None = None, cross: bool = False) -> jax.Array:
    """softmax(q kᵀ / sqrt(d)) v for q [B, N, H, d] whose tokens are split over `mesh`; the output is split the same
    way. `attention(q, k, v, implementation=...)` is the one-device attention each device runs. k, v: the same
    tokens as q (self-attention: Ulysses where H divides by the device count, else gathered keys), or with `cross` a
    context every device holds whole (attended locally)."""
    devices = mesh.shape[SEQUENCE_AXIS]
    if q.shape[1] % devices or (not cross and k.shape[1] % devices):
        raise InputError(f"sequence parallelism over {devices} devices needs the token counts to divide by it; got "
                         f"{q.shape[1]} queries and {k.shape[1]} keys")
    if cross:
        scheme, kv_spec = _context_local, PartitionSpec()
    else:
        scheme, kv_spec = (_ulysses_local if q.shape[2] % devices == 0 else _gathered_local), TOKEN_SHARDED
    local = functools.partial(scheme, attention=attention, implementation=implementation)
    return jax.shard_map(local, mesh=mesh, in_specs=(TOKEN_SHARDED, kv_spec, kv_spec), out_specs=TOKEN_SHARDED)(
        q, k, v)


def _context_local(q, k, v, *, attention, implementation):
    """On each device, its N / P queries attend to the whole context it holds."""
    return attention(q, k, v, implementation=implementation)


def _ulysses_local(q, k, v, *, attention, implementation):
    """On each device, q, k, v [B, N / P, H, d] -> all N tokens of H / P heads -> attention -> back."""
    heads_split = lambda x: jax.lax.all_to_all(x, SEQUENCE_AXIS, 2, 1, tiled=True)  # noqa: E731  -> [B, N, H/P, d]
    out = attention(heads_split(q), heads_split(k), heads_split(v), implementation=implementation)
    return jax.lax.all_to_all(out, SEQUENCE_AXIS, 1, 2, tiled=True)  # -> [B, N / P, H, d]


def _gathered_local(q, k, v, *, attention, implementation):
    """On each device, its N / P queries attend to every token's k and v, gathered from all devices."""
    gather = lambda x: jax.lax.all_gather(x, SEQUENCE_AXIS, axis=1, tiled=True)  # noqa: E731  -> [B, N, H, d]
    return attention(q, gather(k), gather(v), implementation=implementation)
