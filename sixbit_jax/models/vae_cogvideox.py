"""CogVideoX 3D causal VAE (`AutoencoderKLCogVideoX`, diffusers 0.42.1) in Flax NNX: decoder and encoder.

Module and parameter names follow the diffusers checkpoint, so `".".join(path)` of a leaf in `nnx.to_pure_dict` is
its diffusers key (`decoder.up_blocks.0.resnets.1.norm1.conv_y.conv.weight`); only convolution kernels change
layout (PyTorch [O, I, *k] -> ours [*k, I, O], see convert/vae_cogvideox.py).

Data layout inside: channels-last, [B, T, H, W, C]. The public `decode`/`decode_latents`/`encode` take and return the
pipeline's layouts (latents [B, F, C, h, w], video [B, T, H, W, 3]).

Exactness notes (what makes this match diffusers, and why the structure is as it is):
- Causal 3x3x3 convs prepend 2 frames in time: the conv cache of the previous chunk, else 2 copies of frame 0.
- GroupNorm statistics are taken over the whole chunk (T, H, W, C/G), so results depend on how a video is cut into
  chunks. `decode`/`encode` cut exactly as diffusers' `_decode` (2 latent frames per chunk) and `_encode` (8 frames),
  the first chunk taking the remainder, with the conv caches carried from chunk to chunk.
- Memory is bounded by one chunk: each chunk is one jitted call (chunk + caches in, output + new caches out) in a
  Python loop; the old caches are donated to the call. The first chunk has no cache and may be longer (odd latent
  counts: 3 frames), so there are two compiled variants per spatial size (per tile size when tiling). A Python
  loop rather than `lax.scan`: the first chunk differs in shape and structure anyway, a scan would only move the
  loop into XLA, and chunks are large enough that dispatch costs nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sixbit_jax.checkpoint import abstract_module_params
from sixbit_jax.config import check_diffusers_config, read_json
from sixbit_jax.errors import ConfigError, InputError
from sixbit_jax.layers.conv import Conv, cache_part, run_cached, silu

LATENT_FRAMES_PER_CHUNK = 2  # diffusers' num_latent_frames_batch_size
SAMPLE_FRAMES_PER_CHUNK = 8  # diffusers' num_sample_frames_batch_size
FIXED_NORM_EPS = 1e-6  # diffusers hard-codes this eps for the decoder's spatial norms and the encoder's norm_out

DOWN_BLOCK = "CogVideoXDownBlock3D"
UP_BLOCK = "CogVideoXUpBlock3D"


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CogVideoXVAEConfig:
    """diffusers' `AutoencoderKLCogVideoX` config (`vae/config.json`); defaults are the CogVideoX-2B/5B values
    except scaling_factor (2B: 1.15258426, 5B: 0.7)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    layers_per_block: int = 3
    norm_num_groups: int = 32
    norm_eps: float = 1e-6  # encoder resnets only; diffusers fixes the other norms' eps at 1e-6
    temporal_compression_ratio: int = 4
    sample_height: int = 480  # pixels; tiling uses half of it per tile
    sample_width: int = 720
    scaling_factor: float = 1.15258426
    invert_scale_latents: bool = False  # read by CogVideoX 1.5 image-to-video pipelines, not by the VAE

    def __post_init__(self):
        n = len(self.block_out_channels)
        if n < 1:
            raise ConfigError("block_out_channels must list at least one block")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(f"block_out_channels {bad} are not multiples of norm_num_groups {self.norm_num_groups}")
        level = math.log2(self.temporal_compression_ratio) if self.temporal_compression_ratio >= 1 else -1
        if level != int(level) or int(level) > n - 1:
            raise ConfigError(f"temporal_compression_ratio {self.temporal_compression_ratio} must be a power of two "
                              f"up to 2**{n - 1} (one halving per resampling block)")

    @property
    def temporal_levels(self) -> int:
        """How many of the resampling blocks (the first ones) also halve/double time."""
        return int(math.log2(self.temporal_compression_ratio))

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_compression_ratio + 1

    def to_dict(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return {"_class_name": "AutoencoderKLCogVideoX", **dataclasses.asdict(self),
                "block_out_channels": list(self.block_out_channels),
                "down_block_types": [DOWN_BLOCK] * n, "up_block_types": [UP_BLOCK] * n}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "CogVideoXVAEConfig":
        """Accepts diffusers' vae/config.json. Values this port does not implement raise ConfigError; keys that only
        concern other pipelines or training (force_upcast, shift_factor, latents_mean/std) are ignored."""
        check_diffusers_config(raw, "AutoencoderKLCogVideoX", {
            "act_fn": ("silu", "activations other than silu"),
            "use_quant_conv": (False, "quant_conv"),
            "use_post_quant_conv": (False, "post_quant_conv"),
        }, what="VAE")
        n = len(raw.get("block_out_channels", cls.block_out_channels))
        for key, block in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
            types = raw.get(key, [block] * n)
            if not isinstance(types, (list, tuple)) or list(types) != [block] * n:
                raise ConfigError(f"unsupported VAE config: {key}={types!r} (expected {n} x {block!r}, one per "
                                  f"entry of block_out_channels)")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in fields}
        for key, value in kwargs.items():
            if value is None or isinstance(value, dict) or (isinstance(value, list) and key != "block_out_channels"):
                raise ConfigError(f"VAE config field {key} has an invalid value {value!r}")
        if "block_out_channels" in kwargs:
            kwargs["block_out_channels"] = tuple(int(c) for c in kwargs["block_out_channels"])
        if "temporal_compression_ratio" in kwargs:  # diffusers types it as float (4 or 4.0)
            ratio = kwargs["temporal_compression_ratio"]
            if ratio != int(ratio):
                raise ConfigError(f"temporal_compression_ratio {ratio!r} must be a whole number")
            kwargs["temporal_compression_ratio"] = int(ratio)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "CogVideoXVAEConfig":
        return cls.from_dict(read_json(path, "VAE config file"))


# ----------------------------------------------------------------------------------------------------------------
# Elementwise helpers
# ----------------------------------------------------------------------------------------------------------------
def group_norm(x: jax.Array, groups: int, weight: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """torch GroupNorm on channels-last x [B, ..., C]: statistics per sample and group over every other axis, in
    float32; the result is rounded once to x's dtype."""
    b, c = x.shape[0], x.shape[-1]
    xf = x.astype(jnp.float32).reshape(b, -1, groups, c // groups)
    mean = xf.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(xf - mean).mean(axis=(1, 3), keepdims=True)
    y = ((xf - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def _nearest_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """torch nearest interpolation along one axis: source index floor(i * in / out) in float32."""
    n = x.shape[axis]
    if size == n:
        return x
    if size % n == 0:  # whole-number ratios (all CogVideoX uses): a repeat, which XLA fuses into the consumer
        return jnp.repeat(x, size // n, axis=axis)
    scale = np.float32(n) / np.float32(size)
    index = np.minimum(np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int64), n - 1)
    return jnp.take(x, jnp.asarray(index), axis=axis)


def nearest_resize(x: jax.Array, size: tuple[int, ...]) -> jax.Array:
    """F.interpolate(mode='nearest', size=size) over the axes 1.. of a channels-last x."""
    for axis, s in enumerate(size, start=1):
        x = _nearest_axis(x, axis, s)
    return x


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------
class GroupNorm(nnx.Module):
    def __init__(self, groups: int, channels: int, *, eps: float, dtype):
        self.groups, self.eps = groups, eps
        self.weight = nnx.Param(jnp.ones((channels,), dtype))
        self.bias = nnx.Param(jnp.zeros((channels,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return group_norm(x, self.groups, self.weight[...], self.bias[...], self.eps)


class CausalConv3d(nnx.Module):
    """CogVideoXCausalConv3d: stride 1, zero padding in H and W, causal in T.

    A k-frame kernel sees k-1 frames before the chunk: the previous chunk's (the cache), or at the start of a video
    k-1 copies of frame 0. The new cache is the last k-1 frames of that padded input. k=1 convs need no cache."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, dtype, rngs: nnx.Rngs):
        self.time_pad = kernel - 1
        self.conv = Conv(in_channels, out_channels, (kernel,) * 3, padding=((0, 0),) + ((kernel // 2,) * 2,) * 2,
                         dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cache: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        if self.time_pad == 0:
            return self.conv(x), None
        before = cache if cache is not None else jnp.repeat(x[:, :1], self.time_pad, axis=1)
        x = jnp.concatenate([before.astype(x.dtype), x], axis=1)
        return self.conv(x), x[:, -self.time_pad:]


class SpatialNorm3D(nnx.Module):
    """CogVideoXSpatialNorm3D: GroupNorm(f) * conv_y(zq) + conv_b(zq), zq being the decoder's latent chunk
    nearest-resized to f's (T, H, W); for odd T > 1 frame 0 and frames 1.. are resized separately.

    conv_y and conv_b are 1x1x1, so they commute with nearest resizing: we apply them at latent resolution and
    resize their outputs. Same numbers, a fraction of the FLOPs and memory."""

    def __init__(self, f_channels: int, zq_channels: int, groups: int, *, dtype, rngs: nnx.Rngs):
        self.norm_layer = GroupNorm(groups, f_channels, eps=FIXED_NORM_EPS, dtype=dtype)
        self.conv_y = CausalConv3d(zq_channels, f_channels, 1, dtype=dtype, rngs=rngs)
        self.conv_b = CausalConv3d(zq_channels, f_channels, 1, dtype=dtype, rngs=rngs)

    @staticmethod
    def resize(zq: jax.Array, size: tuple[int, int, int]) -> jax.Array:
        t, h, w = size
        if t > 1 and t % 2 == 1:
            return jnp.concatenate([nearest_resize(zq[:, :1], (1, h, w)),
                                    nearest_resize(zq[:, 1:], (t - 1, h, w))], axis=1)
        return nearest_resize(zq, size)

    def __call__(self, f: jax.Array, zq: jax.Array) -> jax.Array:
        size = f.shape[1:4]
        scale = self.resize(self.conv_y(zq)[0], size)
        shift = self.resize(self.conv_b(zq)[0], size)
        return self.norm_layer(f) * scale + shift


class ResnetBlock3D(nnx.Module):
    """CogVideoXResnetBlock3D without temb: conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x).
    Decoder blocks (zq_channels set) use SpatialNorm3D, encoder blocks plain GroupNorm. The shortcut is a 1x1x1
    conv (not causal, no cache) when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, eps: float, zq_channels: int | None,
                 dtype, rngs: nnx.Rngs):
        def norm(channels):
            if zq_channels is None:
                return GroupNorm(groups, channels, eps=eps, dtype=dtype)
            return SpatialNorm3D(channels, zq_channels, groups, dtype=dtype, rngs=rngs)

        self.spatial = zq_channels is not None
        self.norm1 = norm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, dtype=dtype, rngs=rngs)
        self.norm2 = norm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, dtype=dtype, rngs=rngs)
        self.conv_shortcut = (Conv(in_channels, out_channels, (1, 1, 1), dtype=dtype, rngs=rngs)
                              if in_channels != out_channels else None)

    def _norm(self, norm, x, zq):
        return norm(x, zq) if self.spatial else norm(x)

    def __call__(self, x: jax.Array, cache: dict | None, zq: jax.Array | None = None):
        h, conv1 = self.conv1(silu(self._norm(self.norm1, x, zq)), cache_part(cache, "conv1"))
        h, conv2 = self.conv2(silu(self._norm(self.norm2, h, zq)), cache_part(cache, "conv2"))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h + shortcut, {"conv1": conv1, "conv2": conv2}


class Upsample3D(nnx.Module):
    """CogVideoXUpsample3D: nearest 2x in H and W, and with `compress_time` in T too (frames duplicated, frame 0
    kept single when T is odd; a single frame stays single); then a 3x3 Conv2d per frame. No cache."""

    def __init__(self, channels: int, *, compress_time: bool, dtype, rngs: nnx.Rngs):
        self.compress_time = compress_time
        self.conv = Conv(channels, channels, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        t = x.shape[1]
        if self.compress_time and t > 1:
            first = t % 2  # odd T: frame 0 is not doubled
            x = jnp.concatenate([x[:, :first], jnp.repeat(x[:, first:], 2, axis=1)], axis=1)
        b, t, h, w, c = x.shape
        return self.conv(x.reshape(b * t, h, w, c)).reshape(b, t, h, w, -1)


class Downsample3D(nnx.Module):
    """CogVideoXDownsample3D: with `compress_time`, average frame pairs (frame 0 kept alone when T is odd); then
    zero-pad right and bottom by 1 and a 3x3 stride-2 Conv2d per frame. No cache."""

    def __init__(self, channels: int, *, compress_time: bool, dtype, rngs: nnx.Rngs):
        self.compress_time = compress_time
        self.conv = Conv(channels, channels, (3, 3), stride=2, padding=((0, 1), (0, 1)), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.compress_time:
            b, t, h, w, c = x.shape
            first = t % 2
            pairs = x[:, first:].reshape(b, (t - first) // 2, 2, h, w, c).astype(jnp.float32)
            x = jnp.concatenate([x[:, :first], ((pairs[:, :, 0] + pairs[:, :, 1]) / 2).astype(x.dtype)], axis=1)
        b, t, h, w, c = x.shape
        y = self.conv(x.reshape(b * t, h, w, c))
        return y.reshape(b, t, *y.shape[1:])


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------
class MidBlock3D(nnx.Module):
    def __init__(self, channels: int, *, groups: int, eps: float, zq_channels: int | None, dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock3D(channels, channels, groups=groups, eps=eps, zq_channels=zq_channels,
                                               dtype=dtype, rngs=rngs) for _ in range(2)])

    def __call__(self, x, cache, zq=None):
        return run_cached(self.resnets, x, cache, zq)


class UpBlock3D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, *, groups: int, zq_channels: int,
                 upsample: bool, compress_time: bool, dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups=groups, eps=FIXED_NORM_EPS,
                          zq_channels=zq_channels, dtype=dtype, rngs=rngs) for i in range(num_layers)])
        self.upsamplers = (nnx.List([Upsample3D(out_channels, compress_time=compress_time, dtype=dtype, rngs=rngs)])
                           if upsample else None)

    def __call__(self, x, cache, zq):
        x, new_cache = run_cached(self.resnets, x, cache, zq)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x, new_cache


class DownBlock3D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, *, groups: int, eps: float,
                 downsample: bool, compress_time: bool, dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([
            ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups=groups, eps=eps,
                          zq_channels=None, dtype=dtype, rngs=rngs) for i in range(num_layers)])
        self.downsamplers = (nnx.List([Downsample3D(out_channels, compress_time=compress_time, dtype=dtype,
                                                    rngs=rngs)])
                             if downsample else None)

    def __call__(self, x, cache):
        x, new_cache = run_cached(self.resnets, x, cache)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x, new_cache


class Decoder(nnx.Module):
    """CogVideoXDecoder3D: one chunk of latents z [B, t, h, w, C_latent] (already divided by the scaling factor)
    and the previous chunk's cache (None for the first) -> (frames [B, T, H, W, out_channels], new cache).

    conv_in, mid block (2 resnets), up blocks (layers_per_block + 1 resnets each; all but the last upsample, the
    first `temporal_levels` in time too), norm_out, SiLU, conv_out. Every norm is conditioned on z itself."""

    def __init__(self, cfg: CogVideoXVAEConfig, *, dtype, rngs: nnx.Rngs):
        channels = list(reversed(cfg.block_out_channels))
        groups, zq = cfg.norm_num_groups, cfg.latent_channels
        self.conv_in = CausalConv3d(zq, channels[0], 3, dtype=dtype, rngs=rngs)
        self.mid_block = MidBlock3D(channels[0], groups=groups, eps=FIXED_NORM_EPS, zq_channels=zq, dtype=dtype,
                                    rngs=rngs)
        self.up_blocks = nnx.List([
            UpBlock3D(channels[max(i - 1, 0)], channels[i], cfg.layers_per_block + 1, groups=groups, zq_channels=zq,
                      upsample=i < len(channels) - 1, compress_time=i < cfg.temporal_levels, dtype=dtype, rngs=rngs)
            for i in range(len(channels))])
        self.norm_out = SpatialNorm3D(channels[-1], zq, groups, dtype=dtype, rngs=rngs)
        self.conv_out = CausalConv3d(channels[-1], cfg.out_channels, 3, dtype=dtype, rngs=rngs)

    def __call__(self, z: jax.Array, cache: dict | None = None):
        x, conv_in = self.conv_in(z, cache_part(cache, "conv_in"))
        x, mid = self.mid_block(x, cache_part(cache, "mid_block"), z)
        x, ups = run_cached(self.up_blocks, x, cache_part(cache, "up_blocks"), z)
        x, conv_out = self.conv_out(silu(self.norm_out(x, z)), cache_part(cache, "conv_out"))
        return x, {"conv_in": conv_in, "mid_block": mid, "up_blocks": ups, "conv_out": conv_out}


class Encoder(nnx.Module):
    """CogVideoXEncoder3D: one chunk of frames x [B, T, H, W, in_channels] and the previous chunk's cache ->
    (moments [B, t, h, w, 2 * latent_channels] = mean | logvar, new cache).

    conv_in, down blocks (layers_per_block resnets each; all but the last downsample, the first
    `temporal_levels` in time too), mid block (2 resnets), GroupNorm, SiLU, conv_out."""

    def __init__(self, cfg: CogVideoXVAEConfig, *, dtype, rngs: nnx.Rngs):
        channels = list(cfg.block_out_channels)
        groups = cfg.norm_num_groups
        self.conv_in = CausalConv3d(cfg.in_channels, channels[0], 3, dtype=dtype, rngs=rngs)
        self.down_blocks = nnx.List([
            DownBlock3D(channels[max(i - 1, 0)], channels[i], cfg.layers_per_block, groups=groups, eps=cfg.norm_eps,
                        downsample=i < len(channels) - 1, compress_time=i < cfg.temporal_levels, dtype=dtype,
                        rngs=rngs)
            for i in range(len(channels))])
        self.mid_block = MidBlock3D(channels[-1], groups=groups, eps=cfg.norm_eps, zq_channels=None, dtype=dtype,
                                    rngs=rngs)
        self.norm_out = GroupNorm(groups, channels[-1], eps=FIXED_NORM_EPS, dtype=dtype)
        self.conv_out = CausalConv3d(channels[-1], 2 * cfg.latent_channels, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cache: dict | None = None):
        x, conv_in = self.conv_in(x, cache_part(cache, "conv_in"))
        x, downs = run_cached(self.down_blocks, x, cache_part(cache, "down_blocks"))
        x, mid = self.mid_block(x, cache_part(cache, "mid_block"))
        x, conv_out = self.conv_out(silu(self.norm_out(x)), cache_part(cache, "conv_out"))
        return x, {"conv_in": conv_in, "down_blocks": downs, "mid_block": mid, "conv_out": conv_out}


class CogVideoXVAE(nnx.Module):
    """AutoencoderKLCogVideoX: `encoder` and `decoder`, parameters (and compute) in `dtype`; GroupNorm statistics
    in float32. Use the functions `decode`, `decode_latents` and `encode` below rather than calling the parts."""

    def __init__(self, cfg: CogVideoXVAEConfig, *, dtype=jnp.bfloat16, rngs: nnx.Rngs):
        self.config, self.dtype = cfg, jnp.dtype(dtype)
        self.encoder = Encoder(cfg, dtype=dtype, rngs=rngs)
        self.decoder = Decoder(cfg, dtype=dtype, rngs=rngs)


def abstract_vae_params(cfg: CogVideoXVAEConfig, dtype) -> dict:
    """The parameter tree (`nnx.to_pure_dict` layout, list indices as int keys) as ShapeDtypeStructs."""
    return abstract_module_params(CogVideoXVAE, cfg, jnp.dtype(dtype))


# ----------------------------------------------------------------------------------------------------------------
# Chunked decode / encode
# ----------------------------------------------------------------------------------------------------------------
def chunk_bounds(frames: int, per_chunk: int) -> list[tuple[int, int]]:
    """diffusers' temporal split: max(frames // per_chunk, 1) chunks of per_chunk frames, the first also taking the
    remainder. 13 latents by 2 -> (0, 3), (3, 5), ..., (11, 13); 49 frames by 8 -> (0, 9), (9, 17), ..., (41, 49)."""
    if frames < 1:
        raise InputError("a video needs at least one frame")
    count = max(frames // per_chunk, 1)
    first = frames - per_chunk * (count - 1)
    return [(0, first)] + [(first + per_chunk * k, first + per_chunk * (k + 1)) for k in range(count - 1)]


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _decoder_step(graphdef, state, z, cache):
    frames, cache = nnx.merge(graphdef, state)(z, cache)
    return frames.astype(jnp.float32), cache


@functools.partial(jax.jit, static_argnums=(0, 4), donate_argnums=3)
def _encoder_step(graphdef, state, x, cache, channels: int):
    """The encoder's moments [mean | logvar] for one chunk, cut to `channels` (the mean alone is the mode)."""
    moments, cache = nnx.merge(graphdef, state)(x, cache)
    return moments[..., :channels].astype(jnp.float32), cache


def _run_chunks(step: Callable, x: jax.Array, per_chunk: int) -> jax.Array:
    """x [B, T, H, W, C] through `step(chunk, cache) -> (out, cache)` chunk by chunk; outputs joined along T."""
    cache, outs = None, []
    for start, stop in chunk_bounds(x.shape[1], per_chunk):
        out, cache = step(x[:, start:stop], cache)
        outs.append(out)
    return jnp.concatenate(outs, axis=1)


@dataclasses.dataclass(frozen=True)
class Tiling:
    """diffusers' `enable_tiling` settings: tiles of `sample_height` x `sample_width` pixels (latent tiles of that
    size divided by the spatial ratio), overlapping by the overlap fractions and blended linearly over the overlap."""

    sample_height: int
    sample_width: int
    overlap_height: float = 1 / 6
    overlap_width: float = 1 / 5

    @classmethod
    def for_config(cls, cfg: CogVideoXVAEConfig) -> "Tiling":
        """diffusers' defaults: half the config's sample size."""
        return cls(cfg.sample_height // 2, cfg.sample_width // 2)

    def latent_size(self, cfg: CogVideoXVAEConfig) -> tuple[int, int]:
        return int(self.sample_height / cfg.spatial_ratio), int(self.sample_width / cfg.spatial_ratio)


def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
    """diffusers' blend_v/blend_h: b's first `extent` rows along `axis` fade in from a's last rows,
    b[y] = a[-e + y] * (1 - y/e) + b[y] * (y/e), the weights rounded to float32 like torch's scalar operands."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent == 0:
        return b
    ramp = np.arange(extent, dtype=np.float64) / extent
    shape = [1] * b.ndim
    shape[axis] = extent
    keep = jnp.asarray((1 - ramp).astype(np.float32).reshape(shape))
    take = jnp.asarray(ramp.astype(np.float32).reshape(shape))
    a_tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
    b_head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
    return jax.lax.dynamic_update_slice_in_dim(b, a_tail * keep + b_head * take, 0, axis=axis)


def _tiled(run: Callable[[jax.Array], jax.Array], x: jax.Array, *, tile: tuple[int, int], stride: tuple[int, int],
           blend: tuple[int, int], keep: tuple[int, int]) -> jax.Array:
    """diffusers' tiled_decode/tiled_encode on channels-last x [B, T, H, W, C]: run each overlapping tile (its
    own full chunk loop and caches), blend every tile with its (already blended) upper and left neighbours, crop
    each to `keep` and stitch."""
    _, _, height, width, _ = x.shape
    rows = [[run(x[:, :, i:i + tile[0], j:j + tile[1]]) for j in range(0, width, stride[1])]
            for i in range(0, height, stride[0])]
    stitched = []
    for i, row in enumerate(rows):
        for j in range(len(row)):
            if i > 0:
                row[j] = _blend(rows[i - 1][j], row[j], blend[0], axis=2)
            if j > 0:
                row[j] = _blend(row[j - 1], row[j], blend[1], axis=3)
        stitched.append(jnp.concatenate([t[:, :, :keep[0], :keep[1]] for t in row], axis=3))
    return jnp.concatenate(stitched, axis=2)


def _tiling(vae: CogVideoXVAE, tile: bool | Tiling) -> Tiling | None:
    if tile is True:
        return Tiling.for_config(vae.config)
    return tile or None


def decode(vae: CogVideoXVAE, z: jax.Array, *, tile: bool | Tiling = False) -> jax.Array:
    """Latents [B, F, C, h, w] (the pipeline's layout), already divided by `scaling_factor` -> video
    [B, T, 8h, 8w, 3] float32, about [-1, 1] and not clamped (see `postprocess`). T = 1 + 4(F - 1) for odd F and
    4F for even F, as in diffusers.

    `tile=True` (or a `Tiling`) decodes overlapping spatial tiles and blends them, as diffusers with
    `enable_tiling()`; it only tiles latents larger than one tile, and changes the result slightly."""
    cfg = vae.config
    if z.ndim != 5 or z.shape[2] != cfg.latent_channels:
        raise InputError(f"latents must be [B, F, {cfg.latent_channels}, h, w]; got {tuple(z.shape)}")
    z = jnp.asarray(z).transpose(0, 1, 3, 4, 2).astype(vae.dtype)
    graphdef, state = nnx.split(vae.decoder)

    def run(latents):
        return _run_chunks(lambda chunk, cache: _decoder_step(graphdef, state, chunk, cache), latents,
                           LATENT_FRAMES_PER_CHUNK)

    tiling = _tiling(vae, tile)
    if tiling is not None:
        (lh, lw), (sh, sw) = tiling.latent_size(cfg), (tiling.sample_height, tiling.sample_width)
        if z.shape[2] > lh or z.shape[3] > lw:
            blend = (int(sh * tiling.overlap_height), int(sw * tiling.overlap_width))
            return _tiled(run, z, tile=(lh, lw),
                          stride=(int(lh * (1 - tiling.overlap_height)), int(lw * (1 - tiling.overlap_width))),
                          blend=blend, keep=(sh - blend[0], sw - blend[1]))
    return run(z)


def decode_latents(vae: CogVideoXVAE, latents: jax.Array, *, tile: bool | Tiling = False) -> jax.Array:
    """The pipeline's `decode_latents`: denoised latents [B, F, C, h, w] times 1 / scaling_factor, then `decode`."""
    return decode(vae, jnp.asarray(latents) * (1 / vae.config.scaling_factor), tile=tile)


def encode(vae: CogVideoXVAE, video: jax.Array, *, tile: bool | Tiling = False,
           posterior_noise: jax.Array | None = None) -> jax.Array:
    """Video [B, T, H, W, 3] in [-1, 1] -> the latent posterior's mean (mode) [B, F, C, H/8, W/8] float32, with
    T cut into chunks of 8 frames (the first taking the remainder) as diffusers' `_encode` does: expects T = 1, 8k
    or 8k+1 (49 -> 13). Not scaled: callers multiply by `vae.config.scaling_factor` to get diffusion latents.
    With `posterior_noise` (standard normal, the output's shape) a sample of the posterior instead, mean + std *
    noise, as diffusers' `latent_dist.sample()` (its log-variance clipped to [-30, 20]).

    `tile=True` (or a `Tiling`) encodes overlapping spatial tiles as diffusers' `tiled_encode`."""
    cfg = vae.config
    if video.ndim != 5 or video.shape[-1] != cfg.in_channels:
        raise InputError(f"video must be [B, T, H, W, {cfg.in_channels}]; got {tuple(video.shape)}")
    x = jnp.asarray(video).astype(vae.dtype)
    graphdef, state = nnx.split(vae.encoder)
    channels = cfg.latent_channels * (1 if posterior_noise is None else 2)  # the mean, or mean and log-variance

    def run(frames):
        return _run_chunks(lambda chunk, cache: _encoder_step(graphdef, state, chunk, cache, channels),
                           frames, SAMPLE_FRAMES_PER_CHUNK)

    tiling = _tiling(vae, tile)
    out = None
    if tiling is not None:
        (lh, lw), (sh, sw) = tiling.latent_size(cfg), (tiling.sample_height, tiling.sample_width)
        if x.shape[2] > sh or x.shape[3] > sw:
            blend = (int(lh * tiling.overlap_height), int(lw * tiling.overlap_width))
            out = _tiled(run, x, tile=(sh, sw),
                         stride=(int(sh * (1 - tiling.overlap_height)), int(sw * (1 - tiling.overlap_width))),
                         blend=blend, keep=(lh - blend[0], lw - blend[1]))
    if out is None:
        out = run(x)
    out = out.transpose(0, 1, 4, 2, 3)
    if posterior_noise is None:
        return out
    mean, logvar = jnp.split(out, 2, axis=2)
    if posterior_noise.shape != mean.shape:
        raise InputError(f"posterior noise must have the latents' shape {tuple(mean.shape)}; got "
                         f"{tuple(posterior_noise.shape)}")
    return mean + jnp.exp(0.5 * jnp.clip(logvar, -30.0, 20.0)) * posterior_noise


def postprocess(video: jax.Array) -> jax.Array:
    """Decoded video -> [0, 1] as diffusers' video processor: (x * 0.5 + 0.5).clip(0, 1)."""
    return jnp.clip(jnp.asarray(video, jnp.float32) * 0.5 + 0.5, 0, 1)
