"""Schedulers: CogVideoX's DDIM and DPM (v-prediction), and the flow-matching UniPC and Euler (Wan's).

Every schedule offers the sampler one interface: `timesteps` (what the model is fed), `num_steps`, `stochastic`,
`device_coefficients()` (per-step arrays, scan inputs) and the static `initial_carry(sample)` and
`update(coefficients, sample, v, carry, noise) -> (next sample, carry)`. `make_schedule` picks by name and checks
that the name belongs to the model's scheduler family (its config type)."""

from sixbit_jax.errors import ConfigError
from sixbit_jax.schedulers import cogvideox, flow
from sixbit_jax.schedulers.cogvideox import Schedule, SchedulerConfig, StepCoefficients, dynamic_guidance, step
from sixbit_jax.schedulers.flow import FlowSchedulerConfig

SCHEDULERS = cogvideox.SCHEDULERS + flow.SCHEDULERS


def make_schedule(kind: str, num_steps: int, config: "SchedulerConfig | FlowSchedulerConfig" = SchedulerConfig()):
    """The named schedule for `num_steps`; `config` is the model's (CogVideoX: SchedulerConfig; flow models:
    FlowSchedulerConfig)."""
    families = {SchedulerConfig: (cogvideox.SCHEDULERS, cogvideox.make_schedule),
                FlowSchedulerConfig: (flow.SCHEDULERS, flow.make_flow_schedule)}
    kinds, make = families[type(config)]
    if kind not in kinds:
        known = "unknown" if kind not in SCHEDULERS else "not this model's"
        raise ConfigError(f"scheduler {kind!r} is {known}; this model samples with {', '.join(kinds)}")
    return make(kind, num_steps, config)


__all__ = ["SCHEDULERS", "FlowSchedulerConfig", "Schedule", "SchedulerConfig", "StepCoefficients",
           "dynamic_guidance", "make_schedule", "step"]
