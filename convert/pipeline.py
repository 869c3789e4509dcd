"""A whole diffusers CogVideoX pipeline folder -> a sixbit-jax pipeline checkpoint (`sixbit convert PIPELINE OUT`).

The transformer is converted as on its own (top level of OUT, quantized with --quant); the T5 text encoder and the
VAE become component checkpoints in OUT/text_encoder and OUT/vae in the same float dtype; the tokenizer, the
scheduler config and model_index.json are copied. Everything lands in the transformer's temporary folder before the
one atomic rename, so an interrupted conversion leaves nothing at OUT."""

from __future__ import annotations

import shutil
from pathlib import Path

from sixbit_jax.checkpoint import flat_leaves, parse_dtype, write_leaves
from sixbit_jax.pipelines import components
from sixbit_jax.shapes.text import is_shapes_text_encoder


def is_t5_pipeline(folder: Path) -> bool:
    """A diffusers CogVideoX pipeline folder with a T5 text encoder and a VAE (not the shapes model's prompt
    encoder). A Wan pipeline converts its transformer alone (its pipeline converts umT5 and the VAE in memory)."""
    return ((folder / components.MODEL_INDEX).exists() and (folder / components.VAE / "config.json").exists()
            and (folder / components.TEXT_ENCODER / "config.json").exists()
            and components.pipeline_class(folder).startswith("CogVideoX")
            and not is_shapes_text_encoder(folder / components.TEXT_ENCODER))


def write_components(src: Path, dst: Path, *, dtype, progress: bool = False) -> None:
    """Convert src's text encoder and VAE into dst (a folder being written) and copy its small parts."""
    from convert.t5 import abstract_params as t5_abstract
    from convert.t5 import t5_leaves
    from convert.vae_cogvideox import read_vae_config, vae_leaves
    from sixbit_jax.models.vae_cogvideox import abstract_vae_params

    components.check_components(src)
    dtype = parse_dtype(dtype)
    t5_cfg, leaves = t5_leaves(src / components.TEXT_ENCODER, dtype=dtype, progress=progress)
    _write(dst / components.TEXT_ENCODER, dict(flat_leaves(t5_abstract(t5_cfg, dtype))), leaves,
           components.component_record(components.T5_COMPONENT, t5_cfg, dtype))
    vae_cfg = read_vae_config(src / components.VAE)
    _write(dst / components.VAE, dict(flat_leaves(abstract_vae_params(vae_cfg, dtype))),
           vae_leaves(src / components.VAE, dtype=dtype, progress=progress),
           components.component_record(components.COGVIDEOX_VAE_COMPONENT, vae_cfg, dtype))
    for name in (components.TOKENIZER, components.SCHEDULER):
        shutil.copytree(src / name, dst / name)
    shutil.copy2(src / components.MODEL_INDEX, dst / components.MODEL_INDEX)


def _write(folder: Path, expected: dict, leaves, record: dict) -> None:
    folder.mkdir()
    write_leaves(folder, expected, leaves, record)

