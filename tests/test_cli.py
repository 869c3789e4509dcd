"""The `sixbit` command: help, convert + sample through files, and errors printed as one named message."""

import argparse
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from diffusers_ref import tiny_diffusers_model

from sixbit_jax.cli import build_parser, main


def test_help_explains_each_command(capsys):
    out = subprocess.run([sys.executable, "-m", "sixbit_jax", "--help"], capture_output=True, text=True, check=True)
    assert all(command in out.stdout for command in ("generate", "convert", "calibrate", "sample", "demo", "eval"))
    assert out.stdout.count("calibrate") == 1, "each command is listed once"
    with pytest.raises(SystemExit) as exit_code:
        main(["sample", "--help"])
    assert exit_code.value.code == 0
    sample_help = capsys.readouterr().out
    for flag in ("--embeds", "--negative-embeds", "--latents-in", "--frames", "--steps", "--guidance", "--scheduler",
                 "--seed", "--out"):
        assert flag in sample_help
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subcommands.choices.items():
        unexplained = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
        assert not unexplained, f"sixbit {name}: options without help text: {unexplained}"


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
    assert "sampled 3 dpm steps" in summary and "memory" in summary and "precision" in summary  # 5B: DPM
    from safetensors.numpy import load_file

    out = load_file(checkpoint / "out.safetensors")["latents"]
    assert out.shape == latents.shape and np.isfinite(out).all() and np.abs(out - latents).max() > 0.01

    assert main(common + ["--latents-in", str(checkpoint / "lat.safetensors"), "--out",
                          str(checkpoint / "out.npy")]) == 0
    np.testing.assert_array_equal(np.load(checkpoint / "out.npy"), out)  # deterministic, same in both formats

    assert main(common + ["--frames", "9", "--height", "64", "--width", "96", "--scheduler", "dpm", "--seed", "3",
                          "--out", str(checkpoint / "noise.npy")]) == 0
    assert np.load(checkpoint / "noise.npy").shape == (1, 3, 4, 8, 12)
