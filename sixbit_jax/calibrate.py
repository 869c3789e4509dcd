"""Calibration of the DMPQ precision predictor and of the delta-cache threshold.

Rollouts run every block on the "calibrate" path (bf16 activations through the NVFP4 weights) and, from the same
input, a second time with every linear on NVFP4 activations. The NVFP4 sensitivity of block l at step t is the
relative L1 distance of the two block outputs, E(l, t) = |Y_nvfp4 - Y|₁ / |Y|₁ (signal "block", the default). The
pairs (Γ(l, t-1), E(l, t)) give by least squares
    E_rel(l, t) = alpha_l * Γ(l, t-1) + beta_l,
with the Pearson r of each block's fit, of all pairs pooled, and of all pairs after removing each block's means
(how well Γ tracks E within a block, which is what routing needs). tau_q is then solved so that routing (NVFP4 when
E_rel <= tau_q, INT8 otherwise; INT8 on the first step) averages `target_bits` of activation width. With routing
"per-block" each block gets its own tau_q solved for the same width over its own steps: a threshold comparing
predictions across blocks routes mostly by block (the most sensitive block never gets NVFP4), one per block routes
by each block's stability over time.

Signal "output" measures E where routing pays for it, at the model's output: from each step's input the model runs
once more per block with that block alone on NVFP4 activations, E(l, t) = |v_l - v|₁ / |v|₁ (`sixbit calibrate
--signal output`; rollouts cost L + 2 forwards a step instead of 2). The block signal says how far a block's own
output moves; whether that reaches the video depends on the blocks after it, which the output signal includes.

Signal "linear" is the earlier definition, the mean of the block's linears' own relative errors under NVFP4
activations. It barely moves with Γ and trends the wrong way in most blocks of the shipped model (pooled r -0.38),
so it handed NVFP4 to the least stable block-steps; it stays selectable for the ablation and is reported beside the
block signal in every calibration. Part of the block signal's correlation is built in: a block whose update
(Y - X) is larger moves further under quantization, and Γ measures exactly that update's size.

PDR's outlier threshold is solved for a target fraction of BF16 refresh linears: every activation-quantized linear
records its input's outlier ratio max|x| / mean|x| in the rollouts, and the threshold is the (1 - target) quantile
of all of them, so about that fraction of linears would fall back to BF16 when their block is refreshed (the
rollouts compute every step; a refresh sees the same kind of inputs). The ratios' distribution per linear is kept
in info["outlier_ratio_percentiles"].

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
# The sensitivity E: at the block output; the mean over its linears (earlier); at the model output (block l alone on
# NVFP4: what routing by E should minimise, at one more forward per block and step of the rollouts).
SIGNALS = ("block", "linear", "output")
# How tau_q is solved: one threshold on every block's predicted error ("global", the paper's rule), or one per block,
# each giving its block the target bits ("per-block": every block sends its most stable steps to NVFP4).
ROUTINGS = ("global", "per-block")
WEAK_FIT_R = 0.5  # below this a block's fit is reported as weak
DEFAULT_TARGET_BITS = 6.0
DEFAULT_TARGET_SKIP = 0.3  # the paper's 1.92x over its 1.36x from routing implies ~30% of block time skipped
DEFAULT_TARGET_FALLBACK = 0.05  # PDR: share of refresh linears sent to BF16 (small: each one costs 2x an INT8 one)
PERCENTILES = (50, 90, 99, 100)


@dataclasses.dataclass
class Calibration:
    alpha: list[float]
    beta: list[float]
    pearson_r: list[float]  # per block
    pearson_r_pooled: float
    pearson_r_within_blocks: float  # pooled after removing each block's mean Γ and E
    signal: str  # what E is: "block" (output) or "linear" (mean of the linears' errors)
    routing: str  # "global": one tau_q; "per-block": tau_q is a list, one per block
    tau_q: float | list[float]
    tau_c: float
    target_bits: float
    expected_bits: float  # what routing with tau_q gives on the calibration rollouts
    target_skip: float
    expected_skip: float  # what the skip rule with tau_c gives when replayed on the calibration rollouts
    rollouts: int
    info: dict
    outlier_ratio: float | None = None  # PDR's threshold (None: not calibrated; the runtime keeps its default)
    target_fallback: float | None = None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        tmp.replace(path)
        return path

    def warnings(self) -> list[str]:
        """One line per block whose fit routing should not trust: a negative slope, or r below WEAK_FIT_R."""
        lines = []
        for layer, (a, r) in enumerate(zip(self.alpha, self.pearson_r)):
            if a < 0:
                lines.append(f"block {layer}: negative slope (alpha {a:+.3g}): routing gives NVFP4 to its LEAST "
                             f"stable steps")
            elif r < WEAK_FIT_R:
                lines.append(f"block {layer}: weak fit (r {r:+.2f} < {WEAK_FIT_R}): Γ predicts its sensitivity poorly")
        return lines

    def report(self) -> str:
        table = ["block   alpha       beta        r", *(
            f"{layer:5d}   {a:+.4e} {b:+.4e} {r:+.3f}"
            for layer, (a, b, r) in enumerate(zip(self.alpha, self.beta, self.pearson_r)))]
        comparison = "".join(f"; the {other['signal']} signal would fit pooled r {other['pearson_r_pooled']:+.3f}, per "
                             f"block " + " ".join(f"{r:+.2f}" for r in other["pearson_r"])
                             for other in self.info.get("other_signals", []))
        tau_q = (f"{self.tau_q:.4g}" if self.routing == "global"
                 else "per block " + " ".join(f"{t:.4g}" for t in self.tau_q))
        return ("\n".join(table) + "\n"
                + "".join(f"warning: {line}\n" for line in self.warnings())
                + f"predictor fit ({self.signal} signal) over {self.rollouts} rollouts: Pearson r pooled "
                f"{self.pearson_r_pooled:+.3f}, within blocks {self.pearson_r_within_blocks:+.3f}{comparison}\n"
                f"tau_q {tau_q} -> {self.expected_bits:.2f} activation bits on the calibration rollouts "
                f"(target {self.target_bits}); tau_c {self.tau_c:.4g} -> {self.expected_skip:.0%} of block-steps "
                f"skipped in a replay of the rollouts (target {self.target_skip:.0%})"
                + self._outlier_report())

    def _outlier_report(self) -> str:
        percentiles = self.info.get("outlier_ratio_percentiles")
        if self.outlier_ratio is None or not percentiles:
            return ""
        head = "linear" + "".join(f"   p{p:<5d}" for p in PERCENTILES)
        rows = [f"{name:<6s}" + "".join(f" {v:8.2f}" for v in values) for name, values in percentiles.items()]
        return (f"\nPDR input outlier ratio max|x|/mean|x| per linear (block order; percentiles over blocks and "
                f"steps):\n{head}\n" + "\n".join(rows)
                + f"\nPDR threshold {self.outlier_ratio:.4g} -> {self.target_fallback:.0%} of refresh linears to BF16 "
                f"(the uncalibrated default {RuntimeConfig.outlier_ratio:g} would send "
                f"{self.info.get('default_fallback', 0):.0%})")


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


@dataclasses.dataclass(frozen=True)
class PredictorFit:
    alpha: list[float]
    beta: list[float]
    pearson_r: list[float]
    pearson_r_pooled: float
    pearson_r_within_blocks: float


def fit_predictor(gamma: np.ndarray, error: np.ndarray) -> PredictorFit:
    """Per-block least squares E = alpha Γ + beta over [samples, L] pairs, with the fit's correlations."""
    alpha, beta, pearson = [], [], []
    for layer in range(gamma.shape[1]):
        x, y = gamma[:, layer], error[:, layer]
        a, b = np.polyfit(x, y, 1) if x.std() > 0 else (0.0, float(y.mean()))
        alpha.append(float(a))
        beta.append(float(b))
        pearson.append(_pearson(x, y))
    within = _pearson((gamma - gamma.mean(0)).ravel(), (error - error.mean(0)).ravel())
    return PredictorFit(alpha, beta, pearson, _pearson(gamma.ravel(), error.ravel()), within)


def _signal(stats: StepStats, signal: str) -> np.ndarray | None:
    """[steps, L] E of one rollout under `signal`; None where the rollout did not measure it."""
    values = {"block": stats.nvfp4_error, "linear": stats.linear_error, "output": stats.output_error}[signal]
    return None if values is None else np.asarray(values, np.float64)


def solve_outlier_ratio(ratios: np.ndarray, target_fallback: float) -> tuple[float, dict[str, list[float]]]:
    """PDR's threshold from [samples, linears] input outlier ratios: the (1 - target) quantile of all of them; and
    each linear's percentiles (PERCENTILES), keyed by its position in the block."""
    if not 0.0 <= target_fallback <= 1.0:
        raise ConfigError(f"target BF16 fallback fraction must be within [0, 1]; got {target_fallback}")
    finite = ratios[np.isfinite(ratios).all(axis=1)]
    if finite.size == 0:
        raise ConfigError("the calibration rollouts recorded no outlier ratios (no activation-quantized linears)")
    threshold = float(np.quantile(finite, 1.0 - target_fallback))
    percentiles = {str(i): [float(v) for v in np.percentile(finite[:, i], PERCENTILES)]
                   for i in range(finite.shape[1])}
    return threshold, percentiles


def fit(stats: list[StepStats], *, target_bits: float = DEFAULT_TARGET_BITS,
        target_skip: float = DEFAULT_TARGET_SKIP, skip_rule: RuntimeConfig = RuntimeConfig(mode="bf16"),
        signal: str = "block", routing: str = "global", target_fallback: float = DEFAULT_TARGET_FALLBACK,
        linear_names: list[str] | None = None, info: dict | None = None) -> Calibration:
    """Fit the predictor on `signal` and solve tau_q (one, or one per block: `routing`), tau_c and (when the
    rollouts recorded outlier ratios) PDR's threshold from calibration rollouts (each a StepStats with [steps, L]
    arrays). `skip_rule` supplies max_skips and the always-computed steps that tau_c is solved under;
    `linear_names` label the outlier percentiles. The other measured signals' fits are kept in
    info["other_signals"]."""
    if not stats:
        raise ConfigError("calibration needs at least one rollout")
    if signal not in SIGNALS:
        raise ConfigError(f"unknown sensitivity signal {signal!r}; use one of {', '.join(SIGNALS)}")
    if routing not in ROUTINGS:
        raise ConfigError(f"unknown routing {routing!r}; use one of {', '.join(ROUTINGS)}")
    gamma = np.concatenate([np.asarray(s.gamma, np.float64)[:-1] for s in stats])  # Γ(t-1) ...
    measured = [name for name in SIGNALS if all(_signal(s, name) is not None for s in stats)]
    if signal not in measured:
        raise ConfigError(f"the calibration rollouts did not measure the {signal} signal (the output signal needs "
                          f"rollouts with RuntimeConfig(mode='calibrate', output_sensitivity=True))")
    errors = {name: np.concatenate([_signal(s, name)[1:] for s in stats]) for name in measured}  # ... against E(t)
    predictor = fit_predictor(gamma, errors[signal])
    predicted = gamma * np.array(predictor.alpha) + np.array(predictor.beta)
    steps = np.asarray(stats[0].gamma).shape[0]
    if routing == "global":
        tau_q, expected = _solve_tau_q(predicted, target_bits, steps)
    else:
        solved = [_solve_tau_q(predicted[:, layer], target_bits, steps) for layer in range(predicted.shape[1])]
        tau_q, expected = [t for t, _ in solved], float(np.mean([bits for _, bits in solved]))
    changes = np.stack([np.asarray(s.change, np.float64) for s in stats])  # [rollouts, steps, L]
    tau_c, expected_skip = _solve_tau_c(changes, target_skip, skip_rule)
    others = []
    for other in (name for name in measured if name != signal):
        other_fit = fit_predictor(gamma, errors[other])
        others.append({"signal": other, "pearson_r": other_fit.pearson_r,
                       "pearson_r_pooled": other_fit.pearson_r_pooled,
                       "pearson_r_within_blocks": other_fit.pearson_r_within_blocks})
    info = {"date": datetime.date.today().isoformat(), "other_signals": others, **(info or {})}
    outlier_ratio, fallback = None, None
    if all(s.outlier_ratio is not None for s in stats):
        ratios = np.concatenate([np.asarray(s.outlier_ratio, np.float64).reshape(-1, np.shape(s.outlier_ratio)[-1])
                                 for s in stats])
        outlier_ratio, percentiles = solve_outlier_ratio(ratios, target_fallback)
        names = linear_names if linear_names and len(linear_names) == ratios.shape[1] else list(percentiles)
        info["outlier_ratio_percentiles"] = dict(zip(names, percentiles.values()))
        info["default_fallback"] = float((ratios[np.isfinite(ratios)] > RuntimeConfig.outlier_ratio).mean())
        fallback = target_fallback
    return Calibration(predictor.alpha, predictor.beta, predictor.pearson_r, predictor.pearson_r_pooled,
                       predictor.pearson_r_within_blocks, signal, routing, tau_q, tau_c, target_bits, expected, target_skip,
                       expected_skip, len(stats), info, outlier_ratio, fallback)


def route_plot(calibration: Calibration, stats: list[StepStats], path: str | Path) -> Path:
    """Per block, Γ(t-1) of every calibration block-step against the step, coloured by the route the calibrated
    predictor gives it (NVFP4 where alpha Γ(t-1) + beta <= tau_q, INT8 otherwise): with a positive slope NVFP4
    lands on the low-Γ (temporally stable) block-steps."""
    from sixbit_jax.media import scatter_panels

    gamma = np.stack([np.asarray(s.gamma, np.float64)[:-1] for s in stats])  # [rollouts, steps - 1, L]
    steps = np.broadcast_to(np.arange(1, gamma.shape[1] + 1)[None, :], gamma.shape[:2])
    int8 = gamma * np.asarray(calibration.alpha) + np.asarray(calibration.beta) > np.asarray(calibration.tau_q)
    panels = [(f"block {layer}: alpha {calibration.alpha[layer]:+.3g}, r {calibration.pearson_r[layer]:+.2f}",
               steps.ravel(), gamma[..., layer].ravel(), int8[..., layer].ravel().astype(int))
              for layer in range(gamma.shape[2])]
    # ASCII labels: Pillow's built-in font has no Greek letters
    return scatter_panels(path, panels, classes=["NVFP4", "INT8"], x_label="step t", y_label="gamma(t-1)",
                          title=f"routes, {calibration.routing} tau_q ({calibration.signal} signal)")


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
