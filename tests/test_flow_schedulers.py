"""Flow-matching samplers (Wan's) against diffusers' UniPCMultistepScheduler and FlowMatchEulerDiscreteScheduler,
live, on a stand-in model."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from sixbit_jax.errors import ConfigError
from sixbit_jax.schedulers.flow import (UniPCState, euler_step, flow_sigmas, make_euler_schedule,
                                       make_unipc_schedule, unipc_step)

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def _velocity(x, step: int, noise: np.ndarray):
    """A stand-in flow model: smooth in x, different every step."""
    return np.tanh(x) * 0.3 + noise[step] * 0.5


def _diffusers_run(steps: int, shift: float, x: np.ndarray, noise: np.ndarray):
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  num_train_timesteps=1000, flow_shift=shift)
    scheduler.set_timesteps(steps)
    sample, timesteps = torch.from_numpy(x), []
    for i, t in enumerate(scheduler.timesteps):
        v = torch.from_numpy(_velocity(sample.numpy(), i, noise))
        sample = scheduler.step(v, t, sample, return_dict=False)[0]
        timesteps.append(int(t))
    return sample.numpy(), np.asarray(timesteps), scheduler.sigmas.numpy()


@pytest.mark.parametrize("steps,shift", [(1, 5.0), (2, 3.0), (7, 5.0), (30, 3.0)])
def test_unipc_matches_diffusers(steps, shift):
    rng = np.random.default_rng(steps)
    x = rng.standard_normal((2, 3, 4, 5))
    noise = rng.standard_normal((steps, *x.shape))
    want, want_timesteps, want_sigmas = _diffusers_run(steps, shift, x, noise)
    schedule = make_unipc_schedule(steps, shift)
    np.testing.assert_array_equal(schedule.timesteps, want_timesteps)
    np.testing.assert_array_equal(schedule.sigmas, want_sigmas)
    sample, state = x, UniPCState.zeros_like(x)  # float64 on the host
    for i in range(steps):
        c = type(schedule.coefficients)(*(col[i] for col in schedule.coefficients))
        sample, state = unipc_step(c, sample, _velocity(sample, i, noise), state)
    np.testing.assert_allclose(sample, want, rtol=1e-5, atol=1e-5)


def test_unipc_runs_in_a_jitted_scan():
    schedule = make_unipc_schedule(10, 5.0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8)), jnp.float32)

    @jax.jit
    def run(x, coefficients):
        def body(carry, c):
            sample, state = carry
            return unipc_step(c, sample, jnp.tanh(sample) * 0.3, state), None
        return jax.lax.scan(body, (x, UniPCState.zeros_like(x)), coefficients)[0][0]

    host, state = np.asarray(x, np.float64), UniPCState.zeros_like(np.asarray(x, np.float64))
    for i in range(10):
        c = type(schedule.coefficients)(*(col[i] for col in schedule.coefficients))
        host, state = unipc_step(c, host, np.tanh(host) * 0.3, state)
    np.testing.assert_allclose(np.asarray(run(x, schedule.device_coefficients())), host, rtol=1e-5, atol=1e-5)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="flow shift must be positive"):
        flow_sigmas(10, 0.0)
    with pytest.raises(ConfigError, match="at least 1"):
        make_unipc_schedule(0, 3.0)
    with pytest.raises(ConfigError, match="flow shift must be positive"):
        make_euler_schedule(10, -1.0)


@pytest.mark.parametrize("steps,shift", [(1, 5.0), (8, 3.0), (50, 5.0)])
def test_euler_matches_diffusers(steps, shift):
    rng = np.random.default_rng(steps + 100)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    noise = rng.standard_normal((steps, *x.shape)).astype(np.float32)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    schedule = make_euler_schedule(steps, shift)
    np.testing.assert_allclose(schedule.timesteps, scheduler.timesteps.numpy(), rtol=1e-6)
    np.testing.assert_allclose(schedule.sigmas, scheduler.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    ours, theirs = x, torch.from_numpy(x)
    for i, t in enumerate(scheduler.timesteps):
        theirs = scheduler.step(torch.from_numpy(_velocity(theirs.numpy(), i, noise)), t, theirs, return_dict=False)[0]
        ours = euler_step(np.float32(schedule.steps[i]), ours, _velocity(ours, i, noise))
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)
