"""Wan under the shared machinery: the scan sampler with the flow schedulers against diffusers' WanPipeline loop
(live, fp32), and the 6Bit runtime (quantized linears, routes, delta cache) on a tiny Wan."""

import numpy as np
import pytest

import jax.numpy as jnp

from conftest import rel_err
from sixbit_jax.models.block_control import INT8, NVFP4, PDR, SKIP
from sixbit_jax.quant.model import quantize_model
from sixbit_jax.runtime import RuntimeConfig
from sixbit_jax.sampling import SamplerSettings, sample
from sixbit_jax.schedulers import FlowSchedulerConfig
from sixbit_jax.schedulers.flow import flow_sigmas

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from wan_ref import jax_wan, random_wan  # noqa: E402  (needs torch and diffusers)

# Heads of 64 and an FFN of 256: every quantized linear's K is a multiple of the 128-wide Hadamard block.
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=4,
            text_dim=32, freq_dim=32, ffn_dim=256, num_layers=3, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6)
LATENTS = (1, 4, 3, 8, 8)  # [B, C, F, H, W]: 3 x 4 x 4 = 48 video tokens
TEXT_TOKENS = 6


@pytest.fixture(scope="module")
def reference():
    return random_wan(TINY, seed=1, weight_scale=None)


@pytest.fixture(scope="module")
def model(reference):
    return jax_wan(reference)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    latents = rng.standard_normal(LATENTS).astype(np.float32)
    prompt, negative = (rng.standard_normal((1, TEXT_TOKENS, 32)).astype(np.float32) for _ in range(2))
    return latents, prompt, negative


def diffusers_loop(reference, kind: str, steps: int, shift: float, guidance: float, latents, prompt, negative):
    """WanPipeline.__call__'s denoising loop without the text encoder and the VAE: float32 latents, two forwards
    (conditional and unconditional), CFG, the scheduler step."""
    if kind == "unipc":
        scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                      num_train_timesteps=1000, flow_shift=shift)
    else:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(latents)
    text, uncond_text = torch.from_numpy(prompt), torch.from_numpy(negative)
    with torch.no_grad():
        for t in scheduler.timesteps:
            timestep = t.expand(x.shape[0])
            cond = reference(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
            uncond = reference(hidden_states=x, timestep=timestep, encoder_hidden_states=uncond_text,
                               return_dict=False)[0]
            x = scheduler.step(uncond + guidance * (cond - uncond), t, x, return_dict=False)[0]
    return x.numpy()


@pytest.mark.parametrize("kind,steps,shift", [("unipc", 6, 3.0), ("euler", 4, 5.0)])
def test_sampler_matches_the_diffusers_loop(reference, model, inputs, kind, steps, shift):
    latents, prompt, negative = inputs
    settings = SamplerSettings(scheduler=kind, num_steps=steps, guidance_scale=5.0,
                               scheduler_config=FlowSchedulerConfig(shift=shift))
    ours = sample(model, prompt, negative, latents=latents, settings=settings)
    assert ours.latents.dtype == jnp.float32 and ours.latents.shape == LATENTS
    want = diffusers_loop(reference, kind, steps, shift, 5.0, latents, prompt, negative)
    assert rel_err(ours.latents, want) < 1e-4


def test_the_family_default_is_unipc_at_wans_shift(model, inputs):
    latents, prompt, negative = inputs
    result = sample(model, prompt, negative, latents=latents, settings=SamplerSettings(num_steps=3))
    assert type(result.schedule).__name__ == "UniPCSchedule"
    np.testing.assert_array_equal(result.schedule.sigmas, flow_sigmas(3, 5.0))
    assert model.latent_shape(1) == (1, 4, 21, 60, 104)  # 81 frames at 480 x 832


@pytest.fixture(scope="module")
def quantized(model):
    return quantize_model(model)


def test_6bit_modes_run_on_wan_and_stay_close(model, quantized, inputs):
    """NVFP4 weights with bf16 activations (W4A16) near the float run; 8-bit and 4-bit activations and DMPQ with
    the delta cache and PDR near W4A16 (their own error isolated); the routes obey the runtime's rules (skips only
    after the first steps and before the last, PDR on the block-step after a skip)."""
    latents, prompt, negative = inputs
    settings = SamplerSettings(num_steps=6, guidance_scale=4.0)
    run = lambda m, runtime=None: sample(m, prompt, negative, latents=latents, settings=settings,  # noqa: E731
                                         runtime=runtime)
    w4a16 = run(quantized, RuntimeConfig(mode="bf16"))
    assert rel_err(w4a16.latents, run(model).latents) < 0.25  # NVFP4 weights of a random model, 6 CFG steps
    layers = model.config.num_layers
    runs = {
        "int8": (RuntimeConfig(mode="int8"), 0.03),
        "int8+attn8": (RuntimeConfig(mode="int8", attention="int8"), 0.05),
        "nvfp4": (RuntimeConfig(mode="nvfp4"), 0.15),
        "sixbit+tdc": (RuntimeConfig(mode="sixbit", tdc=True, tau_c=0.5, alpha=(1.0,) * layers,
                                     beta=(0.0,) * layers, tau_q=0.42), 0.2),
    }
    for name, (runtime, bound) in runs.items():
        result = run(quantized, runtime)
        err = rel_err(result.latents, w4a16.latents)
        assert err < bound, f"{name}: relative error {err:.3f} against W4A16"
        routes = np.asarray(result.stats.route)
        assert routes.shape == (6, layers)
        if name == "int8":
            assert (routes == INT8).all()
        if name == "sixbit+tdc":
            assert not (routes[:2] == SKIP).any() and not (routes[-1] == SKIP).any()
            assert (routes == SKIP).any() and (routes == NVFP4).any()
            after_skip = (routes[1:] != SKIP) & (routes[:-1] == SKIP)
            assert (routes[1:][after_skip] == PDR).all()
            assert 0 < result.summary.skip_fraction < 1


def test_calibration_rollout_records_every_wan_linear(quantized, inputs):
    latents, prompt, negative = inputs
    result = sample(quantized, prompt, negative, latents=latents, settings=SamplerSettings(num_steps=3),
                    runtime=RuntimeConfig(mode="calibrate"))
    stats = result.stats
    layers = quantized.config.num_layers
    assert np.asarray(stats.outlier_ratio).shape == (3, layers, len(quantized.ACTIVATION_LINEARS))
    assert np.all(np.asarray(stats.nvfp4_error) > 0) and np.all(np.isfinite(np.asarray(stats.gamma)))
    assert np.isnan(np.asarray(stats.change)[0]).all() and np.isfinite(np.asarray(stats.change)[1:]).all()


def test_convert_and_sample_a_wan_checkpoint_from_the_command_line(reference, inputs, tmp_path, capsys):
    """`sixbit convert` (diffusers layout, NVFP4) then `sixbit sample --scheduler euler --flow-shift 3 --mode int8`:
    the latents file equals the in-process run of the same checkpoint; a scheduler of another family is refused
    before anything loads."""
    from sixbit_jax.checkpoint import load_checkpoint
    from sixbit_jax.cli import main

    reference.save_pretrained(tmp_path / "transformer")
    assert main(["convert", str(tmp_path / "transformer"), str(tmp_path / "ckpt"), "--dtype", "fp32", "--quant",
                 "nvfp4", "--quiet"]) == 0
    assert "NVFP4 block linears" in capsys.readouterr().out
    latents, prompt, negative = inputs
    np.save(tmp_path / "pos.npy", prompt)
    np.save(tmp_path / "neg.npy", negative)
    np.save(tmp_path / "lat.npy", latents)
    args = ["sample", str(tmp_path / "ckpt"), "--embeds", str(tmp_path / "pos.npy"), "--negative-embeds",
            str(tmp_path / "neg.npy"), "--latents-in", str(tmp_path / "lat.npy"), "--steps", "3", "--quiet"]
    assert main(args + ["--scheduler", "euler", "--flow-shift", "3", "--mode", "int8",
                        "--out", str(tmp_path / "out.npy")]) == 0
    summary = capsys.readouterr().out
    assert "sampled 3 euler steps (guidance 5.0" in summary and "W4A8" in summary
    settings = SamplerSettings(scheduler="euler", num_steps=3, guidance_scale=5.0,
                               scheduler_config=FlowSchedulerConfig(shift=3.0))
    want = sample(load_checkpoint(tmp_path / "ckpt"), prompt, negative, latents=latents, settings=settings,
                  runtime=RuntimeConfig(mode="int8"))
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.asarray(want.latents))

    assert main(args + ["--scheduler", "ddim", "--out", str(tmp_path / "x.npy")]) == 2
    assert "--scheduler ddim: a Wan checkpoint samples with unipc or euler" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_two_experts_quantize_and_each_step_runs_its_own(model, quantized, inputs):
    """Wan2.2's pair quantizes expert by expert; a forward runs the expert its timestep selects (the other expert's
    output is far away; compiled inside lax.cond vs eagerly alone, the same one agrees to float rounding)."""
    from sixbit_jax.models.wan import WanExperts

    other = jax_wan(random_wan(TINY, seed=2, weight_scale=None))
    experts = quantize_model(WanExperts(model, other, boundary=500.0))
    assert isinstance(experts, WanExperts) and experts.quant is not None and experts.low.quant is not None
    latents, prompt, _ = inputs
    args = (jnp.asarray(latents), jnp.asarray(prompt))
    for t, expert, wrong in ((700.0, quantized, experts.low), (300.0, experts.low, quantized)):
        ours = experts(*args, jnp.array([t]))
        assert rel_err(ours, expert(*args, jnp.array([t]))) < 1e-5
        assert rel_err(ours, wrong(*args, jnp.array([t]))) > 0.1
