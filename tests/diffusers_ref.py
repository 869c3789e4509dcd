"""Live PyTorch references for the tests: tiny diffusers CogVideoX models with seeded random weights, and the
conversion of their state dicts through the project's own converter."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from convert import convert_tensors  # noqa: E402
from sixbit_jax.checkpoint import model_from_params  # noqa: E402
from sixbit_jax.config import CogVideoXConfig  # noqa: E402

TINY = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, text_embed_dim=32, in_channels=4,
            out_channels=4, time_embed_dim=32, sample_frames=9, sample_height=8, sample_width=12, patch_size=2,
            max_text_seq_length=8)


def tiny_diffusers_model(flavour: str, seed: int = 0, **overrides):
    """A diffusers CogVideoXTransformer3DModel with every tensor re-randomised (so biases, norm affines and the
    modulation are all non-trivial). flavour '2b': 3D sin-cos positions; '5b': 3D RoPE; '1.5': CogVideoX 1.5
    (patches of two latent frames, RoPE on the slice grid). Image-to-video variants through `overrides`
    (in_channels doubled; use_learned_positional_embeddings for 5b-I2V, ofs_embed_dim for 1.5-I2V)."""
    kwargs = dict(TINY, use_rotary_positional_embeddings=flavour in ("5b", "1.5"), **overrides)
    if flavour == "1.5":
        kwargs.update(patch_size_t=2, patch_bias=False)
    model = diffusers.CogVideoXTransformer3DModel(**kwargs).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen) * (0.3 if prm.ndim > 1 else 0.1))
        if model.config.use_learned_positional_embeddings:  # a checkpoint buffer, learned: text rows too
            model.patch_embed.pos_embedding.copy_(torch.randn(model.patch_embed.pos_embedding.shape, generator=gen))
    return model


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def jax_model_from_diffusers(model, dtype="fp32", **kwargs):
    cfg = CogVideoXConfig.from_dict(dict(model.config))
    sd = state_dict_numpy(model)
    params = convert_tensors(cfg, list(sd), lambda k: sd[k].shape, sd.__getitem__, dtype)
    return model_from_params(cfg, params, **kwargs)


def rope_for(model, frames: int, height: int, width: int):
    """The pipeline's RoPE tables for a latent grid, computed by diffusers itself (as the pipeline's
    `_prepare_rotary_positional_embeddings` calls it)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    from sixbit_jax.models.cogvideox import _crop_region

    cfg = model.config
    p = cfg.patch_size
    gh, gw = height // p, width // p
    if cfg.patch_size_t is not None:
        return get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=(gh, gw),
                                       temporal_size=-(-frames // cfg.patch_size_t), grid_type="slice",
                                       max_size=(cfg.sample_height // p, cfg.sample_width // p))
    crops = _crop_region(gh, gw, cfg.sample_height // p, cfg.sample_width // p)
    return get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=crops, grid_size=(gh, gw),
                                   temporal_size=frames)


def diffusers_forward(model, latents, text, timesteps, dtype=torch.float32):
    """One diffusers forward in `dtype`; inputs and output are numpy float32/64 arrays."""
    b, f, c, h, w = latents.shape
    rope = rope_for(model, f, h, w) if model.config.use_rotary_positional_embeddings else None
    model = model.to(dtype)
    with torch.no_grad():
        out = model(hidden_states=torch.from_numpy(np.asarray(latents)).to(dtype),
                    encoder_hidden_states=torch.from_numpy(np.asarray(text)).to(dtype),
                    timestep=torch.from_numpy(np.asarray(timesteps)),
                    image_rotary_emb=rope, return_dict=False,
                    ofs=None if model.config.ofs_embed_dim is None else torch.full((1,), 2.0))[0]
    return out.float().numpy()
