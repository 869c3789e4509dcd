"""A stack of identical layers stored as one module whose parameters carry a leading layer axis, so that a
`lax.scan` runs them as one compiled layer (the DiT blocks, the T5 blocks)."""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx


def stacked_layers(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """One layer's structure with its parameters initialised `num_layers` times along a leading axis (one key per
    layer, split from `rngs.params()`)."""
    layer_def, _ = nnx.split(nnx.eval_shape(lambda: make_layer(nnx.Rngs(0))))
    layer_keys = jax.random.split(rngs.params(), num_layers)
    stacked = jax.vmap(lambda key: nnx.state(make_layer(nnx.Rngs(key))))(layer_keys)
    return nnx.merge(layer_def, stacked)
