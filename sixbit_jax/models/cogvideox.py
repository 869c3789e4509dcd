"""CogVideoX transformers in Flax NNX: 1.0 (2B and 5B) and 1.5 (5B, temporal patches), text- and image-to-video.

Mirrors diffusers' `CogVideoXTransformer3DModel`; module and parameter names follow the diffusers checkpoint
(`patch_embed.proj`, `transformer_blocks.norm1.linear`, `attn1.to_q`, ...), with two differences that the converter
maps: the transformer blocks are stacked along a leading layer axis and run under one `lax.scan` (one compiled
block instead of 30 or 42), and `attn1.to_out.0` / `ff.net.0.proj` / `ff.net.2` are named `attn1.to_out` /
`ff.proj_in` / `ff.proj_out`.

Data layout: latents are [B, F, C, H, W] (frames before channels, as in diffusers); tokens are [B, N, D] with the
text tokens first; attention works on [B, N, heads, head_dim].

Positional information is precomputed on the host (float64, like diffusers) by `positional_tables`:
2B adds a 3D sin-cos table to the video tokens, 5B rotates video q/k with 3D RoPE in float32.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sixbit_jax.config import CogVideoXConfig
from sixbit_jax.errors import InputError
from sixbit_jax.layers import Dense, LayerNorm, LinearRuntime, block_implementation, dot_product_attention, project
from sixbit_jax.layers.embeddings import TimestepEmbedding, apply_rope, rope_3d, timestep_sinusoid
from sixbit_jax.layers.stacked import stacked_layers
from sixbit_jax.models.block_control import BlockControl, run_controlled_blocks
from sixbit_jax.quant.spec import QuantSpec, block_linear
from sixbit_jax.schedulers.cogvideox import SchedulerConfig


# ----------------------------------------------------------------------------------------------------------------
# Non-learned tables
# ----------------------------------------------------------------------------------------------------------------
# CogVideoX1.5-I2V's "ofs" input: diffusers' image-to-video pipeline always passes 2.0.
OFS = 2.0


class PositionalTables(NamedTuple):
    """Host-computed positional information for one latent grid. 2B uses `sincos` [N_video, D]; 5B uses
    `rope_cos`/`rope_sin` [N_video, head_dim]; 5b-I2V away from its frame count both. Unused fields are None."""

    sincos: jax.Array | None = None
    rope_cos: jax.Array | None = None
    rope_sin: jax.Array | None = None


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    args = np.outer(positions.astype(np.float64), omega)
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)


def sincos_table(cfg: CogVideoXConfig, frames: int, grid_h: int, grid_w: int) -> np.ndarray:
    """diffusers' get_3d_sincos_pos_embed: per video token [temporal D/4 | spatial 3D/4], spatial being
    [w-coordinate half | h-coordinate half]. Float32 grids, float64 trigonometry, tokens in (f, h, w) order."""
    dim = cfg.inner_dim
    spatial_dim, temporal_dim = 3 * dim // 4, dim // 4
    scale = np.float32(cfg.spatial_interpolation_scale)
    hh, ww = np.meshgrid(np.arange(grid_h, dtype=np.float32) / scale, np.arange(grid_w, dtype=np.float32) / scale,
                         indexing="ij")
    spatial = np.concatenate([_sincos_1d(spatial_dim // 2, ww.reshape(-1)),
                              _sincos_1d(spatial_dim // 2, hh.reshape(-1))], axis=1)
    t = np.arange(frames, dtype=np.float32) / np.float32(cfg.temporal_interpolation_scale)
    temporal = _sincos_1d(temporal_dim, t)
    table = np.concatenate([np.repeat(temporal[:, None], grid_h * grid_w, axis=1),
                            np.repeat(spatial[None], frames, axis=0)], axis=-1)
    return table.reshape(frames * grid_h * grid_w, dim)


def _crop_region(grid_h: int, grid_w: int, base_h: int, base_w: int):
    """The pipeline's get_resize_crop_region_for_grid: fit the grid into the base grid keeping aspect, centred."""
    if grid_h / grid_w > base_h / base_w:
        resize_h, resize_w = base_h, int(round(base_h / grid_h * grid_w))
    else:
        resize_w, resize_h = base_w, int(round(base_w / grid_w * grid_h))
    top, left = int(round((base_h - resize_h) / 2.0)), int(round((base_w - resize_w) / 2.0))
    return (top, left), (top + resize_h, left + resize_w)


def _rope_positions(cfg: CogVideoXConfig, frames: int, grid_h: int, grid_w: int):
    """Token positions along (t, h, w). CogVideoX 1.0: the "linspace" grid, the video's grid fitted into the base
    grid (sample size); 1.5: the "slice" grid, integer positions (no larger than the base grid, as diffusers slices
    its base tables), one temporal position per patch of frames."""
    p = cfg.patch_size
    base_h, base_w = cfg.sample_height // p, cfg.sample_width // p
    if cfg.patch_size_t is not None:
        if grid_h > base_h or grid_w > base_w:
            raise InputError(f"CogVideoX 1.5 positions cover at most {base_h} x {base_w} patches (sample_height x "
                             f"sample_width / patch_size); got {grid_h} x {grid_w}")
        return np.arange(frames, dtype=np.float64), np.arange(grid_h, dtype=np.float64), np.arange(grid_w,
                                                                                                   dtype=np.float64)
    (top, left), (bottom, right) = _crop_region(grid_h, grid_w, base_h, base_w)
    return (np.linspace(0, frames * (frames - 1) / frames, frames),
            np.linspace(top, bottom * (grid_h - 1) / grid_h, grid_h),
            np.linspace(left, right * (grid_w - 1) / grid_w, grid_w))


def rope_tables(cfg: CogVideoXConfig, frames: int, grid_h: int, grid_w: int):
    """The pipeline's 3D RoPE: head dim split [t: d/4 | h: 3d/8 | w: 3d/8], cos and sin repeated per (even, odd)
    pair. `frames` counts temporal positions (patches of frames in 1.5). Returns float64 (cos, sin), each
    [frames * grid_h * grid_w, head_dim]."""
    hd = cfg.attention_head_dim
    return rope_3d((hd // 4, hd // 8 * 3, hd // 8 * 3), _rope_positions(cfg, frames, grid_h, grid_w))


def uses_learned_positions(cfg: CogVideoXConfig, frames: int, height: int, width: int) -> bool:
    """Whether the learned table (5b-I2V) is added for this latent size. As in diffusers: only at the sample
    height and width (anything else is refused); at another frame count the 3D sin-cos table is added instead."""
    if not cfg.use_learned_positional_embeddings:
        return False
    if (height, width) != (cfg.sample_height, cfg.sample_width):
        raise InputError(f"this model (learned positional embeddings, CogVideoX-5b-I2V) samples only its own size, "
                         f"{cfg.sample_height} x {cfg.sample_width} latents ({8 * cfg.sample_height} x "
                         f"{8 * cfg.sample_width} pixels); got {height} x {width}")
    return frames == cfg.latent_frames(cfg.sample_frames)


def positional_tables(cfg: CogVideoXConfig, frames: int, height: int, width: int, dtype) -> PositionalTables:
    """Tables for a latent of `frames` x `height` x `width`. The sin-cos table is cast to the model dtype as
    diffusers does; RoPE tables stay float32 because the rotation runs in float32. 5b-I2V's learned table is a
    parameter (`PatchEmbed.pos_embedding`), not a table; away from its frame count the sin-cos table stands in."""
    grid_h, grid_w = height // cfg.patch_size, width // cfg.patch_size
    sincos = None
    if not cfg.use_rotary_positional_embeddings or (
            cfg.use_learned_positional_embeddings and not uses_learned_positions(cfg, frames, height, width)):
        sincos = jnp.asarray(sincos_table(cfg, frames, grid_h, grid_w), dtype)
    if cfg.use_rotary_positional_embeddings:
        cos, sin = rope_tables(cfg, frames // cfg.frames_per_patch, grid_h, grid_w)
        return PositionalTables(sincos, jnp.asarray(cos, jnp.float32), jnp.asarray(sin, jnp.float32))
    return PositionalTables(sincos=sincos)


# ----------------------------------------------------------------------------------------------------------------
# Quantization and per-block control
# ----------------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------
class PatchEmbed(nnx.Module):
    """Text tokens through `text_proj`; latent patches through `proj`. CogVideoX 1.0: each frame's p x p patches
    (the checkpoint's Conv2d(k=s=p), stored as a dense weight [D, C*p*p] over patch vectors in (c, py, px) order);
    1.5: patches of p_t frames x p x p through the checkpoint's Linear, in (c, pt, py, px) order. Tokens in
    (frame or frame patch, h, w) order."""

    def __init__(self, cfg: CogVideoXConfig, *, dtype, rngs: nnx.Rngs):
        self.patch_size, self.frames_per_patch = cfg.patch_size, cfg.frames_per_patch
        self.proj = Dense(cfg.in_channels * cfg.patch_volume, cfg.inner_dim, dtype=dtype, rngs=rngs)
        self.text_proj = Dense(cfg.text_embed_dim, cfg.inner_dim, dtype=dtype, rngs=rngs)
        if cfg.use_learned_positional_embeddings:  # 5b-I2V: [1, text + video tokens of the sample size, D]
            tokens = cfg.max_text_seq_length + cfg.video_tokens(cfg.latent_frames(cfg.sample_frames),
                                                                cfg.sample_height, cfg.sample_width)
            self.pos_embedding = nnx.Param(jnp.zeros((1, tokens, cfg.inner_dim), dtype))

    def __call__(self, text: jax.Array, latents: jax.Array):
        b, f, c, h, w = latents.shape
        p, pt = self.patch_size, self.frames_per_patch
        patches = latents.reshape(b, f // pt, pt, c, h // p, p, w // p, p).transpose(0, 1, 4, 6, 3, 2, 5, 7)
        tokens = (f // pt) * (h // p) * (w // p)
        return self.text_proj(text), self.proj(patches.reshape(b, tokens, c * pt * p * p))


class LayerNormZero(nnx.Module):
    """CogVideoXLayerNormZero: one shared LayerNorm, modulated separately for video and text by 6 chunks of
    linear(silu(temb)): shift, scale, gate, enc_shift, enc_scale, enc_gate."""

    def __init__(self, cfg: CogVideoXConfig, *, dtype, rngs: nnx.Rngs, quant: QuantSpec | None = None):
        self.linear = block_linear(cfg.time_embed_dim, 6 * cfg.inner_dim, dtype=dtype, rngs=rngs, quant=quant,
                              weight_only=True)
        self.norm = LayerNorm(cfg.inner_dim, eps=cfg.norm_eps, dtype=dtype)

    def __call__(self, video, text, temb_act, runtime: LinearRuntime | None = None):
        modulation = self.linear(temb_act, runtime)[:, None, :]
        shift, scale, gate, enc_shift, enc_scale, enc_gate = jnp.split(modulation, 6, axis=-1)
        video = self.norm(video) * (1 + scale) + shift
        text = self.norm(text) * (1 + enc_scale) + enc_shift
        return video, text, gate, enc_gate


class JointAttention(nnx.Module):
    """Full attention over [text; video] with per-head qk-LayerNorm (weights shared by all heads) and, for 5B,
    RoPE on the video part of q and k."""

    def __init__(self, cfg: CogVideoXConfig, *, dtype, rngs: nnx.Rngs, implementation: str | None = None,
                 quant: QuantSpec | None = None):
        d = cfg.inner_dim
        self.heads, self.implementation = cfg.num_attention_heads, implementation
        self.to_q = block_linear(d, d, dtype=dtype, rngs=rngs, quant=quant)
        self.to_k = block_linear(d, d, dtype=dtype, rngs=rngs, quant=quant)
        self.to_v = block_linear(d, d, dtype=dtype, rngs=rngs, quant=quant)
        self.norm_q = LayerNorm(cfg.attention_head_dim, eps=1e-6, dtype=dtype)
        self.norm_k = LayerNorm(cfg.attention_head_dim, eps=1e-6, dtype=dtype)
        self.to_out = block_linear(d, d, dtype=dtype, rngs=rngs, quant=quant)

    def __call__(self, tokens: jax.Array, num_text: int, rope: PositionalTables,
                 runtime: LinearRuntime | None = None) -> jax.Array:
        b, n, d = tokens.shape
        split_heads = lambda x: x.reshape(b, n, self.heads, d // self.heads)  # noqa: E731
        q, k, v = (split_heads(y) for y in project([self.to_q, self.to_k, self.to_v], tokens, runtime))
        q, k = self.norm_q(q), self.norm_k(k)
        if rope.rope_cos is not None:
            q = q.at[:, num_text:].set(apply_rope(q[:, num_text:], rope.rope_cos, rope.rope_sin))
            k = k.at[:, num_text:].set(apply_rope(k[:, num_text:], rope.rope_cos, rope.rope_sin))
        out = dot_product_attention(q, k, v, implementation=block_implementation(self.implementation, runtime))
        return self.to_out(out.reshape(b, n, d), runtime)


class FeedForward(nnx.Module):
    """proj_in (D -> 4D), GELU (tanh approximation), proj_out (4D -> D)."""

    def __init__(self, cfg: CogVideoXConfig, *, dtype, rngs: nnx.Rngs, quant: QuantSpec | None = None):
        self.proj_in = block_linear(cfg.inner_dim, 4 * cfg.inner_dim, dtype=dtype, rngs=rngs, quant=quant)
        self.proj_out = block_linear(4 * cfg.inner_dim, cfg.inner_dim, dtype=dtype, rngs=rngs, quant=quant)

    def __call__(self, x: jax.Array, runtime: LinearRuntime | None = None) -> jax.Array:
        return self.proj_out(self.proj_in(x, runtime, activation="gelu_tanh"), runtime)


class CogVideoXBlock(nnx.Module):
    """norm1 -> joint attention -> gated residual; norm2 -> shared FFN over [text; video] -> gated residual."""

    # The linears whose activations the quantized paths quantize, in the order a forward calls them (reports).
    ACTIVATION_LINEARS = ("q", "k", "v", "out", "ff_in", "ff_out")
    # Block-relative module paths of the NVFP4 linears in a quantized model, and whether each is weight-only (the
    # AdaLN modulation).
    QUANTIZED_LINEARS = {
        ("attn1", "to_q"): False, ("attn1", "to_k"): False, ("attn1", "to_v"): False, ("attn1", "to_out"): False,
        ("ff", "proj_in"): False, ("ff", "proj_out"): False,
        ("norm1", "linear"): True, ("norm2", "linear"): True,
    }

    def __init__(self, cfg: CogVideoXConfig, *, dtype, rngs: nnx.Rngs, attention_impl: str | None = None,
                 quant: QuantSpec | None = None):
        self.norm1 = LayerNormZero(cfg, dtype=dtype, rngs=rngs, quant=quant)
        self.attn1 = JointAttention(cfg, dtype=dtype, rngs=rngs, implementation=attention_impl, quant=quant)
        self.norm2 = LayerNormZero(cfg, dtype=dtype, rngs=rngs, quant=quant)
        self.ff = FeedForward(cfg, dtype=dtype, rngs=rngs, quant=quant)

    def __call__(self, video, text, temb_act, tables: PositionalTables, runtime: LinearRuntime | None = None):
        num_text = text.shape[1]
        norm_video, norm_text, gate, enc_gate = self.norm1(video, text, temb_act, runtime)
        attn = self.attn1(jnp.concatenate([norm_text, norm_video], axis=1), num_text, tables, runtime)
        video = video + gate * attn[:, num_text:]
        text = text + enc_gate * attn[:, :num_text]

        norm_video, norm_text, gate, enc_gate = self.norm2(video, text, temb_act, runtime)
        ff = self.ff(jnp.concatenate([norm_text, norm_video], axis=1), runtime)
        video = video + gate * ff[:, num_text:]
        text = text + enc_gate * ff[:, :num_text]
        return video, text


class AdaLayerNormOut(nnx.Module):
    """norm_out: (shift, scale) = linear(silu(temb)) -- shift first -- then LN(x) * (1 + scale) + shift."""

    def __init__(self, cfg: CogVideoXConfig, *, dtype, rngs: nnx.Rngs):
        self.linear = Dense(cfg.time_embed_dim, 2 * cfg.inner_dim, dtype=dtype, rngs=rngs)
        self.norm = LayerNorm(cfg.inner_dim, eps=cfg.norm_eps, dtype=dtype)

    def __call__(self, x, temb_act):
        shift, scale = jnp.split(self.linear(temb_act)[:, None, :], 2, axis=-1)
        return self.norm(x) * (1 + scale) + shift


class CogVideoXTransformer3D(nnx.Module):
    """The denoiser: (latents [B, F, C, H, W], text [B, L, text_dim], timesteps [B]) -> v-prediction like latents.

    `dtype` is the parameter and compute dtype (bf16, fp16 or fp32); tables and the RoPE rotation stay float32.
    `attention_impl` forces 'cudnn' or 'xla' attention (default: cuDNN on GPU for bf16/fp16, else XLA)."""

    def __init__(self, cfg: CogVideoXConfig, *, dtype=jnp.bfloat16, rngs: nnx.Rngs,
                 attention_impl: str | None = None, quant: QuantSpec | None = None):
        self.config, self.dtype, self.quant = cfg, jnp.dtype(dtype), quant
        self.patch_embed = PatchEmbed(cfg, dtype=dtype, rngs=rngs)
        self.time_embedding = TimestepEmbedding(cfg.inner_dim, cfg.time_embed_dim, dtype=dtype, rngs=rngs)
        if cfg.ofs_embed_dim is not None:  # 1.5-I2V
            self.ofs_embedding = TimestepEmbedding(cfg.ofs_embed_dim, cfg.ofs_embed_dim, dtype=dtype, rngs=rngs)

        self.transformer_blocks = stacked_layers(
            lambda block_rngs: CogVideoXBlock(cfg, dtype=dtype, rngs=block_rngs, attention_impl=attention_impl,
                                              quant=quant),
            cfg.num_layers, rngs)
        self.norm_final = LayerNorm(cfg.inner_dim, eps=cfg.norm_eps, dtype=dtype)
        self.norm_out = AdaLayerNormOut(cfg, dtype=dtype, rngs=rngs)
        self.proj_out = Dense(cfg.inner_dim, cfg.out_channels * cfg.patch_volume, dtype=dtype, rngs=rngs)

    def check_inputs(self, latents_shape, text_shape) -> None:
        """Shape checks with messages that name the problem (called at trace time, so free at run time)."""
        cfg = self.config
        if len(latents_shape) != 5 or latents_shape[2] != cfg.in_channels:
            raise InputError(f"latents must be [B, F, {cfg.in_channels}, H, W]; got {tuple(latents_shape)}")
        _, f, _, h, w = latents_shape
        if h % cfg.patch_size or w % cfg.patch_size:
            raise InputError(f"latent height and width must be multiples of patch_size {cfg.patch_size}; got {h}x{w}")
        if f % cfg.frames_per_patch:
            raise InputError(f"this model (CogVideoX 1.5) patches {cfg.frames_per_patch} latent frames at a time; got "
                             f"{f} latent frames (its pipeline pads them in front: {-f % cfg.frames_per_patch} more)")
        if len(text_shape) != 3 or text_shape[-1] != cfg.text_embed_dim:
            raise InputError(f"text embeddings must be [B, L, {cfg.text_embed_dim}]; got {tuple(text_shape)}")
        if text_shape[0] != latents_shape[0]:
            raise InputError(f"text batch {text_shape[0]} does not match latent batch {latents_shape[0]}")
        if not cfg.use_rotary_positional_embeddings and text_shape[1] != cfg.max_text_seq_length:
            raise InputError(f"this model (3D sin-cos positions, CogVideoX-2B style) needs exactly "
                             f"max_text_seq_length={cfg.max_text_seq_length} text tokens; got {text_shape[1]}")

    def positional_tables(self, frames: int, height: int, width: int) -> PositionalTables:
        return positional_tables(self.config, frames, height, width, self.dtype)

    # ------------------------------------------------------------------------------------------------------------
    # What the sampler asks of a model family (sampling.py knows no family).
    # ------------------------------------------------------------------------------------------------------------
    CONDITION_AXIS, FRAME_AXIS = 2, 1  # image latents join the noisy latents on channels of [B, F, C, H, W]

    @property
    def condition_mode(self) -> str | None:
        """Image-to-video models take the image latents on channels; text-to-video ones none."""
        return "channels" if self.config.image_conditioned else None

    @property
    def latents_dtype(self):
        """diffusers' CogVideoX pipelines cast the latents back to the model dtype after every step."""
        return self.dtype

    def video_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(height, width) in pixels: the given ones, else the model's sample size."""
        return height or 8 * self.config.sample_height, width or 8 * self.config.sample_width

    def latent_shape(self, batch: int, frames: int | None = None, height: int | None = None,
                     width: int | None = None) -> tuple[int, ...]:
        """Pixel-space video size (default: the model's sample size) -> latents [B, F, C, H, W] (VAE: 4x in time, 8x
        in space), with CogVideoX 1.5's padding frames in front (`CogVideoXConfig.frame_padding`)."""
        cfg = self.config
        frames = frames or cfg.sample_frames
        height, width = self.video_size(height, width)
        if (frames - 1) % cfg.temporal_compression_ratio:
            raise InputError(f"frames must be 1 + a multiple of {cfg.temporal_compression_ratio} (e.g. 49); got "
                             f"{frames}")
        spatial = 8 * cfg.patch_size
        if height % spatial or width % spatial:
            raise InputError(f"height and width must be multiples of {spatial}; got {height}x{width}")
        return (batch, cfg.latent_frames(frames) + cfg.frame_padding(frames), cfg.out_channels, height // 8,
                width // 8)

    def tables_for(self, latents_shape) -> PositionalTables:
        _, f, _, h, w = latents_shape
        return self.positional_tables(f, h, w)

    def stream_shapes(self, latents_shape, text_shape) -> tuple[tuple[int, ...], ...]:
        """The [B, N, D] token streams the blocks update: video and text."""
        b, f, _, h, w = latents_shape
        cfg = self.config
        return (b, cfg.video_tokens(f, h, w), cfg.inner_dim), (b, text_shape[1], cfg.inner_dim)

    def default_scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig.for_model(self.config.flavour)

    ACTIVATION_LINEARS = CogVideoXBlock.ACTIVATION_LINEARS
    QUANTIZED_LINEARS = CogVideoXBlock.QUANTIZED_LINEARS
    DEFAULT_GUIDANCE = 6.0  # CogVideoXPipeline's
    BLOCKS = "transformer_blocks"  # the stacked blocks' attribute (and parameter-tree key)

    def _sinusoid(self, values: jax.Array, dim: int) -> jax.Array:
        cfg = self.config
        return timestep_sinusoid(values, dim, flip_sin_to_cos=cfg.flip_sin_to_cos,
                                 freq_shift=cfg.freq_shift).astype(self.dtype)

    def __call__(self, latents, text, timesteps, tables: PositionalTables | None = None, *,
                 return_block_finite: bool = False, control: BlockControl | None = None, ofs: float = OFS):
        """Returns the prediction [B, F, C_out, H, W] in the model dtype. Image-to-video models take the noisy
        latents and the image latents concatenated on channels; 1.5-I2V's `ofs` is what its pipeline passes.

        With `return_block_finite`, also a bool [num_layers] saying whether each block's outputs were all finite (to
        name the block that produced a NaN). With `control` (the 6Bit runtime), each block takes its route from
        `control.routes` and the call returns (prediction, BlockReport)."""
        cfg, dtype = self.config, self.dtype
        self.check_inputs(latents.shape, text.shape)
        b, f, _, h, w = latents.shape
        if tables is None:
            tables = self.positional_tables(f, h, w)
        temb = self.time_embedding(self._sinusoid(timesteps, cfg.inner_dim))
        if cfg.ofs_embed_dim is not None:
            temb = temb + self.ofs_embedding(self._sinusoid(jnp.full((1,), ofs, jnp.float32), cfg.ofs_embed_dim))
        temb_act = jax.nn.silu(temb)
        text, video = self.patch_embed(text.astype(dtype), latents.astype(dtype))
        if tables.sincos is not None:
            video = video + tables.sincos.astype(dtype)
        if uses_learned_positions(cfg, f, h, w):
            if text.shape[1] != cfg.max_text_seq_length:
                raise InputError(f"this model (learned positional embeddings) needs exactly max_text_seq_length="
                                 f"{cfg.max_text_seq_length} text tokens; got {text.shape[1]}")
            table = self.patch_embed.pos_embedding[...].astype(dtype)
            text, video = text + table[:, :text.shape[1]], video + table[:, text.shape[1]:]

        block_def, block_state = nnx.split(self.transformer_blocks)
        if control is None:
            def run_block(carry, state):
                video, text = nnx.merge(block_def, state)(*carry, temb_act, tables)
                finite = jnp.isfinite(video).all() & jnp.isfinite(text).all()
                return (video, text), finite

            (video, _), block_finite = jax.lax.scan(run_block, (video, text), block_state)
            report = None
        else:
            (video, _), report = run_controlled_blocks(
                block_def, block_state, (video, text),
                lambda block, streams, runtime: block(*streams, temb_act, tables, runtime), control)
            block_finite = report.finite

        video = self.norm_out(self.norm_final(video), temb_act)
        out = self.proj_out(video)
        p, pt, c_out = cfg.patch_size, cfg.frames_per_patch, cfg.out_channels
        out = out.reshape(b, f // pt, h // p, w // p, c_out, pt, p, p).transpose(0, 1, 5, 4, 2, 6, 3, 7)
        out = out.reshape(b, f, c_out, h, w)
        if control is not None:
            return out, report
        return (out, block_finite) if return_block_finite else out
