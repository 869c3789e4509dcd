"""The quantization formats, in plain jnp: NVFP4, INT8 activations, the block Hadamard transform, weight preparation.

These functions are the definitions. Every Pallas kernel in `pallas_kernels/` is tested against them, and the
CPU paths of the quantized linears call them directly.

NVFP4 (two-level scaled 4-bit float):
  value = e2m1(code) * e4m3(block scale) * fp32 second-level scale
- E2M1 codes (magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign) are packed two per uint8 along K: the low
  nibble holds element 2j, the high nibble element 2j+1. Kernels never interleave: with both operands packed the
  same way, a dot over K is `lo . lo + hi . hi`.
- One float8_e4m3fn scale per 16 consecutive elements along K, chosen as the block's amax / 6.
- The fp32 second-level scale is amax / (6 * 448), so every block scale fits E4M3. Weights take one per tensor (the
  NVFP4 recipe); activations take one per row (per token): dynamic activations would otherwise need a grid-wide
  reduction before quantizing, and a finer second level can only lower the error.

INT8 activations: symmetric and dynamic, one fp32 scale per row (token), or per row and 128-wide K group. Rounding
is half away from zero (Triton has no round-to-even primitive, and kernels must match these definitions exactly).

Block Hadamard: activations are multiplied by a block-diagonal orthonormal Hadamard matrix (blocks of 128 along K)
before quantization, which spreads outliers across their block; the same transform is folded into the weights
offline (x H (W H)^T = x W^T since H H^T = I).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from sixbit_jax.errors import InputError

E2M1_MAX = 6.0
E4M3_MAX = 448.0
NVFP4_BLOCK = 16
INT8_MAX = 127.0
HADAMARD_BLOCK = 128

# Midpoints between consecutive E2M1 magnitudes, and whether a value exactly on one rounds up: ties go to the code
# with an even mantissa (round-to-nearest-even, as ml_dtypes and the hardware do), which is the even code number.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_E2M1_TIE_ROUNDS_UP = (False, True, False, True, False, True, False)


# --------------------------------------------------------------------------------------------------------- E2M1 codes
def encode_e2m1(x: jax.Array, scale: jax.Array | float = 1.0) -> jax.Array:
    """x / scale -> int32 E2M1 codes 0..15, round to nearest even, saturating at +-6. Kernel-safe jnp.

    Compares |x| with each midpoint times the scale instead of dividing by the scale: GPU float division is not
    correctly rounded, and products are, so kernels and this reference pick the same code bit for bit."""
    magnitude = jnp.abs(x)
    code = jnp.zeros(x.shape, jnp.int32)
    for midpoint, tie_up in zip(_E2M1_MIDPOINTS, _E2M1_TIE_ROUNDS_UP):
        threshold = midpoint * scale
        above = magnitude >= threshold if tie_up else magnitude > threshold
        code = code + above.astype(jnp.int32)
    return jnp.where(x < 0, code | 8, code)


# An E2M1 code's bits (s e1 e0 m) moved into an E4M3 byte as (s 0 e1 e0 m 0 0 0) give exactly the code's value
# times 2^-6, subnormal 0.5 included (both formats' subnormals line up). The hardware's fp8 conversion then does the
# decode: a few shifts and masks per element instead of a table, which Triton cannot index.
_E4M3_OF_E2M1 = 2.0**6


def _e2m1_bits_as_e4m3(code: jax.Array) -> jax.Array:
    byte = ((code & 7) << 2) | ((code & 8) << 4)
    return jax.lax.bitcast_convert_type(byte.astype(jnp.uint8), jnp.float8_e4m3fn)


def e2m1_value(code: jax.Array) -> jax.Array:
    """int32 E2M1 codes -> float32 values. Kernel-safe jnp."""
    return _e2m1_bits_as_e4m3(code).astype(jnp.float32) * _E4M3_OF_E2M1


def pack_pairs(code: jax.Array) -> jax.Array:
    """int codes [..., K] -> int32 bytes [..., K/2]: element 2j in the low nibble, 2j+1 in the high one.
    Kernel-safe jnp (a shift and a two-element sum; no strided slices). Cast to uint8 to store."""
    pairs = code.astype(jnp.int32).reshape(*code.shape[:-1], code.shape[-1] // 2, 2)
    shift = 4 * jax.lax.broadcasted_iota(jnp.int32, pairs.shape, pairs.ndim - 1)
    return jnp.sum(pairs << shift, axis=-1)


def unpack_codes(packed: jax.Array) -> jax.Array:
    """uint8 [..., K/2] -> int32 codes [..., K] (the inverse of pack_pairs)."""
    packed = packed.astype(jnp.int32)
    return jnp.stack([packed & 15, packed >> 4], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def decode_pairs(
    packed: jax.Array, block_scales: jax.Array, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Packed bytes [..., K/2] and float32 block scales [..., K/16] -> (even, odd) elements [..., K/2] in `dtype`,
    times their block scale (the second-level scale is left out). Every such product is exact in bf16 (2 significant
    bits times 4), which is what lets the W4A4 kernel feed them to a bf16 MMA without loss. Kernel-safe jnp."""
    packed = packed.astype(jnp.int32)
    bytes_per_block = NVFP4_BLOCK // 2
    per_byte = jnp.broadcast_to(
        (block_scales * _E4M3_OF_E2M1)[..., None], (*block_scales.shape, bytes_per_block)
    ).reshape(packed.shape).astype(dtype)
    even = _e2m1_bits_as_e4m3(packed & 15).astype(dtype)
    odd = _e2m1_bits_as_e4m3(packed >> 4).astype(dtype)
    return even * per_byte, odd * per_byte


# -------------------------------------------------------------------------------------------------------------- NVFP4
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NVFP4:
    """An NVFP4 tensor quantized along its last axis (K). Shapes for a [rows, K] tensor:
    packed uint8 [rows, K/2]; block_scales float8_e4m3fn [rows, K/16]; scale float32, () per tensor or [rows] per row.
    """

    packed: jax.Array
    block_scales: jax.Array
    scale: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.packed.shape[:-1], self.packed.shape[-1] * 2)


def check_quantizable(shape: tuple[int, ...], multiple: int, what: str) -> None:
    """K (the last axis) must be a whole number of quantization blocks."""
    if len(shape) < 1 or shape[-1] % multiple:
        raise InputError(f"{what}: the last axis (K) of shape {tuple(shape)} must be a multiple of {multiple}")


def second_level_scale(amax: jax.Array) -> jax.Array:
    """fp32 scale that maps the largest block scale (amax / 6) onto E4M3's largest value, 448. 1 for all-zero data."""
    scale = amax / (E2M1_MAX * E4M3_MAX)
    return jnp.where(scale > 0, scale, 1.0)


def nvfp4_block_encode(blocks: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 [..., n, 16] blocks and their broadcastable second-level scale [..., 1] -> (codes [..., n, 16],
    E4M3 block scales [..., n]). Kernel-safe jnp: the activation kernel calls this very function on its tiles."""
    block_amax = jnp.max(jnp.abs(blocks), axis=-1)
    block_scale = (block_amax / E2M1_MAX / scale).astype(jnp.float8_e4m3fn)
    effective = block_scale.astype(jnp.float32)[..., None] * scale[..., None]
    return jnp.where(effective > 0, encode_e2m1(blocks, effective), 0), block_scale


def quantize_nvfp4(x: jax.Array, *, per_row: bool = False) -> NVFP4:
    """Quantize along the last axis. per_row=False: one second-level scale for the tensor (weights);
    per_row=True: one per row (dynamic activations)."""
    check_quantizable(x.shape, NVFP4_BLOCK, "NVFP4 quantization")
    x = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(x), axis=-1) if per_row else jnp.max(jnp.abs(x))
    scale = second_level_scale(amax)
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // NVFP4_BLOCK, NVFP4_BLOCK)
    row_scale = scale[..., None] if per_row else scale
    code, block_scale = nvfp4_block_encode(blocks, row_scale)
    return NVFP4(pack_pairs(code.reshape(x.shape)).astype(jnp.uint8), block_scale, scale)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockScaledValues:
    """An NVFP4 tensor with its first two levels multiplied out: values bf16 [rows, K] = E2M1 code x E4M3 block
    scale (exact in bf16: 2 significant bits times 4), and the second-level scale float32, () or [rows], kept apart
    (applied after a GEMM). What Hopper's bf16 tensor cores take in place of the FP4 MMA it lacks."""

    values: jax.Array
    scale: jax.Array


def block_scaled_values(q: NVFP4) -> BlockScaledValues:
    even, odd = decode_pairs(q.packed, q.block_scales.astype(jnp.float32), dtype=jnp.bfloat16)
    return BlockScaledValues(jnp.stack([even, odd], axis=-1).reshape(q.shape), q.scale)


NVFP4_OPERANDS = ("bf16", "fp8")  # what Hopper's tensor cores take in place of the FP4 MMA it lacks


def fp8_rounded(v: BlockScaledValues) -> BlockScaledValues:
    """The block-scaled values as Hopper's FP8 tensor cores would take them: code x block scale (at most 6 x 448 =
    2,688, up to five significant bits) divided by 8, rounded to E4M3 (three bits after the leading one; max 448),
    times 8 again. Products with up to four significant bits are exact; the others (code 1.5, 3 or 6 times a block
    scale whose last mantissa bit is set) lose their fifth bit, and values below E4M3's smallest subnormal x 8
    (2^-6, about 1e-6 of the row's largest) become 0. Kept in bf16 (every such value is exact there), so the same
    GEMM runs either numerics."""
    eighth = (v.values.astype(jnp.float32) * 0.125).astype(jnp.float8_e4m3fn)
    return BlockScaledValues((eighth.astype(jnp.float32) * 8.0).astype(jnp.bfloat16), v.scale)


def dequantize_nvfp4(q: NVFP4) -> jax.Array:
    """NVFP4 -> float32, exactly (every NVFP4 value is a float32)."""
    even, odd = decode_pairs(q.packed, q.block_scales.astype(jnp.float32))
    values = jnp.stack([even, odd], axis=-1).reshape(q.shape)
    return values * (q.scale[..., None] if q.scale.ndim else q.scale)


# --------------------------------------------------------------------------------------------------------------- INT8
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class INT8:
    """Symmetric int8 along the last axis: values int8 [rows, K]; scale float32 [rows] (per row) or
    [rows, K / group] (per row and K group). value = values * scale."""

    values: jax.Array
    scale: jax.Array

    @property
    def group_size(self) -> int | None:
        return None if self.scale.ndim == self.values.ndim - 1 else self.values.shape[-1] // self.scale.shape[-1]


def round_half_away(x: jax.Array) -> jax.Array:
    """Round to nearest, ties away from zero, as int32 (float -> int conversion truncates). Kernel-safe jnp."""
    return (x + jnp.where(x < 0, -0.5, 0.5)).astype(jnp.int32)


def int8_encode(x: jax.Array, amax: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 x and its broadcastable amax -> (int8 codes, fp32 scale = amax / 127). Kernel-safe jnp."""
    inverse = jnp.where(amax > 0, INT8_MAX / jnp.where(amax > 0, amax, 1.0), 0.0)
    codes = jnp.clip(round_half_away(x * inverse), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return codes, amax / INT8_MAX


def quantize_int8(x: jax.Array, *, group_size: int | None = None) -> INT8:
    """Quantize along the last axis: per row, or per row and `group_size`-wide K group."""
    x = x.astype(jnp.float32)
    if group_size is None:
        amax = jnp.max(jnp.abs(x), axis=-1)
        codes, scale = int8_encode(x, amax[..., None])
        return INT8(codes, scale[..., 0])
    check_quantizable(x.shape, group_size, f"INT8 quantization with {group_size}-wide groups")
    groups = x.reshape(*x.shape[:-1], -1, group_size)
    codes, scale = int8_encode(groups, jnp.max(jnp.abs(groups), axis=-1, keepdims=True))
    return INT8(codes.reshape(x.shape), scale[..., 0])


def dequantize_int8(q: INT8) -> jax.Array:
    values = q.values.astype(jnp.float32)
    if q.group_size is None:
        return values * q.scale[..., None]
    groups = values.reshape(*values.shape[:-1], -1, q.group_size) * q.scale[..., None]
    return groups.reshape(values.shape)


# ----------------------------------------------------------------------------------------------------------- Hadamard
def hadamard_matrix(n: int) -> np.ndarray:
    """The n x n Sylvester Hadamard matrix of +-1 (n a power of two), unnormalized: +-1 is exact in bf16, so kernels
    multiply by it on the tensor cores and apply 1/sqrt(n) in fp32 afterwards."""
    if n < 1 or n & (n - 1):
        raise InputError(f"the Hadamard block must be a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def block_hadamard(x: jax.Array, block: int = HADAMARD_BLOCK) -> jax.Array:
    """x [..., K] -> float32 x @ blockdiag(H, ..., H) / sqrt(block), H of size `block` along K."""
    check_quantizable(x.shape, block, f"the {block}-wide block Hadamard transform")
    h = jnp.asarray(hadamard_matrix(block), jnp.float32)
    blocks = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, block)
    out = jnp.einsum("...gi,ij->...gj", blocks, h, precision=jax.lax.Precision.HIGHEST) * (1.0 / math.sqrt(block))
    return out.reshape(x.shape)


# ------------------------------------------------------------------------------------------------------------ weights
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """The single resident form of a quantized linear's weight: NVFP4, [out, in] (K-major), with the block Hadamard
    transform of `hadamard_block` (0: none) folded in along K. The INT8 path derives its operand from it per call."""

    nvfp4: NVFP4
    hadamard_block: int = dataclasses.field(default=HADAMARD_BLOCK, metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, int]:
        return self.nvfp4.shape

    @property
    def nbytes(self) -> int:
        return sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(self.nvfp4))


def prepare_weight(weight: jax.Array, *, hadamard_block: int = HADAMARD_BLOCK) -> QuantizedWeight:
    """A [out, in] float weight -> its NVFP4 form with the Hadamard transform folded in (offline, once)."""
    if weight.ndim != 2:
        raise InputError(f"a linear weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    rotated = block_hadamard(weight, hadamard_block) if hadamard_block else weight.astype(jnp.float32)
    return QuantizedWeight(quantize_nvfp4(rotated), hadamard_block)


def int8_weight(weight: QuantizedWeight) -> INT8:
    """The INT8 path's weight operand, derived from the NVFP4 weight: int8 [N, K] with one scale per output row.
    Transient by design: it is recomputed inside each jitted call so that only the NVFP4 copy stays resident; that
    costs 31-48 us per linear at CogVideoX-2B shapes on an H200 (BENCHMARKS.md, issue 11), about 1% of a step. Requantizing costs at most half an int8 step per element, far below NVFP4's
    own rounding error."""
    q = weight.nvfp4
    # quantize_int8(dequantize_nvfp4(q)) op for op, but on the even and odd halves separately so that XLA fuses the
    # decode into one row reduction and one elementwise pass instead of materialising the fp32 weight.
    even, odd = (half * q.scale for half in decode_pairs(q.packed, q.block_scales.astype(jnp.float32)))
    amax = jnp.maximum(jnp.abs(even).max(axis=-1), jnp.abs(odd).max(axis=-1))[..., None]
    (even_codes, scale), (odd_codes, _) = int8_encode(even, amax), int8_encode(odd, amax)
    return INT8(jnp.stack([even_codes, odd_codes], axis=-1).reshape(q.shape), scale[..., 0])


def rotate_activations(x: jax.Array, hadamard_block: int) -> jax.Array:
    """The activation side of the folded transform: float32 x H (or x itself when hadamard_block is 0)."""
    return block_hadamard(x, hadamard_block) if hadamard_block else x.astype(jnp.float32)
