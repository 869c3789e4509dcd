"""Whole pipelines: prompt -> text encoder -> sampler -> VAE -> frames, one module per model family; what they share
is here."""

from __future__ import annotations

import dataclasses
import gc
import time

import jax
import numpy as np


@dataclasses.dataclass
class PipelineOutput:
    frames: np.ndarray  # [B, F, H, W, 3] float32 in [0, 1]
    latents: jax.Array  # the denoised latents, in the family's layout
    result: object  # sampling.SampleResult: timing, schedule, the 6Bit runtime's statistics
    seconds: dict[str, float]  # wall time of each stage: encode, denoise, decode


class PromptEncoding:
    """The first stage of every pipeline: a family's `encode_prompts(list) -> embeddings` run on the prompts and,
    with CFG, the negative prompts; then the text encoder may be released before denoising."""

    def encode_for_sampling(self, prompts: list[str], negative_prompts: list[str], uses_cfg: bool,
                            release_text_encoder: bool) -> tuple[jax.Array, jax.Array | None, float]:
        """(embeddings, negative embeddings or None, seconds)."""
        start = time.perf_counter()
        embeds = self.encode_prompts(prompts)
        negative = self.encode_prompts(negative_prompts) if uses_cfg else None
        jax.block_until_ready(embeds)
        seconds = time.perf_counter() - start
        if release_text_encoder:
            self.text_encoder = None
            gc.collect()
        return embeds, negative, seconds
