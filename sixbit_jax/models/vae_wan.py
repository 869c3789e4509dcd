"""Wan's causal 3D VAE (`AutoencoderKLWan`, diffusers 0.42.1) in Flax NNX: decoder and encoder, Wan2.1's and
Wan2.2 TI2V-5B's residual, patchified variant (`is_residual`, `patch_size` 2).

Module and parameter names follow the diffusers checkpoint, so `".".join(path)` of a leaf in `nnx.to_pure_dict` is
its diffusers key (`decoder.up_blocks.0.resnets.1.conv1.weight`, `encoder.down_blocks.1.resample.1.weight`). Only
convolution kernels change layout (PyTorch [O, I, *k] -> ours [*k, I, O], see convert/vae_wan.py); RMS-norm gammas
keep diffusers' broadcastable shape ([C, 1, 1, 1] in resnets and norm_out, [C, 1, 1] in attention blocks).

Data layout inside: channels-last, [B, T, H, W, C]. The public `decode`/`decode_latents`/`encode` take and return
Wan's latent layout [B, C, F, h, w] (as WanPipeline holds latents) and videos as [B, T, H, W, 3].
Wan2.2's residual blocks have their own diffusers names (`encoder.down_blocks.1.downsampler.time_conv.weight`,
`decoder.up_blocks.0.upsampler.resample.1.weight`); their shortcuts hold no tensors.

Exactness notes (what makes this match diffusers, and why the structure is as it is):
- Causal convs (3x3x3 and the 3x1x1 time convs) see 2 frames before the chunk: diffusers' `feat_cache` entry (the
  last CACHE_T = 2 input frames seen so far) padded with zeros to 2 frames, zeros alone at the start of a video.
  That is a causal conv over the whole video with 2 zero frames in front, which is what we run: every cache is 2
  frames from the first chunk on (zeros where diffusers' is shorter or empty), so all chunks after the first share
  one compiled program.
- upsample3d (decoder): in the first chunk diffusers only marks its cache ("Rep") and does not touch time, so the
  first latent frame decodes to 1 frame; from the second chunk on the time conv (C -> 2C, zero padded as above,
  its stream starting at chunk 2) doubles the frames, the two channel halves becoming frames 2t and 2t+1.
- downsample3d (encoder): in the first chunk no time conv; afterwards a stride-2 3x1x1 conv over the previous
  chunk's last frame followed by this chunk's frames (after the spatial stride-2 conv).
- RMS norm: F.normalize over channels (x / max(||x||, 1e-12)) in float32, times sqrt(C) and gamma; diffusers'
  `channel_first=True` (every use in the VAE) only shapes gamma, we always normalise the last axis. No bias.
- Attention (mid blocks): per frame, one head over the H*W positions, width C, softmax in float32.
- Chunking: the first chunk must be exactly latent frame 0 / video frame 0 (the rules above); the rest (causal
  convs over zero-prefixed streams, per-position norms, per-frame attention) does not depend on how the later
  frames are cut, and we cut as diffusers for its memory bound: `decode` runs the decoder one latent frame at a
  time, as `_decode`; `encode` runs the encoder on frame 0, then chunks of 4 frames, as `_encode` (which ignores
  frames past 1 + 4k: 12 frames encode as 9). post_quant_conv / quant_conv are 1x1x1, so running them per chunk
  is the same as diffusers running them on the whole tensor. The decoded video is clamped to [-1, 1], as
  diffusers does.
- Wan2.2's residual VAE (`is_residual`): each encoder level is resnets + downsampler plus a parameterless
  shortcut, `avg_down` of the level's input (space-to-channel over the level's (2,) 2 x 2 cells, then a mean over
  channel groups); each decoder up block resnets + upsampler (width kept) plus `dup_up` (channel repeat, then
  channel-to-space). Both shortcuts cut time per chunk, which is why the chunking must stay diffusers': in the
  encoder's first chunk (one frame) `avg_down` pads a zero frame in front, so frame 0 is averaged with zeros
  (the downsample3d beside it leaves that chunk's time alone); in the decoder's first chunk `dup_up` drops its
  first of two frames, as the upsample3d beside it does not double time (diffusers' `first_chunk`, which is our
  call without a cache). Later chunks pair frames within the chunk too (4 encoder frames: (1, 2), (3, 4)), as
  diffusers does.
- patch_size p (Wan2.2: 2): the encoder sees patchify(video), each p x p pixel block as C p p channels (channel
  c p p + dw p + dh, diffusers' order), and the decoder's output is unpatchified; both are per frame, so done per
  chunk. in/out_channels count the patchified channels (Wan2.2: 12), spatial_ratio is 2^(levels - 1) p (16).
- Latent normalisation (`latents_mean`/`latents_std`) belongs to the pipeline, not to `AutoencoderKLWan`:
  `denormalize_latents` does what WanPipeline does before `vae.decode`, `decode_latents` both.
- Memory is bounded by one chunk: each chunk is one jitted call (chunk + caches in, output + new caches out) in a
  Python loop, the old caches donated. Two compiled variants per spatial size and dtype: the first chunk (no cache)
  and the rest.
- Not implemented (ConfigError): encoder attention (`attn_scales`, empty in every released Wan VAE); residual
  widths whose shortcuts would not regroup whole channels (diffusers refuses them too). Not implemented at all:
  tiled decode/encode (`enable_tiling`, off in WanPipeline).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sixbit_jax.checkpoint import abstract_module_params
from sixbit_jax.config import check_diffusers_config, read_json
from sixbit_jax.errors import ConfigError, InputError
from sixbit_jax.layers.conv import Conv, cache_part, run_cached, silu
from sixbit_jax.layers.dense import full_precision

CACHE_T = 2  # frames every causal conv keeps from the previous chunk (diffusers' CACHE_T)
ENCODE_CHUNK = 4  # frames per encoder chunk after the first (single) frame, as diffusers' _encode
NORMALIZE_EPS = 1e-12  # F.normalize's default eps

# Wan2.1's published latent statistics (diffusers' defaults, also in every Wan2.1 vae/config.json)
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """diffusers' `AutoencoderKLWan` config (`vae/config.json`); the defaults are Wan2.1's VAE (also used by the
    Wan2.2 A14B models). Wan2.2 TI2V-5B's VAE sets is_residual, patch_size 2 (so in/out_channels 12 and
    scale_factor_spatial 16), base_dim 160, decoder_base_dim 256 and z_dim 48. The misspelling
    `temperal_downsample` is diffusers'."""

    base_dim: int = 96
    decoder_base_dim: int | None = None  # None: base_dim
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0  # training only
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4  # what WanPipeline reads; must agree with temperal_downsample
    scale_factor_spatial: int | None = 8  # ... and with dim_mult

    def __post_init__(self):
        n = len(self.dim_mult)
        if n < 1 or any(int(m) < 1 for m in self.dim_mult):
            raise ConfigError(f"dim_mult must list at least one positive multiplier; got {list(self.dim_mult)}")
        if min(self.base_dim, self.z_dim, self.num_res_blocks, self.in_channels, self.out_channels) < 1 or (
                self.decoder_base_dim is not None and self.decoder_base_dim < 1):
            raise ConfigError("base_dim, decoder_base_dim, z_dim, num_res_blocks, in_channels and out_channels must "
                              "be positive")
        if len(self.temperal_downsample) < n - 1:
            raise ConfigError(f"temperal_downsample has {len(self.temperal_downsample)} entries; it needs one per "
                              f"downsampling level, len(dim_mult) - 1 = {n - 1}")
        for key in ("latents_mean", "latents_std"):
            if len(getattr(self, key)) != self.z_dim:
                raise ConfigError(f"{key} has {len(getattr(self, key))} entries; it needs z_dim = {self.z_dim}")
        if any(s == 0 for s in self.latents_std):
            raise ConfigError("latents_std has a zero entry")
        if self.patch_size is not None and (isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int)
                                            or self.patch_size < 1):
            raise ConfigError(f"patch_size must be null or a positive integer; got {self.patch_size!r}")
        for key in ("in_channels", "out_channels"):  # counted after patchify: Wan2.2's 12 are 3 colours x 2 x 2
            if getattr(self, key) % self.patch**2:
                raise ConfigError(f"{key} {getattr(self, key)} is not divisible by patch_size**2 = {self.patch**2} "
                                  f"(it counts the channels of patchified frames)")
        if self.is_residual:
            self._check_residual_shortcuts()
        if self.scale_factor_spatial is not None and self.scale_factor_spatial != self.spatial_ratio:
            raise ConfigError(f"scale_factor_spatial {self.scale_factor_spatial} contradicts dim_mult (its "
                              f"{n - 1} downsampling levels give {self.spatial_ratio})")
        if self.scale_factor_temporal is not None and self.scale_factor_temporal != self.temporal_ratio:
            raise ConfigError(f"scale_factor_temporal {self.scale_factor_temporal} contradicts temperal_downsample "
                              f"(its {sum(self.encoder_temporal)} temporal levels give {self.temporal_ratio})")

    def _check_residual_shortcuts(self) -> None:
        """The residual blocks' parameterless shortcuts regroup channels: the encoder's averages groups of
        in * factor / out channels, the decoder's repeats each of its in channels out * factor / in times (factor:
        the block's time x height x width resampling). diffusers refuses widths where those are not whole."""
        n = len(self.dim_mult)
        enc = [self.base_dim * m for m in (1, *self.dim_mult)]
        for i in range(n):
            factor = (4 * (2 if self.encoder_temporal[i] else 1)) if i < n - 1 else 1
            if enc[i] * factor % enc[i + 1]:
                raise ConfigError(f"is_residual: encoder level {i}'s shortcut averages {enc[i]} x {factor} channels "
                                  f"into {enc[i + 1]}, which does not divide them (base_dim, dim_mult)")
        dec = self.decoder_dims
        for i in range(n - 1):
            factor = 4 * (2 if self.decoder_temporal[i] else 1)
            if dec[i + 1] * factor % dec[i]:
                raise ConfigError(f"is_residual: decoder up block {i}'s shortcut repeats {dec[i]} channels into "
                                  f"{dec[i + 1]} x {factor}, which they do not divide (decoder_base_dim, dim_mult)")

    @property
    def patch(self) -> int:
        """Pixels per side that patchify folds into channels (1: no patchify)."""
        return self.patch_size or 1

    @property
    def video_in_channels(self) -> int:
        """Channels of the video `encode` takes (in_channels counts them after patchify)."""
        return self.in_channels // self.patch**2

    @property
    def video_out_channels(self) -> int:
        return self.out_channels // self.patch**2

    @property
    def decoder_dims(self) -> list[int]:
        """Decoder widths: conv_in's output, then each up block's."""
        base = self.decoder_base_dim or self.base_dim
        return [base * m for m in (self.dim_mult[-1], *self.dim_mult[::-1])]

    @property
    def encoder_temporal(self) -> tuple[bool, ...]:
        """Which encoder downsampling levels also halve time (diffusers: temperal_downsample[i])."""
        return tuple(bool(t) for t in self.temperal_downsample[:len(self.dim_mult) - 1])

    @property
    def decoder_temporal(self) -> tuple[bool, ...]:
        """Which decoder upsampling levels also double time (diffusers: temperal_downsample[::-1][i])."""
        return tuple(bool(t) for t in self.temperal_downsample[::-1][:len(self.dim_mult) - 1])

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * self.patch

    @property
    def temporal_ratio(self) -> int:
        return 2 ** sum(self.encoder_temporal)

    def latent_frames(self, frames: int) -> int:
        """Latent frames `encode` gives for `frames` video frames (frames past 1 + 4k are ignored, as diffusers)."""
        return ((frames - 1) // ENCODE_CHUNK) * ENCODE_CHUNK // self.temporal_ratio + 1

    def video_frames(self, latent_frames: int) -> int:
        """Frames `decode` gives for `latent_frames` latent frames: 1 + 4(F - 1) for Wan2.1."""
        return 1 + 2 ** sum(self.decoder_temporal) * (latent_frames - 1)

    def to_dict(self) -> dict[str, Any]:
        out = {"_class_name": "AutoencoderKLWan", **dataclasses.asdict(self)}
        for key in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "WanVAEConfig":
        """Accepts diffusers' vae/config.json. Values this port does not implement raise ConfigError naming the
        field; keys unknown to AutoencoderKLWan (diffusers' `_diffusers_version`, ...) are ignored."""
        check_diffusers_config(raw, "AutoencoderKLWan", {
            "attn_scales": ([], "attention in the encoder's down blocks"),
        }, what="VAE")
        lists = {"dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"}
        nullable = {"decoder_base_dim", "patch_size", "scale_factor_temporal", "scale_factor_spatial"}
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in fields}
        for key, value in kwargs.items():
            if key in lists:
                if not isinstance(value, (list, tuple)) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, str) for v in value):
                    raise ConfigError(f"VAE config field {key} must be a list of numbers; got {value!r}")
                kwargs[key] = tuple(value)
            elif (value is None and key not in nullable) or isinstance(value, (dict, list, str)):
                raise ConfigError(f"VAE config field {key} has an invalid value {value!r}")
        kwargs["dim_mult"] = tuple(int(m) for m in kwargs.get("dim_mult", cls.dim_mult))
        kwargs["temperal_downsample"] = tuple(bool(t) for t in kwargs.get("temperal_downsample",
                                                                          cls.temperal_downsample))
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "WanVAEConfig":
        return cls.from_dict(read_json(path, "VAE config file"))


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------
def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class CausalConv3d(Conv):
    """WanCausalConv3d: zero padding (p_h, p_w) in space, 2 p_t frames in front in time. A padded conv keeps the
    last CACHE_T = 2 frames of its (cache + chunk) input as the next chunk's cache; the first chunk's cache is
    zeros, which is diffusers' zero padding (see the module notes). Unpadded convs (1x1x1, the strided time conv)
    take no cache and return None."""

    def __init__(self, in_channels: int, out_channels: int, kernel, *, stride=1, padding=0, dtype, rngs: nnx.Rngs):
        kernel, stride, padding = _triple(kernel), _triple(stride), _triple(padding)
        if 2 * padding[0] not in (0, CACHE_T):
            raise ConfigError(f"causal conv time padding {padding[0]} is not implemented (0 or {CACHE_T // 2})")
        super().__init__(in_channels, out_channels, kernel, stride=stride,
                         padding=((0, 0), (padding[1],) * 2, (padding[2],) * 2), dtype=dtype, rngs=rngs)
        self.time_pad = 2 * padding[0]

    def __call__(self, x: jax.Array, cache: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        if self.time_pad == 0:
            return super().__call__(x), None
        if cache is None:
            cache = jnp.zeros((x.shape[0], self.time_pad, *x.shape[2:]), x.dtype)
        x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        return super().__call__(x), x[:, -CACHE_T:]


class RMSNorm(nnx.Module):
    """WanRMS_norm over the channel (last) axis: x / max(||x||_2, 1e-12) * sqrt(C) * gamma (+ bias), in float32
    and rounded once. `gamma` (and `bias`) keep diffusers' shape: [C, 1, 1] (`images`) or [C, 1, 1, 1] when
    `channel_first`, else [C]."""

    def __init__(self, dim: int, *, channel_first: bool = True, images: bool = True, bias: bool = False, dtype):
        shape = (dim, *((1, 1) if images else (1, 1, 1))) if channel_first else (dim,)
        self.scale = float(dim**0.5)
        self.gamma = nnx.Param(jnp.ones(shape, dtype))
        self.bias = nnx.Param(jnp.zeros(shape, dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
        y = xf / jnp.maximum(norm, NORMALIZE_EPS) * np.float32(self.scale)
        y = y * self.gamma[...].reshape(-1).astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].reshape(-1).astype(jnp.float32)
        return y.astype(x.dtype)


class ResidualBlock(nnx.Module):
    """WanResidualBlock: conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x), the shortcut a 1x1x1 conv when
    the width changes. (Dropout: inference only, none.)"""

    def __init__(self, in_dim: int, out_dim: int, *, dtype, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(in_dim, images=False, dtype=dtype)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1, dtype=dtype, rngs=rngs)
        self.norm2 = RMSNorm(out_dim, images=False, dtype=dtype)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1, dtype=dtype, rngs=rngs)
        self.conv_shortcut = (CausalConv3d(in_dim, out_dim, 1, dtype=dtype, rngs=rngs) if in_dim != out_dim
                              else None)

    def __call__(self, x: jax.Array, cache: dict | None):
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)[0]
        h, conv1 = self.conv1(silu(self.norm1(x)), cache_part(cache, "conv1"))
        h, conv2 = self.conv2(silu(self.norm2(h)), cache_part(cache, "conv2"))
        return h + shortcut, {"conv1": conv1, "conv2": conv2}


class AttentionBlock(nnx.Module):
    """WanAttentionBlock: per frame, single-head self-attention over the H*W positions (width C, scale C**-0.5) of
    the RMS-normed input, 1x1 conv projections, plus the input."""

    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim, images=True, dtype=dtype)
        self.to_qkv = Conv(dim, 3 * dim, (1, 1), dtype=dtype, rngs=rngs)
        self.proj = Conv(dim, dim, (1, 1), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        precision = full_precision(qkv.dtype)
        scores = jnp.einsum("nqc,nkc->nqk", q, k, precision=precision, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores * np.float32(c**-0.5), axis=-1)
        out = jnp.einsum("nqk,nkc->nqc", probs.astype(v.dtype), v, precision=precision,
                         preferred_element_type=jnp.float32).astype(x.dtype)
        return self.proj(out.reshape(b, t, h, w, c)) + x


class Resample(nnx.Module):
    """WanResample, modes upsample2d/upsample3d (nearest 2x in H and W, then a 3x3 conv to `upsample_out_dim`,
    dim // 2 by default; upsample3d first doubles time with `time_conv`, except in the first chunk) and
    downsample2d/downsample3d (zero pad right and bottom, 3x3 stride-2 conv; downsample3d then halves time with
    `time_conv` over the previous chunk's last frame and this chunk, except in the first chunk).

    `resample.1` is the conv, as in diffusers' nn.Sequential (entry 0 is the parameterless resize or pad)."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, *, upsample_out_dim: int | None = None, dtype, rngs: nnx.Rngs):
        if mode not in self.MODES:
            raise ConfigError(f"resample mode {mode!r} is not one of {', '.join(self.MODES)}")
        self.mode = mode
        if mode.startswith("up"):
            conv = Conv(dim, upsample_out_dim or dim // 2, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs)
        else:
            conv = Conv(dim, dim, (3, 3), stride=2, padding=((0, 1), (0, 1)), dtype=dtype, rngs=rngs)
        self.resample = nnx.List([None, conv])
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), dtype=dtype, rngs=rngs)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), dtype=dtype, rngs=rngs)
        else:
            self.time_conv = None

    def __call__(self, x: jax.Array, cache: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        new_cache = None
        if self.mode == "upsample3d":
            b, t, h, w, c = x.shape
            if cache is None:  # first chunk: diffusers' "Rep" marker, time untouched; its later zero padding
                new_cache = jnp.zeros((b, CACHE_T, h, w, c), x.dtype)
            else:  # channels [g*C, (g+1)*C) of frame i become frame 2i + g
                y, new_cache = self.time_conv(x, cache)
                x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
        b, t, h, w, c = x.shape
        frames = x.reshape(b * t, h, w, c)
        if self.mode.startswith("up"):  # nearest(-exact) at scale 2 is a repeat
            frames = jnp.repeat(jnp.repeat(frames, 2, axis=1), 2, axis=2)
        y = self.resample[1](frames)
        x = y.reshape(b, t, *y.shape[1:])
        if self.mode == "downsample3d":
            new_cache = x[:, -1:]
            if cache is not None:
                x = self.time_conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1))[0]
        return x, new_cache


def avg_down(x: jax.Array, out_dim: int, factor_t: int, factor_s: int) -> jax.Array:
    """AvgDown3D, the residual encoder block's shortcut: [B, T, H, W, C] -> [B, T/ft, H/fs, W/fs, out_dim]. Each
    (ft, fs, fs) cell's values become channels (c, dt, dh, dw), c slowest, and runs of C ft fs fs / out_dim of those
    are averaged (in float32, rounded once). T is first padded in front with zeros to a multiple of ft: in the
    first chunk (one frame) the zero frame is half of the average, as in diffusers."""
    b, t, h, w, c = x.shape
    pad_t = -t % factor_t
    if pad_t:
        x = jnp.concatenate([jnp.zeros((b, pad_t, h, w, c), x.dtype), x], axis=1)
        t += pad_t
    x = x.reshape(b, t // factor_t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, t // factor_t, h // factor_s, w // factor_s, out_dim, -1)
    return jnp.mean(x.astype(jnp.float32), axis=-1).astype(x.dtype)


def dup_up(x: jax.Array, out_dim: int, factor_t: int, factor_s: int, first_chunk: bool) -> jax.Array:
    """DupUp3D, the residual decoder block's shortcut, avg_down's converse without the average: each channel
    repeated out_dim ft fs fs / C times, the result read as channels (o, dt, dh, dw), o slowest, spread over the
    (ft, fs, fs) cell. In the first chunk the first ft - 1 frames are dropped, matching the upsampler, which leaves
    the first latent frame's time alone."""
    b, t, h, w, c = x.shape
    x = jnp.repeat(x, out_dim * factor_t * factor_s * factor_s // c, axis=-1)
    x = x.reshape(b, t, h, w, out_dim, factor_t, factor_s, factor_s)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * factor_t, h * factor_s, w * factor_s, out_dim)
    return x[:, factor_t - 1:] if first_chunk else x


def patchify(x: jax.Array, p: int) -> jax.Array:
    """diffusers' patchify on [B, T, H, W, C] -> [B, T, H/p, W/p, C p p]: channel c p p + dw p + dh holds pixel
    (p h' + dh, p w' + dw) of colour c (the width offset before the height offset, as diffusers orders them)."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """patchify's inverse: [B, T, h, w, C p p] -> [B, T, h p, w p, C]."""
    if p == 1:
        return x
    b, t, h, w, cpp = x.shape
    x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, cpp // (p * p))


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------
class MidBlock(nnx.Module):
    """WanMidBlock: resnet, attention, resnet."""

    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(dim, dim, dtype=dtype, rngs=rngs) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(dim, dtype=dtype, rngs=rngs)])

    def __call__(self, x: jax.Array, cache: list | None):
        x, first = self.resnets[0](x, cache_part(cache, 0))
        x = self.attentions[0](x)
        x, second = self.resnets[1](x, cache_part(cache, 1))
        return x, [first, second]


class UpBlock(nnx.Module):
    """WanUpBlock: num_res_blocks + 1 resnets, then an optional Resample (`upsamplers.0`)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, *, upsample_mode: str | None, dtype,
                 rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dtype=dtype, rngs=rngs)
                                 for i in range(num_res_blocks + 1)])
        self.upsamplers = (nnx.List([Resample(out_dim, upsample_mode, dtype=dtype, rngs=rngs)])
                           if upsample_mode is not None else None)

    def __call__(self, x: jax.Array, cache: dict | None):
        x, resnets = run_cached(self.resnets, x, cache_part(cache, "resnets"))
        up = None
        if self.upsamplers is not None:
            x, up = self.upsamplers[0](x, cache_part(cache, "upsampler"))
        return x, {"resnets": resnets, "upsampler": up}


class ResidualDownBlock(nnx.Module):
    """WanResidualDownBlock (Wan2.2, one per encoder level): num_res_blocks resnets and (all but the last level)
    a downsample2d/3d Resample (`downsampler`), plus `avg_down` of the block's input as a shortcut (parameterless:
    diffusers' `avg_shortcut` holds no tensors)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, *, temporal: bool, down: bool, dtype,
                 rngs: nnx.Rngs):
        resnets = []
        for _ in range(num_res_blocks):
            resnets.append(ResidualBlock(in_dim, out_dim, dtype=dtype, rngs=rngs))
            in_dim = out_dim
        self.resnets = nnx.List(resnets)
        self.downsampler = (Resample(out_dim, "downsample3d" if temporal else "downsample2d", dtype=dtype, rngs=rngs)
                            if down else None)
        self.out_dim = out_dim
        self.factor_t, self.factor_s = (2 if temporal and down else 1), (2 if down else 1)

    def __call__(self, x: jax.Array, cache: dict | None):
        shortcut = avg_down(x, self.out_dim, self.factor_t, self.factor_s)
        x, resnets = run_cached(self.resnets, x, cache_part(cache, "resnets"))
        down = None
        if self.downsampler is not None:
            x, down = self.downsampler(x, cache_part(cache, "downsampler"))
        return x + shortcut, {"resnets": resnets, "downsampler": down}


class ResidualUpBlock(nnx.Module):
    """WanResidualUpBlock (Wan2.2): num_res_blocks + 1 resnets, then an optional Resample (`upsampler`, keeping the
    width: upsample_out_dim = out_dim), plus, where it upsamples, `dup_up` of the block's input as a shortcut. The
    first chunk is the call without a cache (diffusers' `first_chunk=True`)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, *, upsample_mode: str | None, dtype,
                 rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dtype=dtype, rngs=rngs)
                                 for i in range(num_res_blocks + 1)])
        self.upsampler = (Resample(out_dim, upsample_mode, upsample_out_dim=out_dim, dtype=dtype, rngs=rngs)
                          if upsample_mode is not None else None)
        self.out_dim = out_dim
        self.factor_t = 2 if upsample_mode == "upsample3d" else 1

    def __call__(self, x: jax.Array, cache: dict | None):
        shortcut = (dup_up(x, self.out_dim, self.factor_t, 2, first_chunk=cache is None)
                    if self.upsampler is not None else None)
        x, resnets = run_cached(self.resnets, x, cache_part(cache, "resnets"))
        up = None
        if self.upsampler is not None:
            x, up = self.upsampler(x, cache_part(cache, "upsampler"))
            x = x + shortcut
        return x, {"resnets": resnets, "upsampler": up}


class Encoder(nnx.Module):
    """WanEncoder3d: one chunk of frames x [B, T, H, W, in_channels] and the previous chunk's cache (None for the
    first) -> (moments [B, t, h, w, 2 z_dim] before quant_conv, new cache).

    conv_in; `down_blocks`, a flat list: per level num_res_blocks resnets, then (all but the last level) a
    downsample2d/3d Resample (Wan2.2's `is_residual`: one ResidualDownBlock per level instead); mid block; RMS
    norm, SiLU, conv_out. x is patchified already where the config has a patch_size."""

    def __init__(self, cfg: WanVAEConfig, *, dtype, rngs: nnx.Rngs):
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1, dtype=dtype, rngs=rngs)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if cfg.is_residual:
                down = i < len(cfg.dim_mult) - 1
                blocks.append(ResidualDownBlock(in_dim, out_dim, cfg.num_res_blocks, temporal=down and
                                                cfg.encoder_temporal[i], down=down, dtype=dtype, rngs=rngs))
                continue
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dtype=dtype, rngs=rngs))
                in_dim = out_dim
            if i < len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.encoder_temporal[i] else "downsample2d"
                blocks.append(Resample(out_dim, mode, dtype=dtype, rngs=rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], dtype=dtype, rngs=rngs)
        self.norm_out = RMSNorm(dims[-1], images=False, dtype=dtype)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cache: dict | None = None):
        x, conv_in = self.conv_in(x, cache_part(cache, "conv_in"))
        x, downs = run_cached(self.down_blocks, x, cache_part(cache, "down_blocks"))
        x, mid = self.mid_block(x, cache_part(cache, "mid_block"))
        x, conv_out = self.conv_out(silu(self.norm_out(x)), cache_part(cache, "conv_out"))
        return x, {"conv_in": conv_in, "down_blocks": downs, "mid_block": mid, "conv_out": conv_out}


class Decoder(nnx.Module):
    """WanDecoder3d: one latent chunk z [B, t, h, w, z_dim] (after post_quant_conv) and the previous chunk's cache
    (None for the first) -> (frames [B, T, H, W, out_channels], new cache).

    conv_in; mid block; up blocks (widths base * dim_mult reversed; every block after the first takes half the
    previous width, which its predecessor's upsampler produced; all but the last upsample, in time too where
    temperal_downsample[::-1] says so; Wan2.2's `is_residual`: ResidualUpBlocks, whose upsamplers keep the width);
    RMS norm, SiLU, conv_out. The frames are still patchified where the config has a patch_size."""

    def __init__(self, cfg: WanVAEConfig, *, dtype, rngs: nnx.Rngs):
        dims = cfg.decoder_dims
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1, dtype=dtype, rngs=rngs)
        self.mid_block = MidBlock(dims[0], dtype=dtype, rngs=rngs)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            mode = None
            if i < len(cfg.dim_mult) - 1:
                mode = "upsample3d" if cfg.decoder_temporal[i] else "upsample2d"
            if cfg.is_residual:
                blocks.append(ResidualUpBlock(in_dim, out_dim, cfg.num_res_blocks, upsample_mode=mode, dtype=dtype,
                                              rngs=rngs))
            else:
                blocks.append(UpBlock(in_dim // 2 if i > 0 else in_dim, out_dim, cfg.num_res_blocks,
                                      upsample_mode=mode, dtype=dtype, rngs=rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], images=False, dtype=dtype)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, z: jax.Array, cache: dict | None = None):
        x, conv_in = self.conv_in(z, cache_part(cache, "conv_in"))
        x, mid = self.mid_block(x, cache_part(cache, "mid_block"))
        x, ups = run_cached(self.up_blocks, x, cache_part(cache, "up_blocks"))
        x, conv_out = self.conv_out(silu(self.norm_out(x)), cache_part(cache, "conv_out"))
        return x, {"conv_in": conv_in, "mid_block": mid, "up_blocks": ups, "conv_out": conv_out}


class WanVAE(nnx.Module):
    """AutoencoderKLWan: `encoder`, `quant_conv`, `post_quant_conv` and `decoder`, parameters (and compute) in
    `dtype`; norms and softmax in float32. Use the functions `decode`, `decode_latents` and `encode` below rather
    than calling the parts."""

    def __init__(self, cfg: WanVAEConfig, *, dtype=jnp.bfloat16, rngs: nnx.Rngs):
        self.config, self.dtype = cfg, jnp.dtype(dtype)
        self.encoder = Encoder(cfg, dtype=dtype, rngs=rngs)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1, dtype=dtype, rngs=rngs)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, 1, dtype=dtype, rngs=rngs)
        self.decoder = Decoder(cfg, dtype=dtype, rngs=rngs)


def abstract_wan_vae_params(cfg: WanVAEConfig, dtype) -> dict:
    """The parameter tree (`nnx.to_pure_dict` layout, list indices as int keys) as ShapeDtypeStructs."""
    return abstract_module_params(WanVAE, cfg, jnp.dtype(dtype))


# ----------------------------------------------------------------------------------------------------------------
# Chunked decode / encode
# ----------------------------------------------------------------------------------------------------------------
def encode_chunks(frames: int) -> list[tuple[int, int]]:
    """diffusers' `_encode` split: frame 0 alone, then chunks of 4 frames; frames past the last whole chunk are
    not encoded. 1 -> [(0, 1)]; 9 -> [(0, 1), (1, 5), (5, 9)]; 12 -> the same as 9."""
    if frames < 1:
        raise InputError("a video needs at least one frame")
    return [(0, 1)] + [(1 + ENCODE_CHUNK * k, 1 + ENCODE_CHUNK * (k + 1)) for k in range((frames - 1) // ENCODE_CHUNK)]


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _decoder_step(graphdef, state, z, cache):
    vae = nnx.merge(graphdef, state)
    frames, cache = vae.decoder(vae.post_quant_conv(z)[0], cache)
    frames = unpatchify(frames, vae.config.patch)  # per frame, so per chunk is as diffusers' on the whole video
    return jnp.clip(frames, -1, 1).astype(jnp.float32), cache


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _encoder_step(graphdef, state, x, cache):
    """The posterior's moments [mean | logvar] for one chunk (both, so that the mode and a sample share one
    compiled program; they are latent-sized)."""
    vae = nnx.merge(graphdef, state)
    moments, cache = vae.encoder(patchify(x, vae.config.patch), cache)
    return vae.quant_conv(moments)[0].astype(jnp.float32), cache


def _latent_stats(cfg: WanVAEConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """(mean, 1 / std) as [1, C, 1, 1, 1] in `dtype`; 1 / std computed in float32, as WanPipeline does."""
    mean = np.asarray(cfg.latents_mean, np.float32).reshape(1, -1, 1, 1, 1)
    inv_std = (np.float32(1) / np.asarray(cfg.latents_std, np.float32)).reshape(1, -1, 1, 1, 1)
    return jnp.asarray(mean, dtype), jnp.asarray(inv_std, dtype)


def _float(z) -> jax.Array:
    z = jnp.asarray(z)
    return z if jnp.issubdtype(z.dtype, jnp.floating) else z.astype(jnp.float32)


def denormalize_latents(cfg: WanVAEConfig, z: jax.Array) -> jax.Array:
    """What WanPipeline does to denoised latents [B, C, F, h, w] before `vae.decode`: z / (1 / std) + mean per
    channel, in z's dtype."""
    z = _float(z)
    mean, inv_std = _latent_stats(cfg, z.dtype)
    return z / inv_std + mean


def normalize_latents(cfg: WanVAEConfig, z: jax.Array) -> jax.Array:
    """The inverse, as Wan's image-to-video pipelines apply to encoded latents: (z - mean) * (1 / std)."""
    z = _float(z)
    mean, inv_std = _latent_stats(cfg, z.dtype)
    return (z - mean) * inv_std


def decode(vae: WanVAE, z: jax.Array) -> jax.Array:
    """Latents [B, z_dim, F, h, w] (Wan's layout, already denormalised: see `decode_latents`) -> video
    [B, 1 + 4(F - 1), r h, r w, out_channels / patch_size**2] float32 in [-1, 1] (r = spatial_ratio: 8 for Wan2.1,
    16 for Wan2.2's patchified VAE), one latent frame per jitted call as diffusers' `_decode`."""
    cfg = vae.config
    if z.ndim != 5 or z.shape[1] != cfg.z_dim:
        raise InputError(f"latents must be [B, {cfg.z_dim}, F, h, w]; got {tuple(z.shape)}")
    x = jnp.asarray(z).transpose(0, 2, 3, 4, 1).astype(vae.dtype)
    graphdef, state = nnx.split(vae)
    cache, outs = None, []
    for i in range(x.shape[1]):
        out, cache = _decoder_step(graphdef, state, x[:, i:i + 1], cache)
        outs.append(out)
    return jnp.concatenate(outs, axis=1)


def decode_latents(vae: WanVAE, latents: jax.Array) -> jax.Array:
    """WanPipeline's decode: denoised latents [B, C, F, h, w] cast to the VAE's dtype -> `denormalize_latents`
    (in that dtype) -> `decode`."""
    return decode(vae, denormalize_latents(vae.config, jnp.asarray(latents).astype(vae.dtype)))


def encode(vae: WanVAE, video: jax.Array, *, posterior_noise: jax.Array | None = None) -> jax.Array:
    """Video [B, T, H, W, in_channels / patch_size**2] in [-1, 1] -> the latent posterior's mean (mode)
    [B, z_dim, F, H/r, W/r] float32 (r = spatial_ratio; H and W multiples of it for the residual VAE, whose
    shortcuts need whole cells, else of patch_size), T cut as diffusers' `_encode` (`encode_chunks`: frame 0, then
    4 frames per chunk, F = 1 + (T - 1) // 4; frames past 1 + 4(F - 1) are ignored). Not normalised (see
    `normalize_latents`).
    With `posterior_noise` (standard normal, the output's shape) a sample of the posterior instead, mean + std *
    noise, as diffusers' `latent_dist.sample()` (its log-variance clipped to [-30, 20])."""
    cfg = vae.config
    if video.ndim != 5 or video.shape[-1] != cfg.video_in_channels:
        raise InputError(f"video must be [B, T, H, W, {cfg.video_in_channels}]; got {tuple(video.shape)}")
    multiple = cfg.spatial_ratio if cfg.is_residual else cfg.patch
    if video.shape[2] % multiple or video.shape[3] % multiple:
        raise InputError(f"video height and width must be multiples of {multiple}; got {tuple(video.shape[2:4])}")
    x = jnp.asarray(video).astype(vae.dtype)
    graphdef, state = nnx.split(vae)
    cache, outs = None, []
    for start, stop in encode_chunks(x.shape[1]):
        out, cache = _encoder_step(graphdef, state, x[:, start:stop], cache)
        outs.append(out)
    mean, logvar = jnp.split(jnp.concatenate(outs, axis=1).transpose(0, 4, 1, 2, 3), 2, axis=1)
    if posterior_noise is None:
        return mean
    if posterior_noise.shape != mean.shape:
        raise InputError(f"posterior noise must have the latents' shape {tuple(mean.shape)}; got "
                         f"{tuple(posterior_noise.shape)}")
    return mean + jnp.exp(0.5 * jnp.clip(logvar, -30.0, 20.0)) * posterior_noise


def postprocess(video: jax.Array) -> jax.Array:
    """Decoded video -> [0, 1] as diffusers' video processor: (x * 0.5 + 0.5).clip(0, 1)."""
    return jnp.clip(jnp.asarray(video, jnp.float32) * 0.5 + 0.5, 0, 1)
