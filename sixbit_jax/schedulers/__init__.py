from sixbit_jax.schedulers.cogvideox import (
    SCHEDULERS,
    Schedule,
    SchedulerConfig,
    StepCoefficients,
    dynamic_guidance,
    make_schedule,
    step,
)

__all__ = ["SCHEDULERS", "Schedule", "SchedulerConfig", "StepCoefficients", "dynamic_guidance", "make_schedule",
           "step"]
