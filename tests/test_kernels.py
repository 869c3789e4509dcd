"""Every Pallas kernel against its plain-jnp reference: fresh random inputs, ragged M, several K and N, the tuned
block configurations, poisoned outputs. Interpret mode on CPU; the same tests run compiled on a GPU (marker gpu)."""

import functools
import itertools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from conftest import KERNEL_MODES, KERNEL_MODES_SLOW_INTERPRET, poison_device_memory
from pallas_kernels import act_quant, act_quant_mgpu, int8_gemm, nvfp4_gemm, nvfp4_weight_only, scaled_matmul_mgpu
from pallas_kernels import tuning
from pallas_kernels.common import ROW_ALIGN
from pallas_kernels.tuning import BlockConfig
from sixbit_jax.errors import InputError
from sixbit_jax.quant import formats as F

_seeds = itertools.count(1000)


def fresh_key():
    return jax.random.PRNGKey(next(_seeds))


def activations(m, k, dtype=jnp.bfloat16):
    """Gaussian rows of varied magnitude, with a few outliers, never all zero."""
    k1, k2, k3 = jax.random.split(fresh_key(), 3)
    x = jax.random.normal(k1, (m, k)) * jnp.exp(jax.random.normal(k2, (m, 1)))
    return jnp.where(jax.random.uniform(k3, (m, k)) < 0.01, 20 * x, x).astype(dtype)


def weight(n, k):
    return F.prepare_weight(jax.random.normal(fresh_key(), (n, k)) * k**-0.5)


def bias(n):
    return jax.random.normal(fresh_key(), (n,))


def assert_codes_close(ours, ref, what):
    """Kernel and reference sum the rotated tile in different orders, so a value sitting on a rounding boundary may
    land one code apart; allow that for at most 0.1% of elements, never more than one step."""
    ours, ref = np.asarray(ours, np.int64), np.asarray(ref, np.int64)
    differ = ours != ref
    assert differ.mean() <= 1e-3, f"{what}: {differ.mean():.2%} of codes differ"
    assert np.abs(ours - ref).max() <= 1, f"{what}: codes differ by more than one step"


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.isfinite(a).all(), "non-finite output (unwritten or poisoned elements)"
    return np.linalg.norm(a - b) / np.linalg.norm(b)


SHAPES_MK = [(1, 128), (70, 384), (300, 256)]


# ------------------------------------------------------------------------------------------ activation quantization
@pytest.mark.parametrize("interpret", KERNEL_MODES)
@pytest.mark.parametrize("m,k", SHAPES_MK)
@pytest.mark.parametrize("group_size", [None, 128])
@pytest.mark.parametrize("hadamard", [128, 0])
def test_int8_activation_quantization_matches_reference(interpret, m, k, group_size, hadamard):
    x = activations(m, k)
    poison_device_memory()
    q = act_quant.quantize_int8(x, hadamard_block=hadamard, group_size=group_size, interpret=interpret)
    ref = act_quant.int8_reference(x, hadamard, group_size)
    assert q.values.shape == (-(-m // ROW_ALIGN) * ROW_ALIGN, k)
    assert_codes_close(q.values[:m], ref.values, "int8 codes")
    np.testing.assert_allclose(np.asarray(q.scale[:m]), np.asarray(ref.scale), rtol=1e-5)
    assert np.all(np.asarray(q.values[m:]) == 0), "padding rows must be zeros"


@pytest.mark.parametrize("interpret", KERNEL_MODES)
@pytest.mark.parametrize("m,k", SHAPES_MK)
@pytest.mark.parametrize("hadamard", [128, 0])
def test_nvfp4_activation_quantization_matches_reference(interpret, m, k, hadamard):
    x = activations(m, k)
    poison_device_memory()
    q = act_quant.quantize_nvfp4(x, hadamard_block=hadamard, interpret=interpret)
    ref = act_quant.nvfp4_reference(x, hadamard)
    np.testing.assert_allclose(np.asarray(q.scale[:m]), np.asarray(ref.scale), rtol=1e-5)
    assert_nvfp4_close(F.NVFP4(q.packed[:m], q.block_scales[:m], q.scale[:m]), ref)


@pytest.mark.parametrize("interpret", KERNEL_MODES)
@pytest.mark.parametrize("m,k", SHAPES_MK)
def test_nvfp4_values_match_reference(interpret, m, k):
    """The W4A4 operand for bf16 tensor cores: code x block scale per element, the row scale apart. The same rare
    one-step block-scale differences as the packed form are allowed (at most 1% of elements differ)."""
    x = activations(m, k)
    poison_device_memory()
    ours = act_quant.quantize_nvfp4_values(x, interpret=interpret)
    ref = act_quant.nvfp4_values_reference(x, 128)
    assert ours.values.shape == (-(-m // ROW_ALIGN) * ROW_ALIGN, k) and ours.values.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ours.scale[:m]), np.asarray(ref.scale), rtol=1e-5)
    differ = np.asarray(ours.values[:m], np.float32) != np.asarray(ref.values, np.float32)
    assert differ.mean() <= 0.01, f"{differ.mean():.2%} of values differ"
    assert rel(ours.values[:m], ref.values) < 0.02
    assert np.all(np.asarray(ours.values[m:], np.float32) == 0), "padding rows must be zeros"


def assert_nvfp4_close(ours, ref):
    """Block scales: bf16 data makes exact E4M3 midpoints common, where one ulp of the division decides the rounding,
    so up to 1% of block scales may differ, by one step. Codes: compared in the blocks whose scales agree."""
    scales_ours = np.asarray(ours.block_scales).view(np.uint8).astype(np.int64)
    scales_ref = np.asarray(ref.block_scales).view(np.uint8).astype(np.int64)
    same = scales_ours == scales_ref
    assert same.mean() >= 0.99 and np.abs(scales_ours - scales_ref).max() <= 1, "E4M3 block scales differ"
    codes = [np.asarray(F.unpack_codes(q.packed)).reshape(*same.shape, -1)[same] for q in (ours, ref)]
    magnitude = [np.where(c >= 8, -(c & 7), c) for c in codes]  # signed so that a one-step change is 1
    assert_codes_close(magnitude[0], magnitude[1], "E2M1 codes")


# ----------------------------------------------------------------------------------------------------------- INT8 GEMM
GEMM_SHAPES = [(1, 128, 48), (70, 384, 96), (300, 256, 160)]
GEMM_CONFIGS = [
    None,  # from the tuning table
    BlockConfig(block_m=32, block_n=32, block_k=64, num_warps=4, num_stages=2, n_outer=True),
    BlockConfig(block_m=64, block_n=16, block_k=256, num_warps=4, num_stages=3, n_outer=False),
]


@pytest.mark.parametrize("interpret", KERNEL_MODES)
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("config", GEMM_CONFIGS, ids=["table", "small-n-outer", "tall-k"])
def test_int8_gemm_integer_part_is_exact(interpret, m, k, n, config):
    """Unit scales and no bias: the kernel's output is its int32 accumulator, which must equal XLA's exactly."""
    a = act_quant.quantize_int8(activations(m, k), interpret=interpret)
    a = F.INT8(a.values, jnp.ones_like(a.scale))
    w8 = F.int8_weight(weight(n, k))
    w8 = F.INT8(w8.values, jnp.ones_like(w8.scale))
    poison_device_memory()
    y = int8_gemm.int8_matmul(a, w8, m=m, out_dtype=jnp.float32, config=config, interpret=interpret)
    exact = jax.lax.dot_general(a.values[:m], w8.values, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(exact, np.float32))


@pytest.mark.parametrize("interpret", KERNEL_MODES)
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("group_size", [None, 128])
def test_int8_gemm_epilogue_matches_reference(interpret, m, k, n, group_size):
    a = act_quant.quantize_int8(activations(m, k), group_size=group_size, interpret=interpret)
    w8, b = F.int8_weight(weight(n, k)), bias(n)
    poison_device_memory()
    y = int8_gemm.int8_matmul(a, w8, b, m=m, out_dtype=jnp.float32, interpret=interpret)
    assert y.shape == (m, n)
    assert rel(y, int8_gemm.int8_matmul_reference(a, w8, b, m=m, out_dtype=jnp.float32)) < 1e-6


# ---------------------------------------------------------------------------------------------------------- NVFP4 GEMM
@pytest.mark.parametrize("interpret", KERNEL_MODES)
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("config", GEMM_CONFIGS, ids=["table", "small-n-outer", "tall-k"])
def test_nvfp4_gemm_matches_reference(interpret, m, k, n, config):
    a = act_quant.quantize_nvfp4(activations(m, k), interpret=interpret)
    w, b = weight(n, k), bias(n)
    poison_device_memory()
    y = nvfp4_gemm.nvfp4_matmul(a, w.nvfp4, b, m=m, out_dtype=jnp.float32, config=config, interpret=interpret)
    assert y.shape == (m, n)
    assert rel(y, nvfp4_gemm.nvfp4_matmul_reference(a, w.nvfp4, b, m=m, out_dtype=jnp.float32)) < 1e-5


@pytest.mark.gpu
def test_nvfp4_gemm_agrees_with_jax_scaled_matmul_where_it_runs():
    """An independent oracle: jax.nn.scaled_matmul's NVFP4 path (cuDNN; native on Blackwell, where it exists)."""
    m, k, n = 128, 256, 64
    a = act_quant.nvfp4_reference(activations(m, k), 128)
    w = weight(n, k).nvfp4

    def as_fp4(q):
        codes = np.asarray(F.unpack_codes(q.packed))
        return jnp.asarray(codes.astype(np.uint8).view(jnp.float4_e2m1fn))

    try:
        y = jax.nn.scaled_matmul(
            as_fp4(a)[None], as_fp4(w)[None], a.block_scales[None], w.block_scales[None],
            preferred_element_type=jnp.float32,
        )[0]
    except Exception as error:  # not every GPU, cuDNN or jax build has it
        pytest.skip(f"jax.nn.scaled_matmul with nvfp4 does not run here: {type(error).__name__}: {error}"[:300])
    y = y * a.scale[:, None] * w.scale
    assert rel(y, nvfp4_gemm.nvfp4_matmul_reference(a, w, out_dtype=jnp.float32)) < 1e-5


# ------------------------------------------------------------------------------------------------ weight-only NVFP4
@pytest.mark.parametrize("interpret", KERNEL_MODES)
@pytest.mark.parametrize("m,k,n", [(1, 128, 48), (2, 512, 96), (20, 256, 64)])
def test_weight_only_matmul_matches_reference(interpret, m, k, n):
    x = activations(m, k)
    w, b = weight(n, k), bias(n)
    poison_device_memory()
    y = nvfp4_weight_only.weight_only_matmul(x, w.nvfp4, b, out_dtype=jnp.float32, interpret=interpret)
    assert y.shape == (m, n)
    assert rel(y, nvfp4_weight_only.weight_only_matmul_reference(x, w.nvfp4, b, out_dtype=jnp.float32)) < 1e-5


# -------------------------------------------------------------------------------------------------- tuning and errors
@pytest.mark.parametrize("interpret", KERNEL_MODES_SLOW_INTERPRET)
@pytest.mark.parametrize("entry", sorted(tuning.TABLE.items()), ids=lambda e: f"{e[0]}" if isinstance(e, tuple) else None)
def test_every_tuned_configuration_computes_the_right_result(interpret, entry):
    """Each measured table entry, run at a small M but with the entry's own block sizes and its K."""
    (kernel, k, n), config = entry
    n_small = config.block_n * 2
    x = activations(70, k)
    if kernel == "act_quant_int8":
        q = act_quant.quantize_int8(x, config=config, interpret=interpret)
        assert_codes_close(q.values[:70], act_quant.int8_reference(x, 128).values, "int8 codes")
        return
    if kernel == "act_quant_nvfp4":
        q = act_quant.quantize_nvfp4(x, config=config, interpret=interpret)
        assert_nvfp4_close(F.NVFP4(q.packed[:70], q.block_scales[:70], q.scale[:70]), act_quant.nvfp4_reference(x, 128))
        return
    w = weight(n_small, k)
    if kernel == "int8_gemm":
        a, w8 = act_quant.int8_reference(x, 128), F.int8_weight(w)
        a = F.INT8(jnp.pad(a.values, ((0, ROW_ALIGN - 70), (0, 0))), jnp.pad(a.scale, (0, ROW_ALIGN - 70)))
        y = int8_gemm.int8_matmul(a, w8, m=70, out_dtype=jnp.float32, config=config, interpret=interpret)
        ref = int8_gemm.int8_matmul_reference(a, w8, m=70, out_dtype=jnp.float32)
    elif kernel == "nvfp4_gemm":
        a = act_quant.quantize_nvfp4(x, interpret=interpret)
        y = nvfp4_gemm.nvfp4_matmul(a, w.nvfp4, m=70, out_dtype=jnp.float32, config=config, interpret=interpret)
        ref = nvfp4_gemm.nvfp4_matmul_reference(a, w.nvfp4, m=70, out_dtype=jnp.float32)
    else:
        y = nvfp4_weight_only.weight_only_matmul(x[:2], w.nvfp4, out_dtype=jnp.float32, config=config, interpret=interpret)
        ref = nvfp4_weight_only.weight_only_matmul_reference(x[:2], w.nvfp4, out_dtype=jnp.float32)
    assert rel(y, ref) < 1e-5


def test_block_config_fits_blocks_to_the_shape():
    config = tuning.block_config("int8_gemm", m=3, k=384, n=48)
    assert config.block_m == 16 and 384 % config.block_k == 0 and 48 % config.block_n == 0


def test_unsupported_shapes_name_the_constraint():
    x = activations(8, 200)
    with pytest.raises(InputError, match="K = 200 .* multiple of 128"):
        act_quant.quantize_int8(x, interpret=True)
    a = act_quant.quantize_int8(activations(8, 128), interpret=True)
    with pytest.raises(InputError, match="N = 20 .* multiple of 16"):
        int8_gemm.int8_matmul(a, F.INT8(jnp.ones((20, 128), jnp.int8), jnp.ones((20,))), interpret=True)
    with pytest.raises(InputError, match="K = 128 but the weight has K = 256"):
        int8_gemm.int8_matmul(a, F.int8_weight(weight(32, 256)), interpret=True)
    with pytest.raises(InputError, match="group_size = 64"):
        act_quant.quantize_int8(activations(8, 128), group_size=64, interpret=True)
    with pytest.raises(InputError, match="hadamard_block = 64"):
        act_quant.quantize_nvfp4(activations(8, 128), hadamard_block=64, interpret=True)


# ------------------------------------------------------------------------------------------ Mosaic GPU (Hopper) kernels
# They cannot run on a CPU (jax has no interpreter for them before 0.12), so there the linear paths run the references
# and these tests check that the kernels still trace and lower to Mosaic GPU for CUDA; on a GPU they run compiled.
MGPU_GEMM_CASES = [  # (m, k, n, dtype, activation, config); "grouped": int8 with per-row, per-128-K scales
    (1000, 384, 256, jnp.int8, None, None),
    (700, 640, 384, "grouped", None, tuning.MatmulConfig(tile_m=64, tile_n=192, stages=4)),
    (77, 256, 256, "grouped", "gelu_tanh", None),
    (77, 256, 384, jnp.int8, "gelu_tanh", None),
    (1000, 384, 256, jnp.bfloat16, None, None),
    (600, 512, 256, jnp.int8, None, tuning.MatmulConfig(tile_m=64, tile_n=256, stages=3)),
]


def _mgpu_gemm_operands(m, k, n, dtype):
    rows = -(-m // ROW_ALIGN) * ROW_ALIGN
    ka, kb, kr, kc, kbias = jax.random.split(fresh_key(), 5)
    grouped = dtype == "grouped"
    if grouped or dtype == jnp.int8:
        a = jax.random.randint(ka, (rows, k), -127, 128, jnp.int8)
        b = jax.random.randint(kb, (n, k), -127, 128, jnp.int8)
    else:
        a, b = jax.random.normal(ka, (rows, k), dtype), jax.random.normal(kb, (n, k), dtype)
    row_scale = jax.random.uniform(kr, (rows, k // 128) if grouped else (rows,), minval=0.5, maxval=2.0) * 1e-2
    col_scale = jax.random.uniform(kc, (n,), minval=0.5, maxval=2.0) * 1e-2
    return a, b, row_scale, col_scale, jax.random.normal(kbias, (n,))


def test_mosaic_kernels_lower_for_cuda():
    sds = jax.ShapeDtypeStruct
    for m, k, n, dtype, activation, config in MGPU_GEMM_CASES:
        rows = -(-m // ROW_ALIGN) * ROW_ALIGN
        gemm = functools.partial(scaled_matmul_mgpu.scaled_matmul, m=m, activation=activation, config=config)
        operand = jnp.int8 if dtype == "grouped" else dtype
        scales = (rows, k // 128) if dtype == "grouped" else (rows,)
        jax.jit(gemm).trace(sds((rows, k), operand), sds((n, k), operand), sds(scales, jnp.float32),
                            sds((n,), jnp.float32), sds((n,), jnp.float32)).lower(lowering_platforms=("cuda",))
    for group_size in (None, 128):
        quantize = functools.partial(act_quant_mgpu.quantize_int8, group_size=group_size)
        jax.jit(quantize).trace(sds((300, 384), jnp.bfloat16)).lower(lowering_platforms=("cuda",))


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n,dtype,activation,config", MGPU_GEMM_CASES)
def test_mosaic_scaled_matmul_matches_reference(m, k, n, dtype, activation, config):
    operands = _mgpu_gemm_operands(m, k, n, dtype)
    poison_device_memory()
    y = scaled_matmul_mgpu.scaled_matmul(*operands, m=m, out_dtype=jnp.float32, activation=activation, config=config)
    ref = scaled_matmul_mgpu.scaled_matmul_reference(*operands, m=m, out_dtype=jnp.float32, activation=activation)
    assert y.shape == (m, n)
    error = rel(y, ref)
    # int8: exact products (grouped: fp32 sums of the scaled groups); bf16: fp32 sums in any order
    assert error < {jnp.int8: 1e-6, "grouped": 1e-5}.get(dtype, 1e-4), error


@pytest.mark.gpu
def test_mosaic_scaled_matmul_integer_part_is_exact():
    a, b, _, _, _ = _mgpu_gemm_operands(300, 512, 256, jnp.int8)
    ones = lambda size: jnp.ones((size,), jnp.float32)  # noqa: E731
    y = scaled_matmul_mgpu.scaled_matmul(a, b, ones(a.shape[0]), ones(256), m=300, out_dtype=jnp.float32)
    exact = jax.lax.dot_general(a[:300], b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(exact, np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("group_size", [None, 128], ids=["per-token", "per-group"])
@pytest.mark.parametrize("m,k", [(1, 128), (70, 384), (300, 256), (1000, 1920)])
def test_mosaic_int8_activation_quantization_matches_reference(m, k, group_size):
    x = activations(m, k)
    poison_device_memory()
    q = act_quant_mgpu.quantize_int8(x, group_size=group_size)
    ref = act_quant.int8_reference(x, 128, group_size)
    assert q.values.shape == (-(-m // ROW_ALIGN) * ROW_ALIGN, k) and q.scale.shape[1:] == ref.scale.shape[1:]
    assert_codes_close(q.values[:m], ref.values, "int8 codes")
    np.testing.assert_allclose(np.asarray(q.scale[:m]), np.asarray(ref.scale), rtol=1e-5)
    assert np.all(np.asarray(q.values[m:]) == 0) and np.all(np.asarray(q.scale[m:]) == 0), "padding rows must be zeros"
