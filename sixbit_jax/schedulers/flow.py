"""Flow-matching samplers (Wan's): UniPC, its default, and Euler.

UniPC is diffusers' `UniPCMultistepScheduler` with `use_flow_sigmas=True`, `prediction_type="flow_prediction"`,
order 2, B(h) variant "bh2", `predict_x0`, `lower_order_final`, final sigma 0. Euler is diffusers'
`FlowMatchEulerDiscreteScheduler` with a static shift.

Flow matching: x_σ = (1 - σ) x0 + σ ε, the model predicts v ≈ ε - x0, so x0 = x_σ - σ v, and the model is fed the
timestep int(σ · 1000). The grid is diffusers': σ = linspace(1, 1/1000, N + 1)[:-1], shifted by
σ' = s σ / (1 + (s - 1) σ), the first σ moved 1e-6 below 1 and a final σ of 0 appended (float32, as diffusers stores
it). Note that Wan's original code builds its grid from 0.999 instead; `wan2.1.md` section 4 gives the difference.

Each step i is a predictor (UniP) from the corrected sample, preceded from the second step on by a corrector (UniC)
of the previous prediction that uses this step's x0. Every coefficient depends only on the σ grid, so the host
computes them once in float64 (`make_unipc_schedule`) and a step (`unipc_step`) is a fixed linear combination of the
sample, the previous step's input (before its predictor) and the last three x0: jit- and scan-friendly, no Python
state. Orders: 1 on the first step (no history), 2 after, 1 again on the last (lower_order_final)."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from sixbit_jax.config import read_json
from sixbit_jax.errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULERS = ("unipc", "euler")
# Wan's text-to-video default (its generate.py, 480p and 720p alike); diffusers' converted folders ship 3.0
DEFAULT_SHIFT = 5.0
_SCHEDULER_CLASSES = {"UniPCMultistepScheduler": "unipc", "FlowMatchEulerDiscreteScheduler": "euler"}


@dataclasses.dataclass(frozen=True)
class FlowSchedulerConfig:
    """A flow-matching model's scheduler settings: the σ shift and which sampler its folder ships."""

    shift: float = DEFAULT_SHIFT
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    default_scheduler: str = "unipc"

    @classmethod
    def from_json(cls, path) -> "FlowSchedulerConfig":
        """A pipeline folder's scheduler/scheduler_config.json: diffusers' UniPCMultistepScheduler with flow sigmas
        (`flow_shift`) or FlowMatchEulerDiscreteScheduler (`shift`, static). Other settings raise ConfigError."""
        raw = read_json(path, "scheduler config")
        kind = _SCHEDULER_CLASSES.get(raw.get("_class_name"))
        if kind is None:
            raise ConfigError(f"{path}: unsupported scheduler {raw.get('_class_name')!r}; expected one of "
                              f"{', '.join(_SCHEDULER_CLASSES)}")
        required = ({"use_flow_sigmas": True, "prediction_type": "flow_prediction", "solver_order": 2,
                     "solver_type": "bh2", "predict_x0": True} if kind == "unipc"
                    else {"use_dynamic_shifting": False, "invert_sigmas": False})
        for key, supported in required.items():
            if key in raw and raw[key] != supported:
                raise ConfigError(f"{path}: unsupported scheduler config {key}={raw[key]!r} (only {supported!r})")
        shift = raw.get("flow_shift" if kind == "unipc" else "shift", DEFAULT_SHIFT)
        return cls(float(shift), int(raw.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)), kind)


def flow_sigmas(num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """[num_steps + 1] σ grid (float32 values, as diffusers keeps them), ending in 0."""
    if num_steps < 1:
        raise ConfigError(f"number of steps must be at least 1; got {num_steps}")
    if not shift > 0:
        raise ConfigError(f"flow shift must be positive; got {shift}")
    sigmas = np.linspace(1, 1 / num_train_timesteps, num_steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if abs(sigmas[0] - 1) < 1e-6:
        sigmas[0] -= 1e-6
    return np.concatenate([sigmas, [0.0]]).astype(np.float32)


class UniPCCoefficients(NamedTuple):
    """Per step [num_steps] each: corrected = c_sample * x + c_last * last + c_x0 * x0 + c_x0_1 * x0_1 + c_x0_2 *
    x0_2 (x0_k: the x0 of k steps before), then next = p_sample * corrected + p_x0 * x0 + p_x0_1 * x0_1."""

    sigma: np.ndarray
    c_sample: np.ndarray
    c_last: np.ndarray
    c_x0: np.ndarray
    c_x0_1: np.ndarray
    c_x0_2: np.ndarray
    p_sample: np.ndarray
    p_x0: np.ndarray
    p_x0_1: np.ndarray


@dataclasses.dataclass(frozen=True)
class UniPCSchedule:
    sigmas: np.ndarray  # [num_steps + 1] float32 values
    timesteps: np.ndarray  # [num_steps] int64, what the model is fed
    coefficients: UniPCCoefficients  # float64 host arrays

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    stochastic = False

    def device_coefficients(self, dtype=jnp.float32) -> UniPCCoefficients:
        return UniPCCoefficients(*(jnp.asarray(c, dtype) for c in self.coefficients))

    @staticmethod
    def initial_carry(sample) -> "UniPCState":
        return UniPCState.zeros_like(sample.astype(jnp.float32))

    @staticmethod
    def update(c: UniPCCoefficients, sample, v, carry: "UniPCState", noise):
        return unipc_step(c, sample, v, carry)


def _lambda(sigma: float) -> float:
    """log(alpha / sigma) of the flow parameterisation (alpha = 1 - sigma); +inf at sigma 0."""
    return math.inf if sigma == 0 else math.log(1 - sigma) - math.log(sigma)


def _bh2_terms(lambda_t: float, lambda_s0: float, rks: list[float]):
    """(h_phi_1, B_h, R, b) of diffusers' bh2 update for the step from s0 to t with history ratios rks."""
    hh = -(lambda_t - lambda_s0)  # predict_x0
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1
    if math.isinf(hh):
        return h_phi_1, b_h, None, None
    h_phi_k, factorial, rows, b = h_phi_1 / hh - 1, 1, [], []
    for i in range(1, len(rks) + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, np.array(rows), np.array(b)


def _predictor(sigmas: np.ndarray, i: int, order: int) -> tuple[float, float, float]:
    """(p_sample, p_x0, p_x0_1) of UniP from σ_i to σ_{i+1}: x_t = σ_t/σ_s0 x - α_t h_phi_1 m0 - α_t B_h ρ D1,
    with D1 = (m1 - m0) / r1 and ρ = 1/2 at order 2."""
    sigma_t, sigma_s0 = float(sigmas[i + 1]), float(sigmas[i])
    alpha_t, lambda_s0 = 1 - sigma_t, _lambda(sigma_s0)
    h_phi_1, b_h, _, _ = _bh2_terms(_lambda(sigma_t), lambda_s0, [1.0] * order)
    p_sample, p_x0, p_x0_1 = sigma_t / sigma_s0, -alpha_t * h_phi_1, 0.0
    if order == 2:
        r1 = (_lambda(float(sigmas[i - 1])) - lambda_s0) / (_lambda(sigma_t) - lambda_s0)
        weight = -alpha_t * b_h * 0.5 / r1  # times (m1 - m0)
        p_x0, p_x0_1 = p_x0 - weight, weight
    return p_sample, p_x0, p_x0_1


def _corrector(sigmas: np.ndarray, i: int, order: int) -> tuple[float, float, float, float]:
    """(c_last, c_x0_1, c_x0_2, c_x0) of UniC at step i (correcting the prediction from σ_{i-1} to σ_i with this
    step's x0 m_t): x_t = σ_t/σ_s0 last - α_t h_phi_1 m0 - α_t B_h (Σ ρ_k D1_k + ρ_last (m_t - m0)), where m0 is the
    x0 of step i-1, D1 = (x0 of step i-2 - m0) / r1; `order` is the previous predictor's."""
    sigma_t, sigma_s0 = float(sigmas[i]), float(sigmas[i - 1])
    alpha_t, lambda_t, lambda_s0 = 1 - sigma_t, _lambda(sigma_t), _lambda(sigma_s0)
    h = lambda_t - lambda_s0
    rks = [(_lambda(float(sigmas[i - 2])) - lambda_s0) / h] if order == 2 else []
    h_phi_1, b_h, rows, b = _bh2_terms(lambda_t, lambda_s0, rks + [1.0])
    rhos = [0.5] if order == 1 else list(np.linalg.solve(rows, b))
    c_last, c_x0_1, c_x0_2 = sigma_t / sigma_s0, -alpha_t * h_phi_1, 0.0
    c_x0 = -alpha_t * b_h * rhos[-1]
    c_x0_1 -= c_x0  # the (m_t - m0) term
    if order == 2:
        weight = -alpha_t * b_h * rhos[0] / rks[0]  # times (x0_2 - m0)
        c_x0_1, c_x0_2 = c_x0_1 - weight, weight
    return c_last, c_x0_1, c_x0_2, c_x0


def make_unipc_schedule(num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> UniPCSchedule:
    sigmas = flow_sigmas(num_steps, shift, num_train_timesteps)
    rows, previous_order = [], None
    for i in range(num_steps):
        order = min(2, num_steps - i, i + 1)  # lower_order_final, and one x0 of history per step so far
        c_sample, c_last, c_x0, c_x0_1, c_x0_2 = 1.0, 0.0, 0.0, 0.0, 0.0
        if i > 0:
            c_sample = 0.0
            c_last, c_x0_1, c_x0_2, c_x0 = _corrector(sigmas, i, previous_order)
        rows.append((float(sigmas[i]), c_sample, c_last, c_x0, c_x0_1, c_x0_2, *_predictor(sigmas, i, order)))
        previous_order = order
    coefficients = UniPCCoefficients(*(np.array(col, np.float64) for col in zip(*rows)))
    if not all(np.isfinite(c).all() for c in coefficients):
        raise ConfigError(f"UniPC with {num_steps} steps and shift {shift} gives non-finite coefficients")
    timesteps = (sigmas[:-1] * num_train_timesteps).astype(np.int64)
    return UniPCSchedule(sigmas, timesteps, coefficients)


class UniPCState(NamedTuple):
    """What a UniPC step carries to the next: the sample before the last predictor and the last two x0."""

    last: object
    x0_1: object
    x0_2: object

    @classmethod
    def zeros_like(cls, sample) -> "UniPCState":
        zero = sample * 0
        return cls(zero, zero, zero)


def unipc_step(c: UniPCCoefficients, sample, v, state: UniPCState):
    """One step: x0 from the flow prediction v, the corrector (a no-op on the first step) and the predictor.
    Returns (next sample, new state). Works on jax arrays and, for float64 checks, on numpy arrays."""
    x0 = sample - c.sigma * v
    corrected = (c.c_sample * sample + c.c_last * state.last + c.c_x0 * x0 + c.c_x0_1 * state.x0_1
                 + c.c_x0_2 * state.x0_2)
    following = c.p_sample * corrected + c.p_x0 * x0 + c.p_x0_1 * state.x0_1
    return following, UniPCState(corrected, x0, state.x0_1)


@dataclasses.dataclass(frozen=True)
class EulerSchedule:
    sigmas: np.ndarray  # [num_steps + 1] float32 values, ending in 0
    timesteps: np.ndarray  # [num_steps] float32: σ · 1000, not rounded (diffusers feeds them as they are)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    stochastic = False

    @property
    def steps(self) -> np.ndarray:
        """[num_steps] float64 σ_{i+1} - σ_i, the step each velocity is multiplied by."""
        return np.diff(self.sigmas.astype(np.float64))

    def device_coefficients(self, dtype=jnp.float32) -> "EulerCoefficients":
        return EulerCoefficients(jnp.asarray(self.steps, dtype))

    @staticmethod
    def initial_carry(sample) -> tuple:
        return ()

    @staticmethod
    def update(c: "EulerCoefficients", sample, v, carry, noise):
        return euler_step(c.step, sample, v), carry


class EulerCoefficients(NamedTuple):
    step: np.ndarray  # [num_steps] σ_{i+1} - σ_i


def make_euler_schedule(num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> EulerSchedule:
    """diffusers' grid, quirk included: its σ range is the shifted training range (σ_min = shift(1/1000)), and the
    linspace over it is shifted again."""
    if num_steps < 1:
        raise ConfigError(f"number of steps must be at least 1; got {num_steps}")
    if not shift > 0:
        raise ConfigError(f"flow shift must be positive; got {shift}")
    shifted = lambda s: shift * s / (1 + (shift - 1) * s)  # noqa: E731
    train = shifted(np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1]
                    / np.float32(num_train_timesteps)).astype(np.float32)
    timesteps = np.linspace(float(train[0]) * num_train_timesteps, float(train[-1]) * num_train_timesteps, num_steps)
    sigmas = shifted(timesteps / num_train_timesteps).astype(np.float32)
    return EulerSchedule(np.concatenate([sigmas, [0.0]]).astype(np.float32),
                         sigmas * np.float32(num_train_timesteps))


def euler_step(step, sample, v):
    """x_{σ'} = x_σ + (σ' - σ) v, in float32 as diffusers computes it."""
    return sample + step * v


def make_flow_schedule(kind: str, num_steps: int, cfg: FlowSchedulerConfig = FlowSchedulerConfig()):
    if kind == "unipc":
        return make_unipc_schedule(num_steps, cfg.shift, cfg.num_train_timesteps)
    if kind == "euler":
        return make_euler_schedule(num_steps, cfg.shift, cfg.num_train_timesteps)
    raise ConfigError(f"unknown flow scheduler {kind!r}; use one of {', '.join(SCHEDULERS)}")
