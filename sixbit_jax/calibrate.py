"""Calibration of the DMPQ precision predictor and of the delta-cache threshold.

Rollouts run every block on the "calibrate" path (bf16 activations through the NVFP4 weights, recording how far the
NVFP4-activation output of each linear is from that). For each block l the pairs (Γ(l, t-1), E(l, t)), with E the
mean relative L1 error of the block's linear outputs under NVFP4 activations, give by least squares
    E_rel(l, t) = alpha_l * Γ(l, t-1) + beta_l,
with the Pearson r of each block's fit and of all pairs pooled. tau_q is then solved so that routing (NVFP4 when
E_rel <= tau_q, INT8 otherwise; INT8 on the first step) averages `target_bits` of activation width, and tau_c is the
`tau_c_quantile` of the delta change r the rollouts saw after the always-computed steps."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import numpy as np

from sixbit_jax.errors import ConfigError
from sixbit_jax.runtime import StepStats

CALIBRATION_NAME = "calibration.json"
DEFAULT_TARGET_BITS = 6.0
DEFAULT_TAU_C_QUANTILE = 0.35


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
        return (f"predictor fit over {self.rollouts} rollouts: Pearson r pooled {self.pearson_r_pooled:+.3f}; per block "
                f"{per_block}\ntau_q {self.tau_q:.4g} -> {self.expected_bits:.2f} activation bits on the calibration "
                f"rollouts (target {self.target_bits}); tau_c {self.tau_c:.4g}")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def fit(stats: list[StepStats], *, target_bits: float = DEFAULT_TARGET_BITS,
        tau_c_quantile: float = DEFAULT_TAU_C_QUANTILE, first_steps: int = 2, info: dict | None = None) -> Calibration:
    """Fit the predictor from calibration rollouts (each a StepStats with [steps, L] arrays)."""
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
    changes = np.concatenate([np.asarray(s.change, np.float64)[first_steps:].ravel() for s in stats])
    changes = changes[np.isfinite(changes)]
    tau_c = float(np.quantile(changes, tau_c_quantile)) if changes.size else 0.0
    return Calibration(alpha, beta, pearson, _pearson(gamma.ravel(), error.ravel()), tau_q, tau_c, target_bits,
                       expected, len(stats), {"date": datetime.date.today().isoformat(),
                                              "tau_c_quantile": tau_c_quantile, **(info or {})})


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
