"""Schedulers against diffusers' CogVideoXDDIMScheduler / CogVideoXDPMScheduler, in float64."""

import zlib

import numpy as np
import pytest

from diffusers_ref import diffusers, torch

from sixbit_jax.errors import ConfigError
from sixbit_jax.schedulers import SchedulerConfig, dynamic_guidance, make_schedule, step
from sixbit_jax.schedulers.cogvideox import alphas_cumprod

DIFFUSERS_CONFIG = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                        num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                        set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")
CASES = [("ddim", "2b"), ("ddim", "5b"), ("dpm", "2b"), ("dpm", "5b")]


def _diffusers_scheduler(kind, flavour, steps):
    cls = diffusers.CogVideoXDDIMScheduler if kind == "ddim" else diffusers.CogVideoXDPMScheduler
    scheduler = cls(**DIFFUSERS_CONFIG, snr_shift_scale=SchedulerConfig.for_model(flavour).snr_shift_scale)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("kind,flavour", CASES)
@pytest.mark.parametrize("steps", [50, 7])
def test_timesteps_and_alphas(kind, flavour, steps):
    ref = _diffusers_scheduler(kind, flavour, steps)
    ours = make_schedule(kind, steps, SchedulerConfig.for_model(flavour))
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    np.testing.assert_allclose(alphas_cumprod(SchedulerConfig.for_model(flavour)), ref.alphas_cumprod.numpy(),
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind,flavour", CASES)
def test_50_step_loop_matches_diffusers_float64(kind, flavour, monkeypatch):
    """A fake v-model (a fixed random linear map of x, varying with t) drives both loops; DPM noise is injected
    into diffusers by replacing its randn_tensor with the same per-step draws."""
    steps = 50
    rng = np.random.default_rng(zlib.crc32((kind + flavour).encode()))
    shape = (1, 2, 4, 4, 4)
    mix = rng.standard_normal(shape) * 0.3
    fake_v = lambda x, t: mix * x + 0.01 * (t / 1000.0)  # noqa: E731
    noises = rng.standard_normal((steps,) + shape)

    import diffusers.schedulers.scheduling_dpm_cogvideox as dpm_module
    pending = []
    monkeypatch.setattr(dpm_module, "randn_tensor", lambda *a, **k: pending.pop(0))

    ref = _diffusers_scheduler(kind, flavour, steps)
    x_ref = torch.from_numpy(rng.standard_normal(shape))
    x = x_ref.numpy().copy()
    old_ref, x0_prev = None, np.zeros(shape)
    schedule = make_schedule(kind, steps, SchedulerConfig.for_model(flavour))
    for i, t in enumerate(ref.timesteps.tolist()):
        v_ref = fake_v(x_ref.numpy(), t)
        if kind == "ddim":
            x_ref = ref.step(torch.from_numpy(v_ref), t, x_ref, return_dict=False)[0]
        else:
            pending[:] = [torch.from_numpy(noises[i])] * 2  # diffusers draws twice on 2M steps, uses the last
            x_ref, old_ref = ref.step(torch.from_numpy(v_ref), old_ref, t, ref.timesteps[i - 1] if i else None, x_ref,
                                      return_dict=False)
        coefficients = type(schedule.coefficients)(*(c[i] for c in schedule.coefficients))
        noise = noises[i] if kind == "dpm" else np.zeros(shape)
        x, x0_prev = step(coefficients, x, fake_v(x, t), x0_prev, noise)
    assert np.isfinite(x).all()
    assert np.abs(x - x_ref.numpy()).max() < 1e-10


def test_dynamic_guidance_matches_pipeline_formula():
    timesteps = make_schedule("ddim", 50).timesteps
    g = dynamic_guidance(6.0, timesteps)
    np.testing.assert_allclose(g[:6], [2.291, 2.544, 6.974, 6.420, 2.788, 4.272], atol=1e-3)  # cogvideox.md s. 4
    np.testing.assert_allclose(g[-3:], [1.0, 1.0, 1.123], atol=1e-3)


def test_bad_scheduler_settings():
    with pytest.raises(ConfigError, match="scheduler 'heun' is unknown"):
        make_schedule("heun", 50)
    with pytest.raises(ConfigError, match="scheduler 'euler' is not this model's; this model samples with ddim, dpm"):
        make_schedule("euler", 50)
    with pytest.raises(ConfigError, match="number of steps"):
        make_schedule("ddim", 0)
