"""The diffusers -> sixbit-jax key map for CogVideoX. The only place that knows the PyTorch tensor names.

Every diffusers tensor maps to one leaf of the model's parameter tree (`nnx.to_pure_dict` layout); per-block tensors
`transformer_blocks.{i}.*` land in row i of a leaf stacked over layers. Linear weights keep PyTorch's [out, in]
layout; 1.0's patch Conv2d weight [D, C, p, p] is flattened to the dense weight [D, C*p*p]."""

from __future__ import annotations

from convert.source import TensorSpec
from sixbit_jax.config import CogVideoXConfig


# diffusers block-relative name -> our block-relative path
_BLOCK_MODULES = {
    "norm1.linear": ("norm1", "linear"),
    "norm1.norm": ("norm1", "norm"),
    "attn1.norm_q": ("attn1", "norm_q"),
    "attn1.norm_k": ("attn1", "norm_k"),
    "attn1.to_q": ("attn1", "to_q"),
    "attn1.to_k": ("attn1", "to_k"),
    "attn1.to_v": ("attn1", "to_v"),
    "attn1.to_out.0": ("attn1", "to_out"),
    "norm2.linear": ("norm2", "linear"),
    "norm2.norm": ("norm2", "norm"),
    "ff.net.0.proj": ("ff", "proj_in"),
    "ff.net.2": ("ff", "proj_out"),
}


def _linear(name: str, target: tuple[str, ...], n_out: int, n_in: int, layer: int | None = None):
    return [TensorSpec(f"{name}.weight", (n_out, n_in), target + ("weight",), layer),
            TensorSpec(f"{name}.bias", (n_out,), target + ("bias",), layer)]


def _norm(name: str, target: tuple[str, ...], n: int, layer: int | None = None):
    return [TensorSpec(f"{name}.weight", (n,), target + ("weight",), layer),
            TensorSpec(f"{name}.bias", (n,), target + ("bias",), layer)]


def _block_specs(cfg: CogVideoXConfig, i: int) -> list[TensorSpec]:
    d, hd, temb = cfg.inner_dim, cfg.attention_head_dim, cfg.time_embed_dim
    shapes = {
        "norm1.linear": (6 * d, temb), "norm2.linear": (6 * d, temb),
        "attn1.to_q": (d, d), "attn1.to_k": (d, d), "attn1.to_v": (d, d), "attn1.to_out.0": (d, d),
        "ff.net.0.proj": (4 * d, d), "ff.net.2": (d, 4 * d),
    }
    norms = {"norm1.norm": d, "norm2.norm": d, "attn1.norm_q": hd, "attn1.norm_k": hd}
    specs = []
    for name, target in _BLOCK_MODULES.items():
        full = f"transformer_blocks.{i}.{name}"
        target = ("transformer_blocks",) + target
        if name in shapes:
            specs += _linear(full, target, *shapes[name], layer=i)
        else:
            specs += _norm(full, target, norms[name], layer=i)
    return specs


def expected_tensors(cfg: CogVideoXConfig) -> dict[str, TensorSpec]:
    """Every tensor a diffusers CogVideoX (1.0 or 1.5) checkpoint of this config holds, keyed by its diffusers name."""
    d, p, c_in, temb = cfg.inner_dim, cfg.patch_size, cfg.in_channels, cfg.time_embed_dim
    if cfg.patch_size_t is None:  # 1.0: Conv2d(k=s=p) per frame
        patch_embed = [TensorSpec("patch_embed.proj.weight", (d, c_in, p, p), ("patch_embed", "proj", "weight"),
                                  target_shape=(d, c_in * p * p)),
                       TensorSpec("patch_embed.proj.bias", (d,), ("patch_embed", "proj", "bias"))]
    else:  # 1.5: a Linear over (c, pt, py, px) patches, with a bias whatever patch_bias says
        patch_embed = _linear("patch_embed.proj", ("patch_embed", "proj"), d, c_in * cfg.patch_volume)
    if cfg.use_learned_positional_embeddings:  # 5b-I2V
        tokens = cfg.max_text_seq_length + cfg.video_tokens(cfg.latent_frames(cfg.sample_frames), cfg.sample_height,
                                                            cfg.sample_width)
        patch_embed.append(TensorSpec("patch_embed.pos_embedding", (1, tokens, d), ("patch_embed", "pos_embedding")))
    if cfg.ofs_embed_dim is not None:  # 1.5-I2V
        patch_embed += [*_linear("ofs_embedding.linear_1", ("ofs_embedding", "linear_1"), cfg.ofs_embed_dim,
                                 cfg.ofs_embed_dim),
                        *_linear("ofs_embedding.linear_2", ("ofs_embedding", "linear_2"), cfg.ofs_embed_dim,
                                 cfg.ofs_embed_dim)]
    specs = [
        *patch_embed,
        *_linear("patch_embed.text_proj", ("patch_embed", "text_proj"), d, cfg.text_embed_dim),
        *_linear("time_embedding.linear_1", ("time_embedding", "linear_1"), temb, d),
        *_linear("time_embedding.linear_2", ("time_embedding", "linear_2"), temb, temb),
        *_norm("norm_final", ("norm_final",), d),
        *_linear("norm_out.linear", ("norm_out", "linear"), 2 * d, temb),
        *_norm("norm_out.norm", ("norm_out", "norm"), d),
        *_linear("proj_out", ("proj_out",), cfg.out_channels * cfg.patch_volume, d),
    ]
    for i in range(cfg.num_layers):
        specs += _block_specs(cfg, i)
    return {s.source_key: s for s in specs}
