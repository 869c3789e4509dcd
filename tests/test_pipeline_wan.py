"""The Wan pipeline (tokenizer -> umT5 -> sampler -> Wan VAE) against diffusers' WanPipeline, live, on a tiny random
pipeline folder in the real layout (save_pretrained); and `sixbit generate` on it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from pipeline_ref import SPM_VOCAB, write_spm_model  # noqa: E402
from wan_ref import random_wan  # noqa: E402

from sixbit_jax.pipelines.wan import WanPipeline, clean_prompt  # noqa: E402
from sixbit_jax.sampling import SamplerSettings  # noqa: E402

TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                   text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6)
UMT5 = dict(vocab_size=SPM_VOCAB + 100, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
           latents_mean=[0.3, -0.2, 0.1, 0.5], latents_std=[1.5, 0.8, 1.2, 2.0])
# Wan2.2 TI2V-5B's VAE structure at widths 8 / 6 (see test_vae_wan.TINY_RESIDUAL)
RESIDUAL_VAE = dict(base_dim=8, decoder_base_dim=6, z_dim=4, dim_mult=[1, 2, 4, 2], num_res_blocks=1,
                    temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12,
                    out_channels=12, scale_factor_spatial=16, latents_mean=[0.3, -0.2, 0.1, 0.5],
                    latents_std=[1.5, 0.8, 1.2, 2.0])
PROMPT = "a red  circle &amp; a blue square"
LATENTS = (1, 4, 3, 4, 4)  # [B, C, F, h, w]: 9 frames at 32 x 32


def tiny_pipeline(root, experts: int = 1, ti2v: bool = False):
    """(folder, diffusers pipeline) of a tiny random WanPipeline with the flow UniPC scheduler (shift 3); with two
    experts, Wan2.2 A14B's layout (transformer_2/, boundary_ratio 0.875: 4 steps give timesteps 999, 900 to the
    high-noise expert and 750, 500 to the low-noise one); with ti2v, Wan2.2 TI2V-5B's (the residual, patchified
    VAE compressing 4 x 16 x 16, expand_timesteps)."""
    gen = torch.Generator().manual_seed(11)
    spm_folder = write_spm_model(root / "spm")
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(spm_folder))
    text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(**UMT5)).eval()
    vae = diffusers.AutoencoderKLWan(**(RESIDUAL_VAE if ti2v else VAE)).eval()
    with torch.no_grad():
        for module, weight_scale in ((text_encoder, 0.3), (vae, 0.2)):
            for name, p in module.named_parameters():
                is_norm_weight = ("norm" in name or "gamma" in name) and p.ndim == 1
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen) if is_norm_weight
                        else torch.randn(p.shape, generator=gen) * (weight_scale if p.ndim > 1 else 0.05))
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  num_train_timesteps=1000, flow_shift=3.0)
    second = dict(transformer_2=random_wan(TRANSFORMER, seed=13), boundary_ratio=0.875) if experts == 2 else {}
    pipe = diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                 transformer=random_wan(TRANSFORMER, seed=12), expand_timesteps=ti2v, **second)
    folder = root / "pipeline"
    pipe.save_pretrained(folder)
    shutil.copy2(spm_folder / "spiece.model", folder / "tokenizer" / "spiece.model")  # as the hub's umT5 folders
    return folder, pipe


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("wan-pipe"))


def test_prompts_are_cleaned_as_wan_cleans_them():
    assert clean_prompt("  a  cat &amp;amp;\n dog ") == "a cat & dog"


def test_generate_matches_diffusers_wan_pipeline(pipeline):
    folder, pipe = pipeline
    latents = np.random.default_rng(3).standard_normal(LATENTS).astype(np.float32)
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt="", num_frames=9, height=32, width=32, num_inference_steps=4,
                    guidance_scale=5.0, latents=torch.from_numpy(latents), output_type="np").frames[0]
    ours = WanPipeline.from_folder(folder, dtype="fp32")
    assert ours.scheduler.shift == 3.0 and ours.scheduler.default_scheduler == "unipc"
    out = ours([PROMPT], frames=9, height=32, width=32, latents=latents,
               settings=SamplerSettings(num_steps=4, guidance_scale=5.0))
    assert out.frames.shape == (1, 9, 32, 32, 3) == (1, *want.shape)
    np.testing.assert_allclose(out.frames[0], want, atol=2e-4)


def test_generate_command_writes_the_same_video(pipeline, tmp_path, capsys):
    """`sixbit generate WAN_FOLDER` with the same latents: the frames the pipeline gives in-process, an MP4, a
    summary line; a CogVideoX-only option is refused before anything loads."""
    from sixbit_jax.cli import main
    from sixbit_jax.media import ffmpeg_binary

    folder, _ = pipeline
    latents = np.random.default_rng(4).standard_normal(LATENTS).astype(np.float32)
    np.save(tmp_path / "latents.npy", latents)
    args = ["generate", str(folder), "--prompt", PROMPT, "--frames", "9", "--height", "32", "--width", "32",
            "--steps", "3", "--dtype", "fp32", "--latents-in", str(tmp_path / "latents.npy"), "--quiet"]
    assert ffmpeg_binary() is not None, "the test extras install imageio-ffmpeg"
    assert main(args + ["--frames-out", str(tmp_path / "frames.npy"), "--out", str(tmp_path / "v.mp4")]) == 0
    summary = capsys.readouterr().out
    assert "9 frames at 32x32, 3 unipc steps, guidance 5.0" in summary and (tmp_path / "v.mp4").stat().st_size
    want = WanPipeline.from_folder(folder, dtype="fp32")([PROMPT], frames=9, height=32, width=32, latents=latents,
                                                        settings=SamplerSettings(num_steps=3, guidance_scale=5.0))
    np.testing.assert_allclose(np.load(tmp_path / "frames.npy"), want.frames[0], atol=1e-6)
    assert main(args + ["--scheduler", "ddim", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--scheduler ddim: a Wan pipeline samples with unipc or euler" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_a_converted_wan_pipeline_generates_the_same_video(pipeline, tmp_path):
    """`sixbit convert WAN_FOLDER OUT`: umT5 and the VAE (float32) as component checkpoints, the transformer at the
    top; OUT generates what the diffusers folder does."""
    from sixbit_jax.cli import main

    folder, _ = pipeline
    out = tmp_path / "converted"
    assert main(["convert", str(folder), str(out), "--dtype", "fp32", "--quiet"]) == 0
    for part in ("sixbit.json", "text_encoder/sixbit.json", "vae/sixbit.json", "tokenizer/spiece.model",
                 "scheduler/scheduler_config.json", "model_index.json"):
        assert (out / part).exists(), part
    latents = np.random.default_rng(6).standard_normal(LATENTS).astype(np.float32)
    run = lambda source: WanPipeline.from_folder(source, dtype="fp32")(  # noqa: E731
        [PROMPT], frames=9, height=32, width=32, latents=latents, settings=SamplerSettings(num_steps=2)).frames
    np.testing.assert_allclose(run(out), run(folder), atol=1e-6)


def test_wan22_ti2v_text_to_video_matches_diffusers(tmp_path):
    """Wan2.2 TI2V-5B's layout, text to video: per-token timesteps (all t without an image) and the residual VAE's
    4 x 16 x 16 compression set the latent size; the video matches diffusers' WanPipeline."""
    folder, pipe = tiny_pipeline(tmp_path, ti2v=True)
    latents = np.random.default_rng(7).standard_normal((1, 4, 3, 4, 4)).astype(np.float32)  # 9 frames at 64 x 64
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt="", num_frames=9, height=64, width=64, num_inference_steps=3,
                    guidance_scale=5.0, latents=torch.from_numpy(latents), output_type="np").frames[0]
    ours = WanPipeline.from_folder(folder, dtype="fp32")
    assert ours.transformer.latent_shape(1, 9, 64, 64) == latents.shape
    out = ours([PROMPT], frames=9, height=64, width=64, latents=latents,
               settings=SamplerSettings(num_steps=3, guidance_scale=5.0))
    assert out.frames.shape == (1, 9, 64, 64, 3) == (1, *want.shape)
    np.testing.assert_allclose(out.frames[0], want, atol=2e-4)


def test_wan22_ti2v_image_to_video_matches_diffusers(tmp_path, capsys):
    """Wan2.2 TI2V-5B's image mode: the first frame's VAE latents replace the first latent frame at every step with
    timestep 0 on its tokens, and in the result (diffusers' WanImageToVideoPipeline with expand_timesteps, live);
    `sixbit generate --image` gives the same frames."""
    from PIL import Image

    from sixbit_jax.cli import main

    folder, pipe = tiny_pipeline(tmp_path, ti2v=True)
    i2v = diffusers.WanImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                                           scheduler=pipe.scheduler, transformer=pipe.transformer,
                                           expand_timesteps=True)
    data = np.random.default_rng(9)
    latents = data.standard_normal((1, 4, 3, 4, 4)).astype(np.float32)  # 9 frames at 64 x 64
    image = (data.integers(0, 256, (64, 64, 3)) / 255).astype(np.float32)  # exact through a PNG
    with torch.no_grad():  # the prompts encoded by WanPipeline: the I2V module's prompt cleaning needs ftfy
        embeds, negative = pipe.encode_prompt(PROMPT, "", do_classifier_free_guidance=True, max_sequence_length=512)
        want = i2v(image=torch.from_numpy(image).permute(2, 0, 1)[None], prompt_embeds=embeds,
                   negative_prompt_embeds=negative, num_frames=9, height=64, width=64, num_inference_steps=3,
                   guidance_scale=5.0, latents=torch.from_numpy(latents), output_type="np").frames[0]
    ours = WanPipeline.from_folder(folder, dtype="fp32")
    out = ours([PROMPT], frames=9, height=64, width=64, latents=latents, image=image,
               settings=SamplerSettings(num_steps=3, guidance_scale=5.0))
    np.testing.assert_allclose(out.frames[0], want, atol=2e-4)
    text_only = ours([PROMPT], frames=9, height=64, width=64, latents=latents,
                     settings=SamplerSettings(num_steps=3, guidance_scale=5.0))
    assert np.abs(text_only.frames[0, 0] - out.frames[0, 0]).max() > 0.05  # the image made a difference
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp_path / "first.png")
    np.save(tmp_path / "latents.npy", latents)
    assert main(["generate", str(folder), "--prompt", PROMPT, "--image", str(tmp_path / "first.png"), "--frames", "9",
                 "--height", "64", "--width", "64", "--steps", "3", "--dtype", "fp32", "--latents-in",
                 str(tmp_path / "latents.npy"), "--frames-out", str(tmp_path / "frames.npy"), "--out",
                 str(tmp_path / "v.mp4"), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "frames.npy"), out.frames[0], atol=1e-6)
    assert "9 frames at 64x64" in capsys.readouterr().out


def test_wan22_two_experts_match_diffusers(tmp_path):
    """Wan2.2 A14B's layout: the high-noise expert above the boundary timestep, the low-noise one below it, each
    with its own guidance scale; the delta cache is refused (it does not carry across the switch yet)."""
    from convert import convert_checkpoint
    from sixbit_jax.errors import InputError
    from sixbit_jax.models.wan import WanExperts
    from sixbit_jax.quant.spec import QuantSpec
    from sixbit_jax.runtime import RuntimeConfig

    folder, pipe = tiny_pipeline(tmp_path, experts=2)
    latents = np.random.default_rng(5).standard_normal(LATENTS).astype(np.float32)
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt="", num_frames=9, height=32, width=32, num_inference_steps=4,
                    guidance_scale=5.0, guidance_scale_2=3.0, latents=torch.from_numpy(latents),
                    output_type="np").frames[0]
    ours = WanPipeline.from_folder(folder, dtype="fp32")
    assert isinstance(ours.transformer, WanExperts) and ours.transformer.boundary == 875.0
    settings = SamplerSettings(num_steps=4, guidance_scale=5.0, guidance_scale_2=3.0)
    out = ours([PROMPT], frames=9, height=32, width=32, latents=latents, settings=settings)
    np.testing.assert_allclose(out.frames[0], want, atol=2e-4)
    np.testing.assert_array_equal(ours.transformer.expert_of(out.result.schedule.timesteps), [0, 0, 1, 1])
    converted = tmp_path / "converted"  # both experts convert, NVFP4 (the second into transformer_2/)
    convert_checkpoint(folder, converted, dtype="fp32", quant=QuantSpec(hadamard_block=16), progress=False)
    experts = WanPipeline.from_folder(converted, dtype="fp32").transformer
    assert isinstance(experts, WanExperts) and experts.boundary == 875.0
    assert experts.high.quant is not None and experts.low.quant is not None
    with pytest.raises(InputError, match="does not carry across the switch"):
        ours([PROMPT], frames=9, height=32, width=32, latents=latents, settings=settings,
             runtime=RuntimeConfig(mode="bf16", tdc=True))
