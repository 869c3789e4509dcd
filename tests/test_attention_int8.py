"""8-bit attention (`pallas_kernels/attention_int8_mgpu.py`): its jnp reference against float32 attention on CPU
(ragged lengths, outlier channels in K), the kernel lowered for CUDA on CPU, and compiled on a GPU against the
reference computed on the host CPU (fresh seeds, ragged lengths, poisoned device memory)."""

import itertools
import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from conftest import poison_device_memory
from pallas_kernels import attention_int8_mgpu as attn8
from sixbit_jax.errors import InputError

_seeds = itertools.count(7000)


def qkv(batch, tokens, heads, head_dim, *, k_offset=3.0, outliers=False, dtype=jnp.bfloat16):
    """Random q, k, v; k with a shared per-channel offset (what smoothing removes) and optionally three outlier
    channels, as DiT keys have them: an offset 20x the others' and 3x their spread."""
    kq, kk, kv, ko = jax.random.split(jax.random.PRNGKey(next(_seeds)), 4)
    shape = (batch, tokens, heads, head_dim)
    q = 1.5 * jax.random.normal(kq, shape)
    spread, offset = 1.5 * jax.random.normal(kk, shape), k_offset * jax.random.normal(ko, (1, 1, heads, head_dim))
    if outliers:
        spread, offset = spread.at[..., :3].multiply(3.0), offset.at[..., :3].set(20.0 * max(k_offset, 1.0))
    k = spread + offset
    return q.astype(dtype), k.astype(dtype), jax.random.normal(kv, shape).astype(dtype)


def float32_attention(q, k, v):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    assert np.isfinite(a).all(), "non-finite output"
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("shape,outliers,pv,exp16", [((2, 129, 3, 128), True, "bf16", False),
                                                     ((1, 5, 1, 64), False, "bf16", True),
                                                     ((1, 300, 2, 64), True, "fp8", False)])
def test_reference_is_close_to_float32_attention(shape, outliers, pv, exp16):
    q, k, v = qkv(*shape, outliers=outliers)
    out = attn8.int8_attention_reference(q, k, v, pv=pv, exp16=exp16)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert cosine(out, float32_attention(q, k, v)) > (0.998 if pv == "fp8" else 0.999)


def test_smoothing_makes_a_shared_key_offset_free():
    """softmax(q (k + c)ᵀ) = softmax(q kᵀ): after smoothing, an offset common to all keys changes nothing, not even
    the int8 range (without smoothing this offset would take most of it)."""
    q, k, v = qkv(1, 200, 2, 64, k_offset=0.0, dtype=jnp.float32)
    shifted = k + 50.0 * jax.random.normal(jax.random.PRNGKey(next(_seeds)), (1, 1, 2, 64))
    a, b = attn8.int8_attention_reference(q, k, v), attn8.int8_attention_reference(q, shifted, v)
    assert cosine(a, b) > 0.99999
    assert cosine(b, float32_attention(q, shifted, v)) > 0.999


def test_quantization_layouts():
    q, k, _ = qkv(2, 130, 3, 64)
    q_codes, q_scale = attn8.quantize_q(q)
    k_codes, k_scale = attn8.quantize_k(k, 128)
    assert q_codes.dtype == k_codes.dtype == jnp.int8 and q_codes.shape == q.shape
    assert q_scale.shape == (2, 3, 130) and k_codes.shape == (2, 256, 3, 64) and k_scale.shape == (2, 3, 2)
    assert np.all(np.asarray(k_codes[:, 130:]) == 0), "padded keys must be zero codes"
    assert np.abs(np.asarray(q_codes)).max() == 127


def test_bad_inputs_are_named():
    q, k, v = qkv(1, 64, 2, 64)
    with pytest.raises(InputError, match="head dim 96"):
        attn8.int8_attention_mgpu(*qkv(1, 64, 2, 96))
    with pytest.raises(InputError, match=r"\[B, N, H, D\]"):
        attn8.int8_attention(q, k[:, :, :1], v[:, :, :1])
    with pytest.raises(InputError, match="ping-pong takes two"):
        attn8.int8_attention_mgpu(q, k, v, config=attn8.AttentionConfig(compute_wgs=3))
    with pytest.raises(InputError, match="4 compute warpgroups"):
        attn8.int8_attention_mgpu(q, k, v, config=attn8.AttentionConfig(compute_wgs=4, ping_pong=False))
    with pytest.raises(InputError, match="needs 2"):
        attn8.int8_attention_mgpu(*qkv(1, 600, 1, 128), config=attn8.AttentionConfig(block_kv=256))
    with pytest.raises(InputError, match="overlap takes"):
        attn8.int8_attention_mgpu(q, k, v, config=attn8.AttentionConfig(overlap=True))


def test_register_budget_fits_the_launch():
    """`setmaxnreg` can only hand out what the launch gave the CTA (65,536 registers / threads, rounded down to 8 per
    thread); asking for more waits forever, so each warpgroup count's split must fit."""
    for wgs, compute in attn8._COMPUTE_REGISTERS.items():
        threads = 128 * (wgs + 1)
        at_launch = 65536 // threads // 8 * 8
        assert 128 * (wgs * compute + attn8._MEMORY_REGISTERS[wgs]) <= at_launch * threads, wgs
        assert compute % 8 == 0 and attn8._MEMORY_REGISTERS[wgs] >= 24


def test_kernel_lowers_for_cuda():
    sds = jax.ShapeDtypeStruct
    for shape, config in [((1, 300, 2, 64), attn8.AttentionConfig()),
                          ((2, 1000, 3, 128), attn8.AttentionConfig(heads_minor=False, stages=2)),
                          ((1, 300, 2, 64), attn8.AttentionConfig(pv="fp8", block_q=128)),
                          ((1, 300, 2, 64), attn8.AttentionConfig(exp16=True)),
                          ((1, 300, 2, 64), attn8.AttentionConfig(compute_wgs=3, ping_pong=False)),
                          ((1, 300, 2, 128), attn8.AttentionConfig(overlap=True, ping_pong=False)),
                          ((1, 100, 2, 64), attn8.AttentionConfig(overlap=True, ping_pong=False, compute_wgs=3))]:
        x = sds(shape, jnp.bfloat16)
        fn = jax.jit(lambda q, k, v, config=config: attn8.int8_attention_mgpu(q, k, v, config=config))
        fn.trace(x, x, x).lower(lowering_platforms=("cuda",))


KERNEL_SHAPES = [(1, 300, 2, 64), (2, 1000, 3, 128), (1, 129, 1, 64), (1, 64, 2, 64), (2, 2053, 4, 64)]
KERNEL_CONFIGS = {  # name -> (config, shapes it runs)
    "default": (attn8.AttentionConfig(), KERNEL_SHAPES),
    "q-minor": (attn8.AttentionConfig(heads_minor=False), KERNEL_SHAPES[:3]),
    "cvt": (attn8.AttentionConfig(magic_convert=False), KERNEL_SHAPES[:3]),
    "exp16": (attn8.AttentionConfig(exp16=True), KERNEL_SHAPES[:3]),
    "block_q=128": (attn8.AttentionConfig(block_q=128), KERNEL_SHAPES[:3]),
    "fp8": (attn8.AttentionConfig(pv="fp8"), KERNEL_SHAPES),
    "fp8,block_q=128": (attn8.AttentionConfig(pv="fp8", block_q=128), KERNEL_SHAPES[:3]),
    "free": (attn8.AttentionConfig(ping_pong=False), KERNEL_SHAPES[:3]),
    "3wg": (attn8.AttentionConfig(compute_wgs=3, ping_pong=False), KERNEL_SHAPES),
    "block_kv=256": (attn8.AttentionConfig(block_kv=256), [KERNEL_SHAPES[0], KERNEL_SHAPES[2]]),
    # overlap: a tail block after full ones, a tail block alone, no tail (256 keys), one full block
    "overlap": (attn8.AttentionConfig(overlap=True, ping_pong=False),
                [*KERNEL_SHAPES, (1, 256, 2, 64), (1, 128, 1, 128)]),
    "overlap,3wg": (attn8.AttentionConfig(overlap=True, ping_pong=False, compute_wgs=3), KERNEL_SHAPES[:4]),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name,shape", [(name, shape) for name, (_, shapes) in KERNEL_CONFIGS.items()
                                        for shape in shapes])
def test_kernel_matches_reference(name, shape):
    config = KERNEL_CONFIGS[name][0]
    q, k, v = qkv(*shape, outliers=True)
    poison_device_memory()
    out = jax.jit(lambda q, k, v: attn8.int8_attention_mgpu(q, k, v, config=config))(q, k, v)
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        ref = attn8.int8_attention_reference(*(jax.device_put(x, cpu) for x in (q, k, v)), pv=config.pv,
                                             exp16=config.exp16, block_kv=config.block_kv)
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    assert out.shape == ref.shape and np.isfinite(out).all()
    # Same codes and scales; differences come from the online softmax (P rounded to bf16 or e4m3 against a running
    # maximum), exp2's approximation and the summation order.
    assert np.abs(out - ref).sum() / np.abs(ref).sum() < (3e-2 if config.pv == "fp8" else 1e-2)
    assert cosine(out, ref) > (0.999 if config.pv == "fp8" else 0.9999)
    assert cosine(out, float32_attention(q, k, v)) > 0.998
