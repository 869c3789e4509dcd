"""The scan sampler against a step-by-step diffusers loop (scheduler + model), and its promises: one compile
per shape, determinism for a seed, and a clear error naming the step and block of a NaN."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from conftest import HAS_GPU, rel_err
from diffusers_ref import diffusers, jax_model_from_diffusers, rope_for, tiny_diffusers_model, torch

from sixbit_jax import sampling
from sixbit_jax.errors import InputError, SamplingError
from sixbit_jax.sampling import SamplerSettings, sample
from sixbit_jax.schedulers import SchedulerConfig, dynamic_guidance

SCHEDULER_CONFIG = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                        num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                        set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")


def diffusers_loop(model, latents, prompt, negative, settings, noises, monkeypatch):
    """CogVideoXPipeline.__call__'s denoising loop, restated without the text encoder and VAE."""
    import diffusers.schedulers.scheduling_dpm_cogvideox as dpm_module

    flavour = "5b" if model.config.use_rotary_positional_embeddings else "2b"
    cls = diffusers.CogVideoXDDIMScheduler if settings.scheduler == "ddim" else diffusers.CogVideoXDPMScheduler
    scheduler = cls(**SCHEDULER_CONFIG, snr_shift_scale=SchedulerConfig.for_model(flavour).snr_shift_scale)
    scheduler.set_timesteps(settings.num_steps)
    pending = []
    monkeypatch.setattr(dpm_module, "randn_tensor", lambda shape, generator=None, device=None, dtype=None:
                        pending.pop(0).to(dtype))
    b, f, _, h, w = latents.shape
    rope = rope_for(model, f, h, w) if flavour == "5b" else None
    x = torch.from_numpy(latents)
    text = torch.cat([torch.from_numpy(negative), torch.from_numpy(prompt)])
    guidance = (dynamic_guidance(settings.guidance_scale, scheduler.timesteps.numpy()) if settings.use_dynamic_cfg
                else [settings.guidance_scale] * settings.num_steps)
    old = None
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            v = model(hidden_states=torch.cat([x, x]), encoder_hidden_states=text, timestep=t.expand(2 * b),
                      image_rotary_emb=rope, return_dict=False)[0].float()
        v_uncond, v_text = v.chunk(2)
        v = v_uncond + float(guidance[i]) * (v_text - v_uncond)
        if settings.scheduler == "ddim":
            x = scheduler.step(v, t, x, return_dict=False)[0]
        else:
            pending[:] = [torch.from_numpy(noises[i])] * 2
            x, old = scheduler.step(v, old, t, scheduler.timesteps[i - 1] if i else None, x, return_dict=False)
    return x.numpy()


def _problem(seed, b=1, f=3, h=8, w=12, steps=6):
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((b, f, 4, h, w)).astype(np.float32)
    prompt, negative = (rng.standard_normal((b, 8, 32)).astype(np.float32) for _ in range(2))
    noises = rng.standard_normal((steps, b, f, 4, h, w)).astype(np.float32)
    return latents, prompt, negative, noises


@pytest.mark.parametrize("flavour,scheduler,dynamic", [("2b", "ddim", False), ("5b", "dpm", False),
                                                       ("5b", "ddim", True), ("2b", "dpm", True)])
def test_scan_sampler_matches_diffusers_loop(flavour, scheduler, dynamic, monkeypatch):
    steps = 6
    ref_model = tiny_diffusers_model(flavour, seed=5)
    latents, prompt, negative, noises = _problem(17, b=2 if dynamic else 1, steps=steps)
    settings = SamplerSettings(scheduler=scheduler, num_steps=steps, use_dynamic_cfg=dynamic)
    expected = diffusers_loop(ref_model, latents, prompt, negative, settings, noises, monkeypatch)
    model = jax_model_from_diffusers(ref_model, "fp32")
    result = sample(model, prompt, negative, latents=latents, settings=settings,
                    step_noise=noises if scheduler == "dpm" else None)
    assert result.latents.shape == latents.shape
    assert rel_err(result.latents, expected) < 1e-4


def test_compiles_once_per_shape():
    model = jax_model_from_diffusers(tiny_diffusers_model("5b", seed=1), "fp32")
    latents, prompt, negative, _ = _problem(3, steps=4)
    before = sampling._denoise._cache_size()
    for seed, guidance in [(0, 6.0), (1, 4.5), (2, 6.0)]:
        sample(model, prompt * seed, negative, latents=latents,
               settings=SamplerSettings(num_steps=4, guidance_scale=guidance, seed=seed))
    assert sampling._denoise._cache_size() - before == 1


def test_deterministic_for_a_seed_and_different_across_seeds():
    model = jax_model_from_diffusers(tiny_diffusers_model("2b", seed=2), "bf16")
    _, prompt, negative, _ = _problem(4)
    run = lambda seed: np.asarray(sample(model, prompt, negative, frames=9, height=128, width=192,  # noqa: E731
                                         settings=SamplerSettings(scheduler="dpm", num_steps=3, seed=seed)).latents,
                                  np.float32)
    first, again, other = run(0), run(0), run(1)
    assert first.shape == (1, 3, 4, 16, 24)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.1


def test_guidance_one_runs_without_negative_and_without_cfg():
    model = jax_model_from_diffusers(tiny_diffusers_model("2b", seed=2), "fp32")
    latents, prompt, _, _ = _problem(8)
    out = sample(model, prompt, None, latents=latents, settings=SamplerSettings(num_steps=2, guidance_scale=1.0))
    assert np.isfinite(np.asarray(out.latents)).all()
    with pytest.raises(InputError, match="negative embeddings"):
        sample(model, prompt, None, latents=latents, settings=SamplerSettings(num_steps=2))


def test_nan_is_reported_with_step_and_block():
    ref_model = tiny_diffusers_model("2b", seed=2)
    with torch.no_grad():  # poison block 1's FFN: NaN appears in block 1 at the first step
        ref_model.transformer_blocks[1].ff.net[2].bias.fill_(float("nan"))
    model = jax_model_from_diffusers(ref_model, "fp32")
    latents, prompt, negative, _ = _problem(9)
    with pytest.raises(SamplingError, match=r"step 0 \(timestep 999\), first in transformer block 1"):
        sample(model, prompt, negative, latents=latents, settings=SamplerSettings(num_steps=3))


def test_bad_sizes_are_named():
    model = jax_model_from_diffusers(tiny_diffusers_model("2b", seed=2), "fp32")
    _, prompt, negative, _ = _problem(9)
    with pytest.raises(InputError, match="1 \\+ a multiple of 4"):
        sample(model, prompt, negative, frames=10, height=128, width=192)
    with pytest.raises(InputError, match="multiples of 16"):
        sample(model, prompt, negative, frames=9, height=120, width=192)


@pytest.mark.gpu
def test_gpu_bf16_sampler_close_to_fp32():
    """Compiled on the GPU: the bf16 path (cuDNN attention) tracks the fp32 path over a short DDIM run."""
    assert HAS_GPU
    ref_model = tiny_diffusers_model("5b", seed=5)
    latents, prompt, negative, _ = _problem(12, b=2, f=5, h=16, w=24)
    settings = SamplerSettings(num_steps=8)
    out32 = sample(jax_model_from_diffusers(ref_model, "fp32"), prompt, negative, latents=latents, settings=settings)
    out16 = sample(jax_model_from_diffusers(ref_model, "bf16"), prompt, negative, latents=latents, settings=settings)
    assert out16.latents.dtype == jnp.bfloat16 and jax.devices()[0].platform == "gpu"
    assert rel_err(out16.latents, out32.latents) < 5e-2
