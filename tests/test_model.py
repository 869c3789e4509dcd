"""The Flax model against diffusers' CogVideoXTransformer3DModel, live, on tiny random configs."""

import zlib

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from conftest import HAS_GPU, rel_err
from diffusers_ref import diffusers_forward, jax_model_from_diffusers, tiny_diffusers_model, torch

from sixbit_jax import rng
from sixbit_jax.config import CogVideoXConfig
from sixbit_jax.errors import ConfigError, InputError
from sixbit_jax.models.cogvideox import rope_tables, sincos_table

# (batch, latent frames, height, width): square, non-square, odd frame counts, a frame count of 1
SHAPES = [(1, 3, 8, 12), (2, 5, 10, 6), (1, 1, 6, 6), (2, 4, 12, 8)]


def _inputs(seed, b, f, h, w, text_len=8):
    np_rng = np.random.default_rng(seed)
    latents = np_rng.standard_normal((b, f, 4, h, w)).astype(np.float32)
    text = np_rng.standard_normal((b, text_len, 32)).astype(np.float32)
    timesteps = np_rng.integers(0, 1000, size=b)
    return latents, text, timesteps


# CogVideoX 1.5 patches two latent frames at a time, and its positions cover at most the sample grid (4 x 6 here)
SHAPES_15 = [(1, 2, 8, 12), (2, 4, 6, 10)]
CASES = [(flavour, shape) for flavour in ("2b", "5b") for shape in SHAPES] + [("1.5", shape) for shape in SHAPES_15]


@pytest.mark.parametrize("flavour,shape", CASES, ids=lambda c: c if isinstance(c, str) else "x".join(map(str, c)))
def test_fp32_matches_diffusers(flavour, shape):
    seed = zlib.crc32(repr((flavour, shape)).encode()) % 2**16
    ref_model = tiny_diffusers_model(flavour, seed=seed)
    latents, text, timesteps = _inputs(seed, *shape)
    expected = diffusers_forward(ref_model, latents, text, timesteps)
    model = jax_model_from_diffusers(ref_model, "fp32")
    out = model(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))
    assert out.shape == expected.shape and out.dtype == jnp.float32
    # float32 timestep tables are the floor here (about 1e-5 against float64, cogvideox.md section 2)
    assert rel_err(out, expected) < 2e-5


@pytest.mark.parametrize("flavour", ["2b", "5b", "1.5"])
def test_bf16_matches_diffusers_bf16(flavour):
    ref_model = tiny_diffusers_model(flavour, seed=7)
    latents, text, timesteps = _inputs(11, 2, 4 if flavour == "1.5" else 3, 8, 12)
    expected = diffusers_forward(ref_model, latents, text, timesteps, dtype=torch.bfloat16)
    model = jax_model_from_diffusers(ref_model, "bf16")
    out = model(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, expected) < 2e-2


@pytest.mark.parametrize("variant", ["5b-i2v", "1.5-i2v"])
def test_image_to_video_models_match_diffusers(variant):
    """In-channels doubled (noise and image latents); 5b-I2V adds a learned table to text and video tokens at its
    sample size (the sin-cos table at another frame count, as diffusers does; other sizes are refused); 1.5-I2V
    adds the ofs embedding to the time embedding."""
    extra = dict(use_learned_positional_embeddings=True) if variant == "5b-i2v" else dict(ofs_embed_dim=32)
    ref_model = tiny_diffusers_model(variant.split("-")[0], seed=13, in_channels=8, **extra)
    model = jax_model_from_diffusers(ref_model, "fp32")
    for frames in ((3, 2) if variant == "5b-i2v" else (2,)):  # 3: the sample size's latent frames
        latents, text, timesteps = _inputs(frames, 2, frames, 8, 12)
        latents = np.concatenate([latents, latents[:, :, ::-1] * 0.5], axis=2)
        expected = diffusers_forward(ref_model, latents, text, timesteps)
        assert rel_err(model(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps)), expected) < 2e-5
    if variant == "5b-i2v":
        with pytest.raises(InputError, match="samples only its own size, 8 x 12 latents"):
            model(jnp.zeros((1, 3, 8, 8, 8)), jnp.asarray(text[:1]), jnp.asarray(timesteps[:1]))


def test_5b_accepts_any_text_length_2b_does_not():
    ref_model = tiny_diffusers_model("5b", seed=3)
    latents, text, timesteps = _inputs(5, 1, 3, 8, 12, text_len=5)
    expected = diffusers_forward(ref_model, latents, text, timesteps)
    out = jax_model_from_diffusers(ref_model, "fp32")(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))
    assert rel_err(out, expected) < 2e-5

    model_2b = jax_model_from_diffusers(tiny_diffusers_model("2b"), "fp32")
    with pytest.raises(InputError, match="exactly max_text_seq_length=8"):
        model_2b(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))


def test_bad_input_shapes_are_named():
    model = jax_model_from_diffusers(tiny_diffusers_model("5b"), "fp32")
    latents, text, timesteps = _inputs(1, 1, 3, 8, 12)
    with pytest.raises(InputError, match="latents must be"):
        model(jnp.asarray(latents[:, :, :3]), jnp.asarray(text), jnp.asarray(timesteps))
    with pytest.raises(InputError, match="multiples of patch_size"):
        model(jnp.asarray(latents[..., :7]), jnp.asarray(text), jnp.asarray(timesteps))
    with pytest.raises(InputError, match=r"\[B, L, 32\]"):
        model(jnp.asarray(latents), jnp.asarray(text[..., :16]), jnp.asarray(timesteps))
    model_15 = jax_model_from_diffusers(tiny_diffusers_model("1.5"), "fp32")
    with pytest.raises(InputError, match="patches 2 latent frames at a time; got 3 .* 1 more"):
        model_15(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))
    latents, text, timesteps = _inputs(1, 1, 2, 10, 12)  # 5 patch rows where the sample grid has 4
    with pytest.raises(InputError, match="at most 4 x 6 patches"):
        model_15(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))


def test_position_tables_match_diffusers():
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    from diffusers_ref import rope_for

    ref_model = tiny_diffusers_model("5b")
    cfg = CogVideoXConfig.from_dict(dict(ref_model.config))
    for f, h, w in [(3, 8, 12), (2, 12, 6)]:  # native grid and a crop (aspect differs from the sample size)
        cos, sin = rope_tables(cfg, f, h // 2, w // 2)
        ref_cos, ref_sin = rope_for(ref_model, f, h, w)
        assert np.abs(cos - ref_cos.numpy()).max() < 1e-6 and np.abs(sin - ref_sin.numpy()).max() < 1e-6
        ref = get_3d_sincos_pos_embed(cfg.inner_dim, (w // 2, h // 2), f, cfg.spatial_interpolation_scale,
                                      cfg.temporal_interpolation_scale, output_type="pt").flatten(0, 1)
        assert np.abs(sincos_table(cfg, f, h // 2, w // 2) - ref.numpy()).max() < 1e-12


def test_unsupported_configs_are_refused():
    base = CogVideoXConfig().to_dict()
    with pytest.raises(ConfigError, match="patch_size_t .* 3D RoPE only"):
        CogVideoXConfig.from_dict({**base, "patch_size_t": 2})
    with pytest.raises(ConfigError, match="patch_bias=false"):
        CogVideoXConfig.from_dict({**base, "patch_bias": False})
    with pytest.raises(ConfigError, match="ofs_embed_dim 64 must equal time_embed_dim"):
        CogVideoXConfig.from_dict({**base, "ofs_embed_dim": 64})
    with pytest.raises(ConfigError, match="WanTransformer3DModel"):
        CogVideoXConfig.from_dict({**base, "_class_name": "WanTransformer3DModel"})


def test_shipped_configs_are_the_real_models():
    cfg_2b, cfg_5b = CogVideoXConfig.named("cogvideox-2b"), CogVideoXConfig.named("cogvideox-5b")
    cfg_15 = CogVideoXConfig.named("cogvideox1.5-5b")
    assert (cfg_2b.inner_dim, cfg_2b.num_layers, cfg_2b.use_rotary_positional_embeddings) == (1920, 30, False)
    assert (cfg_5b.inner_dim, cfg_5b.num_layers, cfg_5b.use_rotary_positional_embeddings) == (3072, 42, True)
    assert (cfg_15.inner_dim, cfg_15.num_layers, cfg_15.patch_size_t) == (3072, 42, 2)
    from sixbit_jax.checkpoint import abstract_params

    counts = [sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(c, jnp.bfloat16)))
              for c in (cfg_2b, cfg_5b, cfg_15)]
    assert counts == [1_693_783_872, 5_570_283_072, 5_570_676_352]  # diffusers' counts (cogvideox.md section 1)


def test_chunked_attention_equals_direct(monkeypatch):
    from sixbit_jax.layers import attention

    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (rng.normal(key, (2, 37, 3, 16)) for key in keys)
    direct = attention.dot_product_attention(q, k, v, implementation="xla")
    monkeypatch.setattr(attention, "_MAX_LOGITS_ELEMENTS", 2 * 3 * 37 * 5)  # forces chunks of 5 queries
    chunked = attention.dot_product_attention(q, k, v, implementation="xla")
    assert rel_err(chunked, direct) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("flavour", ["2b", "5b"])
def test_gpu_cudnn_attention_bf16_matches_diffusers(flavour):
    """On GPU the bf16 model runs cuDNN flash attention; compare it with diffusers in bf16 on the CPU."""
    assert HAS_GPU
    ref_model = tiny_diffusers_model(flavour, seed=21)
    latents, text, timesteps = _inputs(22, 2, 5, 10, 6)
    expected = diffusers_forward(ref_model, latents, text, timesteps)
    model = jax_model_from_diffusers(ref_model, "bf16", attention_impl="cudnn")
    out = nnx.jit(lambda m, *a: m(*a))(model, jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))
    assert rel_err(out, expected) < 2e-2
