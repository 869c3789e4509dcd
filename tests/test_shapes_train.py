"""The shapes model's training and export: the loss falls, the export is real diffusers layout (checked live against
diffusers) and round-trips through the converter, a converted pipeline samples."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import rel_err
from diffusers_ref import diffusers, diffusers_forward

from convert import convert_checkpoint
from convert.export import diffusers_tensors, write_diffusers_folder
from sixbit_jax import rng
from sixbit_jax.checkpoint import load_checkpoint
from sixbit_jax.config import CogVideoXConfig
from sixbit_jax.errors import CheckpointError
from sixbit_jax.models import CogVideoXTransformer3D
from sixbit_jax.shapes import world
from sixbit_jax.shapes.pipeline import ShapesPipeline
from sixbit_jax.shapes.train import TrainSettings, learning_rate, train

SMALL = dict(num_layers=2, num_attention_heads=2, attention_head_dim=32, time_embed_dim=32)


def small_shapes_config(**overrides) -> CogVideoXConfig:
    return dataclasses.replace(CogVideoXConfig.named("cogvideox-shapes"), **{**SMALL, **overrides})


def test_export_is_real_diffusers_layout_and_round_trips(tmp_path):
    cfg = small_shapes_config(sample_height=16, sample_width=16)
    model = CogVideoXTransformer3D(cfg, dtype=jnp.float32, rngs=nnx.Rngs(np.random.SeedSequence().entropy % 2**31))
    params = nnx.to_pure_dict(nnx.state(model))
    params = jax.tree.map(lambda p: p + 0.05 * rng.normal(jax.random.key(1), p.shape), params)  # no zeros
    folder = write_diffusers_folder(tmp_path / "transformer", cfg, diffusers_tensors(cfg, params, np.float32))

    reference = diffusers.CogVideoXTransformer3DModel.from_pretrained(folder).eval()
    ours = load_checkpoint(convert_checkpoint(folder, tmp_path / "ckpt", dtype="fp32", progress=False))
    exported = set(reference.state_dict())
    assert exported == set(diffusers_tensors(cfg, params)), "export and diffusers disagree on the tensor names"
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(ours)), params)

    np_rng = np.random.default_rng()
    latents = np_rng.standard_normal((2, 8, 3, 16, 16)).astype(np.float32)
    text = np_rng.standard_normal((2, 12, cfg.text_embed_dim)).astype(np.float32)
    timesteps = np.array([999, 10])
    expected = diffusers_forward(reference, latents, text, timesteps)
    assert rel_err(ours(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timesteps)), expected) < 1e-5


def test_learning_rate_warms_up_then_decays_to_the_floor():
    s = TrainSettings(learning_rate=1e-3, warmup_steps=10, final_lr_fraction=0.1)
    lr = lambda step: float(learning_rate(s, jnp.int32(step), jnp.int32(110)))  # noqa: E731
    assert lr(0) == pytest.approx(1e-4) and lr(9) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx(0.55e-3) and lr(110) == pytest.approx(1e-4) and lr(500) == pytest.approx(1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few dozen steps on a small config: enough to see the loss fall and to exercise export and convert."""
    root = tmp_path_factory.mktemp("shapes")
    cfg = small_shapes_config()
    settings = TrainSettings(steps=30, batch=8, warmup_steps=6, log_every=10, compute_dtype="float32")
    train(cfg, settings, root / "pipeline", progress=False)
    return root


def test_training_lowers_the_loss_and_exports_a_pipeline(trained):
    folder = trained / "pipeline"
    for name in ("transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                 "text_encoder/config.json", "text_encoder/model.safetensors", "loss.png", "README.md",
                 "train_log.json", "model_index.json"):
        assert (folder / name).exists(), name
    log = json.loads((folder / "train_log.json").read_text())
    assert log["step"] == [10, 20, 30] and np.isfinite(log["loss"]).all()
    assert min(log["loss"][1:]) < 0.8 * log["loss"][0], log["loss"]  # a batch of 8 is noisy: no strict descent
    assert "--steps 30 --batch 8" in (folder / "README.md").read_text()


def test_converted_pipeline_samples_clips(trained):
    ckpt = convert_checkpoint(trained / "pipeline", trained / "ckpt", dtype="fp32", progress=False)
    assert (ckpt / "text_encoder" / "model.safetensors").exists()
    out = ShapesPipeline.from_checkpoint(ckpt)(["a red circle moving right", "a blue square standing still"],
                                               steps=2, seed=3)
    assert out.clips.shape == (2, world.FRAMES, world.SIZE, world.SIZE, 3)
    assert np.isfinite(out.clips).all() and out.clips.min() >= 0 and out.clips.max() <= 1


def test_checkpoint_without_text_encoder_names_the_fix(trained, tmp_path):
    ckpt = convert_checkpoint(trained / "pipeline" / "transformer", tmp_path / "ckpt", progress=False)
    with pytest.raises(CheckpointError, match="no shapes text encoder"):
        ShapesPipeline.from_checkpoint(ckpt)


def test_a_t5_text_encoder_is_not_copied_into_the_checkpoint(trained, tmp_path):
    import shutil

    folder = tmp_path / "pipeline"
    shutil.copytree(trained / "pipeline" / "transformer", folder / "transformer")
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "config.json").write_text('{"_class_name": "T5EncoderModel"}')
    ckpt = convert_checkpoint(folder, tmp_path / "ckpt", progress=False)
    assert not (ckpt / "text_encoder").exists()
