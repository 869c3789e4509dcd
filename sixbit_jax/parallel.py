"""Sequence parallelism over a 1-D device mesh (issue 17, first part): the tokens of a video sharded along the
sequence, attention by Ulysses.

Ulysses: each device holds N / P tokens of every head; one all-to-all turns that into all N tokens of H / P heads,
attention runs locally and unchanged (cuDNN, XLA or the 8-bit kernel), and a second all-to-all turns the output back
into sequence shards. Heads must divide by the device count (else a clear error; ring attention, the alternative
for such head counts, is not written yet). Everything else in a DiT block (linears, norms, modulation) is per token
and runs on the local shard as it is.

The sampler takes a mesh (`sample(..., mesh=)`, `sixbit sample --devices N`): while its program is traced,
`sequence_parallel(mesh)` is active and every `layers.attention.dot_product_attention` call runs as Ulysses over it.
The rest of the program is one SPMD program XLA partitions; its reductions (the 6Bit runtime's Γ, r and PDR ratios)
are over the whole tensors, so every device takes the same routes. On 2 simulated CPU devices the sampler's latents
equal one device's with float32 or bf16 delta caches; with the fp8 cache they differ by 1-5% (the routes do not):
the partitioned program's fp8 encoding of a delta rounds differently on XLA CPU (not yet pinned down). Not yet:
sharding constraints that keep the per-token work split between the attention calls (today XLA decides), ring
attention, a GPU measurement.
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


def sequence_mesh(devices: int) -> Mesh:
    """A 1-D mesh over the first `devices` devices, its axis named SEQUENCE_AXIS."""
    available = jax.devices()
    if not 1 <= devices <= len(available):
        raise InputError(f"--devices {devices}: this machine has {len(available)} {available[0].platform} "
                         f"device{'s' if len(available) > 1 else ''}")
    return Mesh(np.asarray(available[:devices]), (SEQUENCE_AXIS,))


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
