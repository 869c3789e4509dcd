"""The shipped shapes model: size, sampling, drawing what the prompt asks, the `demo` and `eval` commands, the full
method on it."""

import json

import numpy as np
import pytest

from sixbit_jax.cli import main
from sixbit_jax.shapes import world
from sixbit_jax.shapes.detect import detect
from sixbit_jax.shapes.pipeline import PACKAGED_CALIBRATION, PACKAGED_MODEL, ShapesPipeline, packaged_checkpoint


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


def test_eval_writes_table_and_sheet_sweeping_tau_c_and_calibrations(shipped, tmp_path, monkeypatch):
    """The table, the JSON and the contact sheet; each TDC mode runs once per --tau-c value and once per calibration
    file, against one BF16 reference. The two files differ in tau_q: "strict" never
    routes NVFP4, "lax" routes it wherever Γ is known. (The detector check renders 100 ground-truth clips instead of
    1000: CI time.)"""
    from sixbit_jax.shapes import evaluate

    monkeypatch.setattr(evaluate, "DETECTOR_CHECK_CLIPS", 100)
    raw = json.loads(PACKAGED_CALIBRATION.read_text())
    for name, tau_q in (("strict", -1.0), ("lax", 1e9)):
        (tmp_path / f"{name}.json").write_text(json.dumps({**raw, "tau_q": tau_q}))
    out = tmp_path / "out"
    assert main(["eval", str(shipped), "--modes", "dmpq+tdc", "--tau-c", "1e9", "--calibration",
                 str(tmp_path / "strict.json"), str(tmp_path / "lax.json"), "--prompts", "2", "--steps", "6",
                 "--out", str(out), "--quiet"]) == 0
    table = (out / "results.md").read_text()
    assert "| bf16 | (reference)" in table and "| dmpq+tdc [lax] tau_c=1e+09 |" in table
    assert "Detectors on generator ground truth (100 clips)" in table
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
