"""A whole diffusers CogVideoX or Wan pipeline folder -> a sixbit-jax pipeline checkpoint (`sixbit convert PIPELINE
OUT`).

The transformer is converted as on its own (top level of OUT, quantized with --quant; Wan2.2 A14B's second expert
likewise into OUT/transformer_2); the T5 / umT5 text encoder and the VAE become component checkpoints in
OUT/text_encoder and OUT/vae, in the same float dtype (Wan's VAE in float32, the precision WanPipeline decodes in);
the tokenizer, the scheduler config and model_index.json are copied. Everything lands in the transformer's temporary
folder before the one atomic rename, so an interrupted conversion leaves nothing at OUT."""

from __future__ import annotations

import shutil
from pathlib import Path

from sixbit_jax.checkpoint import abstract_params, flat_leaves, parse_dtype, transformer_record, write_leaves
from sixbit_jax.pipelines import components
from sixbit_jax.pipelines.wan import PIPELINE_CLASSES as WAN_PIPELINES
from sixbit_jax.pipelines.wan import TRANSFORMER_2 as SECOND_EXPERT
from sixbit_jax.quant.spec import QuantSpec
from sixbit_jax.shapes.text import is_shapes_text_encoder


def is_t5_pipeline(folder: Path) -> bool:
    """A diffusers CogVideoX or Wan pipeline folder with a T5 / umT5 text encoder and a VAE (not the shapes model's
    prompt encoder)."""
    return ((folder / components.MODEL_INDEX).exists() and (folder / components.VAE / "config.json").exists()
            and (folder / components.TEXT_ENCODER / "config.json").exists()
            and (components.pipeline_class(folder).startswith("CogVideoX")
                 or components.pipeline_class(folder) in WAN_PIPELINES)
            and not is_shapes_text_encoder(folder / components.TEXT_ENCODER))


def write_components(src: Path, dst: Path, *, dtype, progress: bool = False, quant: QuantSpec | None = None) -> None:
    """Convert src's text encoder, VAE (and a second expert) into dst (a folder being written) and copy its small
    parts."""
    from convert.t5 import abstract_params as t5_abstract
    from convert.t5 import t5_leaves

    components.check_components(src)
    dtype = parse_dtype(dtype)
    t5_cfg, leaves = t5_leaves(src / components.TEXT_ENCODER, dtype=dtype, progress=progress)
    _write(dst / components.TEXT_ENCODER, dict(flat_leaves(t5_abstract(t5_cfg, dtype))), leaves,
           components.component_record(components.T5_COMPONENT, t5_cfg, dtype))
    wan = components.pipeline_class(src) in WAN_PIPELINES
    component = components.WAN_VAE_COMPONENT if wan else components.COGVIDEOX_VAE_COMPONENT
    vae_dtype = parse_dtype("fp32") if wan else dtype
    family = components.vae_family(component)
    vae_cfg = family.read_config(src / components.VAE)
    _write(dst / components.VAE, dict(flat_leaves(family.abstract_params(vae_cfg, vae_dtype))),
           family.leaves(src / components.VAE, dtype=vae_dtype, progress=progress),
           components.component_record(component, vae_cfg, vae_dtype))
    if wan and (src / SECOND_EXPERT).is_dir():
        from convert.converter import transformer_leaves

        cfg, leaves = transformer_leaves(src / SECOND_EXPERT, dtype=dtype, progress=progress, quant=quant)
        _write(dst / SECOND_EXPERT, dict(flat_leaves(abstract_params(cfg, dtype, quant))), leaves,
               transformer_record(cfg, dtype, quant, {"converted_from": str((src / SECOND_EXPERT).absolute())}))
    for name in (components.TOKENIZER, components.SCHEDULER):
        shutil.copytree(src / name, dst / name)
    shutil.copy2(src / components.MODEL_INDEX, dst / components.MODEL_INDEX)


def _write(folder: Path, expected: dict, leaves, record: dict) -> None:
    folder.mkdir()
    write_leaves(folder, expected, leaves, record)

