"""The shapes model: training, export in diffusers layout (checked live against diffusers), the pipeline, the
shipped checkpoint, and the `demo` / `eval` commands."""

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
from sixbit_jax.cli import main
from sixbit_jax.config import CogVideoXConfig
from sixbit_jax.errors import CheckpointError
from sixbit_jax.models import CogVideoXTransformer3D
from sixbit_jax.shapes import world
from sixbit_jax.shapes.detect import detect
from sixbit_jax.shapes.pipeline import PACKAGED_CALIBRATION, PACKAGED_MODEL, ShapesPipeline, packaged_checkpoint
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


# ---------------------------------------------------------------------------------------------------------------
# The shipped model
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    assert (PACKAGED_MODEL / "transformer" / "config.json").exists(), f"the shipped model is missing: {PACKAGED_MODEL}"
    return packaged_checkpoint(progress=False)  # the cached conversion the demo and eval commands use


def test_shipped_model_is_small_and_samples_without_nan(shipped):
    size = sum(p.stat().st_size for p in PACKAGED_MODEL.rglob("*") if p.is_file())
    assert size < 30e6, f"the shipped model is {size / 1e6:.1f} MB"
    out = ShapesPipeline.from_checkpoint(shipped, dtype="bf16")(["a green triangle moving up"], steps=3)
    assert out.clips.shape == (1, world.FRAMES, world.SIZE, world.SIZE, 3) and np.isfinite(out.clips).all()


def test_shipped_model_draws_what_the_prompt_asks(shipped):
    prompts = ["a red circle moving right", "a yellow square standing still", "a cyan triangle moving down"]
    clips = ShapesPipeline.from_checkpoint(shipped, dtype="fp32")(prompts, steps=20, seed=0).clips
    detections = [detect(c) for c in clips]
    correct = sum(d == world.parse_caption(p) for d, p in zip(detections, prompts))
    assert correct >= 2, list(zip(prompts, detections))


def test_demo_command_writes_a_gif_and_a_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "3", "--prompt", "a blue circle moving left",
                 "--quiet"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "'a blue circle moving left'" in summary and "precision: bf16" in summary and " s " in summary
    assert (tmp_path / "demo.gif").stat().st_size > 0
    from sixbit_jax.media import ffmpeg_binary

    assert (tmp_path / "demo.mp4").exists() == (ffmpeg_binary() is not None)


def test_demo_names_unknown_words(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--prompt", "a purple circle moving left", "--quiet"]) == 2
    assert "unknown word(s) 'purple'" in capsys.readouterr().err


def test_eval_writes_table_and_sheet_sweeping_tau_c_and_calibrations(shipped, tmp_path):
    """The table, the JSON and the contact sheet; each TDC mode runs once per --tau-c value and once per calibration
    file, against one BF16 reference. The two files differ in tau_q: "strict" never
    routes NVFP4, "lax" routes it wherever Γ is known."""
    raw = json.loads(PACKAGED_CALIBRATION.read_text())
    for name, tau_q in (("strict", -1.0), ("lax", 1e9)):
        (tmp_path / f"{name}.json").write_text(json.dumps({**raw, "tau_q": tau_q}))
    out = tmp_path / "out"
    assert main(["eval", str(shipped), "--modes", "dmpq+tdc", "--tau-c", "1e9", "--calibration",
                 str(tmp_path / "strict.json"), str(tmp_path / "lax.json"), "--prompts", "2", "--steps", "6",
                 "--out", str(out), "--quiet"]) == 0
    table = (out / "results.md").read_text()
    assert "| bf16 | (reference)" in table and "| dmpq+tdc [lax] tau_c=1e+09 |" in table
    assert "Detectors on generator ground truth" in table
    assert (out / "contact_sheet.png").exists()
    rows = {r["mode"]: r["summary"] for r in json.loads((out / "results.json").read_text())["results"]}
    assert list(rows) == ["bf16", "dmpq+tdc [strict] tau_c=1e+09", "dmpq+tdc [lax] tau_c=1e+09"]
    strict, lax = rows["dmpq+tdc [strict] tau_c=1e+09"], rows["dmpq+tdc [lax] tau_c=1e+09"]
    assert strict["skip_fraction"] > 0.2 and lax["skip_fraction"] > 0.2
    assert "nvfp4" not in strict["route_fraction"] and lax["route_fraction"]["nvfp4"] > 0


def test_the_full_method_on_the_shipped_model_draws_the_prompt(tmp_path, capsys):
    """DMPQ + TDC + PDR with the shipped calibration, one prompt (CFG batch 2), the demo's 30 steps."""
    prompt = "a red circle moving right"
    assert main(["demo", "--out", str(tmp_path), "--mode", "sixbit", "--tdc", "--prompt", prompt, "--quiet"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "precision: 6Bit DMPQ (W4A4 / W4A8 per block and step) +TDC +PDR" in summary and f"detectors read: {prompt!r}" in summary, summary
