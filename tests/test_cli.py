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
