"""diffusers `transformer/` folder (CogVideoX or Wan; Wan also in its original layout) -> sixbit-jax checkpoint,
streaming one tensor at a time.

Host memory holds one parameter leaf (all layers of one weight) at a time, plus orbax's buffers while it is
written: never the whole model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from convert.cogvideox import TensorSpec, expected_tensors
from convert.source import TensorSource, read_config
from sixbit_jax.checkpoint import (abstract_params, check_destination, flat_leaves, nest_leaves, parse_dtype,
                                   shape_problems, write_checkpoint)
from sixbit_jax.config import CogVideoXConfig, WanConfig
from sixbit_jax.errors import CheckpointError
from sixbit_jax.models import model_class
from sixbit_jax.quant.spec import QuantSpec
from sixbit_jax.quant.model import quantize_leaves
from sixbit_jax.shapes.text import is_shapes_text_encoder


MAX_PROBLEM_LINES = 12


def check_tensors(specs: dict, names: list[str], shape_of: Callable[[str], tuple], what: str = "checkpoint",
                  hint: str | None = None) -> None:
    """Raise one CheckpointError naming the missing, unexpected or mis-shaped tensors (specs: any family's key map,
    entries with a `source_shape`): the first MAX_PROBLEM_LINES and a count of the rest, after `hint` (what in the
    config the mismatch points at, when the family can tell)."""
    problems = shape_problems({k: s.source_shape for k, s in specs.items()}, {k: shape_of(k) for k in names},
                              "tensor")
    if problems:
        shown = problems[:MAX_PROBLEM_LINES]
        more = len(problems) - len(shown)
        raise CheckpointError(f"{what} does not match the config ({len(problems)} problem"
                              f"{'' if len(problems) == 1 else 's'})" + (f": {hint}" if hint else "") + ":\n  "
                              + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""))


def config_hint(cfg: CogVideoXConfig, names: list[str], shape_of: Callable[[str], tuple]) -> str | None:
    """Which CogVideoX config.json fields the tensors contradict (a wrong field mis-shapes hundreds of tensors)."""
    hints = []
    layers = {int(m.group(1)) for n in names if (m := re.match(r"transformer_blocks\.(\d+)\.", n))}
    if layers and max(layers) + 1 != cfg.num_layers:
        hints.append(f"the checkpoint has {max(layers) + 1} transformer blocks but num_layers is {cfg.num_layers}")
    if "norm_final.weight" in names and shape_of("norm_final.weight")[0] != cfg.inner_dim:
        hints.append(f"the blocks are {shape_of('norm_final.weight')[0]} wide but num_attention_heads x "
                     f"attention_head_dim is {cfg.num_attention_heads} x {cfg.attention_head_dim} = {cfg.inner_dim}")
    if "patch_embed.text_proj.weight" in names and shape_of("patch_embed.text_proj.weight")[1] != cfg.text_embed_dim:
        hints.append(f"the text projection takes {shape_of('patch_embed.text_proj.weight')[1]} features but "
                     f"text_embed_dim is {cfg.text_embed_dim}")
    return "; ".join(hints) + " (config.json)" if hints else None


def stacked_leaves(specs: dict[str, TensorSpec], abstract: dict[tuple[str, ...], Any], names: list[str],
                   shape_of: Callable[[str], tuple], read: Callable[[str], np.ndarray], dtype, *,
                   progress: bool = False, nbytes: Callable[[str], int] | None = None, desc: str = "converting",
                   stored_name: Callable[[str], str] = lambda key: key, hint: str | None = None
                   ) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Any model family's conversion loop: yield (parameter path, numpy leaf in `dtype`) one leaf at a time, a
    stacked leaf gathering the tensors of every layer. `specs` is the family's key map, `abstract` its flat
    parameter tree (ShapeDtypeStructs); `stored_name` maps a spec's key to the name the file stores it under (a tied
    embedding saved under another name). Every tensor is checked (names and shapes) before the first is read."""
    check_tensors(specs, names, lambda key: shape_of(stored_name(key)), hint=hint)
    dtype = parse_dtype(dtype)
    by_leaf: dict[tuple[str, ...], list[TensorSpec]] = {}
    for spec in specs.values():
        by_leaf.setdefault(spec.target, []).append(spec)
    size = (lambda key: nbytes(stored_name(key))) if nbytes else (lambda key: 1)
    with tqdm(total=sum(size(k) for k in specs), disable=not progress, unit="B" if nbytes else "tensor",
              unit_scale=bool(nbytes), desc=desc) as bar:
        for target, leaf_specs in by_leaf.items():
            leaf = np.empty(abstract[target].shape, dtype)
            for spec in leaf_specs:
                tensor = np.asarray(read(stored_name(spec.source_key)))
                if not jnp.issubdtype(tensor.dtype, jnp.floating):
                    raise CheckpointError(f"tensor {stored_name(spec.source_key)} has non-float dtype {tensor.dtype}")
                value = tensor.astype(dtype).reshape(spec.target_shape or spec.source_shape)
                if spec.layer is None:
                    leaf[...] = value
                else:
                    leaf[spec.layer] = value
                bar.update(size(spec.source_key))
            yield target, leaf
            del leaf  # before the next leaf is allocated: only one leaf is held at a time


def converted_leaves(cfg: CogVideoXConfig, names: list[str], shape_of: Callable[[str], tuple],
                     read: Callable[[str], np.ndarray], dtype, *, progress: bool = False,
                     nbytes: Callable[[str], int] | None = None) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """The CogVideoX transformer's leaves (see `stacked_leaves`), e.g. all layers' to_q weights stacked."""
    abstract = dict(flat_leaves(abstract_params(cfg, parse_dtype(dtype))))
    return stacked_leaves(expected_tensors(cfg), abstract, names, shape_of, read, dtype, progress=progress,
                          nbytes=nbytes, hint=config_hint(cfg, names, shape_of))


def convert_tensors(cfg: CogVideoXConfig, names: list[str], shape_of: Callable[[str], tuple],
                    read: Callable[[str], np.ndarray], dtype) -> dict:
    """The whole converted parameter tree in memory (numpy leaves): for tests and small models."""
    return nest_leaves(converted_leaves(cfg, names, shape_of, read, dtype))


def convert_checkpoint(src: str | Path, dst: str | Path, *, dtype="bf16", overwrite: bool = False,
                       progress: bool = True, quant: QuantSpec | None = None) -> Path:
    """Convert a diffusers CogVideoX transformer folder, or a pipeline folder holding one in `transformer/`, to a
    sixbit-jax checkpoint at `dst` (atomic). A pipeline's shapes text encoder is copied along; a pipeline with a T5
    text encoder and a VAE becomes a whole converted pipeline (`convert/pipeline.py`). With `quant`, the block
    linears are stored once, in NVFP4 (see sixbit_jax.quant.model), and everything else in `dtype`."""
    from convert.pipeline import is_t5_pipeline, write_components
    from sixbit_jax.pipelines import components

    check_destination(dst, overwrite)  # before reading gigabytes, not after
    root = Path(src)
    src, extras = resolve_source(src)
    before_commit = None
    if is_t5_pipeline(root):
        components.check_components(root)  # a missing component fails now, not after the transformer
        before_commit = lambda tmp: write_components(root, tmp, dtype=dtype, progress=progress, quant=quant)  # noqa: E731
    cfg, leaves = transformer_leaves(src, dtype=dtype, progress=progress, quant=quant)
    return write_checkpoint(dst, cfg, dtype, leaves, overwrite=overwrite, extra_folders=extras, quant=quant,
                            info={"converted_from": str(root.absolute())}, before_commit=before_commit)


def family_leaves(cfg):
    """The `converted_leaves` of the config's family (each family's key map lives in its own module)."""
    if isinstance(cfg, WanConfig):
        from convert import wan
        return wan.converted_leaves
    return converted_leaves


def transformer_leaves(src: Path, *, dtype, progress: bool, quant: QuantSpec | None):
    """(config, converted leaves) of a transformer folder of any family; with `quant`, NVFP4 block linears."""
    cfg = read_config(src)
    source = TensorSource.from_folder(src)
    leaves = family_leaves(cfg)(cfg, source.names(), source.shape, source.read, dtype, progress=progress,
                                nbytes=source.nbytes)
    return cfg, (quantize_leaves(leaves, quant.hadamard_block, model_class(cfg)) if quant is not None else leaves)


def load_transformer(src: str | Path, *, dtype="bf16", progress: bool = False, quant: QuantSpec | None = None):
    """A transformer folder of any family (or a pipeline folder holding one) converted in memory: a ready model on
    the default device, built one leaf at a time (with `quant`, block linears quantized to NVFP4 on the way)."""
    from sixbit_jax.checkpoint import module_from_leaves

    cfg, leaves = transformer_leaves(resolve_source(src)[0], dtype=dtype, progress=progress, quant=quant)
    model_dtype = parse_dtype(dtype)
    return module_from_leaves(lambda: model_class(cfg)(cfg, dtype=model_dtype, rngs=nnx.Rngs(0), quant=quant),
                              leaves, "transformer")


def resolve_source(src: str | Path) -> tuple[Path, dict[str, Path]]:
    """(transformer folder, {name: companion folder to copy}) for a transformer folder or a pipeline folder. Only
    small companions we can use are copied: the shapes prompt encoder, never a T5 text encoder."""
    src = Path(src)
    if (src / "config.json").exists() or not (src / "transformer").is_dir():
        return src, {}
    extras = {"text_encoder": src / "text_encoder"} if is_shapes_text_encoder(src / "text_encoder") else {}
    return src / "transformer", extras
