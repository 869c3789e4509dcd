"""The quantized dense layer: one resident NVFP4 weight, three ways to multiply by it.

`QuantDense` stores its weight once, as NVFP4 with the block Hadamard transform folded in along K (see
`quant.formats.prepare_weight`); the E4M3 block scales are kept as their raw bytes (uint8) so checkpoints hold only
plain integer and float arrays. Which path a call takes is decided by the `LinearRuntime` it is given:

- "bf16":  bf16 activations x the weight decoded to bf16 (W4A16): the full-precision path of a quantized model;
- "int8":  W4A8, per-token INT8 activations (the fast path on Hopper);
- "nvfp4": W4A4, NVFP4 activations;
- "pdr":   on a delta-cache refresh, "bf16" when this layer's input outlier ratio max|x| / mean|x| exceeds the
           threshold, else "int8" (decided on the device per layer, through lax.cond);
- "calibrate": the "bf16" output, and it records how far the NVFP4-activation output is from it and the input's
               outlier ratio (what PDR's threshold is calibrated on).

Weight-only layers (the AdaLN modulation linears: one row per sample) always run bf16 activations through the
NVFP4 weight-only path, whatever the runtime says."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from pallas_kernels.common import activation_fn
from sixbit_jax.errors import ConfigError
from sixbit_jax.quant import formats, linear

LINEAR_PATHS = ("bf16", "int8", "nvfp4", "pdr", "calibrate")
PDR_OUTLIER_RATIO = 25.0


def input_outlier_ratio(x: jax.Array) -> jax.Array:
    """PDR's outlier statistic of a linear's input: max|x| / mean|x| over the whole batch (0 for an all-zero x)."""
    ax = jnp.abs(x.astype(jnp.float32))
    return ax.max() / jnp.maximum(ax.mean(), 1e-30)


class QuantData(nnx.Variable):
    """A frozen quantized tensor (NVFP4 codes, scale bytes, second-level scale): state, but not a trainable Param."""


@dataclasses.dataclass
class LinearRuntime:
    """What every quantized linear in one traced block call does, and what it reports back; and the precision of
    the block's self-attention (`layers.attention.block_implementation`).

    Created inside the traced function (one per block branch); the layers append traced scalars to the lists,
    which the block then reduces. `backend` picks kernels ("pallas"), interpreted kernels or the jnp references."""

    path: str = "bf16"
    outlier_ratio: float = PDR_OUTLIER_RATIO
    backend: str | None = None
    attention: str = "bf16"  # "int8": the 8-bit attention kernel (RuntimeConfig.attention)
    nvfp4_operands: str = "bf16"  # "fp8": NVFP4 values rounded as FP8 tensor cores take them (RuntimeConfig)
    fallbacks: list = dataclasses.field(default_factory=list)  # per PDR layer: 1.0 if it ran bf16
    nvfp4_errors: list = dataclasses.field(default_factory=list)  # per layer under "calibrate": relative L1 error
    outlier_ratios: list = dataclasses.field(default_factory=list)  # per layer under "calibrate": input's ratio

    def __post_init__(self):
        if self.path not in LINEAR_PATHS:
            raise ConfigError(f"unknown linear path {self.path!r}; use one of {', '.join(LINEAR_PATHS)}")


class QuantDense(nnx.Module):
    # INT8 activation scales: None per token, or per token and this many K elements (128 = the Hadamard block).
    int8_group_size: int | None = None

    def __init__(self, in_features: int, out_features: int, *, hadamard_block: int, weight_only: bool = False,
                 dtype=jnp.bfloat16, rngs: nnx.Rngs | None = None):
        del rngs  # weights come from quantizing a float weight, never from random init
        formats.check_quantizable((out_features, in_features), hadamard_block or formats.NVFP4_BLOCK,
                                  "a quantized linear's weight")
        self.in_features, self.out_features = in_features, out_features
        self.hadamard_block, self.weight_only = hadamard_block, weight_only
        self.packed = QuantData(jnp.zeros((out_features, in_features // 2), jnp.uint8))
        self.block_scales = QuantData(jnp.zeros((out_features, in_features // formats.NVFP4_BLOCK), jnp.uint8))
        self.scale = QuantData(jnp.ones((), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    @property
    def weight(self) -> formats.QuantizedWeight:
        scales = jax.lax.bitcast_convert_type(self.block_scales[...], jnp.float8_e4m3fn)
        return formats.QuantizedWeight(formats.NVFP4(self.packed[...], scales, self.scale[...]), self.hadamard_block)

    def prepare(self, x: jax.Array, runtime: LinearRuntime | None = None) -> jax.Array | linear.Int8Input:
        """The input in the form this layer's path consumes, computed once for every linear that reads the same x
        with the same K and Hadamard block (attention's q, k and v): on the int8 path the rotated INT8 activations,
        on every other path x itself."""
        runtime = runtime or LinearRuntime()
        if runtime.path != "int8" or self.weight_only:
            return x
        return linear.quantize_int8_input(x, self.hadamard_block, group_size=self.int8_group_size,
                                          backend=runtime.backend)

    def __call__(self, x: jax.Array | linear.Int8Input, runtime: LinearRuntime | None = None,
                 activation: str | None = None) -> jax.Array:
        """x: activations [..., in_features], or what `prepare` made of them for this runtime. `activation` (a name
        in `pallas_kernels.common.ACTIVATIONS`) follows the linear: on the int8 path in float32 inside the GEMM's
        epilogue, on the others on the rounded output, as a float layer applies it."""
        runtime = runtime or LinearRuntime()
        if isinstance(x, linear.Int8Input) and runtime.path != "int8":
            raise ConfigError(f"an INT8-prepared input reached a linear on the {runtime.path!r} path")
        if runtime.path == "int8" and not self.weight_only:
            return linear.int8_linear(x, self.weight, self.bias[...], activation=activation,
                                      backend=runtime.backend).astype(self.bias[...].dtype)
        return activation_fn(activation)(self._call_unfused(x, runtime))

    def _call_unfused(self, x: jax.Array, runtime: LinearRuntime) -> jax.Array:
        weight, bias, out_dtype = self.weight, self.bias[...], self.bias[...].dtype
        if self.weight_only:
            return linear.weight_only_linear(x, weight, bias, backend=runtime.backend).astype(out_dtype)
        if runtime.path == "nvfp4":
            return linear.nvfp4_linear(x, weight, bias, backend=runtime.backend,
                                       operands=runtime.nvfp4_operands).astype(out_dtype)
        if runtime.path == "pdr":
            outliers = input_outlier_ratio(x) > runtime.outlier_ratio
            runtime.fallbacks.append(outliers.astype(jnp.float32))
            return jax.lax.cond(outliers, lambda: self._bf16(x, weight, bias),
                                lambda: linear.int8_linear(x, weight, bias, group_size=self.int8_group_size,
                                                           backend=runtime.backend).astype(out_dtype))
        y = self._bf16(x, weight, bias)
        if runtime.path == "calibrate":
            runtime.outlier_ratios.append(input_outlier_ratio(x))
            y4 = linear.nvfp4_linear(x, weight, bias, backend=runtime.backend,
                                     operands=runtime.nvfp4_operands).astype(jnp.float32)
            yf = y.astype(jnp.float32)
            runtime.nvfp4_errors.append(jnp.abs(y4 - yf).sum() / jnp.maximum(jnp.abs(yf).sum(), 1e-30))
        return y

    def _bf16(self, x, weight: formats.QuantizedWeight, bias) -> jax.Array:
        """W4A16: x rotated by the folded Hadamard transform, times the NVFP4 weight decoded to bf16."""
        dtype = bias.dtype
        w = formats.dequantize_nvfp4(weight.nvfp4).astype(dtype)
        xr = formats.rotate_activations(x, self.hadamard_block).astype(dtype)
        return jnp.einsum("...k,nk->...n", xr, w, preferred_element_type=jnp.float32).astype(dtype) + bias

    def load_float_weight(self, weight: jax.Array) -> None:
        """Quantize a float [out, in] weight into this layer (in place)."""
        q = formats.prepare_weight(weight, hadamard_block=self.hadamard_block)
        self.packed[...] = q.nvfp4.packed
        self.block_scales[...] = jax.lax.bitcast_convert_type(q.nvfp4.block_scales, jnp.uint8)
        self.scale[...] = q.nvfp4.scale


def project_quantized(layers: list[QuantDense], x: jax.Array, runtime: LinearRuntime | None = None) -> list[jax.Array]:
    """x through several quantized linears that all read it (attention's q, k and v): the input is prepared once,
    and on the int8 path the products run as one GEMM over the stacked weights (`linear.int8_linears`)."""
    runtime = runtime or LinearRuntime()
    shared = layers[0].prepare(x, runtime)
    if not isinstance(shared, linear.Int8Input):
        return [layer(shared, runtime) for layer in layers]
    ys = linear.int8_linears(shared, [layer.weight for layer in layers], [layer.bias[...] for layer in layers],
                             backend=runtime.backend)
    return [y.astype(layer.bias[...].dtype) for y, layer in zip(ys, layers)]
