"""`sixbit generate`: prompt -> frames with a whole CogVideoX pipeline folder, against diffusers' CogVideoXPipeline
on tiny random pipelines saved with save_pretrained; `sixbit convert` of a whole pipeline; bad pipelines named."""

import json
import shutil

import numpy as np
import pytest

from pipeline_ref import reference_frames, tiny_pipeline

from sixbit_jax.cli import main

PROMPT = "a red circle moving left"
STEPS, GUIDANCE = 3, 6.0


FRAMES = 9  # 3 latent frames; CogVideoX 1.5 samples 4 (one padding frame in front, dropped before decoding)


@pytest.fixture(scope="module", params=["2b", "5b", "1.5"])
def pipeline(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"pipe-{request.param}")
    pipe = tiny_pipeline(folder / "diffusers", request.param, seed=3)
    latent_frames = 4 if request.param == "1.5" else 3
    latents = np.random.default_rng(5).standard_normal((1, latent_frames, 4, 8, 12)).astype(np.float32)
    np.save(folder / "latents.npy", latents)
    return folder, pipe, reference_frames(pipe, PROMPT, latents, steps=STEPS, guidance=GUIDANCE, frames=FRAMES)


def _generate(folder, src, name, *extra, out=None):
    """`sixbit generate` from the fixture's latents (in `folder`); the MP4 and frames go to `out` (default folder)."""
    out = out or folder
    args = ["generate", str(src), "--prompt", PROMPT, "--steps", str(STEPS), "--guidance", str(GUIDANCE),
            "--dtype", "fp32", "--frames", str(FRAMES), "--latents-in", str(folder / "latents.npy"),
            "--out", str(out / f"{name}.mp4"),
            "--frames-out", str(out / f"{name}.npy"), "--quiet", *extra]
    assert main(args) == 0
    return np.load(out / f"{name}.npy")


def test_generate_matches_diffusers_pipeline(pipeline, capsys):
    folder, _, reference = pipeline
    frames = _generate(folder, folder / "diffusers", "ours")
    assert frames.shape == reference.shape == (9, 64, 96, 3)
    assert np.abs(frames - reference).max() < 2e-3
    assert (folder / "ours.mp4").stat().st_size > 0
    summary = capsys.readouterr().out
    for part in ("encode", "denoise", "decode", "memory", "precision", "ours.mp4"):
        assert part in summary


def test_latents_that_do_not_fit_the_frames_are_named(pipeline, tmp_path, capsys):
    folder, pipe, _ = pipeline
    if pipe.transformer.config.patch_size_t is None:
        pytest.skip("CogVideoX 1.5's padding frame is the case; 1.0 takes the same check")
    np.save(tmp_path / "five.npy", np.zeros((1, 5, 4, 8, 12), np.float32))
    args = ["generate", str(folder / "diffusers"), "--prompt", PROMPT, "--steps", "1", "--frames", "9",
            "--latents-in", str(tmp_path / "five.npy"), "--out", str(tmp_path / "x.mp4"), "--quiet"]
    assert main(args) == 2
    assert "9 frames need latents of 4 frames (3 + 1 padding frame in front" in capsys.readouterr().err
    (tmp_path / "first.png").write_bytes(b"")  # never read: the folder's class is checked first
    assert main(args + ["--image", str(tmp_path / "first.png")]) == 2
    assert "is a text-to-video pipeline; it takes no image" in capsys.readouterr().err


def _only_2b(folder):
    if not folder.name.startswith("pipe-2b"):
        pytest.skip("5b and 1.5 convert as 2b does (their configs differ in RoPE and temporal patches, which "
                    "test_model covers, and their pipelines run against diffusers in test_generate_matches_...); "
                    "CI time")


def test_converted_pipeline_generates_the_same(pipeline, tmp_path):
    folder, _, reference = pipeline
    _only_2b(folder)
    converted = tmp_path / "converted"
    assert main(["convert", str(folder / "diffusers"), str(converted), "--dtype", "fp32", "--quiet"]) == 0
    for part in ("text_encoder/sixbit.json", "vae/sixbit.json", "tokenizer/spiece.model",
                 "scheduler/scheduler_config.json", "model_index.json", "sixbit.json"):
        assert (converted / part).exists(), part
    np.testing.assert_allclose(_generate(folder, converted, "converted", out=tmp_path), reference, atol=2e-3)


@pytest.mark.slow  # a quantized pipeline's conversion: test_pipeline_wan (A14B, NVFP4); int8 generate: test_wan_runtime
def test_a_quantized_converted_pipeline_runs_int8(pipeline, tmp_path):
    folder, _, reference = pipeline
    _only_2b(folder)
    quantized = tmp_path / "quantized"
    assert main(["convert", str(folder / "diffusers"), str(quantized), "--dtype", "fp32", "--quant", "nvfp4",
                 "--hadamard-block", "16", "--quiet"]) == 0
    # the delta cache's path through a pipeline is the demo's (test_shapes_model); here the quantized weights and mode
    frames = _generate(folder, quantized, "int8", "--mode", "int8", out=tmp_path)
    assert frames.shape == reference.shape and np.isfinite(frames).all()
    assert np.abs(frames - reference).mean() < 0.1  # 4-bit weights and 8-bit activations: close, not equal


def _broken(pipeline, tmp_path, change):
    src = tmp_path / "broken"
    shutil.copytree(pipeline[0] / "diffusers", src)
    change(src)
    return src


def _edit_json(path, **values):
    raw = json.loads(path.read_text())
    raw.update(values)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("change,message", [
    (lambda p: shutil.rmtree(p / "vae"), "missing its vae/ folder"),
    (lambda p: _edit_json(p / "text_encoder" / "config.json", model_type="bert"), "model_type"),
    (lambda p: _edit_json(p / "tokenizer" / "tokenizer_config.json", extra_ids=300), "do not belong together"),
    (lambda p: _edit_json(p / "model_index.json", _class_name="CogVideoXVideoToVideoPipeline"),
     "CogVideoXVideoToVideoPipeline"),
], ids=["missing-component", "foreign-text-encoder", "tokenizer-mismatch", "other-pipeline"])
def test_bad_pipelines_are_named(pipeline, tmp_path, capsys, change, message):
    if not pipeline[0].name.startswith("pipe-2b"):
        pytest.skip("the folder checks do not depend on the flavour: one is enough (CI time)")
    src = _broken(pipeline, tmp_path, change)
    assert main(["generate", str(src), "--prompt", PROMPT, "--out", str(tmp_path / "x.mp4"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module", params=["5b", "1.5"])
def i2v_pipeline(request, tmp_path_factory):
    """A tiny image-to-video pipeline folder, its initial latents, a first-frame image of another size (resized on
    both sides) and diffusers' frames, with the VAE posterior's draw that our seed 0 makes."""
    from PIL import Image

    from sixbit_jax.pipelines.cogvideox import image_posterior_noise

    folder = tmp_path_factory.mktemp(f"i2v-{request.param}")
    pipe = tiny_pipeline(folder / "diffusers", request.param, seed=4, image_to_video=True)
    latents = np.random.default_rng(6).standard_normal((1, 4 if request.param == "1.5" else 3, 4, 8, 12))
    np.save(folder / "latents.npy", latents.astype(np.float32))
    pixels = np.random.default_rng(7).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "first.png")
    noise = np.asarray(image_posterior_noise(0, (1, 1, 4, 8, 12)))
    reference = reference_frames(pipe, PROMPT, latents.astype(np.float32), steps=STEPS, guidance=GUIDANCE,
                                 frames=FRAMES, image=Image.open(folder / "first.png"), posterior_noise=noise)
    return folder, reference


def test_image_to_video_matches_diffusers_pipeline(i2v_pipeline, capsys):
    folder, reference = i2v_pipeline
    frames = _generate(folder, folder / "diffusers", "i2v", "--image", str(folder / "first.png"), "--seed", "0")
    assert frames.shape == reference.shape == (FRAMES, 64, 96, 3)
    assert np.abs(frames - reference).max() < 2e-3
    args = ["generate", str(folder / "diffusers"), "--prompt", PROMPT, "--steps", "1", "--quiet",
            "--out", str(folder / "none.mp4")]
    assert main(args) == 2
    assert "is an image-to-video pipeline: give the first frame with --image FILE" in capsys.readouterr().err
    (folder / "bad.png").write_bytes(b"not an image")
    assert main(args + ["--image", str(folder / "bad.png")]) == 2
    assert "cannot read the image" in capsys.readouterr().err
