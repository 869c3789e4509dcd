"""The checkpoint -> sixbit-jax key map for Wan2.1 / 2.2 (text-to-video). The only place that knows its tensor names.

Two layouts hold the same tensors one to one: diffusers' `WanTransformer3DModel` (the specs below are keyed by
those names) and the original `Wan-Video` `WanModel` (`original_name` gives each diffusers name's original; ComfyUI
repacks prefix them with `model.diffusion_model.`). Per-block tensors `blocks.{i}.*` land in row i of a leaf stacked
over layers; the patch Conv3d weight [D, C, pt, ph, pw] is flattened to the dense weight [D, C*pt*ph*pw]."""

from __future__ import annotations

import numpy as np
from flax import nnx

from convert.converter import stacked_leaves
from convert.source import TensorSpec
from sixbit_jax.checkpoint import abstract_state, flat_leaves, parse_dtype
from sixbit_jax.config import WanConfig
from sixbit_jax.models.wan import WanTransformer3D

# diffusers block-relative module -> our block-relative path
_BLOCK_LINEARS = {f"{attn}.{name}": (attn, ours) for attn in ("attn1", "attn2")
                  for name, ours in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out.0", "to_out"))}
_BLOCK_LINEARS.update({"ffn.net.0.proj": ("ffn", "proj_in"), "ffn.net.2": ("ffn", "proj_out")})

# diffusers name fragment -> the original's, applied in this order (the inverse of diffusers' converter table;
# norm2 and norm3 swap: the original's norm3 is the cross-attention LayerNorm)
_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("attn1.to_out.0", "self_attn.o"), ("attn2.to_out.0", "cross_attn.o"),
    ("attn1.to_", "self_attn."), ("attn2.to_", "cross_attn."),
    ("attn1.norm_", "self_attn.norm_"), ("attn2.norm_", "cross_attn.norm_"),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm3."),
    ("proj_out", "head.head"),
]


def original_name(name: str) -> str:
    """The original Wan checkpoint's name of a diffusers tensor name."""
    if name == "scale_shift_table":
        return "head.modulation"
    if name.endswith(".scale_shift_table"):
        return name.replace(".scale_shift_table", ".modulation")
    for ours, theirs in _TO_ORIGINAL:
        name = name.replace(ours, theirs)
    return name


def _linear(name: str, target: tuple[str, ...], n_out: int, n_in: int, layer: int | None = None):
    return [TensorSpec(f"{name}.weight", (n_out, n_in), target + ("weight",), layer),
            TensorSpec(f"{name}.bias", (n_out,), target + ("bias",), layer)]


def _block_specs(cfg: WanConfig, i: int) -> list[TensorSpec]:
    d, f = cfg.inner_dim, cfg.ffn_dim
    shapes = {"ffn.net.0.proj": (f, d), "ffn.net.2": (d, f)}
    prefix = f"blocks.{i}"
    specs = [TensorSpec(f"{prefix}.scale_shift_table", (1, 6, d), ("blocks", "scale_shift_table"), i)]
    for name, target in _BLOCK_LINEARS.items():
        specs += _linear(f"{prefix}.{name}", ("blocks",) + target, *shapes.get(name, (d, d)), layer=i)
    for attn in ("attn1", "attn2"):
        for norm in ("norm_q", "norm_k"):
            specs.append(TensorSpec(f"{prefix}.{attn}.{norm}.weight", (d,), ("blocks", attn, norm, "weight"), i))
    if cfg.cross_attn_norm:
        specs += [TensorSpec(f"{prefix}.norm2.{p}", (d,), ("blocks", "norm2", p), i) for p in ("weight", "bias")]
    return specs


def expected_tensors(cfg: WanConfig) -> dict[str, TensorSpec]:
    """Every tensor a diffusers Wan text-to-video checkpoint of this config holds, keyed by its diffusers name."""
    d, patch = cfg.inner_dim, int(np.prod(cfg.patch_size))
    specs = [
        TensorSpec("patch_embedding.weight", (d, cfg.in_channels, *cfg.patch_size), ("patch_embedding", "weight"),
                   target_shape=(d, cfg.in_channels * patch)),
        TensorSpec("patch_embedding.bias", (d,), ("patch_embedding", "bias")),
        *_linear("condition_embedder.time_embedder.linear_1", ("condition_embedder", "time_embedder", "linear_1"),
                 d, cfg.freq_dim),
        *_linear("condition_embedder.time_embedder.linear_2", ("condition_embedder", "time_embedder", "linear_2"),
                 d, d),
        *_linear("condition_embedder.time_proj", ("condition_embedder", "time_proj"), 6 * d, d),
        *_linear("condition_embedder.text_embedder.linear_1", ("condition_embedder", "text_embedder", "linear_1"),
                 d, cfg.text_dim),
        *_linear("condition_embedder.text_embedder.linear_2", ("condition_embedder", "text_embedder", "linear_2"),
                 d, d),
        TensorSpec("scale_shift_table", (1, 2, d), ("scale_shift_table",)),
        *_linear("proj_out", ("proj_out",), cfg.out_channels * patch, d),
    ]
    for i in range(cfg.num_layers):
        specs += _block_specs(cfg, i)
    return {s.source_key: s for s in specs}


COMFY_PREFIX = "model.diffusion_model."


def stored_names(names: list[str]):
    """How a checkpoint with these tensor names stores each diffusers name: diffusers' layout as is, the original
    layout (optionally ComfyUI-prefixed) through `original_name`. A name the file holds as it is maps to itself."""
    present = set(names)
    if any(n.startswith("condition_embedder.") for n in names):
        return lambda key: key
    prefix = COMFY_PREFIX if any(n.startswith(COMFY_PREFIX) for n in names) else ""
    return lambda key: key if key in present else prefix + original_name(key)


def converted_leaves(cfg: WanConfig, names: list[str], shape_of, read, dtype, *, progress: bool = False,
                     nbytes=None):
    """The Wan transformer's leaves from a checkpoint in either layout (see `convert.converter.stacked_leaves`);
    problems are named in diffusers' names."""
    specs = expected_tensors(cfg)
    stored = stored_names(names)
    as_spec = {stored(key): key for key in specs}
    abstract = dict(flat_leaves(abstract_state(lambda: WanTransformer3D(cfg, dtype=parse_dtype(dtype),
                                                                        rngs=nnx.Rngs(0)))))
    return stacked_leaves(specs, abstract, [as_spec.get(n, n) for n in names], shape_of, read, dtype,
                          progress=progress, nbytes=nbytes, stored_name=stored)
