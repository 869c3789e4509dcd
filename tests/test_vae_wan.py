"""The Wan VAE against diffusers' AutoencoderKLWan, live, on a tiny model with every weight randomised.

Compiled variants are shared to keep the file fast on CPU: every decode uses 4x4 latents (1, 2 and 3 frames need the
first-chunk and the cached variant, both one latent frame), every encode 32x32 pixels (1, 5, 6 and 9 frames need
the first-chunk variant, T=1, and the cached one, T=4); the posterior sample reuses the encode programs. The
Wan2.2 residual variant has one tiny model of its own (2x3 latents, 32x48 videos: not square, so that a height /
width mix-up in patchify shows), four more compiled programs."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from conftest import rel_err

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from convert.source import WEIGHTS_NAME  # noqa: E402
from convert.vae_wan import expected_tensors, load_vae  # noqa: E402
from sixbit_jax.checkpoint import flat_leaves  # noqa: E402
from sixbit_jax.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from sixbit_jax.models.vae_wan import (WanVAEConfig, decode, decode_latents, denormalize_latents,  # noqa: E402
                                       encode, encode_chunks, normalize_latents, postprocess)

# Wan2.1's structure (4 levels, time halved by the last two, one attention in each mid block) at width 8
TINY = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
            latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.25])
LATENT_HW = (4, 4)
VIDEO_HW = (32, 32)
# Wan2.2 TI2V-5B's structure (residual blocks, patch_size 2, a decoder of its own width) at widths 8 / 6; dim_mult
# [1, 2, 4, 2] makes the shortcuts regroup channels every way: averaging 4 and 2 channels (encoder levels 1-3),
# repeating 16 and 2 times (decoder up blocks 1 and 2)
TINY_RESIDUAL = dict(base_dim=8, decoder_base_dim=6, z_dim=4, dim_mult=[1, 2, 4, 2], num_res_blocks=1,
                     is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16,
                     latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.25])
RESIDUAL_LATENT_HW = (2, 3)
RESIDUAL_VIDEO_HW = (32, 48)


def tiny_vae(seed: int = 0, config: dict = TINY):
    """Every parameter drawn from a seeded generator (independent of torch's global RNG): RMS-norm gammas around 1,
    biases around 0, weights normal / sqrt(fan-in), larger than torch's default init, so that some decoded values
    (about 4%) pass +-1 and the clamp matters."""
    model = diffusers.AutoencoderKLWan(**config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            noise = torch.randn(prm.shape, generator=gen)
            if name.endswith("gamma"):
                prm.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                prm.copy_(0.1 * noise)
            else:
                prm.copy_(noise * (prm[0].numel() ** -0.5))
    return model


@pytest.fixture(scope="module")
def torch_vae():
    return tiny_vae()


@pytest.fixture(scope="module")
def folder(torch_vae, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wan-vae")
    torch_vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae(folder):
    return load_vae(folder, dtype="fp32")


@pytest.fixture(scope="module")
def torch_residual_vae():
    return tiny_vae(config=TINY_RESIDUAL)


@pytest.fixture(scope="module")
def residual_vae(torch_residual_vae, tmp_path_factory):
    """Converted from a save_pretrained folder, as a Wan2.2 vae/ folder would be."""
    path = tmp_path_factory.mktemp("wan22-vae")
    torch_residual_vae.save_pretrained(path)
    return load_vae(path, dtype="fp32")


def randn(*shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_decode(model, z: np.ndarray) -> np.ndarray:
    """diffusers decode of Wan-layout latents [B, C, F, h, w] -> [B, T, H, W, 3]."""
    with torch.no_grad():
        return model.decode(torch.from_numpy(z)).sample.permute(0, 2, 3, 4, 1).numpy()


def torch_posterior(model, video: np.ndarray):
    """diffusers encode(...).latent_dist of [B, T, H, W, 3]."""
    with torch.no_grad():
        return model.encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).latent_dist


def video(frames: int, seed: int, hw: tuple[int, int] = VIDEO_HW) -> np.ndarray:
    return np.tanh(randn(1, frames, *hw, 3, seed=seed))


# --------------------------------------------------------------------------------------------------------------
# Numerics against diffusers
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 2, 3], ids=["1-first-chunk", "2-time-conv-starts", "3-cache-carried"])
def test_decode_matches_diffusers(vae, torch_vae, frames):
    z = randn(1, 4, frames, *LATENT_HW, seed=frames)
    ref = torch_decode(torch_vae, z)
    out = np.asarray(decode(vae, jnp.asarray(z)))
    assert out.shape == ref.shape == (1, 1 + 4 * (frames - 1), 32, 32, 3)
    assert out.dtype == np.float32
    assert (np.abs(ref) == 1).any()  # clamped values are part of the comparison
    assert out.min() >= -1 and out.max() <= 1
    assert rel_err(out, ref) < 1e-4


def test_decode_latents_denormalizes_as_wan_pipeline(vae, torch_vae):
    """WanPipeline: latents / (1 / std) + mean per channel, then vae.decode."""
    z = randn(1, 4, 1, *LATENT_HW, seed=11)
    mean = torch.tensor(TINY["latents_mean"]).view(1, 4, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(TINY["latents_std"]).view(1, 4, 1, 1, 1)
    expected = (torch.from_numpy(z) / inv_std + mean).numpy()
    np.testing.assert_allclose(np.asarray(denormalize_latents(vae.config, jnp.asarray(z))), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(normalize_latents(vae.config, jnp.asarray(expected))), z, atol=1e-6)
    out = np.asarray(decode_latents(vae, jnp.asarray(z)))
    assert rel_err(out, torch_decode(torch_vae, expected)) < 1e-4
    np.testing.assert_allclose(np.asarray(postprocess(out)), np.clip(out * 0.5 + 0.5, 0, 1))


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_matches_diffusers(vae, torch_vae, frames):
    x = video(frames, seed=frames)
    ref = torch_posterior(torch_vae, x).mode().numpy()
    out = np.asarray(encode(vae, jnp.asarray(x)))
    assert out.shape == ref.shape == (1, 4, (frames - 1) // 4 + 1, 4, 4)
    assert rel_err(out, ref) < 1e-4


def test_encode_ignores_frames_past_the_last_chunk_as_diffusers(vae, torch_vae):
    x = video(6, seed=6)
    ref = torch_posterior(torch_vae, x).mode().numpy()
    out = np.asarray(encode(vae, jnp.asarray(x)))
    assert out.shape == ref.shape == (1, 4, 2, 4, 4)
    assert rel_err(out, ref) < 1e-4
    np.testing.assert_array_equal(out, np.asarray(encode(vae, jnp.asarray(x[:, :5]))))


def test_encode_posterior_sample(vae, torch_vae):
    """latent_dist.sample(generator) is mean + std * (the generator's standard normal draw)."""
    x = video(5, seed=5)
    ref = torch_posterior(torch_vae, x).sample(generator=torch.Generator().manual_seed(3)).numpy()
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3)).numpy()
    out = np.asarray(encode(vae, jnp.asarray(x), posterior_noise=jnp.asarray(noise)))
    assert rel_err(out, ref) < 1e-4
    with pytest.raises(InputError, match="posterior noise must have the latents' shape"):
        encode(vae, jnp.asarray(x), posterior_noise=jnp.zeros((1, 4, 1, 4, 4)))


def test_bf16_decode(folder, torch_vae):
    """bf16 parameters and activations (norms and softmax in float32): about as far from the float32 result as
    diffusers' own bf16 decode on the CPU is. On this random model both are 4-7% of the range (ours 0.7-1.3x
    diffusers' over four latent draws); the bound leaves 2x, as the CogVideoX VAE test does, for XLA's bf16
    convolution algorithms varying on GPUs."""
    vae16 = load_vae(folder, dtype="bf16")
    assert {x.dtype for x in jax.tree.leaves(nnx.state(vae16))} == {jnp.dtype(jnp.bfloat16)}
    z = randn(1, 4, 2, *LATENT_HW, seed=2)
    ref = torch_decode(torch_vae, z)
    with torch.no_grad():
        torch16 = copy.deepcopy(torch_vae).to(torch.bfloat16).decode(
            torch.from_numpy(z).bfloat16()).sample.float().permute(0, 2, 3, 4, 1).numpy()
    out = np.asarray(decode(vae16, jnp.asarray(z)))
    assert out.dtype == np.float32
    assert rel_err(out, ref) < max(2 * rel_err(torch16, ref), 1e-2)


@pytest.mark.parametrize("frames", [1, 2, 3], ids=["1-first-chunk", "2-time-conv-starts", "3-cache-carried"])
def test_residual_decode_matches_diffusers(residual_vae, torch_residual_vae, frames):
    """Wan2.2: dup_up shortcuts (the first chunk dropping a frame) and unpatchify, 16x the latents' size."""
    z = randn(1, 4, frames, *RESIDUAL_LATENT_HW, seed=20 + frames)
    ref = torch_decode(torch_residual_vae, z)
    out = np.asarray(decode(residual_vae, jnp.asarray(z)))
    assert out.shape == ref.shape == (1, 1 + 4 * (frames - 1), *RESIDUAL_VIDEO_HW, 3)
    assert (np.abs(ref) == 1).any()
    assert rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_residual_encode_matches_diffusers(residual_vae, torch_residual_vae, frames):
    """Wan2.2: patchify and avg_down shortcuts (the first chunk's frame averaged with a zero frame)."""
    x = video(frames, seed=20 + frames, hw=RESIDUAL_VIDEO_HW)
    ref = torch_posterior(torch_residual_vae, x).mode().numpy()
    out = np.asarray(encode(residual_vae, jnp.asarray(x)))
    assert out.shape == ref.shape == (1, 4, (frames - 1) // 4 + 1, *RESIDUAL_LATENT_HW)
    assert rel_err(out, ref) < 1e-4
    with pytest.raises(InputError, match="multiples of 16"):
        encode(residual_vae, jnp.asarray(x[:, :, :24]))


def test_residual_decode_latents_as_wan_pipeline(residual_vae, torch_residual_vae):
    z = randn(1, 4, 1, *RESIDUAL_LATENT_HW, seed=30)
    mean = torch.tensor(TINY_RESIDUAL["latents_mean"]).view(1, 4, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(TINY_RESIDUAL["latents_std"]).view(1, 4, 1, 1, 1)
    expected = (torch.from_numpy(z) / inv_std + mean).numpy()
    out = np.asarray(decode_latents(residual_vae, jnp.asarray(z)))
    assert rel_err(out, torch_decode(torch_residual_vae, expected)) < 1e-4


def test_wan22_ti2v_config_structure_and_latent_stats():
    """Wan2.2 TI2V-5B's VAE config at full size, built by diffusers on the meta device (shapes, no memory): every
    tensor name and shape, the ratios, and WanPipeline's (de)normalisation of 48-channel latents."""
    stats = np.random.default_rng(0).uniform(0.5, 2.0, (2, 48)).round(4)
    raw = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
               temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12,
               out_channels=12, scale_factor_spatial=16, scale_factor_temporal=4,
               latents_mean=list(stats[0] - 1.25), latents_std=list(stats[1]))
    with torch.device("meta"):
        model = diffusers.AutoencoderKLWan(**raw)
    cfg = WanVAEConfig.from_dict({"_class_name": "AutoencoderKLWan", **dict(model.config)})
    assert WanVAEConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.spatial_ratio == 16 and cfg.temporal_ratio == 4 and cfg.video_in_channels == 3
    assert cfg.latent_frames(121) == 31 and cfg.video_frames(31) == 121
    expected = expected_tensors(cfg)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: s.source_shape for k, s in expected.items()}
    z = randn(1, 48, 2, 2, 2, seed=31)
    mean = torch.tensor(raw["latents_mean"], dtype=torch.float32).view(1, 48, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(raw["latents_std"], dtype=torch.float32).view(1, 48, 1, 1, 1)
    expected_z = (torch.from_numpy(z) / inv_std + mean).numpy()
    # atol: where z * std cancels the mean, a last-bit difference of the division is a large relative one
    np.testing.assert_allclose(np.asarray(denormalize_latents(cfg, jnp.asarray(z))), expected_z, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(normalize_latents(cfg, jnp.asarray(expected_z))), z, atol=1e-5)


def test_encode_chunks_follow_diffusers():
    assert encode_chunks(1) == [(0, 1)]
    assert encode_chunks(5) == [(0, 1), (1, 5)]
    assert encode_chunks(81) == [(0, 1)] + [(k, k + 4) for k in range(1, 81, 4)]
    assert encode_chunks(8) == [(0, 1), (1, 5)]
    with pytest.raises(InputError):
        encode_chunks(0)
    cfg = WanVAEConfig()
    assert cfg.latent_frames(81) == 21 and cfg.video_frames(21) == 81 and cfg.spatial_ratio == 8


def test_bad_input_shapes_are_named(vae):
    with pytest.raises(InputError, match=r"latents must be \[B, 4, F, h, w\]"):
        decode(vae, jnp.zeros((1, 1, 4, 4, 4)))
    with pytest.raises(InputError, match=r"video must be \[B, T, H, W, 3\]"):
        encode(vae, jnp.zeros((1, 5, 3, 32, 32)))


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def _params(model) -> dict:
    return {".".join(map(str, k)): np.asarray(v) for k, v in flat_leaves(nnx.to_pure_dict(nnx.state(model)))}


@pytest.mark.parametrize("ours, theirs", [("vae", "torch_vae"), ("residual_vae", "torch_residual_vae")],
                         ids=["wan21", "wan22-residual"])
def test_every_tensor_is_converted_exactly(request, ours, theirs):
    """Names match diffusers one to one; conv kernels are the transposed torch tensors, everything else equal."""
    vae, torch_vae = request.getfixturevalue(ours), request.getfixturevalue(theirs)
    expected = expected_tensors(vae.config)
    state = torch_vae.state_dict()
    assert sorted(expected) == sorted(state)
    ours = _params(vae)
    for key, spec in expected.items():
        ref = state[key].numpy()
        value = ours[key] if spec.transpose is None else ours[key].transpose(np.argsort(spec.transpose))
        np.testing.assert_array_equal(value, ref, err_msg=key)


@pytest.mark.parametrize("change", [{"decoder_base_dim": 12}, {"temperal_downsample": [True, False, True],
                                                               "num_res_blocks": 2, "dim_mult": [1, 2, 3, 1]}])
def test_tensor_names_and_shapes_of_other_configs(change):
    """Structure only (nothing compiled): decoder width, where time is resampled, blocks per level."""
    model = diffusers.AutoencoderKLWan(**{**TINY, **change})
    expected = expected_tensors(WanVAEConfig.from_dict(dict(model.config)))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: s.source_shape for k, s in expected.items()}


def test_pipeline_folder(vae, torch_vae, tmp_path):
    torch_vae.save_pretrained(tmp_path / "vae", max_shard_size="40KB")
    assert len(list((tmp_path / "vae").glob("*.safetensors"))) > 1
    loaded = load_vae(tmp_path, dtype="fp32")  # a pipeline folder holding a sharded vae/
    ours = _params(vae)
    for key, value in _params(loaded).items():
        np.testing.assert_array_equal(value, ours[key], err_msg=key)


def test_checkpoint_problems_are_all_named(folder, tmp_path):
    tensors = load_file(folder / WEIGHTS_NAME)
    del tensors["decoder.mid_block.attentions.0.to_qkv.weight"]
    tensors["encoder.down_blocks.1.resample.1.weight"] = tensors["encoder.down_blocks.1.resample.1.weight"][:, :4]
    tensors["decoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(CheckpointError) as info:
        load_vae(tmp_path)
    message = str(info.value)
    assert "3 problems" in message
    assert "missing tensor decoder.mid_block.attentions.0.to_qkv.weight (expected shape (48, 16, 1, 1))" in message
    assert "tensor encoder.down_blocks.1.resample.1.weight: expected shape (8, 8, 3, 3), found (8, 4, 3, 3)" \
        in message
    assert "unexpected tensor decoder.extra.weight" in message


def test_wrong_width_in_config_is_hinted(folder, tmp_path):
    (tmp_path / WEIGHTS_NAME).write_bytes((folder / WEIGHTS_NAME).read_bytes())
    raw = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "base_dim": 16}))
    with pytest.raises(CheckpointError, match="the encoder's first conv has 8 channels but base_dim is 16"):
        load_vae(tmp_path)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        load_vae(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_vae(tmp_path)


@pytest.mark.parametrize("change, named", [
    ({"is_residual": True, "dim_mult": [1, 3, 2, 2]}, "encoder level 1's shortcut averages 8 x 8 channels into 24"),
    ({"is_residual": True, "dim_mult": [1, 1, 8, 8]}, "decoder up block 2's shortcut repeats 64 channels into 8 x 4"),
    ({"patch_size": 2}, "in_channels 3 is not divisible by patch_size\\*\\*2 = 4"),
    ({"patch_size": 0}, "patch_size must be null or a positive integer"),
    ({"attn_scales": [0.5]}, "attn_scales=[0.5]"),
    ({"_class_name": "AutoencoderKLCogVideoX"}, "AutoencoderKLCogVideoX"),
    ({"latents_std": [1.0] * 16}, "latents_std has 16 entries; it needs z_dim = 4"),
    ({"temperal_downsample": [True]}, "temperal_downsample has 1 entries"),
    ({"scale_factor_spatial": 16}, "scale_factor_spatial 16"),
    ({"dim_mult": "1224"}, "dim_mult must be a list of numbers"),
    ({"z_dim": None}, "z_dim has an invalid value None"),
])
def test_unsupported_config_values_are_named(folder, tmp_path, change, named):
    raw = json.loads((folder / "config.json").read_text())
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        WanVAEConfig.from_dict({**raw, **change})
    (tmp_path / "config.json").write_text(json.dumps({**raw, **change}))
    with pytest.raises(ConfigError):
        load_vae(tmp_path)


def test_config_reads_diffusers_json(folder):
    cfg = WanVAEConfig.from_json(folder / "config.json")
    assert cfg.base_dim == 8 and cfg.z_dim == 4 and cfg.dim_mult == (1, 2, 2, 2)
    assert cfg.temperal_downsample == (False, True, True) and cfg.temporal_ratio == 4
    assert cfg.decoder_temporal == (True, True, False)
    assert WanVAEConfig.from_dict(cfg.to_dict()) == cfg
    # our defaults are diffusers' (Wan2.1's VAE)
    defaults = {k: p.default for k, p in inspect.signature(diffusers.AutoencoderKLWan.__init__).parameters.items()
                if k != "self"}
    assert WanVAEConfig.from_dict(defaults) == WanVAEConfig() == WanVAEConfig.from_dict({})
