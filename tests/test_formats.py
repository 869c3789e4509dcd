"""The quantization formats against independent oracles (ml_dtypes casts) and their stated error bounds."""

import ml_dtypes
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from sixbit_jax.errors import InputError
from sixbit_jax.quant import formats as F


def _rng(seed):
    return np.random.default_rng(seed)


def test_e2m1_codes_match_ml_dtypes_including_ties_and_saturation():
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    midpoints = (grid[1:] + grid[:-1]) / 2
    x = np.concatenate([np.linspace(-8, 8, 20001), midpoints, -midpoints, grid, -grid, [7.0, -100.0]])
    x = x.astype(np.float32)
    ours = np.asarray(F.e2m1_value(F.encode_e2m1(jnp.asarray(x))))
    oracle = x.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(ours, oracle)


def test_e2m1_value_of_every_code_matches_ml_dtypes():
    codes = np.arange(16, dtype=np.uint8)
    oracle = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(F.e2m1_value(jnp.asarray(codes, jnp.int32))), oracle)


def test_pack_pairs_puts_even_elements_in_the_low_nibble_and_round_trips():
    codes = _rng(0).integers(0, 16, size=(5, 64))
    packed = np.asarray(F.pack_pairs(jnp.asarray(codes)))
    np.testing.assert_array_equal(packed & 15, codes[:, 0::2])
    np.testing.assert_array_equal(packed >> 4, codes[:, 1::2])
    even, odd = F.decode_pairs(jnp.asarray(packed, jnp.uint8), jnp.ones((5, 4), jnp.float32))
    values = np.asarray(F.e2m1_value(jnp.asarray(codes)))
    np.testing.assert_array_equal(np.asarray(even), values[:, 0::2])
    np.testing.assert_array_equal(np.asarray(odd), values[:, 1::2])


def _representable_nvfp4(rng, rows, k, scale):
    """Values that NVFP4 represents exactly: codes times E4M3 block scales times `scale`, every block holding a +-6
    (so amax / 6 is its own scale) and one block scale of 448 (so `scale` is the tensor's second-level scale)."""
    codes = rng.integers(0, 16, size=(rows, k))
    codes[codes == 8] = 0  # -0 has the value of +0, and quantizing writes +0
    codes[:, ::16] = rng.choice([7, 15], size=codes[:, ::16].shape)  # a +-6 in every block
    block_scales = rng.uniform(2**-6, 448, size=(rows, k // 16)).astype(ml_dtypes.float8_e4m3fn)
    block_scales[0, 0] = 448
    values = codes.astype(np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    values = values.reshape(rows, -1, 16) * block_scales.astype(np.float32)[..., None] * scale
    return values.reshape(rows, k), codes, block_scales


@pytest.mark.parametrize("scale", [1.0, 2.0**-7, 2.0**5])
def test_nvfp4_round_trip_is_bit_exact_on_representable_values(scale):
    values, codes, block_scales = _representable_nvfp4(_rng(1), 6, 128, scale)
    q = F.quantize_nvfp4(jnp.asarray(values))
    assert float(q.scale) == scale
    np.testing.assert_array_equal(np.asarray(q.block_scales).view(np.uint8), block_scales.view(np.uint8))
    np.testing.assert_array_equal(np.asarray(q.packed), np.asarray(F.pack_pairs(jnp.asarray(codes))))
    np.testing.assert_array_equal(np.asarray(F.dequantize_nvfp4(q)), values)


def _outlier_data(seed, shape):
    rng = _rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.01] *= 30  # a few large outliers, as real activations have
    return x


@pytest.mark.parametrize("per_row", [False, True])
def test_nvfp4_error_bound(per_row):
    """|x - dq(x)| <= s + 6 * 2^-10 * g per element, s being the element's effective block scale and g the
    second-level scale: E2M1's widest half-gap is one unit (between 4 and 6), saturation after a block scale rounded
    down costs less, and the E4M3 scale's rounding in its subnormal range costs at most 6 * 2^-10 units of g."""
    x = _outlier_data(2, (32, 256)) * np.float32(_rng(3).uniform(1e-3, 1e3))
    q = F.quantize_nvfp4(jnp.asarray(x), per_row=per_row)
    err = np.abs(np.asarray(F.dequantize_nvfp4(q)) - x).reshape(32, -1, 16)
    g = np.asarray(q.scale)[:, None, None] if per_row else float(q.scale)
    s = np.asarray(q.block_scales.astype(jnp.float32))[..., None] * g
    assert (err <= s + 6 * 2.0**-10 * g + 1e-6 * np.abs(x).max()).all()
    rel = np.linalg.norm(np.asarray(F.dequantize_nvfp4(q)) - x) / np.linalg.norm(x)
    assert rel < 0.15, rel


@pytest.mark.parametrize("group_size", [None, 128])
def test_int8_error_bound_and_exact_round_trip(group_size):
    x = _outlier_data(4, (16, 256))
    q = F.quantize_int8(jnp.asarray(x), group_size=group_size)
    scale = np.asarray(q.scale)
    per_element = scale[:, None] if group_size is None else np.repeat(scale, group_size, axis=1)
    assert (np.abs(np.asarray(F.dequantize_int8(q)) - x) <= per_element / 2 * (1 + 1e-6)).all()
    assert np.abs(np.asarray(q.values)).max() == 127
    again = F.quantize_int8(F.dequantize_int8(q), group_size=group_size)
    np.testing.assert_array_equal(np.asarray(again.values), np.asarray(q.values))


def test_int8_rounds_half_away_from_zero():
    x = jnp.asarray([[127.0, 0.5, -0.5, 1.5, -1.5, 2.5, 0.49]])
    np.testing.assert_array_equal(np.asarray(F.quantize_int8(x).values), [[127, 1, -1, 2, -2, 3, 0]])


def test_all_zero_rows_quantize_to_zero_without_nans():
    z = jnp.zeros((2, 128))
    assert np.all(np.asarray(F.dequantize_nvfp4(F.quantize_nvfp4(z, per_row=True))) == 0)
    assert np.all(np.asarray(F.dequantize_int8(F.quantize_int8(z))) == 0)


def test_hadamard_is_orthonormal_and_folding_preserves_the_product():
    h = F.hadamard_matrix(128)
    np.testing.assert_array_equal(h @ h.T, 128 * np.eye(128))
    x = _outlier_data(5, (8, 384))
    w = _rng(6).standard_normal((40, 384)).astype(np.float32)
    rx, rw = F.block_hadamard(jnp.asarray(x)), F.block_hadamard(jnp.asarray(w))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(rx), axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(F.block_hadamard(rx)), x, atol=1e-4)
    np.testing.assert_allclose(np.asarray(rx) @ np.asarray(rw).T, x @ w.T, rtol=1e-4, atol=1e-3)


def test_hadamard_lowers_per_token_int8_error_on_outliers():
    """What the transform is for: one outlier no longer sets the step of its whole row. (For NVFP4's 16-element
    blocks it does not help on such data: a block already confines an outlier, and rotated data is Gaussian.)"""
    x = _outlier_data(7, (64, 512))
    plain = F.dequantize_int8(F.quantize_int8(jnp.asarray(x)))
    rotated = F.quantize_int8(F.block_hadamard(jnp.asarray(x)))
    back = F.block_hadamard(F.dequantize_int8(rotated))  # H/sqrt(n) is its own inverse
    assert np.linalg.norm(np.asarray(back) - x) < 0.3 * np.linalg.norm(np.asarray(plain) - x)


def test_prepared_weight_is_one_resident_nvfp4_copy_and_int8_is_derived_from_it():
    w = jnp.asarray(_rng(8).standard_normal((96, 256)), jnp.bfloat16)
    prepared = F.prepare_weight(w)
    leaves = jax.tree.leaves(prepared)
    assert [leaf.dtype for leaf in leaves] == [jnp.uint8, jnp.float8_e4m3fn, jnp.float32]
    assert w.size * 2 / prepared.nbytes > 3.5  # 4.5 bits per element against bf16's 16
    dq = np.asarray(F.dequantize_nvfp4(prepared.nvfp4))
    w8 = F.int8_weight(prepared)
    assert w8.scale.shape == (96,)
    half_step = np.asarray(w8.scale)[:, None] / 2
    assert (np.abs(np.asarray(F.dequantize_int8(w8)) - dq) <= half_step * (1 + 1e-5)).all()
    # the folded weight still computes x W^T once x is rotated too
    x = jnp.asarray(_rng(9).standard_normal((4, 256)), jnp.float32)
    y = F.rotate_activations(x, 128) @ dq.T
    exact = np.asarray(x) @ np.asarray(w, np.float32).T
    assert np.linalg.norm(np.asarray(y) - exact) / np.linalg.norm(exact) < 0.15


def test_shapes_that_cannot_be_quantized_name_the_constraint():
    with pytest.raises(InputError, match="multiple of 16"):
        F.quantize_nvfp4(jnp.ones((4, 40)))
    with pytest.raises(InputError, match="multiple of 128"):
        F.block_hadamard(jnp.ones((4, 200)))
    with pytest.raises(InputError, match="power of two"):
        F.hadamard_matrix(96)
    with pytest.raises(InputError, match="2-D"):
        F.prepare_weight(jnp.ones((2, 3, 128)))


def test_fp8_rounded_values_are_e4m3_times_8_and_round_only_the_fifth_bit():
    """Every code x block scale product, divided by 8: exactly an E4M3 value, equal to the product where it has at
    most four significant bits, else within half an E4M3 step (2^-4 relative); below 8 x E4M3's smallest subnormal
    it may become 0."""
    codes = np.array([0.5, 1, 1.5, 2, 3, 4, 6, -6, -1.5], np.float32)
    scales = np.unique(np.abs(np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)))
    scales = scales[np.isfinite(scales) & (scales > 0)]
    products = (codes[:, None] * scales[None, :]).astype(np.float32)
    rounded = np.asarray(F.fp8_rounded(F.BlockScaledValues(jnp.asarray(products, jnp.bfloat16),
                                                           jnp.float32(1))).values, np.float32)
    eighth = rounded / 8
    assert np.array_equal(eighth.astype(ml_dtypes.float8_e4m3fn).astype(np.float32), eighth)
    mantissa, _ = np.frexp(np.abs(products))
    four_bits = (mantissa * 16) == np.round(mantissa * 16)
    normal = np.abs(products) / 8 >= 2.0**-6
    assert np.array_equal(rounded[four_bits & normal], products[four_bits & normal])
    assert (np.abs(rounded - products)[normal] <= 2.0**-4 * np.abs(products)[normal]).all()
    assert (~four_bits & normal).any() and (rounded != products).any()
