"""The Wan2.1 transformer against diffusers' WanTransformer3DModel, live, on tiny random configs; both checkpoint
layouts (diffusers and the original Wan-Video names)."""

import numpy as np
import pytest

import jax.numpy as jnp
from flax import nnx

from conftest import rel_err
from convert.wan import COMFY_PREFIX, converted_leaves, original_name
from sixbit_jax.checkpoint import abstract_state, flat_leaves
from sixbit_jax.config import WanConfig
from sixbit_jax.errors import CheckpointError, ConfigError, InputError
from sixbit_jax.models.wan import WanTransformer3D

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from wan_ref import jax_wan, random_wan, state_dict  # noqa: E402  (needs torch and diffusers)


@pytest.fixture(scope="module")
def reference():
    return random_wan(TINY)


TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6)

def forward(model, latents, text, timesteps, dtype=torch.float32):
    model = model.to(dtype)
    with torch.no_grad():
        out = model(hidden_states=torch.from_numpy(latents).to(dtype), timestep=torch.from_numpy(timesteps),
                    encoder_hidden_states=torch.from_numpy(text).to(dtype), return_dict=False)[0]
    model.to(torch.float32)
    return out.float().numpy()


def inputs(seed, b, f, h, w, text_len=7):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, 4, f, h, w)).astype(np.float32),
            rng.standard_normal((b, text_len, 32)).astype(np.float32), rng.integers(0, 1000, size=b))


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 1, 6, 10), (2, 4, 4, 12)], ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_diffusers(reference, shape):
    latents, text, timesteps = inputs(sum(shape), *shape)
    out = jax_wan(reference)(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))
    assert out.shape == latents.shape and out.dtype == jnp.float32
    assert rel_err(out, forward(reference, latents, text, timesteps)) < 2e-5


def test_bf16_matches_diffusers_bf16(reference):
    latents, text, timesteps = inputs(3, 2, 3, 8, 8)
    out = jax_wan(reference, "bf16")(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, forward(reference, latents, text, timesteps, torch.bfloat16)) < 3e-2


@pytest.mark.parametrize("layout", ["original", "comfyui"])
def test_the_original_layout_converts_to_the_same_model(reference, layout):
    """The original Wan-Video names (norm2/norm3 swapped, modulation, head.head, ...), optionally ComfyUI-prefixed."""
    prefix = COMFY_PREFIX if layout == "comfyui" else ""
    names = set(state_dict(reference, lambda k: prefix + original_name(k)))
    assert {prefix + n for n in ("blocks.0.self_attn.q.weight", "blocks.1.cross_attn.o.bias", "blocks.0.norm3.weight",
                                 "blocks.0.modulation", "head.modulation", "head.head.weight",
                                 "blocks.1.ffn.2.weight", "time_projection.1.weight", "text_embedding.2.bias")} <= names
    latents, text, timesteps = inputs(5, 1, 2, 8, 8)
    ours = jax_wan(reference, rename=lambda k: prefix + original_name(k))
    np.testing.assert_array_equal(
        np.asarray(ours(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))),
        np.asarray(jax_wan(reference)(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))))


def test_real_configs_have_diffusers_parameter_counts():
    for cfg, count in ((WanConfig(), 1_418_996_800),
                       (WanConfig(num_attention_heads=40, ffn_dim=13824, num_layers=40), 14_288_491_584)):
        tree = abstract_state(lambda: WanTransformer3D(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
        assert sum(int(np.prod(leaf.shape)) for _, leaf in flat_leaves(tree)) == count  # wan2.1.md section 1


def test_bad_inputs_and_configs_are_named(reference):
    model = jax_wan(reference)
    latents, text, timesteps = inputs(1, 1, 2, 8, 8)
    with pytest.raises(InputError, match=r"latents must be \[B, 4, F, H, W\]"):
        model(jnp.asarray(latents.transpose(0, 2, 1, 3, 4)), jnp.asarray(text), jnp.asarray(timesteps))
    with pytest.raises(InputError, match="multiples of patch_size"):
        model(jnp.asarray(latents[..., :7]), jnp.asarray(text), jnp.asarray(timesteps))
    with pytest.raises(ConfigError, match="image_dim"):
        WanConfig.from_dict({**WanConfig().to_dict(), "image_dim": 1280})
    sd = state_dict(reference)
    del sd["blocks.1.attn2.norm_k.weight"]
    cfg = WanConfig.from_dict(dict(reference.config))
    with pytest.raises(CheckpointError, match="blocks.1.attn2.norm_k.weight"):
        list(converted_leaves(cfg, list(sd), lambda k: sd[k].shape, sd.__getitem__, "fp32"))


def test_an_original_layout_folder_converts_from_the_command_line(reference, tmp_path):
    """A Wan-Video folder (config.json of `WanModel`, the original tensor names) through `sixbit convert`: the same
    model as the diffusers layout gives."""
    import json

    from safetensors.numpy import save_file

    from sixbit_jax.checkpoint import load_checkpoint
    from sixbit_jax.cli import main

    folder = tmp_path / "Wan2.1-T2V-tiny"
    folder.mkdir()
    cfg = reference.config
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "model_type": "t2v", "dim": cfg.num_attention_heads * cfg.attention_head_dim,
        "ffn_dim": cfg.ffn_dim, "num_heads": cfg.num_attention_heads, "num_layers": cfg.num_layers,
        "in_dim": cfg.in_channels, "out_dim": cfg.out_channels, "freq_dim": cfg.freq_dim, "eps": cfg.eps,
        "text_len": 512, "text_dim": cfg.text_dim}))
    save_file(state_dict(reference, original_name), folder / "diffusion_pytorch_model.safetensors")
    assert main(["convert", str(folder), str(tmp_path / "ckpt"), "--dtype", "fp32", "--quiet"]) == 0
    latents, text, timesteps = inputs(5, 1, 2, 8, 8)
    args = (jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps))
    np.testing.assert_array_equal(np.asarray(load_checkpoint(tmp_path / "ckpt")(*args)),
                                  np.asarray(jax_wan(reference)(*args)))
