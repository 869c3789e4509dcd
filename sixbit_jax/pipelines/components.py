"""A pipeline's parts besides the DiT: the T5 text encoder, the VAE, the tokenizer and the scheduler config.

Two kinds of pipeline folder hold them:
- a diffusers folder (`model_index.json`, `tokenizer/`, `text_encoder/`, `transformer/`, `vae/`, `scheduler/`): the
  models are converted in memory, one tensor at a time, on every load;
- a converted one, written by `sixbit convert PIPELINE OUT` (`convert/pipeline.py`): the transformer checkpoint at
  the top (what `sixbit sample` reads), and `text_encoder/` and `vae/` as sixbit-jax component checkpoints
  (`sixbit.json` naming the component + one orbax item per leaf), with `tokenizer/`, `scheduler/` and
  `model_index.json` copied as they are.
Nothing here knows a checkpoint's tensor names: that is `convert/`'s job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sixbit_jax.checkpoint import INFO_NAME, parse_dtype, read_info, restore_leaves
from sixbit_jax.errors import CheckpointError, InputError

TOKENIZER, TEXT_ENCODER, TRANSFORMER, VAE, SCHEDULER = "tokenizer", "text_encoder", "transformer", "vae", "scheduler"
MODEL_INDEX = "model_index.json"
T5_COMPONENT, COGVIDEOX_VAE_COMPONENT, WAN_VAE_COMPONENT = "t5", "vae-cogvideox", "vae-wan"


def is_converted(folder: Path) -> bool:
    """A pipeline written by `sixbit convert` (its components are sixbit-jax checkpoints)."""
    return (folder / INFO_NAME).exists() and (folder / TEXT_ENCODER / INFO_NAME).exists()


def model_index(folder: Path) -> dict:
    """model_index.json as a dict, with a clear error for a folder that is not a pipeline."""
    path = folder / MODEL_INDEX
    if not folder.is_dir():
        raise CheckpointError(f"pipeline {folder} is not a folder")
    if not path.exists():
        raise CheckpointError(f"{folder} is not a pipeline folder (no {MODEL_INDEX}); pass the folder holding "
                              f"tokenizer/, text_encoder/, transformer/, vae/ and scheduler/")
    try:
        index = json.loads(path.read_text())
        index["_class_name"] = str(index["_class_name"])
        return index
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid model index ({type(e).__name__}: {e})") from None


def pipeline_class(folder: Path) -> str:
    """model_index.json's `_class_name` (see `model_index`)."""
    return model_index(folder)["_class_name"]


def check_components(folder: Path, names=(TOKENIZER, TEXT_ENCODER, TRANSFORMER, VAE, SCHEDULER)) -> None:
    """Every component folder is there (a converted pipeline keeps its transformer at the top)."""
    names = [n for n in names if not (n == TRANSFORMER and is_converted(folder))]
    missing = [n for n in names if not (folder / n).is_dir()]
    if missing:
        raise CheckpointError(f"pipeline {folder} is missing its {', '.join(f'{n}/' for n in missing)} "
                              f"folder{'s' if len(missing) > 1 else ''}")


def component_record(component: str, cfg, dtype) -> dict:
    """sixbit.json of a component checkpoint."""
    return {"component": component, "dtype": parse_dtype(dtype).name, "config": cfg.to_dict()}


def _load(pipeline: Path, name: str, component: str, *, convert, config_class, abstract, build, dtype):
    """Component `name` of a pipeline: converted in memory from a diffusers/transformers folder (`convert(folder)`),
    or restored from the sixbit-jax component checkpoint `sixbit convert` wrote there."""
    folder = pipeline / name
    if not (folder / INFO_NAME).exists():
        return convert(folder)
    info = read_info(folder)
    if info.get("component") != component:
        raise CheckpointError(f"{folder} holds {info.get('component') or 'a transformer'!r}, expected {component!r}")
    cfg = config_class.from_dict(info["config"])
    return build(cfg, restore_leaves(folder, abstract(cfg, parse_dtype(info["dtype"]))), dtype)


def load_text_encoder(pipeline: Path, *, dtype="bf16", progress: bool = False):
    """The pipeline's T5 / umT5 encoder in `dtype` on the default device."""
    from convert.t5 import abstract_params, encoder_from_leaves, load_t5_encoder
    from sixbit_jax.models.t5 import T5Config

    return _load(pipeline, TEXT_ENCODER, T5_COMPONENT, dtype=dtype, config_class=T5Config, abstract=abstract_params,
                 build=encoder_from_leaves, convert=lambda f: load_t5_encoder(f, dtype=dtype, progress=progress))


def vae_family(component: str):
    """The `convert.vae.VAEFamily` of a VAE component name (COGVIDEOX_VAE_COMPONENT or WAN_VAE_COMPONENT)."""
    if component == WAN_VAE_COMPONENT:
        from convert.vae_wan import WAN_VAE

        return WAN_VAE
    from convert.vae_cogvideox import COGVIDEOX_VAE

    return COGVIDEOX_VAE


def load_vae(pipeline: Path, *, component: str = COGVIDEOX_VAE_COMPONENT, dtype="bf16", progress: bool = False):
    """The pipeline's VAE (CogVideoX's, or Wan's with WAN_VAE_COMPONENT) in `dtype` on the default device."""
    family = vae_family(component)
    return _load(pipeline, VAE, component, dtype=dtype, config_class=family.config_class,
                 abstract=family.abstract_params, build=family.from_leaves,
                 convert=lambda f: family.load(f, dtype=dtype, progress=progress))


def text_problems(text_encoder, tokenizer, text_dim: int, field: str) -> list[str]:
    """What does not fit between a pipeline's tokenizer, text encoder and its transformer's text width (`field` is
    the transformer config's name for it)."""
    problems = []
    if text_encoder.config.d_model != text_dim:
        problems.append(f"the text encoder's width {text_encoder.config.d_model} is not the transformer's {field} "
                        f"{text_dim}")
    if tokenizer.vocab_size > text_encoder.config.vocab_size:
        problems.append(f"the tokenizer has {tokenizer.vocab_size} tokens but the text encoder embeds only "
                        f"{text_encoder.config.vocab_size}: they do not belong together")
    return problems


def prompt_lists(prompts, negative_prompts) -> tuple[list[str], list[str]]:
    """(prompts, negative prompts) as equal-length lists: a string is one prompt; the negative prompt defaults to
    "" (as diffusers) and a single one applies to every prompt."""
    from sixbit_jax.errors import InputError

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    negative_prompts = ([negative_prompts] * len(prompts) if isinstance(negative_prompts, str)
                        else list(negative_prompts or [""] * len(prompts)))
    if not prompts or len(negative_prompts) != len(prompts):
        raise InputError(f"{len(prompts)} prompts but {len(negative_prompts)} negative prompts")
    return prompts, negative_prompts


def first_frame_video(image, batch: int, height: int, width: int) -> np.ndarray:
    """An image-to-video pipeline's first frame as the VAE's input: float [H, W, 3] or [B, H, W, 3] in [0, 1] at
    the video's size -> [batch, 1, H, W, 3] in [-1, 1], as diffusers' video processor prepares it."""
    if image is None:
        raise InputError("this is an image-to-video pipeline: give the first frame (--image FILE)")
    image = np.asarray(image, np.float32)
    image = image[None] if image.ndim == 3 else image
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[0] not in (1, batch):
        raise InputError(f"the image must be [H, W, 3] or [{batch}, H, W, 3]; got {tuple(image.shape)}")
    if image.shape[1:3] != (height, width):
        raise InputError(f"the image is {image.shape[2]} x {image.shape[1]} but the video is {width} x {height}: "
                         f"resize it first (media.read_image does, as diffusers' image processor)")
    return np.broadcast_to(image, (batch, height, width, 3))[:, None] * 2 - 1
