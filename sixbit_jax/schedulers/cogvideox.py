"""CogVideoX schedulers: DDIM (deterministic) and the stochastic DPM (SDE-DPM-Solver++ 2M), v-prediction.

Everything that depends only on the timestep is computed once on the host in float64, exactly as diffusers'
`CogVideoXDDIMScheduler` / `CogVideoXDPMScheduler` compute it (including the IEEE infinities at the ends of the
zero-terminal-SNR schedule, which resolve to finite coefficients). The device side is `step`: a few multiply-adds
per element, taking that step's coefficients as arrays, so one compiled `lax.scan` body serves every step.

Both schedulers share one update form (DDIM uses m3=1, m4=0, m_noise=0):
    x0   = sqrt_ac * x - sqrt_1m_ac * v                       (v-prediction -> predicted clean sample)
    d    = m3 * x0 - m4 * x0_prev                             (DPM 2M correction; x0 on first-order steps)
    x'   = m1 * x - m2 * d + m_noise * noise
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from sixbit_jax.config import read_json
from sixbit_jax.errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULERS = ("ddim", "dpm")
_SCHEDULER_CLASSES = {"CogVideoXDDIMScheduler": "ddim", "CogVideoXDPMScheduler": "dpm"}
# scheduler_config.json fields both CogVideoX schedulers ship with, and the only values implemented here
_FIXED_SCHEDULER_FIELDS = {"beta_schedule": "scaled_linear", "prediction_type": "v_prediction",
                           "timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "set_alpha_to_one": True,
                           "clip_sample": False, "trained_betas": None, "steps_offset": 0}


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """diffusers' scheduler_config.json values for CogVideoX (both 2B and 5B ship these, differing in
    snr_shift_scale: 3.0 for 2B, 1.0 for 5B)."""

    snr_shift_scale: float = 3.0
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS

    default_scheduler: str = "ddim"  # what the pipeline folder ships: ddim (2B) or dpm (5B)

    @classmethod
    def for_model(cls, flavour: str) -> "SchedulerConfig":
        return cls(snr_shift_scale={"2b": 3.0, "5b": 1.0}[flavour], default_scheduler={"2b": "ddim", "5b": "dpm"}[flavour])

    @classmethod
    def from_json(cls, path: str | Path) -> "SchedulerConfig":
        """A pipeline folder's scheduler/scheduler_config.json (CogVideoXDDIMScheduler or CogVideoXDPMScheduler).
        Values this port does not implement raise ConfigError naming the field."""
        raw = read_json(path, "scheduler config")
        kind = _SCHEDULER_CLASSES.get(raw.get("_class_name"))
        if kind is None:
            raise ConfigError(f"{path}: unsupported scheduler {raw.get('_class_name')!r}; expected one of "
                              f"{', '.join(_SCHEDULER_CLASSES)}")
        for key, supported in _FIXED_SCHEDULER_FIELDS.items():
            if key in raw and raw[key] != supported:
                raise ConfigError(f"{path}: unsupported scheduler config {key}={raw[key]!r} (only {supported!r})")
        fields = {f.name for f in dataclasses.fields(cls)} - {"default_scheduler"}
        return cls(**{k: v for k, v in raw.items() if k in fields}, default_scheduler=kind)


def alphas_cumprod(cfg: SchedulerConfig) -> np.ndarray:
    """scaled_linear betas, SNR shift (SNR -> SNR / s), then zero-terminal-SNR rescale; float64, ac[-1] == 0."""
    n = cfg.num_train_timesteps
    betas = np.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    ac = ac / (cfg.snr_shift_scale + (1 - cfg.snr_shift_scale) * ac)
    sqrt_ac = np.sqrt(ac)
    sqrt_ac = (sqrt_ac - sqrt_ac[-1]) * sqrt_ac[0] / (sqrt_ac[0] - sqrt_ac[-1])
    return sqrt_ac**2


def trailing_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    if not 1 <= num_steps <= num_train_timesteps:
        raise ConfigError(f"number of steps must be in 1..{num_train_timesteps}; got {num_steps}")
    return (np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)) - 1).astype(np.int64)


class StepCoefficients(NamedTuple):
    """Per-step coefficients; each field is [num_steps] (or a scalar inside the scan body)."""

    sqrt_ac: np.ndarray
    sqrt_1m_ac: np.ndarray
    m1: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    m4: np.ndarray
    m_noise: np.ndarray


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A scheduler set up for a number of steps: integer timesteps and float64 coefficients."""

    kind: str
    timesteps: np.ndarray  # [num_steps] int64, descending
    coefficients: StepCoefficients  # float64 host arrays

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def stochastic(self) -> bool:
        return self.kind == "dpm"

    def device_coefficients(self, dtype=jnp.float32) -> StepCoefficients:
        return StepCoefficients(*(jnp.asarray(c, dtype) for c in self.coefficients))

    # The sampler's interface, shared by every schedule: the carry one step hands the next, and the step itself.
    @staticmethod
    def initial_carry(sample):
        return jnp.zeros(sample.shape, jnp.float32)  # the previous x0 (DPM's second order)

    @staticmethod
    def update(c: StepCoefficients, sample, v, carry, noise):
        return step(c, sample, v, carry, noise)


def make_schedule(kind: str, num_steps: int, cfg: SchedulerConfig = SchedulerConfig()) -> Schedule:
    if kind not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {kind!r}; use one of {', '.join(SCHEDULERS)}")
    ac = alphas_cumprod(cfg)
    timesteps = trailing_timesteps(num_steps, cfg.num_train_timesteps)
    stride = cfg.num_train_timesteps // num_steps
    rows = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i, t in enumerate(timesteps):
            prev = t - stride
            a_t = ac[t]
            a_prev = ac[prev] if prev >= 0 else np.float64(1.0)  # set_alpha_to_one
            if kind == "ddim":
                rows.append(_ddim_row(a_t, a_prev))
            else:
                a_back = ac[timesteps[i - 1]] if i > 0 else None
                rows.append(_dpm_row(a_t, a_prev, a_back, first_order=(i == 0 or prev < 0)))
    coefficients = StepCoefficients(*(np.array(col, dtype=np.float64) for col in zip(*rows)))
    if not all(np.isfinite(c).all() for c in coefficients):
        raise ConfigError(f"{kind} with {num_steps} steps gives non-finite scheduler coefficients")
    return Schedule(kind, timesteps, coefficients)


def _ddim_row(a_t, a_prev):
    a = ((1 - a_prev) / (1 - a_t)) ** 0.5
    b = a_prev**0.5 - a_t**0.5 * a
    return a_t**0.5, (1 - a_t) ** 0.5, a, -b, 1.0, 0.0, 0.0


def _dpm_row(a_t, a_prev, a_back, first_order: bool):
    """diffusers CogVideoXDPMScheduler.get_variables / get_mult, in float64 with IEEE infinities."""
    lamb = np.log((a_t / (1 - a_t)) ** 0.5)
    lamb_next = np.log((a_prev / (1 - a_prev)) ** 0.5)
    h = lamb_next - lamb
    m1 = ((1 - a_prev) / (1 - a_t)) ** 0.5 * np.exp(-h)
    m2 = np.expm1(-2 * h) * a_prev**0.5
    m_noise = (1 - a_prev) ** 0.5 * (1 - np.exp(-2 * h)) ** 0.5
    if first_order:
        m3, m4 = 1.0, 0.0
    else:
        r = (lamb - np.log((a_back / (1 - a_back)) ** 0.5)) / h
        m3, m4 = 1 + 1 / (2 * r), 1 / (2 * r)
    return a_t**0.5, (1 - a_t) ** 0.5, m1, m2, m3, m4, m_noise


def _times(coef, x):
    """coef * x rounded to x's dtype: diffusers multiplies float64 0-dim tensors into tensors, which keeps the
    tensor's dtype (bf16 latents stay bf16) with the product computed in float32."""
    return (coef * x.astype(jnp.float32)).astype(x.dtype) if x.dtype != jnp.float64 else coef * x


def step(c: StepCoefficients, sample, v, x0_prev, noise):
    """One scheduler step. `sample` is in the latent dtype, `v` (guided model output) in float32, `noise` in the
    latent dtype (zeros for DDIM). Returns (next sample in float32, x0 to carry for the next DPM step).
    Works on jax arrays and, for float64 checks, on numpy arrays."""
    x0 = _times(c.sqrt_ac, sample) - c.sqrt_1m_ac * v
    d = c.m3 * x0 - c.m4 * x0_prev
    return _times(c.m1, sample) - c.m2 * d + _times(c.m_noise, noise), x0


def dynamic_guidance(guidance: float, timesteps: np.ndarray) -> np.ndarray:
    """The pipeline's use_dynamic_cfg schedule, in Python float64 exactly as written there: t is the timestep
    value (999...), not the step index, which makes the schedule oscillate; that is the reference behaviour."""
    n = len(timesteps)
    return np.array([1 + guidance * ((1 - math.cos(math.pi * ((n - int(t)) / n) ** 5.0)) / 2) for t in timesteps])
