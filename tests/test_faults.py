"""Interruptions and faults: a conversion killed (SIGKILL) or interrupted (Ctrl-C) mid-write, a full disk, two
writers at once, and the demo's own checkpoint kept out of the user's folders. Nothing half-written is ever left
where a checkpoint belongs, and no run deletes what it did not write."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffusers_ref import tiny_diffusers_model
from sixbit_jax import checkpoint
from sixbit_jax.checkpoint import atomic_folder, exclusive_lock, load_checkpoint
from sixbit_jax.cli import main
from sixbit_jax.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A transformer large enough that writing it takes a moment (6 blocks, width 256)."""
    folder = tmp_path_factory.mktemp("faults") / "transformer"
    tiny_diffusers_model("2b", seed=2, num_layers=6, num_attention_heads=4, attention_head_dim=64).save_pretrained(
        folder)
    return folder


def partials(dst: Path) -> list[Path]:
    return list(dst.parent.glob(f".{dst.name}.partial-*"))


def convert_and_signal(source: Path, dst: Path, sig: int) -> subprocess.CompletedProcess:
    """Run `sixbit convert` in a subprocess and send `sig` as soon as its temporary folder appears."""
    proc = subprocess.Popen([sys.executable, "-m", "sixbit_jax", "convert", str(source), str(dst), "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not partials(dst) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert partials(dst), "the conversion finished (or failed) before it started writing"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigkill_mid_write_leaves_no_checkpoint_and_the_next_run_cleans_up(source, tmp_path):
    dst = tmp_path / "ckpt"
    result = convert_and_signal(source, dst, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    assert not dst.exists(), "a killed conversion must not leave a checkpoint"
    assert partials(dst), "the killed writer's temporary folder stays (nothing can clean up after SIGKILL)"
    assert main(["convert", str(source), str(dst), "--quiet"]) == 0
    assert not partials(dst), "the next writer removes what the killed one left"
    assert load_checkpoint(dst).config.num_layers == 6


def test_ctrl_c_mid_write_prints_one_line_exits_130_and_leaves_nothing(source, tmp_path):
    dst = tmp_path / "ckpt"
    result = convert_and_signal(source, dst, signal.SIGINT)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("sixbit convert: interrupted; nothing half-written was left "
                                                      "behind")
    assert not dst.exists() and not partials(dst)


def test_a_full_disk_is_named_and_leaves_nothing(source, tmp_path, monkeypatch, capsys):
    real_write = checkpoint.write_leaves

    def write_until_full(folder, expected, leaves, record):
        def some_then_enospc():
            for i, leaf in enumerate(leaves):
                if i == 3:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "transformer_blocks"))
                yield leaf

        return real_write(folder, expected, some_then_enospc(), record)

    monkeypatch.setattr(checkpoint, "write_leaves", write_until_full)
    dst = tmp_path / "ckpt"
    assert main(["convert", str(source), str(dst), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sixbit convert: error: No space left on device") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.lock"]


def test_two_writers_of_one_destination_cannot_both_win(source, tmp_path, capsys):
    dst = tmp_path / "ckpt"
    with exclusive_lock(tmp_path / ".ckpt.lock", "held by this test"):
        assert main(["convert", str(source), str(dst), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{dst.absolute()} is being written by sixbit process {os.getpid()}" in err
    assert not dst.exists() and not partials(dst)


def test_a_destination_that_appears_mid_write_is_not_replaced(tmp_path):
    dst = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match="appeared while this run was writing"):
        with atomic_folder(dst) as tmp:
            (tmp / "ours").write_text("x")
            dst.mkdir()
            (dst / "theirs").write_text("y")
    assert [p.name for p in dst.iterdir()] == ["theirs"] and not partials(dst)


def test_demo_keeps_its_checkpoint_in_the_cache_and_never_touches_the_users_files(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SIXBIT_CACHE_DIR", str(cache))
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "notes.txt").write_text("mine")
    args = ["demo", "--out", str(out), "--steps", "2", "--scale", "1"]
    assert main(args) == 0
    assert "converting the shipped model once into the cache" in capsys.readouterr().out
    assert (out / "checkpoint" / "notes.txt").read_text() == "mine"
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "sixbit.json").exists()
    stamp = (entries[0] / "sixbit.json").stat().st_mtime_ns
    assert main(args) == 0
    assert "converting" not in capsys.readouterr().out, "the second run reuses the cached conversion"
    assert (entries[0] / "sixbit.json").stat().st_mtime_ns == stamp
    assert (out / "demo.gif").exists()


def test_a_cache_folder_that_cannot_be_made_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("SIXBIT_CACHE_DIR", str(tmp_path / "afile" / "cache"))
    assert main(["demo", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the cache folder" in err and "SIXBIT_CACHE_DIR" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_sigkill_mid_mp4_leaves_no_video_and_the_next_write_succeeds(tmp_path):
    """The MP4 goes to a temporary name and is renamed into place: a writer killed mid-video leaves no file at the
    video's path, and the next write of that path replaces the killed one's temporary file."""
    pytest.importorskip("imageio_ffmpeg")
    from sixbit_jax.media import write_mp4

    out = tmp_path / "video.mp4"
    partial = tmp_path / ".video.partial.mp4"
    script = ("import numpy as np; from sixbit_jax.media import write_mp4; "
              f"write_mp4({str(out)!r}, np.random.default_rng(0).random((400, 64, 64, 3)), scale=4)")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert partial.exists(), "the writer finished (or failed) before it started the video"
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not out.exists(), "a killed writer must not leave a video at the output path"
    assert write_mp4(out, [[[[0.5, 0.2, 0.1]]]] * 5, scale=16) == out and out.stat().st_size > 0
    assert not partial.exists()
