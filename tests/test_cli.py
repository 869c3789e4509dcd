"""The `sixbit` command: help, convert + sample through files, and errors printed as one named message."""

import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from diffusers_ref import tiny_diffusers_model

from sixbit_jax.cli import main


def test_help_explains_each_command():
    out = subprocess.run([sys.executable, "-m", "sixbit_jax", "--help"], capture_output=True, text=True, check=True)
    assert all(command in out.stdout for command in ("generate", "convert", "calibrate", "sample", "demo", "eval"))
    out = subprocess.run([sys.executable, "-m", "sixbit_jax", "sample", "--help"], capture_output=True, text=True,
                         check=True)
    for flag in ("--embeds", "--negative-embeds", "--latents-in", "--frames", "--steps", "--guidance", "--scheduler",
                 "--seed", "--out"):
        assert flag in out.stdout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_diffusers_model("5b", seed=4).save_pretrained(root / "transformer")
    assert main(["convert", str(root / "transformer"), str(root / "ckpt"), "--dtype", "fp32", "--quiet"]) == 0
    return root


def test_sample_npy_and_safetensors_round_trip(checkpoint, capsys):
    rng = np.random.default_rng(0)
    np.save(checkpoint / "pos.npy", rng.standard_normal((8, 32)).astype(np.float32))  # [L, D] gets a batch axis
    save_file({"negative_prompt_embeds": rng.standard_normal((1, 8, 32)).astype(np.float32),
               "unused": np.zeros(1, np.float32)}, checkpoint / "neg.safetensors")
    latents = rng.standard_normal((1, 3, 4, 8, 12)).astype(np.float32)
    save_file({"latents": latents}, checkpoint / "lat.safetensors")
    common = ["sample", str(checkpoint / "ckpt"), "--embeds", str(checkpoint / "pos.npy"), "--negative-embeds",
              str(checkpoint / "neg.safetensors"), "--steps", "3", "--quiet"]
    assert main(common + ["--latents-in", str(checkpoint / "lat.safetensors"),
                          "--out", str(checkpoint / "out.safetensors")]) == 0
    summary = capsys.readouterr().out
    assert "sampled 3 ddim steps" in summary and "memory" in summary and "precision" in summary
    from safetensors.numpy import load_file

    out = load_file(checkpoint / "out.safetensors")["latents"]
    assert out.shape == latents.shape and np.isfinite(out).all() and np.abs(out - latents).max() > 0.01

    assert main(common + ["--latents-in", str(checkpoint / "lat.safetensors"), "--out",
                          str(checkpoint / "out.npy")]) == 0
    np.testing.assert_array_equal(np.load(checkpoint / "out.npy"), out)  # deterministic, same in both formats

    assert main(common + ["--frames", "9", "--height", "64", "--width", "96", "--scheduler", "dpm", "--seed", "3",
                          "--out", str(checkpoint / "noise.npy")]) == 0
    assert np.load(checkpoint / "noise.npy").shape == (1, 3, 4, 8, 12)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: ["--embeds", str(d / "missing.npy")], "file not found"),
    (lambda d: ["--embeds", str(d / "wrong_dim.npy")], "must be [B, L, 32]"),
    (lambda d: ["--embeds", str(d / "emb.txt")], "unsupported file type"),
    (lambda d: ["--embeds", str(d / "pickled.npy")], "not a plain .npy array"),
    (lambda d: ["--embeds", str(d / "two.safetensors")], "expected one, or one named"),
    (lambda d: ["--embeds", str(d / "ok.npy"), "--frames", "10"], "1 + a multiple of 4"),
    (lambda d: ["--embeds", str(d / "ok.npy"), "--out", str(d / "out.mp4")], "use a .npy or .safetensors"),
    (lambda d: ["--embeds", str(d / "ok.npy"), "--negative-embeds", str(d / "short.npy")], "must have the prompt"),
    (lambda d: ["--embeds", str(d / "ok.npy"), "--guidance", "6", "--no-neg"], "negative embeddings"),
])
def test_sample_errors_are_named(checkpoint, capsys, mutate, message):
    d = checkpoint
    rng = np.random.default_rng(1)
    np.save(d / "ok.npy", rng.standard_normal((1, 8, 32)).astype(np.float32))
    np.save(d / "short.npy", rng.standard_normal((1, 5, 32)).astype(np.float32))
    np.save(d / "wrong_dim.npy", rng.standard_normal((1, 8, 31)).astype(np.float32))
    np.save(d / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "emb.txt").write_text("1 2 3")
    save_file({"a": np.zeros((1, 8, 32), np.float32), "b": np.zeros((1, 8, 32), np.float32)}, d / "two.safetensors")
    extra = mutate(d)
    has_negative = "--negative-embeds" in extra or "--no-neg" in extra
    extra = [e for e in extra if e != "--no-neg"]
    args = ["sample", str(d / "ckpt"), "--steps", "1", "--quiet", *extra]
    if not has_negative:
        args += ["--negative-embeds", str(d / "ok.npy")]
    if "--out" not in args:
        args += ["--out", str(d / "err.npy")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sixbit sample: error:") and message in err, err


def test_convert_errors_are_named(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "dst"), "--quiet"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "--embeds", "x.npy", "--out", "y.npy"]) == 2
    assert "not a sixbit-jax checkpoint" in capsys.readouterr().err


def test_calibrate_refuses_a_plot_it_could_not_write_before_any_rollout(checkpoint, capsys):
    args = ["calibrate", str(checkpoint / "ckpt"), "--quiet", "--embeds", str(checkpoint / "missing.npy")]
    assert main([*args, "--plot", str(checkpoint / "no-such-folder" / "routes.png")]) == 2
    assert "--plot" in capsys.readouterr().err
    assert main([*args, "--plot", str(checkpoint / "routes.gif")]) == 2
    assert "name a .png file" in capsys.readouterr().err
