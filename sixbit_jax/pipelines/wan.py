"""Prompt to frames with a Wan pipeline folder (Wan2.1 / 2.2 text-to-video, Wan2.2 A14B's two experts, Wan2.2
TI2V-5B with or without a first-frame image): tokenizer -> umT5 -> sampler (the DiT under the 6Bit runtime) -> Wan
VAE decode, as diffusers' `WanPipeline` (and, given an image, `WanImageToVideoPipeline`) does it.

    pipe = WanPipeline.from_folder("Wan2.1-T2V-1.3B-Diffusers")
    out = pipe(["a cat walking on grass"], settings=SamplerSettings(num_steps=50, guidance_scale=5.0))
    out.frames                                                   # [B, 81, 480, 832, 3] float32 in [0, 1]

Same steps and defaults as the diffusers pipeline: prompts cleaned (HTML entities, whitespace; ftfy's fixes too when
it is installed, as there), tokenized to 512 tokens with an attention mask, encoded by umT5 with that mask, and the
embeddings past each prompt's length set to zero; negative prompt "" for CFG; initial noise [B, 16, F, H/8, W/8] in
float32 from the seed; the UniPC flow sampler of the folder's scheduler config; the latents de-normalised with the
VAE's per-channel mean and std and decoded one latent frame at a time; frames (x + 1) / 2 clipped to [0, 1].

A diffusers folder is converted in memory on every load; `sixbit convert` writes one that loads directly."""

from __future__ import annotations

import dataclasses
import html
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sixbit_jax.checkpoint import load_checkpoint
from sixbit_jax.errors import CheckpointError, InputError
from sixbit_jax.models import WanTransformer3D, t5
from sixbit_jax.models.vae_wan import decode_latents, encode, normalize_latents, postprocess
from sixbit_jax.models.wan import WanExperts
from sixbit_jax.pipelines import PipelineOutput, PromptEncoding, components
from sixbit_jax.quant.spec import QuantSpec
from sixbit_jax.runtime import RuntimeConfig
from sixbit_jax.sampling import SamplerSettings, sample
from sixbit_jax.schedulers import FlowSchedulerConfig
from sixbit_jax.tokenizer import T5Tokenizer, load_tokenizer

PIPELINE_CLASSES = ("WanPipeline",)
TRANSFORMER, TRANSFORMER_2 = "transformer", "transformer_2"  # Wan2.2 A14B: the high- and low-noise experts
DEFAULT_STEPS, DEFAULT_FPS = 50, 16  # WanPipeline's and Wan's export fps
DEFAULT_GUIDANCE = WanTransformer3D.DEFAULT_GUIDANCE
MAX_SEQUENCE_LENGTH = 512


def clean_prompt(text: str) -> str:
    """WanPipeline's prompt_clean: ftfy's fix_text where installed, HTML entities unescaped twice, runs of
    whitespace collapsed, ends stripped."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class WanPipeline(PromptEncoding):
    """`expand_timesteps` (model_index.json; Wan2.2 TI2V-5B): every token has its own timestep, which makes the
    image mode possible (`image=`: the first frame's latents replace the first latent frame, at timestep 0, as
    diffusers' WanImageToVideoPipeline does for that model). Without an image every token's timestep is t: the
    scalar timestep, exactly."""

    def __init__(self, transformer: WanTransformer3D | WanExperts, text_encoder, tokenizer: T5Tokenizer, vae,
                 scheduler: FlowSchedulerConfig, *, expand_timesteps: bool = False):
        self.transformer, self.text_encoder, self.tokenizer = transformer, text_encoder, tokenizer
        self.vae, self.scheduler, self.expand_timesteps = vae, scheduler, expand_timesteps
        self._check_compatible()
        # Latent sizes follow this pipeline's VAE (Wan2.1's compresses 4 x 8 x 8, Wan2.2 TI2V-5B's 4 x 16 x 16).
        vae_stride = (vae.config.temporal_ratio, vae.config.spatial_ratio, vae.config.spatial_ratio)
        for model in (transformer.high, transformer.low) if isinstance(transformer, WanExperts) else (transformer,):
            model.vae_stride = vae_stride

    @classmethod
    def from_folder(cls, folder: str | Path, *, dtype="bf16", quant: QuantSpec | None = None,
                    progress: bool = False) -> "WanPipeline":
        """Load a diffusers Wan pipeline folder, converting every model in memory (`quant` stores the transformer's
        block linears in NVFP4 on the way), or one converted by `sixbit convert` (quantized or not as written). A
        Wan2.2 A14B folder (transformer/ and transformer_2/, boundary_ratio in model_index.json) loads both
        experts."""
        from convert.converter import load_transformer

        folder = Path(folder)
        index = components.model_index(folder)
        if index["_class_name"] not in PIPELINE_CLASSES:
            raise CheckpointError(f"{folder} is a {index['_class_name']}; the Wan pipeline supports "
                                  f"{', '.join(PIPELINE_CLASSES)}")
        components.check_components(folder)
        experts = [TRANSFORMER] + ([TRANSFORMER_2] if (folder / TRANSFORMER_2).is_dir() else [])
        if len(experts) == 2 and index.get("boundary_ratio") is None:
            raise CheckpointError(f"{folder} has {TRANSFORMER_2}/ but no boundary_ratio in model_index.json")
        converted = components.is_converted(folder)
        models = []
        for name in experts:
            if converted:  # the first expert's checkpoint is the folder itself, the second's its transformer_2/
                model = load_checkpoint(folder if name == TRANSFORMER else folder / name, dtype=dtype)
            else:
                model = load_transformer(folder / name, dtype=dtype, progress=progress, quant=quant)
            if not isinstance(model, WanTransformer3D):
                raise CheckpointError(f"{folder / name} is not a Wan transformer")
            models.append(model)
        scheduler = FlowSchedulerConfig.from_json(folder / components.SCHEDULER / "scheduler_config.json")
        transformer = models[0] if len(models) == 1 else WanExperts(
            *models, boundary=float(index["boundary_ratio"]) * scheduler.num_train_timesteps)
        return cls(transformer, components.load_text_encoder(folder, dtype=dtype, progress=progress),
                   load_tokenizer(folder / components.TOKENIZER),
                   components.load_vae(folder, component=components.WAN_VAE_COMPONENT, dtype="fp32",  # as WanPipeline
                                       progress=progress),
                   scheduler, expand_timesteps=bool(index.get("expand_timesteps", False)))

    def _check_compatible(self) -> None:
        cfg = self.transformer.config
        problems = components.text_problems(self.text_encoder, self.tokenizer, cfg.text_dim, "text_dim")
        if self.vae.config.z_dim != cfg.out_channels:
            problems.append(f"the VAE's z_dim {self.vae.config.z_dim} is not the transformer's out_channels "
                            f"{cfg.out_channels}")
        if problems:
            raise CheckpointError("pipeline components do not fit together: " + "; ".join(problems))

    def image_latents(self, image, batch: int, height: int | None, width: int | None) -> jax.Array:
        """WanImageToVideoPipeline's prepare_latents for expand_timesteps models: the first frame through the VAE
        encoder (the posterior's mode), normalised by the VAE's latent mean and std -> [B, C, 1, h, w] float32."""
        if not self.expand_timesteps:
            raise InputError("this Wan pipeline takes no image: the image mode is Wan2.2 TI2V-5B's (expand_timesteps "
                             "in model_index.json); Wan2.1's image-to-video models (CLIP image encoder) are not "
                             "implemented")
        video = components.first_frame_video(image, batch, *self.transformer.video_size(height, width))
        return normalize_latents(self.vae.config, encode(self.vae, jnp.asarray(video)))

    def encode_prompts(self, prompts: list[str]) -> jax.Array:
        """umT5 embeddings [B, 512, D] in the transformer's dtype, zero past each prompt's tokens (as the pipeline
        computes them)."""
        if self.text_encoder is None:
            raise InputError("the text encoder was released after encoding (release_text_encoder=True)")
        ids, mask = self.tokenizer.encode_with_mask([clean_prompt(p) for p in prompts], MAX_SEQUENCE_LENGTH)
        hidden = t5.encode(self.text_encoder, np.asarray(ids), np.asarray(mask))
        return jnp.where(jnp.asarray(mask, bool)[..., None], hidden, 0).astype(self.transformer.dtype)

    def __call__(self, prompts: list[str] | str, negative_prompts: list[str] | str | None = None, *,
                 frames: int | None = None, height: int | None = None, width: int | None = None,
                 settings: SamplerSettings | None = None, latents=None, runtime: RuntimeConfig | None = None,
                 progress: bool = False, release_text_encoder: bool = False, mesh=None,
                 image=None) -> PipelineOutput:
        """Sample videos for `prompts` (default size 81 frames at 480 x 832). `latents` [B, 16, F, h, w] replace the
        noise drawn from `settings.seed`; `release_text_encoder` drops umT5 from memory (11 GB in bf16) once the
        prompts are encoded, before denoising; `mesh` (`parallel.sequence_mesh(n)`) denoises sequence-parallel
        over its devices. `image` (expand_timesteps pipelines: Wan2.2 TI2V-5B): the first frame, float
        [H, W, 3] or [B, H, W, 3] in [0, 1] at the video's size (`media.read_image` reads and resizes a file as
        diffusers does)."""
        prompts, negative_prompts = components.prompt_lists(prompts, negative_prompts)
        settings = dataclasses.replace(settings or SamplerSettings(guidance_scale=DEFAULT_GUIDANCE),
                                       scheduler_config=self.scheduler)
        embeds, negative, encode_seconds = self.encode_for_sampling(prompts, negative_prompts, settings.uses_cfg,
                                                                    release_text_encoder)
        seconds = {"encode": encode_seconds}
        condition = None if image is None else self.image_latents(image, len(prompts), height, width)
        result = sample(self.transformer, embeds, negative, latents=latents, settings=settings, frames=frames,
                        height=height, width=width, progress=progress, runtime=runtime, mesh=mesh,
                        condition=condition)
        seconds["denoise"] = result.seconds
        start = time.perf_counter()
        video = postprocess(decode_latents(self.vae, result.latents))
        frames_out = np.asarray(jax.device_get(video), np.float32)
        seconds["decode"] = time.perf_counter() - start
        return PipelineOutput(frames_out, result.latents, result, seconds)
