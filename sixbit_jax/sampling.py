"""The sampler: one jitted `lax.scan` over timesteps, classifier-free guidance as one doubled batch.

Per step, as diffusers' pipelines do it: the model runs on [latents; latents] with [negative; positive] text, its
output is upcast to float32, guided (v_u + g (v_c - v_u)), stepped by the scheduler, and the latents are cast to
the family's latents dtype (CogVideoX: the model dtype; Wan: float32). Scheduler coefficients, timesteps and
per-step guidance are scan inputs, so the compiled program depends only on shapes: a new seed, guidance or prompt
reuses it.

The sampler knows no model family. A model offers: `config.num_layers`, `latent_shape(batch, frames, height,
width)` (and `video_size(height, width)`, its defaults, for pipelines), `tables_for(latents_shape)` (host-computed
positions), `stream_shapes(latents_shape, text_shape)` (the block streams the delta cache holds), `condition_mode`
with `CONDITION_AXIS` and `FRAME_AXIS` (how image latents condition it, see `_checked_condition`),
`latents_dtype`, `default_scheduler_config()`,
`ACTIVATION_LINEARS`, `check_inputs`, `quant`, and a call `model(latents, text, timesteps, tables, *,
return_block_finite=, control=)`; a model of several experts (Wan2.2 A14B) also `expert_of(timesteps)`."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from sixbit_jax import parallel, rng
from sixbit_jax.errors import InputError, SamplingError
from sixbit_jax.models.block_control import BF16, NVFP4, BlockControl, DeltaCache, l1_ratio
from sixbit_jax.runtime import (RunSummary, RuntimeConfig, RuntimeNumbers, StepStats, choose_routes, init_state,
                                step_stats, update_state)
from sixbit_jax.schedulers import FlowSchedulerConfig, SchedulerConfig, dynamic_guidance, make_schedule


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    scheduler: str | None = None  # None: what the model's scheduler config ships (ddim/dpm, unipc for Wan)
    num_steps: int = 50
    guidance_scale: float = 6.0
    use_dynamic_cfg: bool = False
    seed: int = 0
    guidance_scale_2: float | None = None  # two-expert models (Wan2.2 A14B): the low-noise expert's guidance
    # a pipeline folder's (SchedulerConfig or FlowSchedulerConfig); None: the model family's default
    scheduler_config: SchedulerConfig | FlowSchedulerConfig | None = None

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0


@dataclasses.dataclass
class SampleResult:
    latents: jax.Array  # the family's layout and latents dtype
    seconds: float  # wall time of the denoising loop (compilation included on a first call)
    schedule: object  # the scheduler's schedule (timesteps, coefficients)
    guidance: np.ndarray  # [num_steps] guidance actually used
    stats: StepStats | None = None  # 6Bit runtime only: per step and block, route / Γ / r / fallbacks / NVFP4 error
    summary: RunSummary | None = None


# The progress bar the scan ticks through jax.debug.callback; a module-level slot so the compiled program (which
# holds the callback) stays the same from call to call.
_progress: dict[str, tqdm | None] = {"bar": None}


def _tick(_step_index) -> None:
    bar = _progress["bar"]
    if bar is not None:
        bar.update(1)


def sample(model, prompt_embeds, negative_embeds=None, *, latents=None,
           settings: SamplerSettings = SamplerSettings(), frames: int | None = None, height: int | None = None,
           width: int | None = None, step_noise=None, progress: bool = False,
           runtime: RuntimeConfig | None = None, condition=None, mesh=None) -> SampleResult:
    """Denoise from `latents` (or Gaussian noise drawn from `settings.seed`) and return the final latents.

    model: a CogVideoXTransformer3D, WanTransformer3D or WanExperts (anything with the interface in the module
    docstring).
    prompt_embeds / negative_embeds: text encoder outputs [B, L, text_dim] (T5 for CogVideoX, umT5 for Wan);
    negative ones are needed when guidance > 1.
    latents: in the family's layout (CogVideoX [B, F, C, H, W], Wan [B, C, F, H, W]).
    frames/height/width: pixel-space size when no latents are given (defaults: the model's sample size).
    step_noise: optional [num_steps, *latents.shape] noise for the stochastic DPM scheduler (else drawn from seed).
    runtime: the 6Bit runtime (mode, delta cache, PDR, calibration); None runs every block in the model's dtype.
    condition: image latents, by the model's `condition_mode`: "channels" (CogVideoX I2V; shaped like the latents,
    concatenated to them on channels at every step, the pipeline's `image_latents`) or "first_frame" (Wan2.2 TI2V;
    one latent frame that replaces the first at every step and in the result, its tokens at timestep 0).
    mesh: a 1-D device mesh (`parallel.sequence_mesh(n)`): the tokens split over its devices (sequence
    parallelism, `parallel.sequence_attention`); None: one device."""
    if runtime is not None and runtime.quantized and model.quant is None:
        raise InputError(f"mode {runtime.mode} needs a quantized model: convert with `sixbit convert --quant nvfp4` "
                         f"or quantize a loaded one with sixbit_jax.quant.model.quantize_model")
    if runtime is not None and runtime.alpha is not None and len(runtime.alpha) != model.config.num_layers:
        raise InputError(f"the calibration has {len(runtime.alpha)} blocks but this model has "
                         f"{model.config.num_layers}: calibrate this checkpoint with `sixbit calibrate`")
    prompt_embeds = jnp.asarray(prompt_embeds)
    text = _text_batch(prompt_embeds, negative_embeds, settings, model.dtype)
    key_latents, key_noise = jax.random.split(jax.random.key(settings.seed))
    if latents is None:
        shape = model.latent_shape(prompt_embeds.shape[0], frames, height, width)
        latents = rng.normal(key_latents, shape, jnp.float32)
    latents = jnp.asarray(latents).astype(model.latents_dtype)
    if latents.shape[0] != prompt_embeds.shape[0]:
        raise InputError(f"latents batch {latents.shape[0]} does not match the embeddings' batch "
                         f"{prompt_embeds.shape[0]}")
    condition = _checked_condition(model, latents, condition)
    axis, channels = model.CONDITION_AXIS, condition is not None and model.condition_mode == CHANNELS
    model.check_inputs(latents.shape[:axis] + (latents.shape[axis] + condition.shape[axis],) + latents.shape[axis + 1:]
                       if channels else latents.shape, prompt_embeds.shape)

    scheduler_config = settings.scheduler_config or model.default_scheduler_config()
    schedule = make_schedule(settings.scheduler or scheduler_config.default_scheduler, settings.num_steps,
                             scheduler_config)
    guidance = (dynamic_guidance(settings.guidance_scale, schedule.timesteps) if settings.use_dynamic_cfg
                else np.full(schedule.num_steps, settings.guidance_scale))
    guidance = _expert_guidance(model, schedule.timesteps, guidance, settings, runtime)
    if step_noise is not None:
        step_noise = jnp.asarray(step_noise)
        if step_noise.shape != (schedule.num_steps,) + latents.shape:
            raise InputError(f"step noise must be {(schedule.num_steps,) + latents.shape}; got {step_noise.shape}")

    tables = model.tables_for(latents.shape)
    graphdef, state = nnx.split(model)
    start = time.perf_counter()
    _progress["bar"] = tqdm(total=schedule.num_steps, desc="sampling", unit="step", disable=not progress)
    try:
        numbers = runtime.numbers(model.config.num_layers) if runtime is not None else None
        inputs = parallel.replicate((state, latents, text, tables, jnp.asarray(schedule.timesteps, jnp.float32),
                                     schedule.device_coefficients(), jnp.asarray(guidance, jnp.float32), step_noise,
                                     key_noise, condition, numbers), mesh)
        out, block_finite, latents_finite, stats = _denoise(
            graphdef, *inputs, use_cfg=settings.uses_cfg, stochastic=schedule.stochastic,
            schedule_type=type(schedule), runtime=runtime.structure() if runtime is not None else None, mesh=mesh)
        out.block_until_ready()
    finally:
        _progress["bar"].close()
        _progress["bar"] = None
    seconds = time.perf_counter() - start
    _raise_if_not_finite(np.asarray(block_finite), np.asarray(latents_finite), schedule.timesteps)
    stats = jax.device_get(stats)
    summary = RunSummary.from_stats(stats, len(model.ACTIVATION_LINEARS)) if stats else None
    return SampleResult(out, seconds, schedule, guidance, stats, summary)


def _expert_guidance(model, timesteps, guidance: np.ndarray, settings: SamplerSettings,
                     runtime: RuntimeConfig | None) -> np.ndarray:
    """The per-step guidance with a two-expert model's second scale on the low-noise expert's steps; what such a
    model cannot run yet is refused."""
    expert_of = getattr(model, "expert_of", None)
    if expert_of is None:
        if settings.guidance_scale_2 is not None:
            raise InputError("a second guidance scale is for models with two experts (Wan2.2 A14B)")
        return guidance
    if runtime is not None and runtime.caches_deltas:
        raise InputError("the delta cache (--tdc, calibration) does not carry across the switch between Wan2.2's two "
                         "experts yet: run the quantized modes without it")
    if settings.guidance_scale_2 is None:
        return guidance
    return np.where(expert_of(timesteps) == 1, settings.guidance_scale_2, guidance)


CHANNELS, FIRST_FRAME = "channels", "first_frame"  # model.condition_mode: how image latents condition a model


def _checked_condition(model, latents, condition):
    """The image latents (in the latents dtype) for the model's `condition_mode`: None takes no image; "channels"
    needs latents-shaped image latents; "first_frame" takes, optionally, one latent frame (FRAME_AXIS of size 1)."""
    mode = model.condition_mode
    if condition is None:
        if mode == CHANNELS:
            raise InputError("this is an image-to-video model (in_channels = 2 x out_channels): it needs the image "
                             "latents (`sixbit generate PIPELINE --image FILE`)")
        return None
    if mode is None:
        raise InputError("image latents were given but this is a text-to-video model")
    condition = jnp.asarray(condition)
    want = latents.shape
    if mode == FIRST_FRAME:
        want = want[:model.FRAME_AXIS] + (1,) + want[model.FRAME_AXIS + 1:]
    if condition.shape != want:
        raise InputError(f"image latents {tuple(condition.shape)} must be {tuple(want)} for this model "
                         f"({mode.replace('_', ' ')} conditioning)")
    return condition.astype(model.latents_dtype)


def _model_input(model, latents, condition, t):
    """One step's model input and timesteps for the batch (before CFG doubles it): the latents with the image
    latents by the model's condition mode; first-frame conditioning gives each latent frame its own timestep, 0 on
    the clean image frame (diffusers' expand_timesteps)."""
    batch = latents.shape[0]
    if condition is None:
        return latents, jnp.full((batch,), t)
    if model.condition_mode == CHANNELS:
        return jnp.concatenate([latents, condition], axis=model.CONDITION_AXIS), jnp.full((batch,), t)
    frames = latents.shape[model.FRAME_AXIS]
    per_frame = jnp.where(jnp.arange(frames) == 0, jnp.zeros((), jnp.float32), t)
    return _with_first_frame(model, latents, condition), jnp.broadcast_to(per_frame, (batch, frames))


def _with_first_frame(model, latents, condition):
    return jax.lax.dynamic_update_slice_in_dim(latents, condition, 0, model.FRAME_AXIS)


def _text_batch(prompt_embeds, negative_embeds, settings: SamplerSettings, dtype):
    """[negative; positive] for classifier-free guidance (the pipeline's order), else the prompt alone."""
    if not settings.uses_cfg:
        return prompt_embeds.astype(dtype)
    if negative_embeds is None:
        raise InputError("guidance > 1 needs negative embeddings (the T5 encoding of the negative prompt; "
                         "diffusers encodes the empty prompt ''), or set guidance to 1 to sample without CFG")
    negative_embeds = jnp.asarray(negative_embeds)
    if negative_embeds.shape != prompt_embeds.shape:
        raise InputError(f"negative embeddings {tuple(negative_embeds.shape)} must have the prompt embeddings' "
                         f"shape {tuple(prompt_embeds.shape)}")
    return jnp.concatenate([negative_embeds, prompt_embeds]).astype(dtype)


def _denoise_impl(graphdef, state, latents, text, tables, timesteps, coefficients, guidance, step_noise, key_noise,
                  condition, numbers: RuntimeNumbers | None, *, use_cfg: bool, stochastic: bool, schedule_type: type,
                  runtime: RuntimeConfig | None, mesh=None):
    """The jitted loop. `runtime` is the runtime's structure (static); its numbers come traced in `numbers`; `mesh`
    (static) makes attention sequence-parallel while the loop is traced."""
    with parallel.sequence_parallel(mesh):
        return _denoise_loop(graphdef, state, latents, text, tables, timesteps, coefficients, guidance, step_noise,
                             key_noise, condition, numbers, use_cfg=use_cfg, stochastic=stochastic,
                             schedule_type=schedule_type, runtime=runtime)


def _denoise_loop(graphdef, state, latents, text, tables, timesteps, coefficients, guidance, step_noise, key_noise,
                  condition, numbers, *, use_cfg, stochastic, schedule_type, runtime):
    model = nnx.merge(graphdef, state)
    batch = latents.shape[0]
    num_steps = timesteps.shape[0]

    def one_step(carry, xs):
        latents, scheduler_carry, blocks = carry
        index, t, c, g, noise = xs
        model_in, t_in = _model_input(model, latents, condition, t)
        model_in = model_in.astype(model.dtype)
        if use_cfg:
            model_in, t_in = jnp.concatenate([model_in, model_in]), jnp.concatenate([t_in, t_in])
        if runtime is None:
            v, block_finite = model(model_in, text, t_in, tables, return_block_finite=True)
            record = None
        else:
            routes = choose_routes(runtime, blocks, index, num_steps, numbers)
            control = BlockControl(routes, blocks.cache, numbers.outlier_ratio, runtime.backend,
                                   runtime.possible_routes, runtime.attention, runtime.nvfp4_operands)
            v, report = model(model_in, text, t_in, tables, control=control)
            record = step_stats(blocks, routes, report)
            if runtime.output_sensitivity:
                record = record._replace(output_error=_output_sensitivity(model, model_in, text, t_in, tables, v,
                                                                          blocks.cache, control))
            blocks, block_finite = update_state(blocks, routes, report), report.finite
        v = v.astype(jnp.float32)
        if use_cfg:
            v_uncond, v_text = v[:batch], v[batch:]
            v = v_uncond + g * (v_text - v_uncond)
        if not stochastic:
            noise = jnp.zeros((), latents.dtype)
        elif noise is None:
            noise = rng.normal(jax.random.fold_in(key_noise, index), latents.shape, jnp.float32)
        new_latents, scheduler_carry = schedule_type.update(c, latents, v, scheduler_carry, noise.astype(latents.dtype))
        new_latents = new_latents.astype(latents.dtype)
        jax.debug.callback(_tick, index)
        return (new_latents, scheduler_carry, blocks), (block_finite, jnp.isfinite(new_latents).all(), record)

    blocks = None
    if runtime is not None:
        model_batch = batch * (2 if use_cfg else 1)
        blocks = init_state(model.config.num_layers,
                            model.stream_shapes((model_batch,) + latents.shape[1:], (model_batch,) + text.shape[1:]),
                            runtime)
    steps = jnp.arange(num_steps)
    xs = (steps, timesteps, coefficients, guidance, step_noise)
    (latents, _, _), (block_finite, latents_finite, stats) = jax.lax.scan(
        one_step, (latents, schedule_type.initial_carry(latents), blocks), xs)
    if condition is not None and model.condition_mode == FIRST_FRAME:  # the result keeps the image's frame
        latents = _with_first_frame(model, latents, condition)
    return latents, block_finite, latents_finite, stats


def _output_sensitivity(model, model_in, text, t_in, tables, v, cache: DeltaCache, control: BlockControl):
    """[L] |v_l - v|₁ / |v|₁: how far the model's output moves when block l alone runs its linears on NVFP4
    activations, the others on bf16 activations (the calibrate path's numerics), all from this step's input. One
    forward per block, mapped over l (the route table is data: one compiled forward)."""
    num_layers = control.routes.shape[0]
    placeholders = DeltaCache.create(num_layers, [d.shape[1:] for d in cache.deltas], cache.deltas[0].dtype,
                                     placeholders=True)

    def one(layer):
        routes = jnp.where(jnp.arange(num_layers) == layer, NVFP4, BF16).astype(jnp.int32)
        alone = control._replace(routes=routes, cache=placeholders, possible_routes=(BF16, NVFP4))
        v_layer, _ = model(model_in, text, t_in, tables, control=alone)
        return l1_ratio([v_layer.astype(jnp.float32) - v.astype(jnp.float32)], [v])

    return jax.lax.map(one, jnp.arange(num_layers))


_denoise = jax.jit(_denoise_impl, static_argnums=(0,), static_argnames=("use_cfg", "stochastic", "schedule_type",
                                                                         "runtime", "mesh"))


def _raise_if_not_finite(block_finite: np.ndarray, latents_finite: np.ndarray, timesteps: np.ndarray) -> None:
    bad_steps = np.flatnonzero(~block_finite.all(axis=1) | ~latents_finite)
    if bad_steps.size == 0:
        return
    i = int(bad_steps[0])
    bad_blocks = np.flatnonzero(~block_finite[i])
    where = (f"first in transformer block {int(bad_blocks[0])}" if bad_blocks.size
             else "in the head or the scheduler update (all blocks were finite)")
    raise SamplingError(f"non-finite values (NaN/Inf) at step {i} (timestep {timesteps[i]:g}), {where}")
