"""Wan2.1 / 2.2 text-to-video transformer in Flax NNX.

Mirrors diffusers' `WanTransformer3DModel`; parameter names follow the diffusers checkpoint (`patch_embedding`,
`condition_embedder.time_embedder.linear_1`, `blocks.N.attn1.to_q`, `blocks.N.scale_shift_table`, ...) with the
blocks stacked along a leading layer axis under one `lax.scan`, and `attn1.to_out.0` / `ffn.net.0.proj` / `ffn.net.2`
named `attn1.to_out` / `ffn.proj_in` / `ffn.proj_out` (the converter maps them).

Data layout: latents are [B, C, F, H, W] (Wan's layout: channels before frames); video tokens [B, N, D] in
(f, h, w) raster order; the umT5 context [B, L, text_dim] (512 tokens, zero-padded by the pipeline) is projected
once and read by every block's cross-attention, never updated.

Precision follows diffusers: the time embedding, the modulation tables, the three LayerNorms and the gated
residual adds in float32, each block's output rounded to the model dtype; RoPE tables float64 on the host, the
rotation in float32."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sixbit_jax.config import WanConfig
from sixbit_jax.errors import InputError
from sixbit_jax.layers import (Dense, LayerNorm, LinearRuntime, RMSNorm, block_implementation, dot_product_attention,
                               project)
from sixbit_jax.layers.embeddings import TimestepEmbedding, apply_rope, rope_3d, timestep_sinusoid
from sixbit_jax.layers.norm import layer_norm
from sixbit_jax.layers.stacked import stacked_layers
from sixbit_jax.models.block_control import BlockControl, run_controlled_blocks
from sixbit_jax.quant.spec import QuantSpec, block_linear
from sixbit_jax.schedulers.flow import FlowSchedulerConfig


class RopeTables(NamedTuple):
    cos: jax.Array  # [N_video, head_dim] float32
    sin: jax.Array


def rope_tables(cfg: WanConfig, frames: int, height: int, width: int) -> RopeTables:
    """Wan's 3D RoPE for a latent grid: the head dim split [t | h | w] with h = w = 2 * (d // 6) and t the rest,
    each axis's angles normalised by its own width; positions are the patch grid's integer indices."""
    d = cfg.attention_head_dim
    h_dim = w_dim = 2 * (d // 6)
    grid = [n // p for n, p in zip((frames, height, width), cfg.patch_size)]
    if max(grid) > cfg.rope_max_seq_len:
        raise InputError(f"the patch grid {grid} exceeds rope_max_seq_len {cfg.rope_max_seq_len}")
    cos, sin = rope_3d((d - h_dim - w_dim, h_dim, w_dim), tuple(np.arange(n) for n in grid))
    return RopeTables(jnp.asarray(cos, jnp.float32), jnp.asarray(sin, jnp.float32))


def fp32_layer_norm(x: jax.Array, eps: float, norm: LayerNorm | None = None) -> jax.Array:
    """diffusers' FP32LayerNorm: statistics and result in float32 (affine when `norm` is given)."""
    weight, bias = (norm.weight[...], norm.bias[...]) if norm is not None else (None, None)
    return layer_norm(x.astype(jnp.float32), weight, bias, eps)


class WanAttention(nnx.Module):
    """Self- or cross-attention with RMSNorm over all heads on q and k (Wan's "rms_norm_across_heads").

    Quantized, the cross-attention's keys and values are NVFP4 weight-only: they read the constant text context
    (512 tokens), where 8-bit activations would save nothing."""

    def __init__(self, cfg: WanConfig, *, dtype, rngs: nnx.Rngs, cross: bool = False,
                 implementation: str | None = None, quant: QuantSpec | None = None):
        d = cfg.inner_dim
        self.heads, self.implementation = cfg.num_attention_heads, implementation
        self.to_q = block_linear(d, d, dtype=dtype, rngs=rngs, quant=quant)
        self.to_k = block_linear(d, d, dtype=dtype, rngs=rngs, quant=quant, weight_only=cross)
        self.to_v = block_linear(d, d, dtype=dtype, rngs=rngs, quant=quant, weight_only=cross)
        self.to_out = block_linear(d, d, dtype=dtype, rngs=rngs, quant=quant)
        self.norm_q = RMSNorm(d, eps=cfg.eps, dtype=dtype)
        self.norm_k = RMSNorm(d, eps=cfg.eps, dtype=dtype)

    def __call__(self, x: jax.Array, context: jax.Array | None = None, rope: RopeTables | None = None,
                 runtime=None) -> jax.Array:
        if context is None:
            q, k, v = project([self.to_q, self.to_k, self.to_v], x, runtime)
        else:
            q = self.to_q(x, runtime)
            k, v = project([self.to_k, self.to_v], context, runtime)
        split = lambda y: y.reshape(*y.shape[:2], self.heads, -1)  # noqa: E731
        q, k, v = split(self.norm_q(q)), split(self.norm_k(k)), split(v)
        if rope is not None:
            q, k = apply_rope(q, rope.cos, rope.sin), apply_rope(k, rope.cos, rope.sin)
        # 8-bit attention on the video tokens' self-attention only: the cross-attention's 512 keys cost little.
        implementation = self.implementation if context is not None else block_implementation(self.implementation,
                                                                                                runtime)
        out = dot_product_attention(q, k, v, implementation=implementation, cross=context is not None)
        return self.to_out(out.reshape(*x.shape[:2], -1), runtime)


class FeedForward(nnx.Module):
    """proj_in (D -> ffn_dim), GELU (tanh approximation), proj_out (ffn_dim -> D)."""

    def __init__(self, cfg: WanConfig, *, dtype, rngs: nnx.Rngs, quant: QuantSpec | None = None):
        self.proj_in = block_linear(cfg.inner_dim, cfg.ffn_dim, dtype=dtype, rngs=rngs, quant=quant)
        self.proj_out = block_linear(cfg.ffn_dim, cfg.inner_dim, dtype=dtype, rngs=rngs, quant=quant)

    def __call__(self, x: jax.Array, runtime=None) -> jax.Array:
        return self.proj_out(self.proj_in(x, runtime, activation="gelu_tanh"), runtime)


class WanBlock(nnx.Module):
    """Modulated self-attention with RoPE -> cross-attention to the text (LayerNorm, no modulation, no gate) ->
    modulated FFN; six modulation rows from `scale_shift_table` + the step's time projection."""

    # The linears whose activations the quantized paths quantize, in the order a forward calls them (reports).
    ACTIVATION_LINEARS = ("q", "k", "v", "out", "cross_q", "cross_out", "ff_in", "ff_out")
    # Block-relative module paths of the NVFP4 linears in a quantized model, and whether each is weight-only.
    QUANTIZED_LINEARS = {
        **{("attn1", name): False for name in ("to_q", "to_k", "to_v", "to_out")},
        ("attn2", "to_q"): False, ("attn2", "to_out"): False, ("attn2", "to_k"): True, ("attn2", "to_v"): True,
        ("ffn", "proj_in"): False, ("ffn", "proj_out"): False,
    }

    def __init__(self, cfg: WanConfig, *, dtype, rngs: nnx.Rngs, attention_impl: str | None = None,
                 quant: QuantSpec | None = None):
        d = cfg.inner_dim
        self.eps = cfg.eps
        self.attn1 = WanAttention(cfg, dtype=dtype, rngs=rngs, implementation=attention_impl, quant=quant)
        self.attn2 = WanAttention(cfg, dtype=dtype, rngs=rngs, cross=True, implementation=attention_impl,
                                  quant=quant)
        self.norm2 = LayerNorm(d, eps=cfg.eps, dtype=dtype) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(cfg, dtype=dtype, rngs=rngs, quant=quant)
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (1, 6, d), jnp.float32) * d**-0.5)

    def __call__(self, x: jax.Array, context: jax.Array, time_proj: jax.Array, rope: RopeTables,
                 runtime: LinearRuntime | None = None) -> jax.Array:
        dtype = x.dtype
        # [B, 6, D], or [B, F, 6, D] with a timestep per latent frame
        rows = self.scale_shift_table[...].astype(jnp.float32) + time_proj.astype(jnp.float32)
        shift, scale, gate, c_shift, c_scale, c_gate = (rows[..., i:i + 1, :] for i in range(6))
        y = modulate(fp32_layer_norm(x, self.eps), shift, scale).astype(dtype)
        x = add_gated(x.astype(jnp.float32), self.attn1(y, rope=rope, runtime=runtime), gate).astype(dtype)
        y = fp32_layer_norm(x, self.eps, self.norm2).astype(dtype) if self.norm2 is not None else x
        x = x + self.attn2(y, context, runtime=runtime)
        y = modulate(fp32_layer_norm(x, self.eps), c_shift, c_scale).astype(dtype)
        return add_gated(x.astype(jnp.float32), self.ffn(y, runtime).astype(jnp.float32), c_gate).astype(dtype)


def _by_frame(x: jax.Array, rows: jax.Array) -> jax.Array:
    """Tokens [B, N, D] in the layout of modulation rows: as they are for rows [B, 1, D] (one timestep per
    sample), [B, F, N / F, D] for rows [B, F, 1, D] (one per latent frame; tokens are frame-major)."""
    return x if rows.ndim == 3 else x.reshape(x.shape[0], rows.shape[1], -1, x.shape[-1])


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x (1 + scale) + shift, with rows per sample or per latent frame (see `_by_frame`)."""
    return (_by_frame(x, shift) * (1 + scale) + shift).reshape(x.shape)


def add_gated(x: jax.Array, y: jax.Array, gate: jax.Array) -> jax.Array:
    """x + y gate, with gate rows per sample or per latent frame."""
    return (_by_frame(x, gate) + _by_frame(y, gate) * gate).reshape(x.shape)


class ConditionEmbedder(nnx.Module):
    """The timestep sinusoid (freq_dim, [cos | sin]) -> time_embedder -> temb; SiLU -> time_proj -> the blocks' six
    modulation rows; the text through text_embedder (linear, GELU tanh, linear)."""

    def __init__(self, cfg: WanConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, d, dtype=dtype, rngs=rngs)
        self.time_proj = Dense(d, 6 * d, dtype=dtype, rngs=rngs)
        self.text_embedder = TextProjection(cfg.text_dim, d, dtype=dtype, rngs=rngs)

    def __call__(self, timesteps: jax.Array, text: jax.Array):
        """timesteps [B] or [B, F] (one per latent frame) -> temb [B(, F), D], the modulation rows [B(, F), 6, D]
        and the projected text."""
        dtype = self.time_proj.weight.dtype
        temb = self.time_embedder(timestep_sinusoid(timesteps.reshape(-1), self.freq_dim).astype(dtype))
        time_proj = self.time_proj(jax.nn.silu(temb))
        temb = temb.reshape(*timesteps.shape, -1)
        return temb, time_proj.reshape(*timesteps.shape, 6, -1), self.text_embedder(text)


class TextProjection(nnx.Module):
    def __init__(self, in_dim: int, out_dim: int, *, dtype, rngs: nnx.Rngs):
        self.linear_1 = Dense(in_dim, out_dim, dtype=dtype, rngs=rngs)
        self.linear_2 = Dense(out_dim, out_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(self.linear_1(x, activation="gelu_tanh"))


# The VAE's compression (time, height, width) and the pipeline's default video: 81 frames at 480 x 832.
VAE_STRIDE = (4, 8, 8)  # Wan2.1's VAE: (time, height, width) compression; Wan2.2 TI2V-5B's compresses 4 x 16 x 16
DEFAULT_VIDEO = (81, 480, 832)


class WanTransformer3D(nnx.Module):
    """The denoiser: (latents [B, C, F, H, W], umT5 context [B, L, text_dim], timesteps [B]) -> the flow
    prediction, shaped like the latents, in the model dtype. `attention_impl` forces 'cudnn' or 'xla' attention;
    `quant` builds the NVFP4 block linears of a quantized checkpoint."""

    ACTIVATION_LINEARS = WanBlock.ACTIVATION_LINEARS
    QUANTIZED_LINEARS = WanBlock.QUANTIZED_LINEARS
    DEFAULT_GUIDANCE = 5.0  # WanPipeline's and Wan's generate.py
    BLOCKS = "blocks"  # the stacked blocks' attribute (and parameter-tree key)

    def __init__(self, cfg: WanConfig, *, dtype=jnp.bfloat16, rngs: nnx.Rngs, attention_impl: str | None = None,
                 quant: QuantSpec | None = None):
        self.config, self.dtype, self.quant = cfg, jnp.dtype(dtype), quant
        d, patch = cfg.inner_dim, int(np.prod(cfg.patch_size))
        self.patch_embedding = Dense(cfg.in_channels * patch, d, dtype=dtype, rngs=rngs)
        self.condition_embedder = ConditionEmbedder(cfg, dtype=dtype, rngs=rngs)

        self.blocks = stacked_layers(
            lambda block_rngs: WanBlock(cfg, dtype=dtype, rngs=block_rngs, attention_impl=attention_impl, quant=quant),
            cfg.num_layers, rngs)
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (1, 2, d), jnp.float32) * d**-0.5)
        self.proj_out = Dense(d, cfg.out_channels * patch, dtype=dtype, rngs=rngs)

    def check_inputs(self, latents_shape, text_shape) -> None:
        cfg = self.config
        if len(latents_shape) != 5 or latents_shape[1] != cfg.in_channels:
            raise InputError(f"latents must be [B, {cfg.in_channels}, F, H, W] (Wan's layout); got "
                             f"{tuple(latents_shape)}")
        if any(n % p for n, p in zip(latents_shape[2:], cfg.patch_size)):
            raise InputError(f"latent frames, height and width must be multiples of patch_size {cfg.patch_size}; "
                             f"got {tuple(latents_shape[2:])}")
        if len(text_shape) != 3 or text_shape[-1] != cfg.text_dim or text_shape[0] != latents_shape[0]:
            raise InputError(f"the text context must be [{latents_shape[0]}, L, {cfg.text_dim}]; got "
                             f"{tuple(text_shape)}")

    # ------------------------------------------------------------------------------------------------------------
    # What the sampler asks of a model family (sampling.py knows no family).
    # ------------------------------------------------------------------------------------------------------------
    CONDITION_AXIS, FRAME_AXIS = 1, 2  # channels and frames of [B, C, F, H, W]

    @property
    def condition_mode(self) -> str:
        """Image latents: on channels for image-to-video models (in_channels = 2 x out_channels, Wan2.1 I2V: its
        pipeline is not implemented), else as the first latent frame (Wan2.2 TI2V's image mode)."""
        return "channels" if self.config.image_conditioned else "first_frame"

    @property
    def latents_dtype(self):
        """diffusers' WanPipeline keeps the latents in float32 and casts them to the model dtype for each forward."""
        return jnp.dtype(jnp.float32)

    def video_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(height, width) in pixels: the given ones, else WanPipeline's default 480 x 832."""
        return height or DEFAULT_VIDEO[1], width or DEFAULT_VIDEO[2]

    def latent_shape(self, batch: int, frames: int | None = None, height: int | None = None,
                     width: int | None = None) -> tuple[int, ...]:
        """Pixel-space video size (default 81 frames at 480 x 832) -> latents [B, C, F, H, W]."""
        cfg = self.config
        frames, (height, width) = frames or DEFAULT_VIDEO[0], self.video_size(height, width)
        st, sh, sw = getattr(self, "vae_stride", VAE_STRIDE)  # set by a pipeline whose VAE compresses otherwise
        if (frames - 1) % st:
            raise InputError(f"frames must be 1 + a multiple of {st} (e.g. 81); got {frames}")
        if height % (sh * cfg.patch_size[1]) or width % (sw * cfg.patch_size[2]):
            raise InputError(f"height and width must be multiples of {sh * cfg.patch_size[1]}; got {height}x{width}")
        return batch, cfg.out_channels, (frames - 1) // st + 1, height // sh, width // sw

    def tables_for(self, latents_shape) -> RopeTables:
        _, _, f, h, w = latents_shape
        return rope_tables(self.config, f, h, w)

    def stream_shapes(self, latents_shape, text_shape) -> tuple[tuple[int, ...], ...]:
        """The [B, N, D] token streams the blocks update: the video alone (the text context never changes)."""
        b, _, f, h, w = latents_shape
        tokens = int(np.prod([n // p for n, p in zip((f, h, w), self.config.patch_size)]))
        return ((b, tokens, self.config.inner_dim),)

    def default_scheduler_config(self) -> FlowSchedulerConfig:
        return FlowSchedulerConfig()

    # ------------------------------------------------------------------------------------------------------------
    def patchify(self, latents: jax.Array) -> jax.Array:
        b, c, f, h, w = latents.shape
        pt, ph, pw = self.config.patch_size
        patches = latents.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw).transpose(0, 2, 4, 6, 1, 3, 5, 7)
        return patches.reshape(b, (f // pt) * (h // ph) * (w // pw), c * pt * ph * pw)

    def unpatchify(self, tokens: jax.Array, frames: int, height: int, width: int) -> jax.Array:
        """Output features per token in (pt, ph, pw, c) order, the channel fastest, as Wan's head writes them."""
        pt, ph, pw = self.config.patch_size
        b = tokens.shape[0]
        out = tokens.reshape(b, frames // pt, height // ph, width // pw, pt, ph, pw, -1)
        return out.transpose(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, -1, frames, height, width)

    def __call__(self, latents, text, timesteps, rope: RopeTables | None = None, *,
                 return_block_finite: bool = False, control: BlockControl | None = None):
        """timesteps [B], or [B, F] with one per latent frame (Wan2.2 TI2V's image mode: 0 on the clean image frame,
        as diffusers' expand_timesteps gives every token its own).
        With `return_block_finite`, also a bool [num_layers] saying whether each block's output was all finite.
        With `control` (the 6Bit runtime), each block takes its route from `control.routes` and the call returns
        (prediction, BlockReport)."""
        cfg, dtype = self.config, self.dtype
        self.check_inputs(latents.shape, text.shape)
        _, _, f, h, w = latents.shape
        if timesteps.ndim == 2 and (timesteps.shape[1] != f or cfg.patch_size[0] != 1):
            raise InputError(f"timesteps per latent frame must be [B, {f}] (with a temporal patch of 1); got "
                             f"{tuple(timesteps.shape)}")
        rope = rope if rope is not None else rope_tables(cfg, f, h, w)
        temb, time_proj, context = self.condition_embedder(timesteps, text.astype(dtype))
        x = self.patch_embedding(self.patchify(latents.astype(dtype)))

        block_def, block_state = nnx.split(self.blocks)
        if control is None:
            def run_block(x, state):
                x = nnx.merge(block_def, state)(x, context, time_proj, rope)
                return x, jnp.isfinite(x).all()

            x, block_finite = jax.lax.scan(run_block, x, block_state)
            report = None
        else:
            (x,), report = run_controlled_blocks(
                block_def, block_state, (x,),
                lambda block, streams, runtime: (block(streams[0], context, time_proj, rope, runtime),), control)
            block_finite = report.finite

        rows = self.scale_shift_table[...].astype(jnp.float32) + temb.astype(jnp.float32)[..., None, :]
        shift, scale = rows[..., :1, :], rows[..., 1:, :]
        x = modulate(fp32_layer_norm(x, cfg.eps), shift, scale).astype(dtype)
        out = self.unpatchify(self.proj_out(x), f, h, w)
        if control is not None:
            return out, report
        return (out, block_finite) if return_block_finite else out


class WanExperts(nnx.Module):
    """Wan2.2 A14B: two transformers of one architecture, `high` for the high-noise steps (timestep >= `boundary`)
    and `low` for the rest, as diffusers' WanPipeline runs `transformer` and `transformer_2` with a boundary_ratio.
    Both stay resident (in NVFP4 they fit one GPU where bf16 would need 57 GB); each step runs one of them
    (`lax.cond` on the step's timestep). The sampler sees one model: everything but the forward is `high`'s."""

    ACTIVATION_LINEARS = WanTransformer3D.ACTIVATION_LINEARS
    QUANTIZED_LINEARS = WanTransformer3D.QUANTIZED_LINEARS
    DEFAULT_GUIDANCE = WanTransformer3D.DEFAULT_GUIDANCE
    CONDITION_AXIS, FRAME_AXIS = WanTransformer3D.CONDITION_AXIS, WanTransformer3D.FRAME_AXIS
    condition_mode = property(lambda self: self.high.condition_mode)

    def __init__(self, high: WanTransformer3D, low: WanTransformer3D, boundary: float):
        if high.config != low.config or high.dtype != low.dtype or high.quant != low.quant:
            raise InputError("the two Wan2.2 experts must share config, dtype and quantization; got "
                             f"{high.config} / {high.dtype} / {high.quant} and {low.config} / {low.dtype} / "
                             f"{low.quant}")
        if not 0 < boundary < 1000:
            raise InputError(f"the expert boundary timestep must be inside (0, 1000); got {boundary}")
        self.high, self.low, self.boundary = high, low, float(boundary)
        self.config, self.dtype, self.quant = high.config, high.dtype, high.quant

    def map_experts(self, fn) -> "WanExperts":
        """The same pair with `fn` applied to each expert (e.g. quantization)."""
        return WanExperts(fn(self.high), fn(self.low), self.boundary)

    def expert_of(self, timesteps) -> np.ndarray:
        """0 (high-noise expert) or 1 (low-noise) for each host timestep."""
        return (np.asarray(timesteps) < self.boundary).astype(np.int32)

    # the sampler's interface, from the high-noise expert
    latents_dtype = property(lambda self: self.high.latents_dtype)

    def latent_shape(self, *args, **kwargs):
        return self.high.latent_shape(*args, **kwargs)

    def video_size(self, *args, **kwargs):
        return self.high.video_size(*args, **kwargs)

    def tables_for(self, latents_shape):
        return self.high.tables_for(latents_shape)

    def stream_shapes(self, latents_shape, text_shape):
        return self.high.stream_shapes(latents_shape, text_shape)

    def default_scheduler_config(self):
        return self.high.default_scheduler_config()

    def check_inputs(self, latents_shape, text_shape) -> None:
        self.high.check_inputs(latents_shape, text_shape)

    def __call__(self, latents, text, timesteps, rope: RopeTables | None = None, **kwargs):
        """The forward of the expert this step's timestep selects (one timestep per call, as the sampler gives)."""
        # the step's timestep: every sample's, or (one per latent frame) the noisy frames' largest
        return jax.lax.cond(timesteps.max() >= self.boundary,
                            lambda: self.high(latents, text, timesteps, rope, **kwargs),
                            lambda: self.low(latents, text, timesteps, rope, **kwargs))
