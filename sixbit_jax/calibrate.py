"""Calibration of the DMPQ precision predictor and of the delta-cache threshold.

Rollouts run every block on the "calibrate" path (bf16 activations through the NVFP4 weights, recording how far the
NVFP4-activation output of each linear is from that). For each block l the pairs (Γ(l, t-1), E(l, t)), with E the
mean relative L1 error of the block's linear outputs under NVFP4 activations, give by least squares
    E_rel(l, t) = alpha_l * Γ(l, t-1) + beta_l,
with the Pearson r of each block's fit and of all pairs pooled. tau_q is then solved so that routing (NVFP4 when
E_rel <= tau_q, INT8 otherwise; INT8 on the first step) averages `target_bits` of activation width.

tau_c is solved the same way for a target skip fraction: the TDC skip rule (runtime.choose_routes) is replayed on the
rollouts' measured delta changes r, and tau_c is the smallest threshold whose replay skips `target_skip` of the
block-steps. The rollouts compute every step, so the change a refresh would see after k skips is estimated as the
sum of the k + 1 one-step changes (the triangle inequality's bound); the skip fraction of real runs is reported by
the sampler and by `sixbit eval`."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import numpy as np

from sixbit_jax.errors import ConfigError
from sixbit_jax.runtime import RuntimeConfig, StepStats

CALIBRATION_NAME = "calibration.json"
DEFAULT_TARGET_BITS = 6.0
DEFAULT_TARGET_SKIP = 0.3  # the paper's 1.92x over its 1.36x from routing implies ~30% of block time skipped


@dataclasses.dataclass
class Calibration:
    alpha: list[float]
    beta: list[float]
    pearson_r: list[float]  # per block
    pearson_r_pooled: float
    tau_q: float
    tau_c: float
    target_bits: float
    expected_bits: float  # what routing with tau_q gives on the calibration rollouts
    target_skip: float
    expected_skip: float  # what the skip rule with tau_c gives when replayed on the calibration rollouts
    rollouts: int
    info: dict

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        tmp.replace(path)
        return path

    def report(self) -> str:
        per_block = " ".join(f"{r:+.2f}" for r in self.pearson_r)
        return (f"predictor fit over {self.rollouts} rollouts: Pearson r pooled {self.pearson_r_pooled:+.3f}; "
                f"per block {per_block}\n"
                f"tau_q {self.tau_q:.4g} -> {self.expected_bits:.2f} activation bits on the calibration rollouts "
                f"(target {self.target_bits}); tau_c {self.tau_c:.4g} -> {self.expected_skip:.0%} of block-steps "
                f"skipped in a replay of the rollouts (target {self.target_skip:.0%})")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def fit(stats: list[StepStats], *, target_bits: float = DEFAULT_TARGET_BITS,
        target_skip: float = DEFAULT_TARGET_SKIP, skip_rule: RuntimeConfig = RuntimeConfig(mode="bf16"),
        info: dict | None = None) -> Calibration:
    """Fit the predictor and solve tau_q and tau_c from calibration rollouts (each a StepStats with [steps, L]
    arrays). `skip_rule` supplies max_skips and the always-computed steps that tau_c is solved under."""
    if not stats:
        raise ConfigError("calibration needs at least one rollout")
    gamma = np.concatenate([np.asarray(s.gamma, np.float64)[:-1] for s in stats])  # Γ(t-1) ...
    error = np.concatenate([np.asarray(s.nvfp4_error, np.float64)[1:] for s in stats])  # ... against E(t)
    num_layers = gamma.shape[1]
    alpha, beta, pearson = [], [], []
    for layer in range(num_layers):
        x, y = gamma[:, layer], error[:, layer]
        a, b = np.polyfit(x, y, 1) if x.std() > 0 else (0.0, float(y.mean()))
        alpha.append(float(a))
        beta.append(float(b))
        pearson.append(_pearson(x, y))
    predicted = gamma * np.array(alpha) + np.array(beta)
    tau_q, expected = _solve_tau_q(predicted, target_bits, steps=np.asarray(stats[0].gamma).shape[0])
    changes = np.stack([np.asarray(s.change, np.float64) for s in stats])  # [rollouts, steps, L]
    tau_c, expected_skip = _solve_tau_c(changes, target_skip, skip_rule)
    return Calibration(alpha, beta, pearson, _pearson(gamma.ravel(), error.ravel()), tau_q, tau_c, target_bits,
                       expected, target_skip, expected_skip, len(stats),
                       {"date": datetime.date.today().isoformat(), **(info or {})})


def replay_skip_rule(changes: np.ndarray, tau_c: float, rule: RuntimeConfig) -> np.ndarray:
    """[rollouts, steps, L] bool: where the TDC rule would skip, given the one-step changes of all-compute rollouts."""
    _, steps, _ = changes.shape
    changes = np.nan_to_num(changes, nan=np.inf)  # no change measured (first step): never skip on it
    change = np.full(changes[:, 0].shape, np.inf)  # r at the block's last compute
    e_acc, pending = np.zeros_like(change), np.zeros_like(change)  # pending: one-step changes since that compute
    skips = np.zeros(change.shape, int)
    skipped = np.zeros(changes.shape, bool)
    for t in range(steps):
        always = t < rule.first_steps or t >= steps - rule.last_steps
        skip = (not always) & (skips < rule.max_skips) & (e_acc + change <= tau_c)
        skipped[:, t] = skip
        pending += changes[:, t]
        change = np.where(skip, change, pending)  # a refresh after k skips sees about k + 1 one-step changes
        pending = np.where(skip, pending, 0.0)
        e_acc = np.where(skip, e_acc + change, 0.0)
        skips = np.where(skip, skips + 1, 0)
    return skipped


def _solve_tau_c(changes: np.ndarray, target_skip: float, rule: RuntimeConfig) -> tuple[float, float]:
    """A tau_c (among the measured changes) whose replay skips at least target_skip, else the largest; and what
    its replay skips."""
    if not 0.0 <= target_skip < 1.0:
        raise ConfigError(f"target skip fraction must be within [0, 1); got {target_skip}")
    candidates = np.unique(changes[np.isfinite(changes)])
    if target_skip == 0 or candidates.size == 0:
        return 0.0, 0.0
    fraction = lambda tau: float(replay_skip_rule(changes, tau, rule).mean())  # noqa: E731
    # The skip fraction grows with tau_c (not strictly: an earlier skip moves later refreshes), so bisecting on the
    # sorted candidates finds a threshold that reaches the target, near the smallest that does.
    lo, hi = 0, candidates.size - 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fraction(candidates[mid]) >= target_skip else (mid + 1, hi)
    return float(candidates[lo]), fraction(candidates[lo])


def _solve_tau_q(predicted: np.ndarray, target_bits: float, steps: int) -> tuple[float, float]:
    """tau_q such that [first step INT8] + [later steps: NVFP4 where predicted <= tau_q] averages target_bits."""
    if not 4.0 <= target_bits <= 8.0:
        raise ConfigError(f"target activation bits must be within 4..8 (NVFP4..INT8); got {target_bits}")
    # Per rollout: one first step (no Γ yet: INT8) and steps-1 routed steps, for every block.
    routed_share = (steps - 1) / steps
    nvfp4_share = min(1.0, (8.0 - target_bits) / 4.0 / routed_share)
    values = np.sort(predicted.ravel())
    if nvfp4_share <= 0:
        tau_q = float(values[0] - abs(values[0]) - 1.0)
    else:
        tau_q = float(values[min(len(values) - 1, int(np.ceil(nvfp4_share * len(values))) - 1)])
    chosen = float((values <= tau_q).mean())
    expected = 8.0 - 4.0 * chosen * routed_share
    return tau_q, expected
