"""Flow-matching UniPC (Wan's sampler) against diffusers' UniPCMultistepScheduler, live, on a stand-in model."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from sixbit_jax.errors import ConfigError
from sixbit_jax.schedulers.flow_unipc import UniPCState, flow_sigmas, make_unipc_schedule, unipc_step

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
