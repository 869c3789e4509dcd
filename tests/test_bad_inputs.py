"""Every subcommand refuses bad input before it starts working: exit code 2, one line naming the argument or file
and the problem, no traceback, and nothing created, changed or deleted on disk.

Each case runs `sixbit` in-process against one shared folder of inputs (a tiny converted checkpoint, good and bad
array files, files where folders belong); after each case the folder's tree, sizes and modification times are as
before, and so is the cache folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from diffusers_ref import tiny_diffusers_model
from sixbit_jax.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-inputs")
    tiny_diffusers_model("2b", seed=4).save_pretrained(d / "transformer")
    assert main(["convert", str(d / "transformer"), str(d / "ckpt"), "--dtype", "fp32", "--quiet"]) == 0
    rng = np.random.default_rng(1)
    np.save(d / "ok.npy", rng.standard_normal((1, 8, 32)).astype(np.float32))
    np.save(d / "short.npy", rng.standard_normal((1, 5, 32)).astype(np.float32))
    np.save(d / "wrong_dim.npy", rng.standard_normal((1, 8, 31)).astype(np.float32))
    np.save(d / "ints.npy", np.ones((1, 8, 32), np.int32))
    np.save(d / "strings.npy", np.array(["a", "b"]))
    np.save(d / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "latents4.npy", rng.standard_normal((3, 4, 8, 12)).astype(np.float32)[None, None])
    (d / "text.npy").write_text("1 2 3\n")
    (d / "emb.txt").write_text("1 2 3")
    save_file({"a": np.zeros((1, 8, 32), np.float32), "b": np.zeros((1, 8, 32), np.float32)}, d / "two.safetensors")
    (d / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    (d / "afile").write_text("not a folder")
    (d / "calibration.txt").write_text("{}")
    (d / "empty").mkdir()
    (d / "folder.npy").mkdir()
    (d / "no-config").mkdir()
    (d / "no-config" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (d / "pickle-only").mkdir()
    (d / "pickle-only" / "config.json").write_text(json.dumps({"_class_name": "CogVideoXTransformer3DModel"}))
    (d / "pickle-only" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04")
    (d / "cal.json").write_text("{}")
    (d / "first.png").write_bytes(b"")  # never read: --image is checked against the pipeline's class first
    for name, pipeline_class in (("t2v-pipe", "CogVideoXPipeline"), ("i2v-pipe", "CogVideoXImageToVideoPipeline"),
                                 ("wan-pipe", "WanPipeline")):
        (d / name).mkdir()
        (d / name / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    (d / "out").mkdir()
    (d / "out" / "mine.txt").write_text("the user's file")
    return d


def snapshot(root) -> dict:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            stat = os.stat(path)
            found[os.path.relpath(path, root)] = (stat.st_size if name in filenames else -1, stat.st_mtime_ns)
    return found


SAMPLE = ["sample", "{d}/ckpt", "--steps", "1", "--quiet", "--negative-embeds", "{d}/ok.npy"]
CASES = {
    # convert
    "convert-src-missing": (["convert", "{d}/nowhere", "{d}/dst"], "SRC {d}/nowhere: no such folder"),
    "convert-src-is-file": (["convert", "{d}/afile", "{d}/dst"], "is a file; give a folder"),
    "convert-dst-exists": (["convert", "{d}/transformer", "{d}/ckpt"], "already exists (pass --force"),
    "convert-dst-under-a-file": (["convert", "{d}/transformer", "{d}/afile/dst"], "afile is a file"),
    "convert-hadamard-block": (["convert", "{d}/transformer", "{d}/dst", "--hadamard-block", "24"], "power of two"),
    "convert-dtype": (["convert", "{d}/transformer", "{d}/dst", "--dtype", "int8"], "invalid choice: 'int8'"),
    "convert-empty-folder": (["convert", "{d}/empty", "{d}/dst"], "config.json"),
    "convert-no-weights": (["convert", "{d}/no-config", "{d}/dst"], "config.json"),
    "convert-pickle-only": (["convert", "{d}/pickle-only", "{d}/dst"], "safetensors"),
    # sample
    "sample-checkpoint-missing": (["sample", "{d}/nowhere", "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy"],
                                  "checkpoint {d}/nowhere: no such folder"),
    "sample-not-converted": (["sample", "{d}/transformer", "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy"],
                             "not a converted checkpoint"),
    "sample-out-suffix": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.mp4"], "use a .npy or .safetensors"),
    "sample-out-under-a-file": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/afile/o.npy"],
                                "is a file, not a folder"),
    "sample-out-is-folder": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/folder.npy"], "is a folder; give a file"),
    "sample-embeds-missing": ([*SAMPLE, "--embeds", "{d}/missing.npy", "--out", "{d}/o.npy"], "file not found"),
    "sample-embeds-text-as-npy": ([*SAMPLE, "--embeds", "{d}/text.npy", "--out", "{d}/o.npy"], "not a .npy file"),
    "sample-embeds-pickled": ([*SAMPLE, "--embeds", "{d}/pickled.npy", "--out", "{d}/o.npy"], "never unpickled"),
    "sample-embeds-int32": ([*SAMPLE, "--embeds", "{d}/ints.npy", "--out", "{d}/o.npy"], "holds int32 values"),
    "sample-embeds-strings": ([*SAMPLE, "--embeds", "{d}/strings.npy", "--out", "{d}/o.npy"], "holds <U1 values"),
    "sample-embeds-txt": ([*SAMPLE, "--embeds", "{d}/emb.txt", "--out", "{d}/o.npy"], "use a .npy or .safetensors"),
    "sample-embeds-wrong-dim": ([*SAMPLE, "--embeds", "{d}/wrong_dim.npy", "--out", "{d}/o.npy"],
                                "must be [B, L, 32]"),
    "sample-embeds-two-tensors": ([*SAMPLE, "--embeds", "{d}/two.safetensors", "--out", "{d}/o.npy"],
                                  "expected one, or one named"),
    "sample-embeds-corrupt": ([*SAMPLE, "--embeds", "{d}/broken.safetensors", "--out", "{d}/o.npy"],
                              "not a readable safetensors file"),
    "sample-negative-length": (["sample", "{d}/ckpt", "--embeds", "{d}/ok.npy", "--negative-embeds",
                                "{d}/short.npy", "--out", "{d}/o.npy", "--steps", "1"], "must have the prompt"),
    "sample-cfg-without-negative": (["sample", "{d}/ckpt", "--embeds", "{d}/ok.npy", "--guidance", "6", "--out",
                                     "{d}/o.npy", "--steps", "1"], "negative embeddings"),
    "sample-steps-zero": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--steps", "0"],
                          "argument --steps: must be a positive integer"),
    "sample-guidance-negative": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--guidance", "-1"],
                                 "argument --guidance: must be a number >= 0"),
    "sample-guidance-nan": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--guidance", "nan"],
                            "argument --guidance: must be a number >= 0"),
    "sample-frames": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--frames", "10"], "4k + 1"),
    "sample-flow-shift-on-cogvideox": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--flow-shift",
                                        "3"], "--flow-shift applies to flow-matching models (Wan)"),
    "sample-flow-shift-zero": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--flow-shift", "0"],
                               "must be a number > 0"),
    "sample-flow-scheduler-on-cogvideox": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--scheduler",
                                            "unipc"], "--scheduler unipc: a CogVideoX checkpoint samples with ddim"),
    "sample-height": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--height", "50"],
                      "multiple of 16"),
    "sample-tau-c-negative": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--tdc", "--tau-c", "-0.1"],
                              "argument --tau-c: must be a number >= 0"),
    "sample-seed-text": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--seed", "x"],
                         "'x' is not an integer"),
    "sample-sixbit-uncalibrated": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--mode", "sixbit"],
                                   "needs a calibration"),
    "sample-calibration-missing": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--mode", "sixbit",
                                    "--calibration", "{d}/nope.json"], "--calibration {d}/nope.json: file not found"),
    "sample-attention-unknown": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--attention", "fp4"],
                                 "argument --attention: invalid choice: 'fp4'"),
    "sample-devices-too-many": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--devices", "64"],
                                "--devices 64: this machine has"),
    "sample-devices-zero": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--devices", "0"],
                            "argument --devices"),
    "sample-latents-wrong-shape": ([*SAMPLE, "--embeds", "{d}/ok.npy", "--out", "{d}/o.npy", "--latents-in",
                                    "{d}/latents4.npy"], "latents"),
    # demo
    "demo-empty-prompt": (["demo", "--prompt", "", "--out", "{d}/out"], "the prompt is empty"),
    "demo-prompt-outside-grammar": (["demo", "--prompt", "a purple dragon flying", "--out", "{d}/out"],
                                    "not in the shapes grammar"),
    "demo-out-is-file": (["demo", "--out", "{d}/afile"], "--out {d}/afile is a file; give a folder"),
    "demo-scale-zero": (["demo", "--out", "{d}/out", "--scale", "0"], "argument --scale: must be a positive"),
    "demo-steps-negative": (["demo", "--out", "{d}/out", "--steps", "-3"], "argument --steps"),
    "demo-guidance-negative": (["demo", "--out", "{d}/out", "--guidance", "-2"], "argument --guidance"),
    "demo-checkpoint-missing": (["demo", "--out", "{d}/out", "--checkpoint", "{d}/nowhere"], "no such folder"),
    "demo-checkpoint-not-converted": (["demo", "--out", "{d}/out", "--checkpoint", "{d}/empty"],
                                      "not a converted checkpoint"),
    "demo-calibration-missing": (["demo", "--out", "{d}/out", "--tdc", "--calibration", "{d}/nope.json"],
                                 "file not found"),
    "demo-mode-unknown": (["demo", "--out", "{d}/out", "--mode", "fp4"], "invalid choice: 'fp4'"),
    "demo-attention-unknown": (["demo", "--out", "{d}/out", "--attention", "int4"], "argument --attention"),
    # eval
    "eval-mode-unknown": (["eval", "--modes", "bogus", "--out", "{d}/out"], "invalid choice: 'bogus'"),
    "eval-prompts-zero": (["eval", "--prompts", "0", "--out", "{d}/out"], "argument --prompts"),
    "eval-out-is-file": (["eval", "--out", "{d}/afile"], "is a file; give a folder"),
    "eval-calibration-suffix": (["eval", "--out", "{d}/out", "--calibration", "{d}/calibration.txt"],
                                "use a .json file"),
    "eval-tau-c-negative": (["eval", "--out", "{d}/out", "--tau-c", "0.2", "-1"], "argument --tau-c"),
    "eval-second-calibration-missing": (["eval", "--out", "{d}/out", "--calibration", "{d}/cal.json",
                                         "{d}/missing.json"], "file not found"),
    # calibrate
    "calibrate-checkpoint-missing": (["calibrate", "{d}/nowhere"], "no such folder"),
    "calibrate-plot-suffix": (["calibrate", "{d}/ckpt", "--plot", "{d}/routes.gif"], "use a .png file name"),
    "calibrate-plot-under-a-file": (["calibrate", "{d}/ckpt", "--plot", "{d}/afile/routes.png"],
                                    "is a file, not a folder"),
    "calibrate-out-suffix": (["calibrate", "{d}/ckpt", "--out", "{d}/calibration.yaml"], "use a .json file name"),
    "calibrate-target-bits": (["calibrate", "{d}/ckpt", "--target-bits", "9"], "argument --target-bits"),
    "calibrate-signal-unknown": (["calibrate", "{d}/ckpt", "--signal", "model"], "argument --signal: invalid choice"),
    "calibrate-target-skip": (["calibrate", "{d}/ckpt", "--target-skip", "1.5"], "argument --target-skip"),
    "calibrate-embeds-missing": (["calibrate", "{d}/ckpt", "--embeds", "{d}/missing.npy"], "file not found"),
    "calibrate-target-fallback": (["calibrate", "{d}/ckpt", "--target-fallback", "1.5"],
                                  "argument --target-fallback"),
    # generate
    "generate-empty-prompt": (["generate", "{d}/ckpt", "--prompt", "  ", "--out", "{d}/v.mp4"], "--prompt is empty"),
    "generate-pipeline-missing": (["generate", "{d}/nowhere", "--prompt", "a cat", "--out", "{d}/v.mp4"],
                                  "PIPELINE {d}/nowhere: no such folder"),
    "generate-frames": (["generate", "{d}/ckpt", "--prompt", "a cat", "--frames", "10", "--out", "{d}/v.mp4"],
                        "4k + 1"),
    "generate-width": (["generate", "{d}/ckpt", "--prompt", "a cat", "--width", "100", "--out", "{d}/v.mp4"],
                       "multiple of 16"),
    "generate-out-suffix": (["generate", "{d}/ckpt", "--prompt", "a cat", "--out", "{d}/v.avi"], "use a .mp4"),
    "generate-frames-out-suffix": (["generate", "{d}/ckpt", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                    "--frames-out", "{d}/f.png"], "use a .npy"),
    "generate-latents-missing": (["generate", "{d}/ckpt", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                  "--latents-in", "{d}/missing.npy"], "file not found"),
    "generate-latents-shape": (["generate", "{d}/ckpt", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                "--latents-in", "{d}/latents4.npy"], "initial latents must be [B, F, C, H, W]"),
    "generate-steps-zero": (["generate", "{d}/ckpt", "--prompt", "a cat", "--steps", "0"], "argument --steps"),
    "generate-guidance-negative": (["generate", "{d}/ckpt", "--prompt", "a cat", "--guidance", "-1"],
                                   "argument --guidance"),
    "generate-not-a-pipeline": (["generate", "{d}/ckpt", "--prompt", "a cat", "--out", "{d}/v.mp4"],
                                "model_index.json"),
    "generate-devices-too-many": (["generate", "{d}/wan-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4", "--devices",
                                   "64"], "--devices 64: this machine has"),
    "generate-wan-tile": (["generate", "{d}/wan-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4", "--tile"],
                          "--tile: the Wan VAE decodes one latent frame at a time"),
    "generate-wan-scheduler": (["generate", "{d}/wan-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4", "--scheduler",
                                "dpm"], "--scheduler dpm: a Wan pipeline samples with unipc or euler"),
    "generate-wan-image": (["generate", "{d}/wan-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4", "--image",
                            "{d}/first.png"], "text-to-video pipeline; it takes no image"),
    "generate-flow-shift-on-cogvideox": (["generate", "{d}/t2v-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                          "--flow-shift", "3"], "--flow-shift applies to flow-matching models (Wan)"),
    "generate-wan-scheduler-on-cogvideox": (["generate", "{d}/t2v-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                             "--scheduler", "unipc"], "--scheduler unipc: a CogVideoX pipeline samples"),
    "generate-guidance-2-on-cogvideox": (["generate", "{d}/t2v-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                          "--guidance-2", "3"], "--guidance-2 applies to Wan2.2's two experts"),
    "generate-guidance-2-negative": (["generate", "{d}/wan-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                      "--guidance-2", "-1"], "argument --guidance-2: must be a number >= 0"),
    "generate-flow-shift-not-a-number": (["generate", "{d}/wan-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                          "--flow-shift", "abc"], "argument --flow-shift: 'abc' is not a number"),
    "generate-guidance-2-one-expert": (["generate", "{d}/wan-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                        "--guidance-2", "3"], "--guidance-2: this pipeline has one transformer"),
    "generate-image-missing": (["generate", "{d}/i2v-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                "--image", "{d}/missing.png"], "file not found"),
    "generate-image-for-text-to-video": (["generate", "{d}/t2v-pipe", "--prompt", "a cat", "--out", "{d}/v.mp4",
                                          "--image", "{d}/first.png"], "text-to-video pipeline; it takes no image"),
    "generate-no-image-for-image-to-video": (["generate", "{d}/i2v-pipe", "--prompt", "a cat", "--out",
                                              "{d}/v.mp4"], "give the first frame with --image FILE"),
    # the command itself
    "unknown-command": (["transmogrify"], "invalid choice: 'transmogrify'"),
    "no-command": ([], "the following arguments are required: COMMAND"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_any_work(case, world, tmp_path, monkeypatch, capsys):
    argv, message = CASES[case]
    d = str(world)
    monkeypatch.setenv("SIXBIT_CACHE_DIR", str(tmp_path / "cache"))
    before = snapshot(world)
    try:
        code = main([a.format(d=d) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message.format(d=d) in err, err
    assert "Traceback" not in err and len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert snapshot(world) == before, "the file system changed"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
