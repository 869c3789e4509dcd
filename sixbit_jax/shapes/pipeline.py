"""Prompts in, clips out: the shapes model's text encoder + the CogVideoX sampler, in pixel space.

    pipe = ShapesPipeline.from_checkpoint("out/checkpoint")        # a converted shapes pipeline folder
    clips = pipe(["a red circle moving right"], seed=0).clips        # [B, 8, 32, 32, 3] float32 in [0, 1]

The initial noise is drawn from `seed` alone (shape [B, 8, 3, 32, 32], float32, then cast to the model dtype), so
every precision mode starts from the same noise for the same seed and prompts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sixbit_jax import rng
from sixbit_jax.checkpoint import load_checkpoint
from sixbit_jax.errors import CheckpointError
from sixbit_jax.models import CogVideoXTransformer3D
from sixbit_jax.runtime import RuntimeConfig
from sixbit_jax.sampling import SampleResult, SamplerSettings, sample
from sixbit_jax.shapes import world
from sixbit_jax.shapes.text import TextEncoder, is_shapes_text_encoder

DEFAULT_PROMPT = "a red circle moving right"
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 2.0
PACKAGED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "cogvideox-shapes"
PACKAGED_CALIBRATION = PACKAGED_MODEL / "calibration.json"


@dataclasses.dataclass
class ShapesOutput:
    clips: np.ndarray  # [B, F, H, W, 3] float32 in [0, 1]
    result: SampleResult  # latents, timing, schedule


def packaged_checkpoint(*, progress: bool = True) -> Path:
    """The shipped model converted (float32, so every mode can cast from it) into the cache (sixbit_jax.cache):
    made on first use, reused after; never in a folder the user owns."""
    from convert import convert_checkpoint
    from sixbit_jax.cache import cached_checkpoint

    def convert(dst: Path) -> None:
        if progress:
            print(f"converting the shipped model once into the cache: {dst}")
        convert_checkpoint(PACKAGED_MODEL, dst, dtype="fp32", progress=progress)

    return cached_checkpoint(PACKAGED_MODEL, {"dtype": "fp32"}, convert)


class ShapesPipeline:
    def __init__(self, model: CogVideoXTransformer3D, text_encoder: TextEncoder):
        if text_encoder.dim != model.config.text_embed_dim:
            raise CheckpointError(f"text encoder width {text_encoder.dim} does not match the transformer's "
                                  f"text_embed_dim {model.config.text_embed_dim}")
        self.model, self.text_encoder = model, text_encoder

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, dtype=None) -> "ShapesPipeline":
        path = Path(path)
        if not is_shapes_text_encoder(path / "text_encoder"):
            raise CheckpointError(f"{path} has no shapes text encoder (text_encoder/); convert the whole pipeline "
                                  f"folder (e.g. {PACKAGED_MODEL}), not only its transformer/")
        return cls(load_checkpoint(path, dtype=dtype), TextEncoder.load(path / "text_encoder"))

    def noise(self, batch: int, seed: int) -> jax.Array:
        return rng.normal(jax.random.key(seed), (batch, world.FRAMES, self.model.config.in_channels,
                                                        world.SIZE, world.SIZE), jnp.float32)

    def __call__(self, prompts: list[str] | str, *, seed: int = 0, steps: int = DEFAULT_STEPS,
                 guidance: float = DEFAULT_GUIDANCE, scheduler: str = "ddim", progress: bool = False,
                 runtime: RuntimeConfig | None = None) -> ShapesOutput:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        embeds = self.text_encoder(prompts)
        negative = self.text_encoder([""] * len(prompts))
        settings = SamplerSettings(scheduler=scheduler, num_steps=steps, guidance_scale=guidance, seed=seed)
        result = sample(self.model, embeds, negative, latents=self.noise(len(prompts), seed), settings=settings,
                        progress=progress, runtime=runtime)
        return ShapesOutput(np.asarray(world.from_latents(result.latents)), result)


def calibration_rollouts(pipe: ShapesPipeline, prompts: list[str], *, prompts_per_rollout: int = 4,
                         seed: int = 0, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                         progress: bool = False, output_sensitivity: bool = False):
    """StepStats of calibration rollouts (the "calibrate" path in every block), one per group of prompts;
    `output_sensitivity` also measures each block's NVFP4 sensitivity at the model output (calibrate.SIGNALS)."""
    runtime = RuntimeConfig(mode="calibrate", output_sensitivity=output_sensitivity)
    groups = [prompts[i:i + prompts_per_rollout] for i in range(0, len(prompts), prompts_per_rollout)]
    return [pipe(group, seed=seed + i, steps=steps, guidance=guidance, runtime=runtime, progress=progress).result.stats
            for i, group in enumerate(groups) if len(group) == prompts_per_rollout]
