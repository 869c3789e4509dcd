"""Prompt to frames with a CogVideoX pipeline folder: tokenizer -> T5 -> sampler (the DiT under the 6Bit runtime)
-> VAE decode, as diffusers' `CogVideoXPipeline` does it.

    pipe = CogVideoXPipeline.from_folder("CogVideoX-2b")          # diffusers folder, or one `sixbit convert` wrote
    out = pipe(["a panda playing a guitar"], settings=SamplerSettings(num_steps=50, guidance_scale=6.0))
    out.frames                                                   # [B, 49, 480, 720, 3] float32 in [0, 1]

Same steps and defaults as the diffusers pipeline: prompts padded/truncated to the transformer's
`max_text_seq_length` with EOS and pad 0 and encoded without an attention mask; negative prompt "" for CFG; initial
noise [B, F, C, H/8, W/8] in float32 from the seed; denoised latents / scaling_factor through the VAE, decoded two
latent frames at a time; frames (x + 1) / 2 clipped to [0, 1]."""

from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path

import jax
import numpy as np

from sixbit_jax.checkpoint import load_checkpoint
from sixbit_jax.errors import CheckpointError, InputError
from sixbit_jax.models import CogVideoXTransformer3D, t5
from sixbit_jax.models.cogvideox import QuantSpec
from sixbit_jax.models.vae_cogvideox import CogVideoXVAE, decode_latents, postprocess
from sixbit_jax.pipelines import components
from sixbit_jax.runtime import RuntimeConfig
from sixbit_jax.sampling import SampleResult, SamplerSettings, sample
from sixbit_jax.schedulers import SchedulerConfig
from sixbit_jax.tokenizer import T5Tokenizer, load_tokenizer

PIPELINE_CLASSES = ("CogVideoXPipeline",)
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_FPS = 50, 6.0, 8  # CogVideoXPipeline's and its example's


@dataclasses.dataclass
class PipelineOutput:
    frames: np.ndarray  # [B, F, H, W, 3] float32 in [0, 1]
    latents: jax.Array  # [B, F', C, h, w] the denoised latents (model dtype)
    result: SampleResult  # timing, schedule, the 6Bit runtime's statistics
    seconds: dict[str, float]  # wall time of each stage: encode, denoise, decode


class CogVideoXPipeline:
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
        problems = []
        if self.text_encoder.config.d_model != cfg.text_embed_dim:
            problems.append(f"the text encoder's width {self.text_encoder.config.d_model} is not the transformer's "
                            f"text_embed_dim {cfg.text_embed_dim}")
        if self.tokenizer.vocab_size > self.text_encoder.config.vocab_size:
            problems.append(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the text encoder embeds only "
                            f"{self.text_encoder.config.vocab_size}: they do not belong together")
        if self.vae.config.latent_channels != cfg.in_channels:
            problems.append(f"the VAE's latent_channels {self.vae.config.latent_channels} is not the transformer's "
                            f"in_channels {cfg.in_channels}")
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

    def encode_prompts(self, prompts: list[str]) -> jax.Array:
        """T5 embeddings [B, max_text_seq_length, D] in the transformer's dtype, as the pipeline computes them."""
        if self.text_encoder is None:
            raise InputError("the text encoder was released after encoding (release_text_encoder=True)")
        ids = self.tokenizer.encode(list(prompts), self.transformer.config.max_text_seq_length)
        return t5.encode(self.text_encoder, np.asarray(ids)).astype(self.transformer.dtype)

    def __call__(self, prompts: list[str] | str, negative_prompts: list[str] | str | None = None, *,
                 frames: int | None = None, height: int | None = None, width: int | None = None,
                 settings: SamplerSettings | None = None, latents=None, runtime: RuntimeConfig | None = None,
                 tile: bool = False, progress: bool = False, release_text_encoder: bool = False) -> PipelineOutput:
        """Sample videos for `prompts`. `latents` [B, F, C, h, w] replace the noise drawn from `settings.seed`;
        `tile` decodes in blended spatial tiles (diffusers' enable_tiling); `release_text_encoder` drops T5 from
        memory once the prompts are encoded (9.5 GB in bf16 for T5-XXL), before denoising."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negative_prompts = ([negative_prompts] * len(prompts) if isinstance(negative_prompts, str)
                            else list(negative_prompts or [""] * len(prompts)))
        if not prompts or len(negative_prompts) != len(prompts):
            raise InputError(f"{len(prompts)} prompts but {len(negative_prompts)} negative prompts")
        settings = dataclasses.replace(settings or SamplerSettings(), scheduler_config=self.scheduler)
        self._check_latent_frames(latents, frames)
        seconds = {}
        start = time.perf_counter()
        embeds = self.encode_prompts(prompts)
        negative = self.encode_prompts(negative_prompts) if settings.uses_cfg else None
        jax.block_until_ready(embeds)
        seconds["encode"] = time.perf_counter() - start
        if release_text_encoder:
            self.text_encoder = None
            gc.collect()
        result = sample(self.transformer, embeds, negative, latents=latents, settings=settings, frames=frames,
                        height=height, width=width, progress=progress, runtime=runtime)
        seconds["denoise"] = result.seconds
        start = time.perf_counter()
        # CogVideoX 1.5 samples whole temporal patches: the frames its pipeline padded in front are not decoded
        padding = self.transformer.config.frame_padding(frames or self.transformer.config.sample_frames)
        video = postprocess(decode_latents(self.vae, result.latents[:, padding:], tile=tile))
        frames_out = np.asarray(jax.device_get(video), np.float32)
        seconds["decode"] = time.perf_counter() - start
        return PipelineOutput(frames_out, result.latents, result, seconds)
