"""The CogVideoX VAE against diffusers' AutoencoderKLCogVideoX, live, on a tiny model with every weight randomised.

Compiling one chunk of the tiny decoder takes several seconds on CPU, so the inputs are chosen to share compiled
variants: all decodes use 4x5 latents (frames 1, 3, 5 need the variants first-chunk T=1, first-chunk T=3 and
cached T=2; the tiled decode's full tiles are 4x5 too), all encodes 48x32 pixels (9 and 17 frames need first-chunk
T=9 and cached T=8; the tiled encode's full tiles are 48x32)."""

from __future__ import annotations

import copy
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
from convert.vae_cogvideox import expected_tensors, load_vae  # noqa: E402
from sixbit_jax.checkpoint import flat_leaves  # noqa: E402
from sixbit_jax.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from sixbit_jax.models.vae_cogvideox import (CogVideoXVAEConfig, chunk_bounds, decode, decode_latents,  # noqa: E402
                                             encode, postprocess)

# Sample size 96x80 makes diffusers' default tiles 48x40 pixels (6x5 latents), with strides 5x4 latents / 40x32
# pixels and blends of 8 pixels / 1 latent: the real model's proportions (tile stride x 8 = kept tile size).
TINY = dict(block_out_channels=(8, 16, 16, 32), norm_num_groups=4, latent_channels=4, layers_per_block=1,
            sample_height=96, sample_width=80, scaling_factor=0.7)
LATENT_HW = (4, 5)
VIDEO_HW = (48, 32)


def tiny_vae(seed: int = 0):
    """Every parameter perturbed (GroupNorm biases start at zero, weights at one), so every path matters."""
    model = diffusers.AutoencoderKLCogVideoX(**TINY).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in model.parameters():
            noise = torch.randn(prm.shape, generator=gen)
            prm.add_(noise * 0.1) if prm.ndim == 1 else prm.mul_(1 + 0.2 * noise)
    return model


@pytest.fixture(scope="module")
def torch_vae():
    return tiny_vae()


@pytest.fixture(scope="module")
def folder(torch_vae, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vae")
    torch_vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae(folder):
    return load_vae(folder, dtype="fp32")


def randn(*shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_decode(model, z_bfchw: np.ndarray, tiled: bool = False) -> np.ndarray:
    """diffusers decode of pipeline-layout latents [B, F, C, h, w] -> [B, T, H, W, 3]."""
    if tiled:
        model.enable_tiling()
    try:
        with torch.no_grad():
            out = model.decode(torch.from_numpy(z_bfchw).permute(0, 2, 1, 3, 4)).sample
    finally:
        model.disable_tiling()
    return out.permute(0, 2, 3, 4, 1).numpy()


def torch_encode(model, video: np.ndarray, tiled: bool = False) -> np.ndarray:
    """diffusers encode(...).latent_dist.mode() of [B, T, H, W, 3] -> [B, F, C, h, w]."""
    if tiled:
        model.enable_tiling()
    try:
        with torch.no_grad():
            out = model.encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).latent_dist.mode()
    finally:
        model.disable_tiling()
    return out.permute(0, 2, 1, 3, 4).numpy()


# --------------------------------------------------------------------------------------------------------------
# Numerics against diffusers
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 3, 5], ids=["1-frame", "3-odd-first-chunk", "5-cache-carried"])
def test_decode_matches_diffusers(vae, torch_vae, frames):
    z = randn(1, frames, 4, *LATENT_HW, seed=frames)
    ref = torch_decode(torch_vae, z)
    out = np.asarray(decode(vae, jnp.asarray(z)))
    assert out.shape == ref.shape == (1, 1 + 4 * (frames - 1), 32, 40, 3)
    assert out.dtype == np.float32
    assert rel_err(out, ref) < 1e-4


def test_decode_latents_divides_by_scaling_factor(vae, torch_vae):
    z = randn(1, 1, 4, *LATENT_HW, seed=1)
    out = np.asarray(decode_latents(vae, jnp.asarray(z * TINY["scaling_factor"])))
    assert rel_err(out, torch_decode(torch_vae, z)) < 1e-4
    video = np.asarray(postprocess(out))
    assert video.min() >= 0 and video.max() <= 1
    np.testing.assert_allclose(video, np.clip(out * 0.5 + 0.5, 0, 1))


@pytest.mark.parametrize("frames", [9, 17])
def test_encode_matches_diffusers(vae, torch_vae, frames):
    video = np.tanh(randn(1, frames, *VIDEO_HW, 3, seed=frames))
    ref = torch_encode(torch_vae, video)
    out = np.asarray(encode(vae, jnp.asarray(video)))
    assert out.shape == ref.shape == (1, (frames - 1) // 4 + 1, 4, 6, 4)
    assert rel_err(out, ref) < 1e-4


def test_tiled_decode_matches_diffusers(vae, torch_vae):
    # 4x9 latents: one row of tiles (height 4 <= stride 5), columns at 0, 4, 8 (widths 5, 5, 1), blended over
    # 8 pixels; the middle tile is blended with the already-blended first one.
    z = randn(1, 1, 4, 4, 9, seed=7)
    ref = torch_decode(torch_vae, z, tiled=True)
    assert rel_err(torch_decode(torch_vae, z), ref) > 1e-3  # tiling really changes the result
    out = np.asarray(decode(vae, jnp.asarray(z), tile=True))
    assert out.shape == ref.shape == (1, 1, 32, 72, 3)
    assert rel_err(out, ref) < 1e-4


def test_tiled_encode_matches_diffusers(vae, torch_vae):
    # 64x32 pixels: rows of tiles at 0 and 40 (heights 48, 24), one column; blended over 1 latent row.
    video = np.tanh(randn(1, 9, 64, 32, 3, seed=9))
    ref = torch_encode(torch_vae, video, tiled=True)
    assert rel_err(torch_encode(torch_vae, video), ref) > 1e-3
    out = np.asarray(encode(vae, jnp.asarray(video), tile=True))
    assert out.shape == ref.shape == (1, 3, 4, 8, 4)
    assert rel_err(out, ref) < 1e-4


def test_bf16_decode(folder, torch_vae):
    """bf16 parameters and activations (GroupNorm statistics in float32): about as far from the float32 result as
    diffusers' own bf16 decode on the CPU is (1.9-2.7% of the range on this model). Within 2x of it: on a GPU, XLA
    picks each bf16 convolution's algorithm by autotuning, and its accumulation order varies from run to run (1.6x
    measured on an H200)."""
    vae16 = load_vae(folder, dtype="bf16")
    leaves = jax.tree.leaves(nnx.state(vae16))
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
    z = randn(1, 3, 4, *LATENT_HW, seed=3)
    ref = torch_decode(torch_vae, z)
    with torch.no_grad():
        torch16 = copy.deepcopy(torch_vae).to(torch.bfloat16).decode(
            torch.from_numpy(z).permute(0, 2, 1, 3, 4).bfloat16()).sample.float().permute(0, 2, 3, 4, 1).numpy()
    out = np.asarray(decode(vae16, jnp.asarray(z)))
    assert out.dtype == np.float32
    assert rel_err(out, ref) < max(2 * rel_err(torch16, ref), 1e-2)


def test_chunk_bounds_follow_diffusers():
    assert chunk_bounds(1, 2) == [(0, 1)]
    assert chunk_bounds(4, 2) == [(0, 2), (2, 4)]
    assert chunk_bounds(13, 2) == [(0, 3)] + [(k, k + 2) for k in range(3, 13, 2)]
    assert chunk_bounds(49, 8) == [(0, 9)] + [(k, k + 8) for k in range(9, 49, 8)]
    assert chunk_bounds(5, 8) == [(0, 5)]
    with pytest.raises(InputError):
        chunk_bounds(0, 2)


def test_bad_input_shapes_are_named(vae):
    with pytest.raises(InputError, match=r"latents must be \[B, F, 4, h, w\]"):
        decode(vae, jnp.zeros((1, 1, 16, 4, 5)))
    with pytest.raises(InputError, match=r"video must be \[B, T, H, W, 3\]"):
        encode(vae, jnp.zeros((1, 9, 3, 48, 32)))


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def _params(model) -> dict:
    return {".".join(map(str, k)): np.asarray(v) for k, v in flat_leaves(nnx.to_pure_dict(nnx.state(model)))}


def test_every_tensor_is_converted_exactly(vae, torch_vae):
    """Names match diffusers one to one; conv kernels are the transposed torch tensors, everything else equal."""
    expected = expected_tensors(vae.config)
    state = torch_vae.state_dict()
    assert sorted(expected) == sorted(state)
    ours = _params(vae)
    for key, spec in expected.items():
        ref = state[key].numpy()
        value = ours[key] if spec.transpose is None else ours[key].transpose(np.argsort(spec.transpose))
        np.testing.assert_array_equal(value, ref, err_msg=key)


def test_sharded_and_pipeline_folders(vae, torch_vae, tmp_path):
    torch_vae.save_pretrained(tmp_path / "vae", max_shard_size="40KB")
    assert len(list((tmp_path / "vae").glob("*.safetensors"))) > 1
    loaded = load_vae(tmp_path, dtype="fp32")  # a pipeline folder holding vae/
    ours = _params(vae)
    for key, value in _params(loaded).items():
        np.testing.assert_array_equal(value, ours[key], err_msg=key)


def test_checkpoint_problems_are_all_named(folder, tmp_path):
    tensors = load_file(folder / WEIGHTS_NAME)
    del tensors["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"]
    tensors["encoder.conv_in.conv.weight"] = tensors["encoder.conv_in.conv.weight"][:, :2]
    tensors["decoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(CheckpointError) as info:
        load_vae(tmp_path)
    message = str(info.value)
    assert "3 problems" in message
    assert "missing tensor decoder.up_blocks.1.resnets.0.conv_shortcut.weight (expected shape (16, 32, 1, 1, 1))" \
        in message
    assert "tensor encoder.conv_in.conv.weight: expected shape (8, 3, 3, 3, 3), found (8, 2, 3, 3, 3)" in message
    assert "unexpected tensor decoder.extra.weight" in message


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        load_vae(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_vae(tmp_path)


@pytest.mark.parametrize("change, named", [
    ({"use_quant_conv": True}, "use_quant_conv=True"),
    ({"use_post_quant_conv": True}, "use_post_quant_conv=True"),
    ({"act_fn": "gelu"}, "act_fn='gelu'"),
    ({"down_block_types": ["DownEncoderBlock2D"] * 4}, "down_block_types"),
    ({"up_block_types": ["CogVideoXUpBlock3D"] * 3}, "up_block_types"),
    ({"temporal_compression_ratio": 3}, "temporal_compression_ratio 3"),
    ({"norm_num_groups": 3}, "not multiples of norm_num_groups 3"),
    ({"_class_name": "AutoencoderKLWan"}, "AutoencoderKLWan"),
])
def test_unsupported_config_values_are_named(folder, tmp_path, change, named):
    raw = json.loads((folder / "config.json").read_text())
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        CogVideoXVAEConfig.from_dict({**raw, **change})
    (tmp_path / "config.json").write_text(json.dumps({**raw, **change}))
    with pytest.raises(ConfigError):
        load_vae(tmp_path)


def test_config_reads_diffusers_json(folder):
    cfg = CogVideoXVAEConfig.from_json(folder / "config.json")
    assert cfg.block_out_channels == (8, 16, 16, 32) and cfg.latent_channels == 4
    assert cfg.scaling_factor == 0.7 and cfg.temporal_compression_ratio == 4 and cfg.spatial_ratio == 8
    assert CogVideoXVAEConfig.from_dict(cfg.to_dict()) == cfg
    assert CogVideoXVAEConfig() == CogVideoXVAEConfig.from_dict({})  # defaults are the 2B config
