"""Quantizing a model: the parameter-tree rewrite that turns a family's block linears into NVFP4.

Which linears those are is the family's to say: its model class lists them (`QUANTIZED_LINEARS`, block-relative
module paths -> weight-only) under its stacked blocks (`BLOCKS`). A float linear's leaves {weight [L, N, K], bias}
become a QuantDense's {packed, block_scales, scale, bias}; the rewrite works leaf by leaf, so the converter can
stream it and a loaded float model can be quantized in memory (`quantize_model`) with the same code."""

from __future__ import annotations

import functools
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sixbit_jax.quant import formats


def quantized_module(path: tuple[str, ...], model_class) -> tuple[str, ...] | None:
    """The block-relative module path if `path` (a parameter path) is the weight of a quantized linear."""
    if (len(path) == 4 and path[0] == model_class.BLOCKS and path[-1] == "weight"
            and path[1:3] in model_class.QUANTIZED_LINEARS):
        return path[1:3]
    return None


@functools.partial(jax.jit, static_argnames="hadamard_block")
def _prepare_stacked(weight: jax.Array, hadamard_block: int) -> formats.NVFP4:
    return jax.vmap(lambda w: formats.prepare_weight(w, hadamard_block=hadamard_block).nvfp4)(weight)


def quantize_stacked_weight(weight, hadamard_block: int) -> dict[str, np.ndarray]:
    """[L, N, K] float weights -> QuantDense leaves {packed, block_scales (E4M3 bytes), scale [L]}, per layer."""
    q = _prepare_stacked(jnp.asarray(weight, jnp.float32), hadamard_block=hadamard_block)
    return {"packed": np.asarray(q.packed), "scale": np.asarray(q.scale, np.float32),
            "block_scales": np.asarray(jax.lax.bitcast_convert_type(q.block_scales, jnp.uint8))}


def quantize_leaves(leaves: Iterable[tuple[tuple[str, ...], np.ndarray]], hadamard_block: int, model_class
                    ) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Rewrite a stream of (path, float leaf) of a `model_class` model: quantized linears' weights become their
    NVFP4 leaves."""
    for path, leaf in leaves:
        module = quantized_module(path, model_class)
        if module is None:
            yield path, leaf
            continue
        block = 0 if model_class.QUANTIZED_LINEARS[module] else hadamard_block
        for name, value in quantize_stacked_weight(leaf, block).items():
            yield path[:-1] + (name,), value


def quantize_model(model, hadamard_block: int = formats.HADAMARD_BLOCK):
    """A quantized copy of a float model of any family (same dtype for everything left in float); a model of several
    experts (Wan2.2 A14B) has each expert quantized."""
    from sixbit_jax.checkpoint import flat_leaves, model_from_params, nest_leaves
    from sixbit_jax.quant.spec import QuantSpec

    if hasattr(model, "map_experts"):
        return model.map_experts(lambda expert: quantize_model(expert, hadamard_block))

    params = nnx.to_pure_dict(nnx.state(model))
    quantized = nest_leaves(quantize_leaves(flat_leaves(params), hadamard_block, type(model)))
    return model_from_params(model.config, quantized, dtype=model.dtype, quant=QuantSpec(hadamard_block))
