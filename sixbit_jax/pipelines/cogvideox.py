"""Prompt to frames with a CogVideoX pipeline folder: tokenizer -> T5 -> sampler (the DiT under the 6Bit runtime)
-> VAE decode, as diffusers' `CogVideoXPipeline` does it.

    pipe = CogVideoXPipeline.from_folder("CogVideoX-2b")          # diffusers folder, or one `sixbit convert` wrote
    out = pipe(["a panda playing a guitar"], settings=SamplerSettings(num_steps=50, guidance_scale=6.0))
    out.frames                                                   # [B, 49, 480, 720, 3] float32 in [0, 1]

Same steps and defaults as the diffusers pipeline: prompts padded/truncated to the transformer's
`max_text_seq_length` with EOS and pad 0 and encoded without an attention mask; negative prompt "" for CFG; initial
noise [B, F, C, H/8, W/8] in float32 from the seed; denoised latents / scaling_factor through the VAE, decoded two
latent frames at a time; frames (x + 1) / 2 clipped to [0, 1].

Image-to-video folders (`CogVideoXImageToVideoPipeline`: 5b-I2V, 1.5-5B-I2V) take `image=` as well, as diffusers'
pipeline does: the image, at the video's size, through the VAE encoder (a sample of its posterior, scaled by the
VAE's scaling_factor) as the first latent frame and zeros after it, concatenated to the noise on channels at every
step."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sixbit_jax import rng
from sixbit_jax.checkpoint import load_checkpoint
from sixbit_jax.errors import CheckpointError, InputError
from sixbit_jax.models import CogVideoXTransformer3D, t5
from sixbit_jax.quant.spec import QuantSpec
from sixbit_jax.models.vae_cogvideox import CogVideoXVAE, decode_latents, encode, postprocess
from sixbit_jax.pipelines import PipelineOutput, PromptEncoding, components
from sixbit_jax.runtime import RuntimeConfig
from sixbit_jax.sampling import SamplerSettings, sample
from sixbit_jax.schedulers import SchedulerConfig
from sixbit_jax.tokenizer import T5Tokenizer, load_tokenizer

IMAGE_TO_VIDEO = ("CogVideoXImageToVideoPipeline",)
PIPELINE_CLASSES = ("CogVideoXPipeline", *IMAGE_TO_VIDEO)
DEFAULT_STEPS, DEFAULT_FPS = 50, 8  # CogVideoXPipeline's and its example's
DEFAULT_GUIDANCE = CogVideoXTransformer3D.DEFAULT_GUIDANCE


def image_posterior_noise(seed: int, shape: tuple[int, ...]) -> jax.Array:
    """The standard-normal draw of the image latents' VAE posterior sample for `seed` (apart from the sampler's)."""
    return rng.normal(jax.random.fold_in(jax.random.key(seed), 1), shape, jnp.float32)


class CogVideoXPipeline(PromptEncoding):
    def __init__(self, transformer: CogVideoXTransformer3D, text_encoder, tokenizer: T5Tokenizer,
                 vae: CogVideoXVAE, scheduler: SchedulerConfig):
        self.transformer, self.text_encoder, self.tokenizer = transformer, text_encoder, tokenizer
        self.vae, self.scheduler = vae, scheduler
        self._check_compatible()

    @classmethod
    def from_folder(cls, folder: str | Path, *, dtype="bf16", quant: QuantSpec | None = None,
                    progress: bool = False) -> "CogVideoXPipeline":
        """Load a diffusers CogVideoX pipeline folder (converting every model in memory; `quant` stores the block
        linears in NVFP4 on the way) or a pipeline converted by `sixbit convert` (quantized or not as written)."""
        folder = Path(folder)
        name = components.pipeline_class(folder)
        if name not in PIPELINE_CLASSES:
            raise CheckpointError(f"{folder} is a {name}; sixbit generate supports {', '.join(PIPELINE_CLASSES)}")
        components.check_components(folder)
        if components.is_converted(folder):
            transformer = load_checkpoint(folder, dtype=dtype)
        else:
            from convert.converter import load_transformer

            transformer = load_transformer(folder / components.TRANSFORMER, dtype=dtype, progress=progress,
                                           quant=quant)
        return cls(transformer,
                   components.load_text_encoder(folder, dtype=dtype, progress=progress),
                   load_tokenizer(folder / components.TOKENIZER),
                   components.load_vae(folder, dtype=dtype, progress=progress),
                   SchedulerConfig.from_json(folder / components.SCHEDULER / "scheduler_config.json"))

    def _check_compatible(self) -> None:
        cfg = self.transformer.config
        problems = components.text_problems(self.text_encoder, self.tokenizer, cfg.text_embed_dim, "text_embed_dim")
        if self.vae.config.latent_channels != cfg.out_channels:
            problems.append(f"the VAE's latent_channels {self.vae.config.latent_channels} is not the transformer's "
                            f"out_channels {cfg.out_channels}")
        if cfg.in_channels not in (cfg.out_channels, 2 * cfg.out_channels):
            problems.append(f"the transformer's in_channels {cfg.in_channels} is neither its out_channels (text to "
                            f"video) nor twice that (image to video)")
        if problems:
            raise CheckpointError("pipeline components do not fit together: " + "; ".join(problems))

    def _check_latent_frames(self, latents, frames: int | None) -> None:
        """Given latents and a frame count must agree (diffusers would decode whatever the latents hold)."""
        if latents is None or frames is None:
            return
        cfg = self.transformer.config
        padding = cfg.frame_padding(frames)
        expected = cfg.latent_frames(frames) + padding
        if latents.shape[1] != expected:
            padded = f" ({expected - padding} + {padding} padding frame in front, as CogVideoX 1.5 samples)" \
                if padding else ""
            raise InputError(f"{frames} frames need latents of {expected} frames{padded}; the given latents have "
                             f"{latents.shape[1]}")

    def image_latents(self, image, batch: int, latents, frames: int | None, height: int | None,
                      width: int | None, seed: int, noise=None) -> jax.Array:
        """diffusers' image-to-video `prepare_latents`: the image [B, 1, C, h, w] latents (a posterior sample,
        scaled), then zeros for the remaining latent frames. The latent shape is the given latents' or the one the
        sampler will draw."""
        height, width = self.transformer.video_size(height, width)
        video = components.first_frame_video(image, batch, height, width)
        shape = latents.shape if latents is not None else self.transformer.latent_shape(batch, frames, height, width)
        if noise is None:
            noise = image_posterior_noise(seed, (batch, 1) + tuple(shape[2:]))
        first = encode(self.vae, jnp.asarray(video), posterior_noise=jnp.asarray(noise, jnp.float32))
        scale = self.vae.config.scaling_factor
        # The 1.5-I2V folders set invert_scale_latents: their model was trained on latents divided by the factor.
        first = first / scale if self.vae.config.invert_scale_latents else first * scale
        return jnp.concatenate([first, jnp.zeros((batch, shape[1] - 1) + tuple(shape[2:]), first.dtype)], axis=1)

    def encode_prompts(self, prompts: list[str]) -> jax.Array:
        """T5 embeddings [B, max_text_seq_length, D] in the transformer's dtype, as the pipeline computes them."""
        if self.text_encoder is None:
            raise InputError("the text encoder was released after encoding (release_text_encoder=True)")
        ids = self.tokenizer.encode(list(prompts), self.transformer.config.max_text_seq_length)
        return t5.encode(self.text_encoder, np.asarray(ids)).astype(self.transformer.dtype)

    def __call__(self, prompts: list[str] | str, negative_prompts: list[str] | str | None = None, *,
                 frames: int | None = None, height: int | None = None, width: int | None = None,
                 settings: SamplerSettings | None = None, latents=None, runtime: RuntimeConfig | None = None,
                 tile: bool = False, progress: bool = False, release_text_encoder: bool = False,
                 image=None, image_noise=None, mesh=None) -> PipelineOutput:
        """Sample videos for `prompts`. `latents` [B, F, C, h, w] replace the noise drawn from `settings.seed`;
        `tile` decodes in blended spatial tiles (diffusers' enable_tiling); `release_text_encoder` drops T5 from
        memory once the prompts are encoded (9.5 GB in bf16 for T5-XXL), before denoising. Image-to-video
        pipelines need `image`: float [H, W, 3] or [B, H, W, 3] in [0, 1] at the video's size (`media.read_image`
        reads and resizes a file as diffusers does); `image_noise` [B, 1, C, h, w] replaces the VAE posterior's
        noise drawn from the seed. `mesh` (`parallel.sequence_mesh(n)`) denoises sequence-parallel over its
        devices."""
        prompts, negative_prompts = components.prompt_lists(prompts, negative_prompts)
        settings = dataclasses.replace(settings or SamplerSettings(), scheduler_config=self.scheduler)
        self._check_latent_frames(latents, frames)
        embeds, negative, encode_seconds = self.encode_for_sampling(prompts, negative_prompts, settings.uses_cfg,
                                                                    release_text_encoder)
        seconds = {"encode": encode_seconds}
        condition = None
        if self.transformer.config.image_conditioned:
            condition = self.image_latents(image, len(prompts), latents, frames, height, width, settings.seed,
                                           image_noise)
        elif image is not None:
            raise InputError("an image was given but this is a text-to-video pipeline")
        result = sample(self.transformer, embeds, negative, latents=latents, settings=settings, frames=frames,
                        height=height, width=width, progress=progress, runtime=runtime, condition=condition,
                        mesh=mesh)
        seconds["denoise"] = result.seconds
        start = time.perf_counter()
        # CogVideoX 1.5 samples whole temporal patches: the frames its pipeline padded in front are not decoded
        padding = self.transformer.config.frame_padding(frames or self.transformer.config.sample_frames)
        video = postprocess(decode_latents(self.vae, result.latents[:, padding:], tile=tile))
        frames_out = np.asarray(jax.device_get(video), np.float32)
        seconds["decode"] = time.perf_counter() - start
        return PipelineOutput(frames_out, result.latents, result, seconds)
