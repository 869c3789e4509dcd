"""Tiny random CogVideoX pipelines in the real diffusers layout (save_pretrained), and diffusers' own
`CogVideoXPipeline` on them: the live reference for `sixbit generate`."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers_ref import TINY, tiny_diffusers_model  # noqa: E402

CORPUS = ["the quick brown fox jumps over the lazy dog", "a red circle moving left on a blue background",
          "Café déjà vu naïve résumé", "hello world, this is a test of the tokenizer!", "numbers 123 456 7890",
          "A panda, dressed in a small red jacket and a tiny hat, sits on a wooden stool in a bamboo forest."]
SPM_VOCAB = 100
# Tiny T5 v1.1 (gated GELU) sized for TINY's text_embed_dim; vocab = the sentencepiece model's + 100 extra ids.
T5_TINY = dict(vocab_size=SPM_VOCAB + 100, d_model=TINY["text_embed_dim"], d_kv=8, num_heads=4, d_ff=48,
               num_layers=2, relative_attention_num_buckets=32, relative_attention_max_distance=128,
               feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# Tiny AutoencoderKLCogVideoX: 8x spatial and 4x temporal compression as the real one, few channels.
VAE_TINY = dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
                latent_channels=TINY["in_channels"], sample_height=64, sample_width=96)
SCHEDULER = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                 num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                 set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")


def write_spm_model(folder: Path) -> Path:
    """A tiny unigram sentencepiece model with T5's special ids (pad 0, eos 1, unk 2, no bos) as spiece.model."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=SPM_VOCAB,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return folder


I2V_OVERRIDES = {"5b": dict(use_learned_positional_embeddings=True), "1.5": dict(ofs_embed_dim=TINY["time_embed_dim"])}


def tiny_pipeline(folder: Path, flavour: str, seed: int = 0, *, image_to_video: bool = False):
    """A diffusers CogVideoXPipeline (or CogVideoXImageToVideoPipeline: in-channels doubled, 5b's learned positions
    or 1.5's ofs embedding) with tiny random components (DDIM scheduler, the flavour's SNR shift), saved to
    `folder` with save_pretrained; returns the pipeline."""
    gen = torch.Generator().manual_seed(seed)
    spm_folder = write_spm_model(folder.parent / f"{folder.name}-spm")
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(spm_folder))
    text_encoder = transformers.T5EncoderModel(transformers.T5Config(**T5_TINY)).eval()
    with torch.no_grad():
        for name, p in text_encoder.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen) if "layer_norm" in name
                    else torch.randn(p.shape, generator=gen) * (3.0 if "relative_attention_bias" in name else 0.3))
    vae = diffusers.AutoencoderKLCogVideoX(**VAE_TINY).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen) if "norm" in name and name.endswith("weight")
                    and p.ndim == 1 else torch.randn(p.shape, generator=gen) * (0.2 if p.ndim > 1 else 0.05))
    scheduler = diffusers.CogVideoXDDIMScheduler(**SCHEDULER, snr_shift_scale=3.0 if flavour == "2b" else 1.0)
    overrides = dict(in_channels=2 * TINY["in_channels"], **I2V_OVERRIDES[flavour]) if image_to_video else {}
    pipeline_class = diffusers.CogVideoXImageToVideoPipeline if image_to_video else diffusers.CogVideoXPipeline
    pipe = pipeline_class(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                          transformer=tiny_diffusers_model(flavour, seed=seed + 1, **overrides))
    pipe.save_pretrained(folder)
    # transformers 5 saves tokenizer.json only; the hub's CogVideoX folders ship spiece.model, which is what we read
    shutil.copy2(spm_folder / "spiece.model", folder / "tokenizer" / "spiece.model")
    return pipe


def reference_frames(pipe, prompt: str, latents: np.ndarray, *, steps: int, guidance: float,
                     negative_prompt: str = "", frames: int | None = None, image=None,
                     posterior_noise: np.ndarray | None = None) -> np.ndarray:
    """diffusers' CogVideoXPipeline from the given initial latents [B, F, C, h, w]: frames [F, H, W, 3] in [0, 1].
    `frames` (video frames) defaults to what F latent frames decode to; CogVideoX 1.5's latents carry its padding
    frames, so give `frames` there. Image-to-video: `image` (a PIL image) and `posterior_noise` [B, 1, C, h, w],
    the draw the VAE posterior's sample then uses (diffusers would draw its own from a torch generator)."""
    _, f, _, h, w = latents.shape
    frames = frames or (f - 1) * pipe.vae_scale_factor_temporal + 1
    extra = {}
    if image is not None:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        noise = torch.from_numpy(np.asarray(posterior_noise, np.float32).transpose(0, 2, 1, 3, 4).copy())
        extra["image"] = image
        patch = pytest.MonkeyPatch.context()
    else:
        patch = contextlib.nullcontext()
    with torch.no_grad(), patch as mp:
        if image is not None:
            mp.setattr(DiagonalGaussianDistribution, "sample",
                       lambda self, generator=None: self.mean + self.std * noise)
        out = pipe(prompt=prompt, negative_prompt=negative_prompt, num_frames=frames, **extra,
                   height=h * pipe.vae_scale_factor_spatial, width=w * pipe.vae_scale_factor_spatial,
                   num_inference_steps=steps, guidance_scale=guidance, latents=torch.from_numpy(latents),
                   output_type="np", max_sequence_length=pipe.transformer.config.max_text_seq_length)
    return np.asarray(out.frames[0], np.float32)
