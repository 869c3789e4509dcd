"""The 6Bit-Diffusion runtime: per-block routing (DMPQ), the temporal delta cache (TDC) and purified delta refresh
(PDR), as pure functions the sampler's `lax.scan` calls once per step. Everything here runs on the device; the
state below lives in the scan carry.

Each step, for every block l (`choose_routes`):
- TDC skip when the block has a cached delta, is not on an always-compute step (the first `first_steps`, the last
  `last_steps`), has been skipped fewer than `max_skips` times in a row, and E_acc(l) + r(l) <= tau_c;
- otherwise its linears run on one path: the mode's (bf16 / int8 / nvfp4), or for "sixbit" NVFP4 when the predicted
  error alpha_l * Γ(l, t-1) + beta_l <= tau_q and INT8 otherwise (INT8 too when Γ(l, t-1) is unknown: first step,
  or the block was skipped); with PDR, a block recomputed after skips runs "pdr" (per-linear BF16 fallback when
  the input outlier ratio exceeds `outlier_ratio`, INT8 otherwise).
After the step (`update_state`): E_acc grows by r on a skip and resets on a compute; Γ, r and the delta are
refreshed by every compute.

Mode "replay" takes its routes from a recorded schedule instead (`resample_schedule` stretches one recorded on a
small model to a large one): it measures the speed of a route mix that the large model's random weights would not
produce."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sixbit_jax.errors import ConfigError
from sixbit_jax.layers.quant_dense import PDR_OUTLIER_RATIO
from sixbit_jax.quant.formats import NVFP4_OPERANDS
from sixbit_jax.models.block_control import BF16, CALIBRATE, INT8, NVFP4, PDR, ROUTE_NAMES, SKIP, DeltaCache

MODES = ("bf16", "int8", "nvfp4", "sixbit", "calibrate", "replay")
CACHE_DTYPES = ("float32", "bfloat16", "float16", "float8_e4m3fn")
ATTENTION_PRECISIONS = ("bf16", "int8")  # of the blocks' self-attention (layers.attention)
FIXED_MODE_ROUTES = {"bf16": BF16, "int8": INT8, "nvfp4": NVFP4, "calibrate": CALIBRATE}  # every computed block
ROUTE_BITS = {SKIP: 0.0, BF16: 16.0, INT8: 8.0, NVFP4: 4.0, CALIBRATE: 16.0}  # PDR: by its fallbacks


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Every knob of the method (sixbit-method.md). alpha/beta/tau_q come from `sixbit calibrate`."""

    mode: str = "sixbit"
    tdc: bool = False
    pdr: bool = True  # only acts with tdc (a refresh follows a skip)
    alpha: tuple[float, ...] | None = None  # per block
    beta: tuple[float, ...] | None = None
    tau_q: float | tuple[float, ...] | None = None  # route NVFP4 when the predicted error <= tau_q (or per block)
    tau_c: float = 0.3  # TDC skip threshold on E_acc + r
    max_skips: int = 2  # N_max
    first_steps: int = 2  # always computed
    last_steps: int = 1
    outlier_ratio: float = PDR_OUTLIER_RATIO  # PDR: max|x| / mean|x| above this runs BF16
    # fp8 (scaled per layer) keeps the full method's peak memory at BF16's on CogVideoX-2B; bfloat16 doubles the cache
    cache_dtype: str = "float8_e4m3fn"
    backend: str | None = None  # quantized linears: None = Pallas kernels on GPU, jnp references on CPU
    schedule: tuple[tuple[int, ...], ...] | None = None  # mode replay: a recorded route per step and block
    attention: str = "bf16"  # self-attention in every computed block: bf16 (cuDNN) or int8 (8-bit Q·Kᵀ kernel)
    # mode calibrate: also measure each block's NVFP4 sensitivity at the model's output (one more forward per block
    # and step, calibration only): StepStats.output_error
    output_sensitivity: bool = False
    # the NVFP4 linears' operands on a GPU without FP4 tensor cores: "bf16" (code x block scale, exact) or "fp8"
    # (those values rounded as FP8 tensor cores take them: formats.fp8_rounded)
    nvfp4_operands: str = "bf16"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.attention not in ATTENTION_PRECISIONS:
            raise ConfigError(f"unknown attention precision {self.attention!r}; use one of "
                              f"{', '.join(ATTENTION_PRECISIONS)}")
        if self.nvfp4_operands not in NVFP4_OPERANDS:
            raise ConfigError(f"unknown NVFP4 operands {self.nvfp4_operands!r}; use one of "
                              f"{', '.join(NVFP4_OPERANDS)}")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ConfigError(f"unsupported delta cache dtype {self.cache_dtype!r}; use one of "
                              f"{', '.join(CACHE_DTYPES)}")
        if self.mode == "sixbit" and (self.alpha is None or self.beta is None or self.tau_q is None):
            raise ConfigError("mode sixbit needs a calibration (alpha, beta, tau_q): run `sixbit calibrate` and pass "
                              "its file with --calibration")
        for name in ("alpha", "beta", "tau_q"):
            value = getattr(self, name)
            if isinstance(value, tuple) and self.alpha is not None and len(value) != len(self.alpha):
                raise ConfigError(f"{name} has {len(value)} entries but alpha has {len(self.alpha)}: one per block")
        if (self.mode == "replay") != (self.schedule is not None):
            raise ConfigError("mode replay takes a route schedule, and only replay does")
        if self.output_sensitivity and self.mode != "calibrate":
            raise ConfigError("output_sensitivity is measured in calibration rollouts (mode calibrate) only")

    @property
    def caches_deltas(self) -> bool:
        """TDC skips need the cached deltas; calibration needs them for r (and tau_c)."""
        return self.tdc or self.mode == "calibrate" or SKIP in self.possible_routes

    @property
    def possible_routes(self) -> tuple[int, ...]:
        """The block routes `choose_routes` can return under this config (the sampler compiles only these)."""
        if self.schedule is not None:
            return tuple(sorted({r for row in self.schedule for r in row}))
        routes = {FIXED_MODE_ROUTES[self.mode]} if self.mode in FIXED_MODE_ROUTES else {INT8, NVFP4}
        if self.tdc:
            routes |= {SKIP} | ({PDR} if self.pdr and self.quantized else set())
        return tuple(sorted(routes))

    @property
    def quantized(self) -> bool:
        return self.mode != "bf16"

    def knobs(self) -> dict:
        """The values a benchmark row reports."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("alpha", "beta", "backend", "schedule")}

    def numbers(self, num_layers: int) -> "RuntimeNumbers":
        """The thresholds and the predictor as arrays: the compiled sampler takes them as inputs, so a new
        calibration, tau_c or PDR threshold reuses the program."""
        zeros = (0.0,) * num_layers
        return RuntimeNumbers(jnp.asarray(self.alpha or zeros, jnp.float32),
                              jnp.asarray(self.beta or zeros, jnp.float32),
                              jnp.asarray(0.0 if self.tau_q is None else self.tau_q, jnp.float32),
                              jnp.asarray(self.tau_c, jnp.float32), jnp.asarray(self.outlier_ratio, jnp.float32))

    def structure(self) -> "RuntimeConfig":
        """This config with its numbers replaced by placeholders of the same form: the part the compiled sampler
        depends on (its static key)."""
        placeholder = lambda v: None if v is None else (tuple(0.0 for _ in v) if isinstance(v, tuple) else 0.0)  # noqa: E731
        return dataclasses.replace(self, alpha=placeholder(self.alpha), beta=placeholder(self.beta),
                                   tau_q=placeholder(self.tau_q), tau_c=0.0, outlier_ratio=0.0)


class RuntimeNumbers(NamedTuple):
    """RuntimeConfig's numbers as device arrays (see RuntimeConfig.numbers)."""

    alpha: jax.Array  # [L] (zeros where the mode has no predictor)
    beta: jax.Array  # [L]
    tau_q: jax.Array  # [] or [L]
    tau_c: jax.Array  # []
    outlier_ratio: jax.Array  # [] PDR's threshold


def calibration_fields(path: str | Path) -> dict:
    """The RuntimeConfig fields a calibration file sets: alpha, beta, tau_q (one, or one per block), tau_c and,
    in files that calibrated it, PDR's outlier_ratio."""
    try:
        raw = json.loads(Path(path).read_text())
        tau_q = tuple(map(float, raw["tau_q"])) if isinstance(raw["tau_q"], list) else float(raw["tau_q"])
        fields = {"alpha": tuple(map(float, raw["alpha"])), "beta": tuple(map(float, raw["beta"])),
                  "tau_q": tau_q, "tau_c": float(raw["tau_c"])}
        if raw.get("outlier_ratio") is not None:
            fields["outlier_ratio"] = float(raw["outlier_ratio"])
        return fields
    except FileNotFoundError:
        raise ConfigError(f"calibration file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"calibration file {path} is not valid ({type(e).__name__}: {e})") from None


def fields_for_run(path: str | Path, mode: str, tdc: bool) -> dict:
    """What a calibration file sets for one run: DMPQ ("sixbit") takes the predictor and every threshold, another
    mode with the delta cache tau_c and PDR's outlier ratio, anything else nothing."""
    if mode == "sixbit":
        return calibration_fields(path)
    fields = calibration_fields(path)
    return {k: fields[k] for k in ("tau_c", "outlier_ratio") if k in fields} if tdc else {}


class RuntimeState(NamedTuple):
    """Per-block state carried from step to step ([L] each, plus the cached deltas)."""

    gamma: jax.Array  # Γ at the block's last compute
    gamma_valid: jax.Array  # bool: computed at the previous step
    change: jax.Array  # r at the block's last compute
    e_acc: jax.Array  # accumulated estimated error since the last compute
    skips: jax.Array  # int32: consecutive skips so far
    has_delta: jax.Array  # bool
    cache: DeltaCache  # the deltas (placeholders unless `caches_deltas`)


class StepStats(NamedTuple):
    """Per-step, per-block record the sampler returns ([steps, L] each after the scan)."""

    route: jax.Array
    gamma: jax.Array  # NaN where not measured
    change: jax.Array  # NaN where not measured
    fallbacks: jax.Array
    nvfp4_error: jax.Array  # calibrate: NVFP4 sensitivity at the block output
    linear_error: jax.Array  # calibrate: mean NVFP4 error of the block's linears (the earlier signal; a report)
    outlier_ratio: jax.Array | None = None  # calibrate: [steps, L, linears] each linear's input max|x| / mean|x|
    # calibrate with output_sensitivity: [steps, L] |v_l - v|₁ / |v|₁, v_l the model output with block l alone on
    # NVFP4 activations (every other block on the calibrate path's numerics), from the same input
    output_error: jax.Array | None = None


def concatenate_stats(runs: list[StepStats]) -> StepStats:
    """Several runs' records as one, along the steps; a field no run measured stays None."""
    return StepStats(*(None if any(getattr(r, field) is None for r in runs)
                       else np.concatenate([getattr(r, field) for r in runs]) for field in StepStats._fields))


def init_state(num_layers: int, stream_shapes: tuple[tuple[int, ...], ...], cfg: RuntimeConfig) -> RuntimeState:
    """The state before the first step; `stream_shapes` are the model's block streams ([B, N, D] each)."""
    zeros = jnp.zeros((num_layers,), jnp.float32)
    false = jnp.zeros((num_layers,), bool)
    # Without cached deltas the cache is [L, 1, 1, 1] placeholders, not a copy of the activations (4 GiB in bf16
    # at CogVideoX-2B shape); the blocks then report r = 0.
    cache = DeltaCache.create(num_layers, stream_shapes, jnp.dtype(cfg.cache_dtype),
                              placeholders=not cfg.caches_deltas)
    return RuntimeState(zeros, false, jnp.full((num_layers,), jnp.inf), zeros, jnp.zeros((num_layers,), jnp.int32),
                        false, cache)


def choose_routes(cfg: RuntimeConfig, state: RuntimeState, step: jax.Array, num_steps: int,
                  numbers: RuntimeNumbers | None = None) -> jax.Array:
    """[L] int32 routes for this step (see the module docstring). `numbers` (default: cfg's) supply the predictor
    and the thresholds; `cfg` only the structure."""
    num_layers = state.gamma.shape[0]
    numbers = numbers if numbers is not None else cfg.numbers(num_layers)
    if cfg.schedule is not None:
        if np.shape(cfg.schedule) != (num_steps, num_layers):
            raise ConfigError(f"route schedule is {np.shape(cfg.schedule)}; this run needs ({num_steps}, {num_layers})")
        return jnp.asarray(cfg.schedule, jnp.int32)[step]
    if cfg.mode in FIXED_MODE_ROUTES:
        routes = jnp.full((num_layers,), FIXED_MODE_ROUTES[cfg.mode], jnp.int32)
    else:
        predicted = numbers.alpha * state.gamma + numbers.beta
        routes = jnp.where(state.gamma_valid & (predicted <= numbers.tau_q), NVFP4, INT8).astype(jnp.int32)
    if not cfg.tdc:
        return routes
    if cfg.pdr and cfg.quantized:
        routes = jnp.where(state.skips > 0, PDR, routes)
    always = (step < cfg.first_steps) | (step >= num_steps - cfg.last_steps)
    skip = (~always & state.has_delta & (state.skips < cfg.max_skips)
            & (state.e_acc + state.change <= numbers.tau_c))
    return jnp.where(skip, SKIP, routes).astype(jnp.int32)


def resample_schedule(routes: np.ndarray, steps: int, layers: int) -> tuple[tuple[int, ...], ...]:
    """A recorded [steps', layers'] route table stretched to [steps, layers] by nearest step (in relative time) and
    block (in relative depth): the bit and skip mix of one model replayed at another's size (for benchmarks)."""
    routes = np.asarray(routes)
    rows = np.rint(np.linspace(0, routes.shape[0] - 1, steps)).astype(int)
    cols = (np.arange(layers) * routes.shape[1]) // layers
    return tuple(map(tuple, routes[np.ix_(rows, cols)].astype(int).tolist()))


def update_state(state: RuntimeState, routes: jax.Array, report) -> RuntimeState:
    """Fold one step's BlockReport into the state."""
    skipped = routes == SKIP
    return RuntimeState(
        gamma=jnp.where(skipped, state.gamma, report.gamma),
        gamma_valid=~skipped,
        change=jnp.where(skipped, state.change, jnp.where(state.has_delta, report.change, jnp.inf)),
        e_acc=jnp.where(skipped, state.e_acc + state.change, 0.0),
        skips=jnp.where(skipped, state.skips + 1, 0),
        has_delta=state.has_delta | ~skipped,
        cache=report.cache,
    )


def step_stats(state: RuntimeState, routes: jax.Array, report) -> StepStats:
    """This step's record; Γ and r are NaN where they were not measured (a skip; r also before the first delta)."""
    computed = routes != SKIP
    return StepStats(routes, jnp.where(computed, report.gamma, jnp.nan),
                     jnp.where(computed & state.has_delta, report.change, jnp.nan), report.fallbacks,
                     report.nvfp4_error, report.linear_error, report.outlier_ratio)


@dataclasses.dataclass
class RunSummary:
    """What the CLI prints: activation bits (skips as 0, and without skips), skip fraction, fallbacks, route mix."""

    bits_with_skips: float
    bits_without_skips: float
    skip_fraction: float
    bf16_fallbacks: int
    route_fraction: dict[str, float]

    @classmethod
    def from_stats(cls, stats: StepStats, activation_linears: int) -> "RunSummary":
        """`activation_linears`: how many linears of a block quantize their inputs (a PDR block's bits average
        16 for its fallbacks and 8 for the rest)."""
        routes = np.asarray(stats.route)
        fallbacks = np.asarray(stats.fallbacks)
        bits = np.vectorize(lambda r: ROUTE_BITS.get(int(r), 0.0))(routes).astype(np.float64)
        pdr = routes == PDR
        n = activation_linears
        bits[pdr] = (16.0 * fallbacks[pdr] + 8.0 * (n - fallbacks[pdr])) / n
        computed = routes != SKIP
        return cls(float(bits.mean()), float(bits[computed].mean()) if computed.any() else 0.0,
                   float(1.0 - computed.mean()), int(round(float(fallbacks[pdr].sum()))),
                   {name: float((routes == i).mean()) for i, name in enumerate(ROUTE_NAMES) if (routes == i).any()})

    def line(self) -> str:
        mix = ", ".join(f"{k} {v:.0%}" for k, v in self.route_fraction.items())
        return (f"activation bits {self.bits_with_skips:.2f} (skips as 0; {self.bits_without_skips:.2f} over computed "
                f"blocks), skipped {self.skip_fraction:.0%}, bf16 fallbacks {self.bf16_fallbacks} | blocks: {mix}")
