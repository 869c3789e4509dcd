"""Sequence parallelism over a 1-D device mesh (issue 17, first part): the tokens of a video sharded along the
sequence, attention by Ulysses.

Ulysses: each device holds N / P tokens of every head; one all-to-all turns that into all N tokens of H / P heads,
attention runs locally and unchanged (cuDNN, XLA or the 8-bit kernel), and a second all-to-all turns the output back
into sequence shards. Heads must divide by the device count (else a clear error; ring attention, the alternative
for such head counts, is not written yet). Everything else in a DiT block (linears, norms, modulation) is per token
and runs on the local shard as it is.

The sampler takes a mesh (`sample(..., mesh=)`, `sixbit sample|generate --devices N`): while its program is
traced, `sequence_parallel(mesh)` is active and every `layers.attention.dot_product_attention` call runs as Ulysses
over it. The rest of the program is one SPMD program XLA partitions. The block stack pins its token streams and the
delta cache to sequence shards (`split_tokens`), so the per-token work (linears, norms, modulation) and the largest
buffer stay split between the attention calls instead of wherever XLA's propagation would put them; the text
context Wan's cross-attention reads is not a stream and stays replicated. Reductions (the 6Bit runtime's Γ, r and
PDR ratios) are over the whole tensors, so every device takes the same routes. On 2 simulated CPU devices the sampler's latents
equal one device's within 1e-5 on the float path; with quantized routes (and the fp8 cache, a quantizer too) by up
to a few percent, the routes not: the partitioned program fuses and rounds its float arithmetic differently in the
last bit, and a quantizer turns such a bit, now and then, into a whole code step (tests/test_parallel.py). Not yet:
ring attention, a GPU measurement.
"""

from __future__ import annotations

import contextlib
import contextvars
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


def sequence_mesh(devices: int, heads: int | None = None) -> Mesh:
    """A 1-D mesh over the first `devices` devices, its axis named SEQUENCE_AXIS; with `heads` (the model's
    attention heads), refused up front where Ulysses could not split them."""
    available = jax.devices()
    if not 1 <= devices <= len(available):
        raise InputError(f"--devices {devices}: this machine has {len(available)} {available[0].platform} "
                         f"device{'s' if len(available) > 1 else ''}")
    if heads is not None and heads % devices:
        raise InputError(f"--devices {devices}: Ulysses attention splits the model's {heads} heads over the devices; "
                         f"use a device count that divides {heads}")
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


def ulysses_attention(q: jax.Array, k: jax.Array, v: jax.Array, mesh: Mesh, *, attention: Callable,
                      implementation: str | None = None) -> jax.Array:
    """softmax(q kᵀ / sqrt(d)) v for q, k, v [B, N, H, d] whose tokens are split over `mesh` (N and H must divide by
    its size); the output is split the same way. `attention(q, k, v, implementation=...)` runs on each device over
    all N tokens of its H / P heads."""
    devices = mesh.shape[SEQUENCE_AXIS]
    heads, tokens = q.shape[2], q.shape[1]
    if heads % devices:
        raise InputError(f"Ulysses attention over {devices} devices needs the head count to divide by it; this model "
                         f"has {heads} heads (use a device count that divides {heads})")
    if tokens % devices or k.shape[1] % devices:
        raise InputError(f"sequence parallelism over {devices} devices needs the token counts to divide by it; got "
                         f"{tokens} queries and {k.shape[1]} keys")

    def local(q, k, v):  # [B, N / P, H, d] on each device
        heads_split = lambda x: jax.lax.all_to_all(x, SEQUENCE_AXIS, 2, 1, tiled=True)  # noqa: E731  -> [B, N, H/P, d]
        out = attention(heads_split(q), heads_split(k), heads_split(v), implementation=implementation)
        return jax.lax.all_to_all(out, SEQUENCE_AXIS, 1, 2, tiled=True)  # -> [B, N / P, H, d]

    return jax.shard_map(local, mesh=mesh, in_specs=(TOKEN_SHARDED,) * 3, out_specs=TOKEN_SHARDED)(q, k, v)
