"""transformers T5EncoderModel / UMT5EncoderModel folder -> our T5Encoder. The only place that knows T5's tensor names.

Key map (torch [out, in] linear layouts kept; per-block tensors land in row i of a leaf stacked over layers):

    shared.weight  or  encoder.embed_tokens.weight       -> shared.weight   (tied: either or both may be stored)
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                                          -> relative_attention_bias.weight            (T5: shared)
    encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight
                                                          -> block.attention.relative_attention_bias.weight[i] (umT5)
    encoder.block.{i}.layer.0.layer_norm.weight           -> block.attention_norm.weight[i]
    encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight -> block.attention.{q,k,v,o}.weight[i]
    encoder.block.{i}.layer.1.layer_norm.weight           -> block.ff_norm.weight[i]
    encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight -> block.ff.{wi_0,wi_1,wo}.weight[i]
    encoder.final_layer_norm.weight                       -> final_layer_norm.weight

`decoder.*` and `lm_head.*` are ignored, so a whole T5ForConditionalGeneration folder loads its encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from flax import nnx

from convert.source import TensorSpec
from convert.converter import stacked_leaves
from convert.source import TRANSFORMERS_WEIGHTS_NAME, TensorSource, component_folder
from sixbit_jax.checkpoint import abstract_state, flat_leaves, module_from_leaves, parse_dtype
from sixbit_jax.errors import CheckpointError
from sixbit_jax.models.t5 import T5Config, T5Encoder

EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")  # the same tied table under two names
IGNORED_PREFIXES = ("decoder.", "lm_head.")

# checkpoint name inside encoder.block.{i}. -> our path inside `block`
_BLOCK_TENSORS = {
    "layer.0.layer_norm.weight": ("attention_norm", "weight"),
    "layer.0.SelfAttention.q.weight": ("attention", "q", "weight"),
    "layer.0.SelfAttention.k.weight": ("attention", "k", "weight"),
    "layer.0.SelfAttention.v.weight": ("attention", "v", "weight"),
    "layer.0.SelfAttention.o.weight": ("attention", "o", "weight"),
    "layer.1.layer_norm.weight": ("ff_norm", "weight"),
    "layer.1.DenseReluDense.wi_0.weight": ("ff", "wi_0", "weight"),
    "layer.1.DenseReluDense.wi_1.weight": ("ff", "wi_1", "weight"),
    "layer.1.DenseReluDense.wo.weight": ("ff", "wo", "weight"),
}
_BIAS = "layer.0.SelfAttention.relative_attention_bias.weight"


def _block_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
    d, inner, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
    return {
        "layer.0.layer_norm.weight": (d,),
        "layer.0.SelfAttention.q.weight": (inner, d),
        "layer.0.SelfAttention.k.weight": (inner, d),
        "layer.0.SelfAttention.v.weight": (inner, d),
        "layer.0.SelfAttention.o.weight": (d, inner),
        "layer.1.layer_norm.weight": (d,),
        "layer.1.DenseReluDense.wi_0.weight": (ff, d),
        "layer.1.DenseReluDense.wi_1.weight": (ff, d),
        "layer.1.DenseReluDense.wo.weight": (d, ff),
    }


def expected_tensors(cfg: T5Config) -> dict[str, TensorSpec]:
    """Every encoder tensor a checkpoint of this config holds, keyed by its name (the embedding as shared.weight)."""
    bias_shape = (cfg.relative_attention_num_buckets, cfg.num_heads)
    specs = [TensorSpec("shared.weight", (cfg.vocab_size, cfg.d_model), ("shared", "weight")),
             TensorSpec("encoder.final_layer_norm.weight", (cfg.d_model,), ("final_layer_norm", "weight"))]
    if not cfg.per_layer_relative_bias:
        specs.append(TensorSpec(f"encoder.block.0.{_BIAS}", bias_shape, ("relative_attention_bias", "weight")))
    shapes = _block_shapes(cfg)
    for i in range(cfg.num_layers):
        specs += [TensorSpec(f"encoder.block.{i}.{name}", shapes[name], ("block",) + target, layer=i)
                  for name, target in _BLOCK_TENSORS.items()]
        if cfg.per_layer_relative_bias:
            specs.append(TensorSpec(f"encoder.block.{i}.{_BIAS}", bias_shape,
                                    ("block", "attention", "relative_attention_bias", "weight"), layer=i))
    return {s.source_key: s for s in specs}


def encoder_names(names: Iterable[str], shape_of: Callable[[str], tuple]) -> tuple[list[str], dict[str, str]]:
    """(the encoder's tensor names with the embedding called shared.weight, {shared.weight: name to read it from}).
    Decoder and LM-head tensors are dropped; if both embedding names are stored they must have one shape."""
    kept = [n for n in names if not n.startswith(IGNORED_PREFIXES)]
    stored = [k for k in EMBEDDING_KEYS if k in kept]
    if not stored:
        return kept, {}
    if len(stored) == 2 and tuple(shape_of(stored[0])) != tuple(shape_of(stored[1])):
        raise CheckpointError(f"the tied embedding is stored twice with different shapes: {stored[0]} "
                              f"{tuple(shape_of(stored[0]))} and {stored[1]} {tuple(shape_of(stored[1]))}")
    return [n for n in kept if n not in EMBEDDING_KEYS] + ["shared.weight"], {"shared.weight": stored[0]}


def abstract_params(cfg: T5Config, dtype) -> dict:
    """The encoder's parameter tree as ShapeDtypeStructs (`nnx.to_pure_dict` layout), allocating nothing."""
    dtype = parse_dtype(dtype)
    return abstract_state(lambda: T5Encoder(cfg, dtype=dtype, rngs=nnx.Rngs(0)))


def converted_leaves(cfg: T5Config, names: list[str], shape_of: Callable[[str], tuple],
                     read: Callable[[str], np.ndarray], dtype, *, progress: bool = False,
                     nbytes: Callable[[str], int] | None = None) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yield (parameter path, numpy leaf in `dtype`) one leaf at a time (e.g. all layers' q weights stacked).
    Every tensor is checked (names and shapes, one CheckpointError naming all problems) before the first is read."""
    names, read_from = encoder_names(names, shape_of)
    abstract = dict(flat_leaves(abstract_params(cfg, dtype)))
    return stacked_leaves(expected_tensors(cfg), abstract, names, shape_of, read, dtype, progress=progress,
                          nbytes=nbytes, desc="converting T5", stored_name=lambda key: read_from.get(key, key))


def encoder_from_leaves(cfg: T5Config, leaves: Iterable[tuple[tuple[str, ...], np.ndarray]], dtype, *,
                        residual_dtype=None) -> T5Encoder:
    """Build the encoder on the default device from (path, leaf) pairs, moving each leaf there as it arrives."""
    dtype = parse_dtype(dtype)
    return module_from_leaves(lambda: T5Encoder(cfg, dtype=dtype, rngs=nnx.Rngs(0), residual_dtype=residual_dtype),
                              leaves, "T5 encoder")


def resolve_folder(folder: str | Path) -> Path:
    """A text encoder folder (config.json + safetensors), or a pipeline folder holding one in `text_encoder/`."""
    return component_folder(folder, "text_encoder", "transformers T5/umT5")


def read_t5_config(folder: str | Path) -> T5Config:
    return T5Config.from_json(resolve_folder(folder) / "config.json")


def t5_leaves(folder: str | Path, *, dtype="bf16", progress: bool = False
              ) -> tuple[T5Config, Iterator[tuple[tuple[str, ...], np.ndarray]]]:
    """(config, converted leaves) of a transformers text encoder folder: what an orbax writer consumes. The names
    and shapes are checked when the iterator is first advanced, before any tensor is read."""
    folder = resolve_folder(folder)
    cfg = T5Config.from_json(folder / "config.json")
    source = TensorSource.from_folder(folder, weights_name=TRANSFORMERS_WEIGHTS_NAME)
    return cfg, converted_leaves(cfg, source.names(), source.shape, source.read, dtype, progress=progress,
                                 nbytes=source.nbytes)


def load_t5_encoder(folder: str | Path, *, dtype="bf16", progress: bool = False,
                    residual_dtype=None) -> T5Encoder:
    """Load a transformers T5EncoderModel / UMT5EncoderModel (or T5ForConditionalGeneration) safetensors folder,
    single file or sharded, as a ready T5Encoder in `dtype` on the default device."""
    cfg, leaves = t5_leaves(folder, dtype=dtype, progress=progress)
    return encoder_from_leaves(cfg, leaves, dtype, residual_dtype=residual_dtype)
