"""T5 v1.1 / umT5 text encoder (the encoder stack of transformers' `T5EncoderModel` / `UMT5EncoderModel`) in Flax NNX.

CogVideoX conditions on T5 v1.1-XXL, Wan on umT5-XXL; both are the same pre-norm transformer:

    x = shared[ids]                                  (no sqrt(d) scaling)
    per block:  x += o(attention(RMS(x) * g1))       (no 1/sqrt(d_kv) scaling; relative position bias on the scores)
                x += wo(gelu_tanh(wi_0 h) * wi_1 h)  with h = RMS(x) * g2
    out = RMS(x) * g_final

No layer has a bias. The only structural difference: T5 has one relative-position bias table (in block 0 of the
checkpoint) shared by every layer, umT5 has one table per layer (`T5Config.per_layer_relative_bias`).

Parameter names follow the checkpoint where they can (`shared`, `q`, `k`, `v`, `o`, `wi_0`, `wi_1`, `wo`,
`relative_attention_bias`, `final_layer_norm`); the checkpoint's positional `layer.0` / `layer.1` sub-layers are
named `attention_norm` + `attention` and `ff_norm` + `ff`. The blocks are stacked along a leading layer axis and run
under one `lax.scan` (one compiled block instead of 24). The key map lives in `convert/t5.py`.

Precision follows transformers:
- RMS norm: variance in float32; the normalised activations are cast to the weight dtype before the scale.
- fp16: transformers loads `wo` in float32 (`_keep_in_fp32_modules = ["wo"]`), which makes the residual stream float32
  from block 0's feed-forward on (T5 v1.1 overflows fp16 otherwise). We store `wo` in fp16 like every other weight
  (one dtype per model; exact for an fp16 checkpoint) but run it, and the residual stream from the embedding on, in
  float32 (`residual_dtype`), so block 0's first residual sum is not rounded to fp16 as in transformers. A pure-fp16
  residual (`residual_dtype=float16`, transformers' `.half()`) gets transformers' clamp to the fp16 range after
  attention and after the feed-forward.
- float32 models stay true float32 on GPU (`full_precision`, no TF32). Attention scores and softmax are float32 in
  every dtype (transformers' eager/SDPA-math path rounds bf16 scores to bf16; its fused GPU kernels do not)."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sixbit_jax import rng
from sixbit_jax.config import read_json
from sixbit_jax.errors import ConfigError, InputError
from sixbit_jax.layers.dense import full_precision
from sixbit_jax.layers.stacked import stacked_layers

# feed_forward_proj values we implement -> activation. transformers maps exactly "gated-gelu" to gelu_new (tanh).
_ACTIVATIONS = {"gated-gelu": "gelu_tanh", "gated-gelu_new": "gelu_tanh"}


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class T5Config:
    """The encoder's shape. Field names are transformers' `T5Config` / `UMT5Config` names (defaults: T5 v1.1-XXL)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    num_heads: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    per_layer_relative_bias: bool = False  # umT5: every layer has its own relative_attention_bias table

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"T5 config field {name} must be a positive integer; got {value!r}")
        if self.relative_attention_num_buckets % 4:
            # The encoder splits the buckets in half by direction, then each half into exact and log-spaced ones.
            raise ConfigError(f"relative_attention_num_buckets must be a multiple of 4; got "
                              f"{self.relative_attention_num_buckets}")
        if self.feed_forward_proj not in _ACTIVATIONS:
            raise ConfigError(f"unsupported T5 config: feed_forward_proj={self.feed_forward_proj!r} (only the gated "
                              f"GELU feed-forward of T5 v1.1 / umT5 is implemented: {', '.join(_ACTIVATIONS)})")
        if not (isinstance(self.layer_norm_epsilon, (int, float)) and self.layer_norm_epsilon > 0):
            raise ConfigError(f"layer_norm_epsilon must be a positive number; got {self.layer_norm_epsilon!r}")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @property
    def activation(self) -> str:
        return _ACTIVATIONS[self.feed_forward_proj]

    def to_dict(self) -> dict[str, Any]:
        """A transformers-style config.json (readable back by `from_dict` and by transformers)."""
        model_type = "umt5" if self.per_layer_relative_bias else "t5"
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "per_layer_relative_bias"}
        return {"model_type": model_type, "architectures": [("UMT5" if model_type == "umt5" else "T5") +
                                                            "EncoderModel"], **fields}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "T5Config":
        """Accepts a transformers `text_encoder/config.json` (T5EncoderModel, UMT5EncoderModel, or a whole
        T5ForConditionalGeneration, whose encoder is used). Unsupported values raise ConfigError naming them."""
        if not isinstance(raw, dict):
            raise ConfigError(f"a T5 config must be a JSON object; got {type(raw).__name__}")
        model_type = raw.get("model_type", "t5")
        architectures = raw.get("architectures") or []
        if model_type not in ("t5", "umt5"):
            raise ConfigError(f"unsupported text encoder model_type {model_type!r}: expected 't5' or 'umt5'")
        if raw.get("is_decoder", False):
            raise ConfigError("unsupported T5 config: is_decoder=true (a decoder stack has causal attention and "
                              "cross-attention; only the encoder is implemented)")
        umt5 = model_type == "umt5" or any(str(a).startswith("UMT5") for a in architectures)
        required = ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers")
        missing = [k for k in required if k not in raw]
        if missing:
            raise ConfigError(f"T5 config is missing {', '.join(missing)}")
        return cls(
            **{k: raw[k] for k in required},
            relative_attention_num_buckets=raw.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=raw.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-6),
            # transformers' class defaults: T5Config "relu" (original T5, unsupported), UMT5Config "gated-gelu".
            feed_forward_proj=raw.get("feed_forward_proj", "gated-gelu" if umt5 else "relu"),
            per_layer_relative_bias=umt5,
        )

    @classmethod
    def from_json(cls, path: str | Path) -> "T5Config":
        return cls.from_dict(read_json(path, "text encoder config"))


# ----------------------------------------------------------------------------------------------------------------
# Relative position buckets (host side)
# ----------------------------------------------------------------------------------------------------------------
def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """[length, length] int32 bucket of (key position - query position), bidirectional, as transformers'
    `T5Attention._relative_position_bucket`: half the buckets per direction; within a half, distances below a
    quarter of the buckets get their own bucket and the rest are log-spaced up to max_distance (then saturate).
    The logarithm is float32, as in transformers: float64 would move a few distances to the neighbouring bucket."""
    positions = np.arange(length)
    relative = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(relative)
    log_ratio = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
                 / np.float32(math.log(max_distance / exact)) * np.float32(half - exact))
    far = np.minimum(exact + log_ratio.astype(np.int64), half - 1)
    buckets = (relative > 0) * half + np.where(distance < exact, distance, far)
    return buckets.astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------
def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], scale: float, dtype) -> nnx.Param:
    return nnx.Param((rng.normal(rngs.params(), shape, jnp.float32) * scale).astype(dtype))


class Linear(nnx.Module):
    """Bias-free linear, weight in PyTorch's [out_features, in_features] layout (as in the checkpoint)."""

    def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        self.weight = _normal(rngs, (out_features, in_features), in_features**-0.5, dtype)

    def __call__(self, x: jax.Array, compute_dtype=None) -> jax.Array:
        """`compute_dtype` (default: the weight's) is the dtype of both operands and of the result."""
        w = self.weight[...]
        dtype = jnp.dtype(compute_dtype or w.dtype)
        return jnp.einsum("...k,nk->...n", x.astype(dtype), w.astype(dtype), precision=full_precision(dtype))


class Embedding(nnx.Module):
    """A [num, features] table read by index (the token embedding, the relative-position bias)."""

    def __init__(self, num: int, features: int, *, dtype, rngs: nnx.Rngs):
        self.weight = _normal(rngs, (num, features), 1.0, dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0)


class RMSNorm(nnx.Module):
    """transformers' T5LayerNorm: w * x / sqrt(mean(x^2) + eps), no mean subtraction and no bias. The variance is
    float32; the normalised x is cast to a half-precision weight's dtype before the scale, so the result has the
    weight's dtype (a float32 residual in an fp16 model comes out fp16)."""

    def __init__(self, features: int, *, eps: float, dtype):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((features,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.weight[...]
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return w * y.astype(w.dtype)


class SelfAttention(nnx.Module):
    """Multi-head self-attention on [B, L, d_model] with an additive relative position bias [H, L, L], no score
    scaling, and an optional key mask [B, L] (True = attend). A umT5 layer owns its bias table; a T5 layer is given
    the shared bias."""

    def __init__(self, cfg: T5Config, *, dtype, rngs: nnx.Rngs):
        self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.q = Linear(cfg.d_model, cfg.inner_dim, dtype=dtype, rngs=rngs)
        self.k = Linear(cfg.d_model, cfg.inner_dim, dtype=dtype, rngs=rngs)
        self.v = Linear(cfg.d_model, cfg.inner_dim, dtype=dtype, rngs=rngs)
        self.o = Linear(cfg.inner_dim, cfg.d_model, dtype=dtype, rngs=rngs)
        self.relative_attention_bias = (Embedding(cfg.relative_attention_num_buckets, cfg.num_heads, dtype=dtype,
                                                  rngs=rngs) if cfg.per_layer_relative_bias else None)

    def __call__(self, x: jax.Array, bias: jax.Array | None, buckets: jax.Array,
                 mask: jax.Array | None) -> jax.Array:
        if self.relative_attention_bias is not None:
            bias = position_bias(self.relative_attention_bias, buckets)
        b, n, _ = x.shape
        q, k, v = (layer(x).reshape(b, n, self.num_heads, self.d_kv) for layer in (self.q, self.k, self.v))
        precision = full_precision(q.dtype)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision, preferred_element_type=jnp.float32)
        scores = scores + bias.astype(jnp.float32)[None]
        if mask is not None:
            # Masked keys get the most negative float, as transformers' additive mask: a row whose keys are all
            # masked becomes uniform instead of NaN.
            scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=precision)
        return self.o(out.reshape(b, n, self.num_heads * self.d_kv))


def position_bias(table: Embedding, buckets: jax.Array) -> jax.Array:
    """[buckets, H] table and [L, L] bucket ids -> bias [H, L, L] in the table's dtype."""
    return table(buckets).transpose(2, 0, 1)


class GatedFeedForward(nnx.Module):
    """wo(act(wi_0 x) * wi_1 x). `wo` runs in the residual dtype (float32 in an fp16 model, see the module doc)."""

    def __init__(self, cfg: T5Config, *, dtype, rngs: nnx.Rngs):
        self.activation = cfg.activation
        self.wi_0 = Linear(cfg.d_model, cfg.d_ff, dtype=dtype, rngs=rngs)
        self.wi_1 = Linear(cfg.d_model, cfg.d_ff, dtype=dtype, rngs=rngs)
        self.wo = Linear(cfg.d_ff, cfg.d_model, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, residual_dtype) -> jax.Array:
        gate = jax.nn.gelu(self.wi_0(x), approximate=True)  # the only activation in _ACTIVATIONS
        return self.wo(gate * self.wi_1(x), compute_dtype=residual_dtype)


def clamp_fp16(x: jax.Array) -> jax.Array:
    """transformers' T5Block clamp for an fp16 residual: to +-max, or +-(max - 1000) once anything is inf."""
    if x.dtype != jnp.float16:
        return x
    big = float(jnp.finfo(jnp.float16).max)
    limit = jnp.where(jnp.isinf(x).any(), big - 1000, big).astype(jnp.float32)
    # Clipped in float32 (exact: both limits are fp16 values); an fp16 clip compiles 3x slower on XLA:CPU.
    return jnp.clip(x.astype(jnp.float32), -limit, limit).astype(x.dtype)


class T5Block(nnx.Module):
    """Pre-norm attention and feed-forward sub-layers, each added to the residual stream x."""

    def __init__(self, cfg: T5Config, *, dtype, rngs: nnx.Rngs):
        self.attention_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=dtype)
        self.attention = SelfAttention(cfg, dtype=dtype, rngs=rngs)
        self.ff_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=dtype)
        self.ff = GatedFeedForward(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, bias: jax.Array | None, buckets: jax.Array,
                 mask: jax.Array | None) -> jax.Array:
        x = clamp_fp16(x + self.attention(self.attention_norm(x), bias, buckets, mask).astype(x.dtype))
        return clamp_fp16(x + self.ff(self.ff_norm(x), x.dtype).astype(x.dtype))


class T5Encoder(nnx.Module):
    """input_ids [B, L] (int) and an optional attention_mask [B, L] (1/True = real token) -> [B, L, d_model] in the
    model dtype.

    CogVideoX passes no mask (pads attend and are attended to); Wan passes one. `dtype` is the parameter and compute
    dtype; `residual_dtype` (default float32 for fp16, else `dtype`) is the dtype of the residual stream and `wo`."""

    def __init__(self, cfg: T5Config, *, dtype=jnp.bfloat16, rngs: nnx.Rngs, residual_dtype=None):
        self.config, self.dtype = cfg, jnp.dtype(dtype)
        if residual_dtype is None:
            residual_dtype = jnp.float32 if self.dtype == jnp.float16 else self.dtype
        self.residual_dtype = jnp.dtype(residual_dtype)
        self.shared = Embedding(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs)
        self.relative_attention_bias = (None if cfg.per_layer_relative_bias else
                                        Embedding(cfg.relative_attention_num_buckets, cfg.num_heads, dtype=dtype,
                                                  rngs=rngs))

        self.block = stacked_layers(lambda block_rngs: T5Block(cfg, dtype=dtype, rngs=block_rngs), cfg.num_layers, rngs)
        self.final_layer_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=dtype)

    def check_inputs(self, input_ids, attention_mask) -> None:
        """Shape and range checks with messages that name the problem (free at run time under jit)."""
        if len(input_ids.shape) != 2:
            raise InputError(f"input_ids must be [batch, length]; got shape {tuple(input_ids.shape)}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise InputError(f"input_ids must be integers; got {input_ids.dtype}")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise InputError(f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
                             f"{tuple(input_ids.shape)}")
        if isinstance(input_ids, np.ndarray) and input_ids.size and (
                input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            # A traced out-of-range id would silently read a NaN row (jnp.take fills); catch host inputs here.
            raise InputError(f"token ids must be in [0, {self.config.vocab_size}); got "
                             f"[{input_ids.min()}, {input_ids.max()}]")

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        self.check_inputs(input_ids, attention_mask)
        # Shape-only: computed on the host at trace time, a constant in the compiled program.
        buckets = jnp.asarray(relative_position_buckets(input_ids.shape[1], cfg.relative_attention_num_buckets,
                                                        cfg.relative_attention_max_distance))
        shared_bias = (None if self.relative_attention_bias is None
                       else position_bias(self.relative_attention_bias, buckets))
        mask = None if attention_mask is None else jnp.asarray(attention_mask).astype(bool)

        x = self.shared(input_ids).astype(self.residual_dtype)
        block_def, block_state = nnx.split(self.block)

        def run_block(x, state):
            return nnx.merge(block_def, state)(x, shared_bias, buckets, mask), None

        x, _ = jax.lax.scan(run_block, x, block_state)
        return self.final_layer_norm(x).astype(self.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, input_ids, attention_mask):
    return nnx.merge(graphdef, state)(input_ids, attention_mask)


def encode(encoder: T5Encoder, input_ids, attention_mask=None) -> jax.Array:
    """The encoder as one compiled program per input shape (calling the module directly runs it op by op). Host
    (numpy) ids are range-checked first: out of range, a traced lookup would silently read a NaN row."""
    encoder.check_inputs(input_ids, attention_mask)
    graphdef, state = nnx.split(encoder)
    return _encode(graphdef, state, jnp.asarray(input_ids), attention_mask)
