"""The quantized linear paths: every backend computes the same function, and each stays within its stated error of
the full-precision product."""

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from conftest import HAS_GPU
from pallas_kernels import int8_gemm
from sixbit_jax import rng
from sixbit_jax.errors import InputError
from sixbit_jax.quant import formats as F
from sixbit_jax.quant import linear

BACKENDS = ["reference"] + (["pallas"] if HAS_GPU else ["interpret"])  # see conftest.KERNEL_MODES
PATHS = {"int8": linear.int8_linear, "nvfp4": linear.nvfp4_linear, "weight_only": linear.weight_only_linear,
         "nvfp4-fp8": functools.partial(linear.nvfp4_linear, operands="fp8")}
# Relative error against float64 on Gaussian data with 1% outliers. The weight's NVFP4 rounding (about 9%) is shared
# by every path; the activation's own share is measured against the product with the dequantized weight.
WEIGHT_ERROR_BOUND = 0.15
ACTIVATION_ERROR_BOUND = {"int8": 0.02, "nvfp4": 0.15, "weight_only": 0.01, "nvfp4-fp8": 0.15}


def _problem(seed, lead=(2, 35), k=256, n=96):
    kx, kw, kb, ko = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = rng.normal(kx, (*lead, k))
    x = jnp.where(rng.uniform(ko, x.shape) < 0.01, 20 * x, x).astype(jnp.bfloat16)
    w = jax.random.normal(kw, (n, k)) * k**-0.5
    b = jax.random.normal(kb, (n,))
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
    return x, w, b, exact


def _rel(y, exact):
    y = np.asarray(y, np.float64)
    assert np.isfinite(y).all()
    return np.linalg.norm(y - exact) / np.linalg.norm(exact)


def _with_quantized_weight(x, prepared, b):
    rotated = np.asarray(F.rotate_activations(x, prepared.hadamard_block), np.float64)
    return rotated @ np.asarray(F.dequantize_nvfp4(prepared.nvfp4), np.float64).T + np.asarray(b, np.float64)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_backends_agree_and_error_is_bounded(path):
    x, w, b, exact = _problem(seed=len(path))
    prepared = F.prepare_weight(w)
    weight_only_exact = _with_quantized_weight(x, prepared, b)
    outputs = {backend: PATHS[path](x, prepared, b, backend=backend) for backend in BACKENDS}
    for backend, y in outputs.items():
        assert y.shape == exact.shape and y.dtype == jnp.bfloat16
        assert _rel(y, exact) < WEIGHT_ERROR_BOUND, backend
        assert _rel(y, weight_only_exact) < ACTIVATION_ERROR_BOUND[path], backend
        # bf16 output rounding plus rare one-step code flips between kernel and reference
        assert _rel(y, np.asarray(outputs["reference"], np.float64)) < 1e-2, backend


@pytest.mark.parametrize("path", ["int8", "nvfp4"])
def test_backends_agree_at_whole_tiles(path):
    """N and K multiples of 128 and M over one GEMM tile: on a Hopper GPU the Mosaic GPU kernels take these."""
    x, w, b, _ = _problem(seed=31 + len(path), lead=(3, 111), k=384, n=256)
    prepared = F.prepare_weight(w)
    reference = PATHS[path](x, prepared, b, backend="reference")
    for backend in BACKENDS[1:]:
        assert _rel(PATHS[path](x, prepared, b, backend=backend), np.asarray(reference, np.float64)) < 1e-2, backend


@pytest.mark.parametrize("shape", [dict(lead=(2, 35), k=256, n=96), dict(lead=(3, 111), k=384, n=384)],
                         ids=["ragged", "whole-tiles"])  # whole tiles: the Mosaic GPU kernels take them on Hopper
def test_int8_per_group_scales_also_work(shape):
    x, w, b, exact = _problem(seed=11, **shape)
    prepared = F.prepare_weight(w)
    outputs = {backend: linear.int8_linear(x, prepared, b, group_size=128, backend=backend) for backend in BACKENDS}
    for backend, y in outputs.items():
        assert _rel(y, _with_quantized_weight(x, prepared, b)) < ACTIVATION_ERROR_BOUND["int8"], backend
        assert _rel(y, np.asarray(outputs["reference"], np.float64)) < 1e-2, backend


def test_bad_inputs_name_the_problem():
    prepared = F.prepare_weight(jnp.ones((32, 128)))
    with pytest.raises(InputError, match="expects K = 128"):
        linear.int8_linear(jnp.ones((4, 64)), prepared)
    with pytest.raises(InputError, match="unknown quantized backend 'cuda'"):
        linear.nvfp4_linear(jnp.ones((4, 128)), prepared, backend="cuda")
    with pytest.raises(InputError, match="NVFP4 operands 'int4'"):
        linear.nvfp4_linear(jnp.ones((4, 128)), prepared, operands="int4")


def test_nvfp4_on_fp8_operands_adds_little_to_nvfp4s_error():
    """The FP8-rounded operands (formats.fp8_rounded) change NVFP4's product by a few percent of itself and its
    error against float64 by little (measured: 13.5% -> 13.8% relative L1 at 1920 x 1920)."""
    x, w, b, exact = _problem(seed=5, lead=(64,), k=512, n=128)
    prepared = F.prepare_weight(w)
    y4, y8 = (np.asarray(linear.nvfp4_linear(x, prepared, b, backend="reference", operands=o), np.float64)
              for o in ("bf16", "fp8"))
    assert 0 < _rel(y8, y4) < 0.05
    assert _rel(y8, exact) < 1.05 * _rel(y4, exact)


@pytest.mark.parametrize("path, k, n", [(path, 48, 40) for path in ("int8", "nvfp4", "weight_only")]
                         + [("int8", 128, 32), ("nvfp4", 128, 32)])
def test_layers_the_kernels_cannot_tile_run_the_reference_by_default(path, k, n, monkeypatch):
    """K = 48, or K and N that fit but a 16-wide Hadamard block (tiny test models): with the kernels as the default
    backend (a GPU), the default quietly runs the reference, which computes the same function; asking for the
    kernels by name names the constraint. (The weight-only path rotates in jnp, so only its K matters.)"""
    x, w, b, _ = _problem(seed=5, k=k, n=n)
    prepared = F.prepare_weight(w, hadamard_block=16)
    want = np.asarray(PATHS[path](x, prepared, b, backend="reference"))
    monkeypatch.setattr(linear, "default_backend", lambda: "pallas")
    np.testing.assert_array_equal(np.asarray(PATHS[path](x, prepared, b)), want)
    with pytest.raises(InputError, match="multiple of|not supported by the kernels"):
        PATHS[path](x, prepared, b, backend="pallas")


def test_int8_input_quantized_once_feeds_every_linear_of_that_k():
    """Attention's q, k and v share one quantized input; it must give what each linear computes from x itself, on
    every backend (with N a multiple of 128 the GPU runs the Mosaic GPU kernels)."""
    x, w, b, _ = _problem(seed=21, n=256)
    weights = [F.prepare_weight(w), F.prepare_weight(w[::-1] * 2)]
    for backend in BACKENDS:
        shared = linear.quantize_int8_input(x, 128, backend=backend)
        for prepared in weights:
            np.testing.assert_array_equal(np.asarray(linear.int8_linear(shared, prepared, b, backend=backend)),
                                          np.asarray(linear.int8_linear(x, prepared, b, backend=backend)))
    with pytest.raises(InputError, match="cannot feed a weight of K = 128"):
        linear.int8_linear(linear.quantize_int8_input(x, 128), F.prepare_weight(jnp.ones((32, 128))))


def test_int8_linears_as_one_gemm_equal_each_linear_alone():
    """q, k and v as one GEMM over stacked INT8 weights give each linear's own output exactly (the same integer
    products and scales), with and without biases, on every backend; mismatched K is named."""
    x, w, b, _ = _problem(seed=25, n=256)
    weights = [F.prepare_weight(w), F.prepare_weight(w[:128] * 3), F.prepare_weight(-w)]
    biases = [b, None, b[:256] * 2]
    for backend in BACKENDS:
        shared = linear.quantize_int8_input(x, 128, backend=backend)
        ys = linear.int8_linears(shared, weights, biases, backend=backend)
        assert [y.shape[-1] for y in ys] == [256, 128, 256]
        for y, weight, bias in zip(ys, weights, biases):
            np.testing.assert_array_equal(np.asarray(y), np.asarray(linear.int8_linear(shared, weight, bias,
                                                                                        backend=backend)))
    with pytest.raises(InputError, match="must share K"):
        linear.int8_linears(x, [weights[0], F.prepare_weight(jnp.ones((32, 512)))], [None, None])


def test_int8_activation_is_applied_in_float32_before_rounding():
    x, w, b, _ = _problem(seed=23, n=256)
    prepared = F.prepare_weight(w)
    gelu = lambda y: jax.nn.gelu(np.asarray(y, np.float32), approximate=True)  # noqa: E731
    q = linear.quantize_int8_input(x, 128, backend="reference")
    want = gelu(int8_gemm.int8_matmul_reference(q.q, F.int8_weight(prepared), b, m=q.m, out_dtype=jnp.float32))
    for backend in BACKENDS:
        y = linear.int8_linear(x, prepared, b, activation="gelu_tanh", backend=backend)
        assert y.dtype == jnp.bfloat16
        assert _rel(y, np.asarray(want, np.float64).reshape(y.shape)) < 1e-2, backend
    with pytest.raises(InputError, match="unknown activation 'relu6'"):
        linear.int8_linear(x, prepared, b, activation="relu6")
