"""`sixbit`: convert diffusers CogVideoX checkpoints, sample, run the demo, evaluate quality."""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from sixbit_jax.arguments import (activation_bits, existing_file, existing_folder, fraction, hadamard_block,
                                  non_negative_float, non_negative_int, positive_float, positive_int, writable_file,
                                  writable_folder)
from sixbit_jax.errors import InputError, SixbitError

DESCRIPTION = """\
sixbit-jax: video diffusion transformers (CogVideoX, Wan) in JAX, with the 6Bit-Diffusion runtime.

Start with `sixbit demo` (the shipped shapes model; CPU is fine). Each command has its own --help.
Precision modes (demo, generate, sample): --mode bf16 | int8 (W4A8) | nvfp4 (W4A4) | sixbit (DMPQ routing per block
and step), with --tdc (temporal delta cache: skip blocks whose output delta barely changes) and --no-pdr (no
purified refresh)."""


def _peak_memory() -> str:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"peak device memory {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
    return f"peak host memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def cmd_convert(args) -> None:
    from convert import convert_checkpoint

    existing_folder(args.src, "SRC")
    dst = Path(args.dst)
    if dst.exists() and not args.force:
        raise InputError(f"DST {dst} already exists (pass --force to replace it)")
    writable_folder(dst.absolute().parent, "DST's folder")
    start = time.perf_counter()
    from sixbit_jax.quant.spec import QuantSpec

    quant = QuantSpec(args.hadamard_block) if getattr(args, "quant", None) == "nvfp4" else None
    dst = convert_checkpoint(args.src, args.dst, dtype=args.dtype, overwrite=args.force, progress=not args.quiet,
                             quant=quant)
    weights = f"NVFP4 block linears (Hadamard {quant.hadamard_block}), rest {args.dtype}" if quant else args.dtype
    print(f"converted {args.src} -> {dst} ({weights}) in {time.perf_counter() - start:.1f} s | {_peak_memory()} | "
          f"{_weight_bytes(dst)}")


def _weight_bytes(ckpt) -> str:
    """Resident DiT weight bytes of a checkpoint as stored; for NVFP4 ones also the ratio to the same model in bf16."""
    import jax

    from sixbit_jax.checkpoint import abstract_params, read_info
    from sixbit_jax.config import transformer_config
    from sixbit_jax.quant.spec import QuantSpec

    info = read_info(ckpt)
    cfg = transformer_config(info.get("config"), str(ckpt))
    quant = QuantSpec.from_dict(info.get("quant"))
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    stored = nbytes(abstract_params(cfg, info.get("dtype", "bf16"), quant))
    line = f"transformer weights {stored / 2**20:.1f} MiB"
    if quant is not None:
        line += f", 1/{nbytes(abstract_params(cfg, 'bf16')) / stored:.2f} of the same model in bf16"
    return line


def _load_embeds(path, what: str, model) -> np.ndarray:
    from sixbit_jax.io import load_array

    names = ("negative_prompt_embeds",) if what == "negative" else ("prompt_embeds",)
    array = load_array(path, names)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[-1] != model.config.text_embed_dim:
        raise InputError(f"{path}: {what} embeddings must be [B, L, {model.config.text_embed_dim}] (T5 outputs for "
                         f"this model); got {tuple(array.shape)}")
    return array


def cmd_sample(args) -> None:
    import jax

    from sixbit_jax.checkpoint import load_checkpoint
    from sixbit_jax.io import load_array, save_array
    from sixbit_jax.models import model_class
    from sixbit_jax.sampling import SamplerSettings, sample

    cfg = _checkpoint_config(_check_checkpoint(args.checkpoint))
    scheduler, scheduler_config = _scheduler_choice(args, cfg)
    guidance = args.guidance if args.guidance is not None else model_class(cfg).DEFAULT_GUIDANCE
    settings = SamplerSettings(scheduler=scheduler, num_steps=args.steps, guidance_scale=guidance,
                               use_dynamic_cfg=args.dynamic_cfg, seed=args.seed, scheduler_config=scheduler_config)
    _check_video_size(args)
    writable_file(args.out, "--out", (".npy", ".safetensors"))
    for flag in ("embeds", "negative_embeds", "latents_in"):
        if getattr(args, flag):
            existing_file(getattr(args, flag), f"--{flag.replace('_', '-')}", (".npy", ".safetensors"))
    if args.calibration:
        existing_file(args.calibration, "--calibration", (".json",))
    mesh = _device_mesh(args)
    model, runtime = _runtime(args, Path(args.checkpoint), load_checkpoint(args.checkpoint))
    embeds = _load_embeds(args.embeds, "prompt", model)
    negative = _load_embeds(args.negative_embeds, "negative", model) if args.negative_embeds else None
    latents = load_array(args.latents_in, ("latents",)) if args.latents_in else None
    if latents is not None and latents.ndim == 4:
        latents = latents[None]
    result = sample(model, embeds, negative, latents=latents, settings=settings, frames=args.frames,
                    height=args.height, width=args.width, progress=not args.quiet, runtime=runtime, mesh=mesh)
    out = np.asarray(jax.device_get(result.latents)).astype(np.float32)
    save_array(args.out, out, "latents")
    batch = out.shape[0] * (2 if settings.uses_cfg else 1)
    print(f"sampled {settings.num_steps} {scheduler} steps (guidance {settings.guidance_scale}"
          f"{', dynamic' if settings.use_dynamic_cfg else ''}, model batch {batch}) in {result.seconds:.1f} s "
          f"(compile included) | {_peak_memory()} | {_precision(args, result, model, runtime)} "
          f"| wrote {args.out} {list(out.shape)} float32")


def _check_checkpoint(path) -> Path:
    folder = existing_folder(path, "checkpoint")
    if not (folder / "sixbit.json").exists():
        raise InputError(f"checkpoint {folder} is not a converted checkpoint (no sixbit.json); convert it with "
                         f"`sixbit convert`")
    return folder


def _checkpoint_config(folder: Path):
    """The transformer config of a converted checkpoint, from its sixbit.json alone (before any weight loads)."""
    from sixbit_jax.checkpoint import read_info
    from sixbit_jax.config import transformer_config

    return transformer_config(read_info(folder).get("config"), str(folder))


def _device_mesh(args):
    """--devices as a sequence mesh (None for one device), refused before anything loads where the machine lacks
    the devices."""
    from sixbit_jax.parallel import sequence_mesh

    return sequence_mesh(args.devices) if args.devices > 1 else None


def _check_family_flags(args, wan: bool, what: str) -> None:
    """--scheduler, --flow-shift and --guidance-2 against the model family of a checkpoint or pipeline (`what`),
    before anything loads: CogVideoX samples with ddim or dpm, Wan with unipc or euler and a σ shift."""
    from sixbit_jax.schedulers import cogvideox, flow

    family, kinds = ("Wan", flow.SCHEDULERS) if wan else ("CogVideoX", cogvideox.SCHEDULERS)
    if args.scheduler is not None and args.scheduler not in kinds:
        raise InputError(f"--scheduler {args.scheduler}: a {family} {what} samples with {' or '.join(kinds)}")
    if not wan and args.flow_shift is not None:
        raise InputError(f"--flow-shift applies to flow-matching models (Wan); this {what} is CogVideoX")
    if not wan and getattr(args, "guidance_2", None) is not None:
        raise InputError(f"--guidance-2 applies to Wan2.2's two experts; this {what} is CogVideoX")


def _scheduler_choice(args, cfg):
    """(scheduler name, scheduler config) for `sample`: the flags checked against the checkpoint's family;
    omitted, the family's defaults."""
    from sixbit_jax.config import WanConfig
    from sixbit_jax.schedulers import FlowSchedulerConfig, SchedulerConfig
    from sixbit_jax.schedulers.flow import DEFAULT_SHIFT

    wan = isinstance(cfg, WanConfig)
    _check_family_flags(args, wan, "checkpoint")
    config = (FlowSchedulerConfig(shift=args.flow_shift or DEFAULT_SHIFT) if wan
              else SchedulerConfig.for_model(cfg.flavour))
    return args.scheduler or config.default_scheduler, config


def _check_video_size(args) -> None:
    if args.frames is not None and (args.frames - 1) % 4:
        raise InputError(f"--frames {args.frames}: must be 4k + 1 (e.g. 49)")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and value % 16:
            raise InputError(f"--{name} {value}: must be a multiple of 16")


def _runtime(args, ckpt: Path | None, model):
    """(model, RuntimeConfig or None) for --mode/--tdc/--no-pdr/--calibration/--tau-c. A float model is quantized
    in memory when a quantized mode asks for it; on a quantized checkpoint, bf16 means W4A16."""
    from sixbit_jax.calibrate import CALIBRATION_NAME
    from sixbit_jax.quant.model import quantize_model
    from sixbit_jax.runtime import RuntimeConfig, fields_for_run
    from sixbit_jax.shapes.pipeline import PACKAGED_CALIBRATION

    if args.mode == "bf16" and not args.tdc and model.quant is None and args.attention == "bf16":
        return model, None
    fields = {"mode": args.mode, "tdc": args.tdc, "pdr": not args.no_pdr, "attention": args.attention}
    if args.cache_dtype:
        fields["cache_dtype"] = args.cache_dtype
    if args.mode == "sixbit" or args.tdc:
        # The shipped calibration belongs to the shipped model only (the demo without --checkpoint).
        default = ckpt / CALIBRATION_NAME if ckpt else PACKAGED_CALIBRATION
        calibration = args.calibration or (default if default.exists() else None)
        if calibration is None and args.mode == "sixbit":
            raise InputError("--mode sixbit needs a calibration: run `sixbit calibrate CKPT` first (it writes "
                             f"CKPT/{CALIBRATION_NAME}) or pass --calibration FILE")
        if calibration is not None:
            fields.update(fields_for_run(calibration, args.mode, args.tdc))
    if args.mode != "bf16" and model.quant is None:
        model = quantize_model(model)
    if args.tau_c is not None:
        fields["tau_c"] = args.tau_c
    return model, RuntimeConfig(**fields)


_MODE_NAMES = {"bf16": "bf16", "int8": "W4A8 (int8)", "nvfp4": "W4A4 (nvfp4)",
               "sixbit": "6Bit DMPQ (W4A4 / W4A8 per block and step)"}


def _precision(args, result, model, runtime) -> str:
    if result.summary is None:
        short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(model.dtype.name, model.dtype.name)
        return f"precision: {short} 100% of linears, {short} attention"
    name = _MODE_NAMES[args.mode] if args.mode != "bf16" or model.quant is None else "W4A16 (NVFP4 weights, bf16 "\
        "activations)"
    name += (" +TDC" if args.tdc else "") + (" +PDR" if args.tdc and not args.no_pdr else "")
    name += f", {runtime.attention} attention"
    if runtime.tdc:
        name += f" (tau_c {runtime.tau_c:.3g}, {runtime.cache_dtype} cache)"
    return f"precision: {name}, {result.summary.line()}"


def _check_shapes_run(args) -> None:
    """demo / eval: the checkpoint and calibration they name exist, and their output folder can be written."""
    if args.checkpoint:
        _check_checkpoint(args.checkpoint)
    calibrations = getattr(args, "calibration", None)
    for path in [calibrations] if isinstance(calibrations, str) else calibrations or []:
        existing_file(path, "--calibration", (".json",))
    writable_folder(args.out, "--out")


def cmd_demo(args) -> None:
    """The shipped shapes model end to end: convert -> text encoder -> sampler -> GIF (and MP4)."""
    import jax

    from sixbit_jax.media import write_gif, write_mp4
    from sixbit_jax.shapes import world
    from sixbit_jax.shapes.detect import NOTHING, detect
    from sixbit_jax.shapes.pipeline import ShapesPipeline, packaged_checkpoint

    world.parse_caption(args.prompt)  # the shapes text encoder reads only its grammar
    _check_shapes_run(args)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else packaged_checkpoint(progress=not args.quiet)
    pipe = ShapesPipeline.from_checkpoint(ckpt, dtype="bf16")
    pipe.model, runtime = _runtime(args, Path(args.checkpoint) if args.checkpoint else None, pipe.model)
    output = pipe(args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance, progress=not args.quiet,
                  runtime=runtime)
    written = [write_gif(out / "demo.gif", output.clips[0], scale=args.scale)]
    mp4 = write_mp4(out / "demo.mp4", output.clips[0], scale=args.scale)
    written += [mp4] if mp4 else []
    seen = detect(output.clips[0])
    reads = "no object" if seen.shape == NOTHING else world.caption(seen)
    print(f"{args.prompt!r}: {args.steps} DDIM steps, guidance {args.guidance}, seed {args.seed} in "
          f"{output.result.seconds:.1f} s (compile included) on {jax.devices()[0].platform} | {_peak_memory()} | "
          f"{_precision(args, output.result, pipe.model, runtime)} | detectors read: {reads!r} "
          f"| wrote {', '.join(map(str, written))}"
          + ("" if mp4 else " (no MP4: pip install imageio-ffmpeg)"))


def _check_image_for_pipeline(args) -> None:
    """--image exactly when the folder is an image-to-video pipeline (its model_index.json says which)."""
    from sixbit_jax.pipelines import components
    from sixbit_jax.pipelines.cogvideox import IMAGE_TO_VIDEO

    if not (Path(args.pipeline) / components.MODEL_INDEX).exists():
        return  # not a pipeline folder: loading it says so
    index = components.model_index(Path(args.pipeline))
    image_to_video = index["_class_name"] in IMAGE_TO_VIDEO
    if image_to_video and not args.image:
        raise InputError(f"{args.pipeline} is an image-to-video pipeline: give the first frame with --image FILE")
    # Wan2.2 TI2V-5B (expand_timesteps): text to video, or image to video with --image
    if args.image and not image_to_video and not index.get("expand_timesteps", False):
        raise InputError(f"--image: {args.pipeline} is a text-to-video pipeline; it takes no image (Wan: only "
                         f"Wan2.2 TI2V-5B has an image mode; Wan2.1's image-to-video models are not implemented)")


def _check_generate_args(args) -> None:
    """Everything about the arguments that can be checked before loading gigabytes."""
    from sixbit_jax.media import ffmpeg_binary

    if not args.prompt.strip():
        raise InputError("--prompt is empty")
    existing_folder(args.pipeline, "PIPELINE")
    _check_video_size(args)
    if args.latents_in:
        existing_file(args.latents_in, "--latents-in", (".npy", ".safetensors"))
    if args.image:
        existing_file(args.image, "--image")
    if args.calibration:
        existing_file(args.calibration, "--calibration", (".json",))
    writable_file(args.out, "--out", (".mp4",))
    if args.frames_out:
        writable_file(args.frames_out, "--frames-out", (".npy",))
    if ffmpeg_binary() is None:
        raise InputError("writing MP4 needs the ffmpeg that ships with imageio-ffmpeg: pip install "
                         "'sixbit-jax[video]'")
    _check_image_for_pipeline(args)


def _is_wan_pipeline(folder) -> bool:
    from sixbit_jax.pipelines import components
    from sixbit_jax.pipelines.wan import PIPELINE_CLASSES

    return (Path(folder) / components.MODEL_INDEX).exists() and components.pipeline_class(Path(folder)) in \
        PIPELINE_CLASSES


def _check_wan_generate_args(args) -> None:
    """What a Wan pipeline does not take (checked before loading)."""
    if args.tile:
        raise InputError("--tile: the Wan VAE decodes one latent frame at a time, without spatial tiles")
    if args.dynamic_cfg:
        raise InputError("--dynamic-cfg is CogVideoX's guidance schedule; Wan samples with a constant guidance")
    if args.guidance_2 is not None and not (Path(args.pipeline) / "transformer_2").is_dir():
        raise InputError("--guidance-2: this pipeline has one transformer; a second guidance scale is for Wan2.2's "
                         "two experts (transformer_2/)")


def cmd_generate(args) -> None:
    """Prompt -> MP4 with a CogVideoX or Wan pipeline folder (diffusers layout; CogVideoX also converted by
    `sixbit convert`)."""
    from sixbit_jax.io import load_array, save_array
    from sixbit_jax.media import read_image, write_mp4
    from sixbit_jax.quant.spec import QuantSpec
    from sixbit_jax.sampling import SamplerSettings

    _check_generate_args(args)
    wan = _is_wan_pipeline(args.pipeline)
    _check_family_flags(args, wan, "pipeline")
    if wan:
        _check_wan_generate_args(args)
        from sixbit_jax.pipelines.wan import DEFAULT_FPS, WanPipeline as Pipeline
    else:
        from sixbit_jax.pipelines.cogvideox import DEFAULT_FPS, CogVideoXPipeline as Pipeline
    latents = load_array(args.latents_in, ("latents",)) if args.latents_in else None
    if latents is not None and latents.ndim != 5:
        layout = "[B, C, F, H, W] (Wan's layout)" if wan else "[B, F, C, H, W] (diffusers' CogVideoX layout)"
        raise InputError(f"--latents-in {args.latents_in}: initial latents must be {layout}; got shape "
                         f"{tuple(latents.shape)}")
    folder = Path(args.pipeline)
    mesh = _device_mesh(args)
    quant = QuantSpec() if args.mode != "bf16" else None  # a diffusers folder is quantized while it is converted
    pipe = Pipeline.from_folder(folder, dtype=args.dtype, quant=quant, progress=not args.quiet)
    pipe.transformer, runtime = _runtime(args, folder, pipe.transformer)  # calibration: FOLDER/calibration.json
    scheduler_config = pipe.scheduler
    if args.flow_shift is not None:
        scheduler_config = dataclasses.replace(scheduler_config, shift=args.flow_shift)
    guidance = args.guidance if args.guidance is not None else type(pipe.transformer).DEFAULT_GUIDANCE
    settings = SamplerSettings(scheduler=args.scheduler or scheduler_config.default_scheduler, num_steps=args.steps,
                               guidance_scale=guidance, use_dynamic_cfg=args.dynamic_cfg, seed=args.seed,
                               guidance_scale_2=args.guidance_2)
    extra = {} if wan else {"tile": args.tile}
    if args.image:
        extra["image"] = read_image(args.image, *pipe.transformer.video_size(args.height, args.width))
    pipe.scheduler = scheduler_config
    output = pipe([args.prompt], [args.negative_prompt], frames=args.frames, height=args.height, width=args.width,
                  settings=settings, latents=latents, runtime=runtime, progress=not args.quiet,
                  release_text_encoder=True, mesh=mesh, **extra)
    written = [write_mp4(args.out, output.frames[0], fps=DEFAULT_FPS, scale=1)]
    if args.frames_out:
        written.append(save_array(args.frames_out, output.frames[0], "frames"))
    f, h, w, _ = output.frames[0].shape
    times = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in output.seconds.items())
    print(f"{args.prompt!r}: {f} frames at {w}x{h}, {settings.num_steps} {settings.scheduler} steps, guidance "
          f"{settings.guidance_scale}{' (dynamic)' if settings.use_dynamic_cfg else ''}, seed {args.seed} | {times} "
          f"(compile included) | {_peak_memory()} | {_precision(args, output.result, pipe.transformer, runtime)} "
          f"| wrote {', '.join(map(str, written))}")


def cmd_eval(args) -> None:
    from sixbit_jax.shapes.evaluate import eval_prompts, evaluate

    from sixbit_jax.shapes.pipeline import PACKAGED_CALIBRATION, packaged_checkpoint

    _check_shapes_run(args)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else packaged_checkpoint(progress=not args.quiet)

    calibration = args.calibration or (PACKAGED_CALIBRATION if PACKAGED_CALIBRATION.exists() else None)
    overrides = {"cache_dtype": args.cache_dtype} if args.cache_dtype else None
    report = evaluate(ckpt, args.modes, prompts=eval_prompts(args.prompts), seeds=args.seeds, steps=args.steps,
                      guidance=args.guidance, calibration=calibration, runtime_overrides=overrides,
                      tau_c_sweep=args.tau_c, progress=not args.quiet)
    files = report.write(out)
    print(report.markdown())
    print(f"wrote {files['table']}, {files['json']}, {files['sheet']}")


def cmd_calibrate(args) -> None:
    """Calibration rollouts on the quantized model, the predictor fit, and the calibration file."""
    from sixbit_jax.calibrate import CALIBRATION_NAME, fit, route_plot
    from sixbit_jax.checkpoint import load_checkpoint
    from sixbit_jax.quant.model import quantize_model
    from sixbit_jax.runtime import RuntimeConfig
    from sixbit_jax.sampling import SamplerSettings, sample
    from sixbit_jax.shapes.evaluate import eval_prompts
    from sixbit_jax.shapes.pipeline import ShapesPipeline, calibration_rollouts
    from sixbit_jax.shapes.text import TextEncoder, is_shapes_text_encoder

    ckpt = _check_checkpoint(args.checkpoint)
    if args.plot:
        writable_file(args.plot, "--plot", (".png",))
    writable_file(args.out or ckpt / CALIBRATION_NAME, "--out", (".json",))
    for flag in ("embeds", "negative_embeds"):
        if getattr(args, flag):
            existing_file(getattr(args, flag), f"--{flag.replace('_', '-')}", (".npy", ".safetensors"))
    model = load_checkpoint(ckpt, dtype="bf16")
    if model.quant is None:
        model = quantize_model(model)
    start = time.perf_counter()
    if args.embeds is None:
        if not is_shapes_text_encoder(ckpt / "text_encoder"):
            raise InputError("--embeds is required: this checkpoint has no shapes text encoder to draw prompts with")
        pipe = ShapesPipeline(model, TextEncoder.load(ckpt / "text_encoder"))
        stats = calibration_rollouts(pipe, eval_prompts(args.prompts, seed=args.prompt_seed), steps=args.steps,
                                     guidance=args.guidance, progress=not args.quiet,
                                     output_sensitivity=args.signal == "output")
        source = f"{args.prompts} shapes prompts (generator seed {args.prompt_seed}), 4 per rollout"
    else:
        embeds = _load_embeds(args.embeds, "prompt", model)
        negative = _load_embeds(args.negative_embeds, "negative", model) if args.negative_embeds else None
        runtime = RuntimeConfig(mode="calibrate", output_sensitivity=args.signal == "output")
        stats = [sample(model, embeds, negative, runtime=runtime, progress=not args.quiet,
                        settings=SamplerSettings(num_steps=args.steps, guidance_scale=args.guidance, seed=seed)).stats
                 for seed in args.seeds]
        source = f"{args.embeds} ({embeds.shape[0]} prompts) x seeds {args.seeds}"
    calibration = fit(stats, target_bits=args.target_bits, target_skip=args.target_skip, signal=args.signal,
                      routing=args.routing, target_fallback=args.target_fallback,
                      linear_names=model.ACTIVATION_LINEARS,
                      info={"checkpoint": str(ckpt.absolute()), "source": source, "steps": args.steps,
                            "guidance": args.guidance})
    out = calibration.save(args.out or ckpt / CALIBRATION_NAME)
    print(calibration.report())
    if args.plot:
        print(f"wrote {route_plot(calibration, stats, args.plot)} (Γ(t-1) against the chosen route, per block)")
    print(f"calibrated on {len(stats)} rollouts in {time.perf_counter() - start:.1f} s | {_peak_memory()} | "
          f"wrote {out}")


def _add_devices_flag(p) -> None:
    p.add_argument("--devices", type=positive_int, default=1,
                   help="sequence parallelism over the first N devices: tokens split along the sequence; attention "
                        "by Ulysses where the heads divide by N, else each device gathers every token's keys and "
                        "values (1)")


def _add_runtime_flags(p) -> None:
    from sixbit_jax.runtime import ATTENTION_PRECISIONS, CACHE_DTYPES

    p.add_argument("--mode", choices=["bf16", "int8", "nvfp4", "sixbit"], default="bf16",
                   help="linear precision: bf16; int8 (W4A8); nvfp4 (W4A4); sixbit (DMPQ: NVFP4 or INT8 per block and "
                        "step from the calibrated predictor). Quantized modes quantize a float checkpoint in memory")
    p.add_argument("--tdc", action="store_true", help="temporal delta cache: skip blocks whose delta barely changes")
    p.add_argument("--no-pdr", action="store_true", help="with --tdc: no purified delta refresh (no per-layer BF16 "
                                                          "fallback on outlier inputs when a block is recomputed)")
    p.add_argument("--calibration", help="calibration file for --mode sixbit and for --tdc's tau_c (default: "
                                         "CKPT/calibration.json)")
    p.add_argument("--tau-c", type=non_negative_float, help="TDC skip threshold (default: the calibration's, else 0.3)")
    p.add_argument("--cache-dtype", choices=list(CACHE_DTYPES),
                   help="with --tdc: how the block deltas are stored (float8_e4m3fn, scaled per block; bfloat16 "
                        "doubles the cache)")
    p.add_argument("--attention", choices=list(ATTENTION_PRECISIONS), default="bf16",
                   help="self-attention precision in the transformer blocks: bf16 (cuDNN flash attention), or int8 "
                        "(8-bit Q·Kᵀ with smoothed K, SageAttention-style; a Mosaic GPU kernel on Hopper)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sixbit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="diffusers pipeline or transformer/ folder -> sixbit-jax checkpoint",
                       description="Convert a diffusers CogVideoX transformer folder (config.json plus "
                                   "diffusion_pytorch_model.safetensors, or shards with their .index.json) to a "
                                   "sixbit-jax (orbax) checkpoint. Given a whole pipeline folder (model_index.json), "
                                   "converts the transformer, the T5 text encoder and the VAE (the last two in "
                                   "--dtype, never quantized) and copies the tokenizer and scheduler: a folder "
                                   "`sixbit generate` loads. Reads safetensors only, one tensor at a time; "
                                   "writes atomically (a failed conversion leaves nothing at DST).")
    p.add_argument("src", help="diffusers pipeline folder, or its transformer/ folder")
    p.add_argument("dst", help="checkpoint folder to create")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="stored weight dtype (bf16)")
    p.add_argument("--quant", choices=["none", "nvfp4"], default="none",
                   help="nvfp4: store the block linears once in NVFP4 (Hadamard folded in; AdaLN weight-only)")
    p.add_argument("--hadamard-block", type=hadamard_block, default=128, help="Hadamard block along K for --quant (128)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("calibrate", help="fit the DMPQ precision predictor on calibration rollouts",
                       description="Runs calibration rollouts on the quantized model (a float checkpoint is quantized "
                                   "in memory), records per block and step the change Γ and the NVFP4 sensitivity "
                                   "E (how far the block's output moves when its linears take NVFP4 activations), "
                                   "fits E = alpha Γ(t-1) + beta per block, prints the fit per block and warns "
                                   "where it is weak or its slope negative, solves tau_q for the target activation "
                                   "width and tau_c (the delta-cache threshold) for the target skip fraction, and "
                                   "writes CKPT/calibration.json (or --out).")
    p.add_argument("checkpoint", help="converted checkpoint (float or --quant nvfp4)")
    p.add_argument("--embeds", help="T5 prompt embeddings [B, L, D] (real CogVideoX); shapes checkpoints draw "
                                    "prompts from the generator instead")
    p.add_argument("--negative-embeds", help="negative-prompt embeddings (needed when guidance > 1)")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1], help="rollout seeds with --embeds (0 1)")
    p.add_argument("--prompts", type=positive_int, default=32, help="shapes prompts (32; 4 per rollout)")
    p.add_argument("--prompt-seed", type=non_negative_int, default=7, help="generator seed of the shapes prompts (7; the eval "
                                                              "set uses another)")
    p.add_argument("--steps", type=positive_int, default=30, help="sampling steps per rollout (30)")
    p.add_argument("--guidance", type=non_negative_float, default=2.0, help="CFG scale (2)")
    p.add_argument("--target-bits", type=activation_bits, default=6.0, help="average activation bits to solve tau_q for (6)")
    p.add_argument("--target-skip", type=fraction, default=0.3,
                   help="fraction of block-steps the delta cache should skip, to solve tau_c for (0.3)")
    p.add_argument("--target-fallback", type=fraction, default=0.05,
                   help="fraction of linears PDR should run in BF16 when a skipped block is refreshed, to solve its "
                        "outlier threshold for (0.05)")
    p.add_argument("--signal", choices=["block", "linear", "output"], default="block",
                   help="the sensitivity E: at the block output (block, default), the mean of its linears' own "
                        "errors (linear: the earlier definition, kept for the ablation), or at the model output "
                        "with the block alone on NVFP4 (output: one more forward per block and step)")
    p.add_argument("--routing", choices=["global", "per-block"], default="global",
                   help="global: one tau_q for every block's predicted error (the paper's rule); per-block: one "
                        "tau_q per block, each block sending its most stable steps to NVFP4 at the target bits")
    p.add_argument("--out", help="calibration file to write (default CKPT/calibration.json)")
    p.add_argument("--plot", help="also write a PNG of Γ(t-1) against the chosen route, per block")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_calibrate)

    from sixbit_jax.pipelines.cogvideox import DEFAULT_FPS, DEFAULT_GUIDANCE as PIPE_GUIDANCE, DEFAULT_STEPS as PIPE_STEPS

    p = sub.add_parser("generate", help="prompt -> MP4 with a CogVideoX or Wan pipeline folder (T5, DiT, VAE)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Runs a whole CogVideoX or Wan pipeline in JAX (text-to-video, or image-to-video "
                                   "with --image\nfor CogVideoX I2V and Wan2.2 TI2V-5B): the folder's tokenizer and "
                                   "T5 / umT5 encoder,\nthe transformer under the 6Bit runtime, the VAE decoder, "
                                   f"then an MP4 ({DEFAULT_FPS} fps\nfor CogVideoX, 16 for Wan).\nPIPELINE is a "
                                   "diffusers folder (model_index.json, tokenizer/, text_encoder/,\ntransformer/, "
                                   "vae/, scheduler/; converted in memory on every run) or, for CogVideoX,\none "
                                   "written by `sixbit convert PIPELINE OUT` (loads faster; --quant nvfp4 stores "
                                   "4-bit\nweights). Defaults follow diffusers' pipelines: the transformer's sample "
                                   "size (CogVideoX\n49 frames at 480x720, Wan 81 at 480x832), 50 steps, guidance 6 "
                                   "(Wan 5), the folder's scheduler.")
    p.add_argument("pipeline", help="CogVideoX or Wan pipeline folder (diffusers layout; CogVideoX also converted by "
                                    "sixbit convert)")
    p.add_argument("--prompt", required=True, help="what to show")
    p.add_argument("--negative-prompt", default="", help="what not to show (default: '', as diffusers)")
    p.add_argument("--out", default="out/video.mp4", help="the MP4 to write (out/video.mp4)")
    p.add_argument("--frames", type=positive_int, help="video frames, 4k + 1 (default: the model's, 49)")
    p.add_argument("--height", type=positive_int, help="video height in pixels, a multiple of 16 (default: the model's, 480)")
    p.add_argument("--width", type=positive_int, help="video width in pixels, a multiple of 16 (default: the model's, 720)")
    p.add_argument("--steps", type=positive_int, default=PIPE_STEPS, help=f"denoising steps ({PIPE_STEPS})")
    p.add_argument("--guidance", type=non_negative_float,
                   help=f"classifier-free guidance scale (CogVideoX {PIPE_GUIDANCE}, Wan 5; 1 disables CFG)")
    p.add_argument("--scheduler", choices=["ddim", "dpm", "unipc", "euler"],
                   help="default: the folder's (CogVideoX-2b ships DDIM, CogVideoX-5b DPM, Wan UniPC); Wan takes "
                        "unipc or euler, CogVideoX ddim or dpm")
    p.add_argument("--flow-shift", type=positive_float, help="Wan: the flow schedule's σ shift (default: the "
                                                              "folder's scheduler config)")
    p.add_argument("--guidance-2", type=non_negative_float,
                   help="Wan2.2 A14B: the low-noise expert's guidance scale (default: --guidance)")
    p.add_argument("--dynamic-cfg", action="store_true", help="diffusers' use_dynamic_cfg guidance schedule")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the initial noise (and DPM's step noise) (0)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="dtype of T5, the transformer's float parts and the VAE (bf16)")
    p.add_argument("--tile", action="store_true",
                   help="decode in overlapping spatial tiles (diffusers' enable_tiling): less memory at large "
                        "sizes, slightly different frames")
    p.add_argument("--latents-in", help="initial noise (.npy/.safetensors) in the family's layout, CogVideoX "
                                        "[B, F, C, H, W], Wan [B, C, F, H, W], instead of drawing it from --seed")
    p.add_argument("--frames-out", help="also write the frames as .npy, float32 [F, H, W, 3] in [0, 1]")
    p.add_argument("--image", help="image-to-video pipelines (CogVideoX-5b-I2V, 1.5-5B-I2V, Wan2.2 TI2V-5B): the "
                                   "first frame, any image file (resized to the video's size as diffusers does)")
    _add_devices_flag(p)
    _add_runtime_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("sample", help="denoise latents from text embeddings",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Sample with one jitted lax.scan over timesteps and classifier-free guidance.\n"
                                   "Inputs are text embeddings [B, L, text_dim] in .npy or .safetensors (CogVideoX:\n"
                                   "T5 outputs, 226 tokens; Wan: umT5 outputs, 512 tokens zero-padded); the output\n"
                                   "is the final latent (float32) in the family's layout: CogVideoX [B, F, C, H, W],\n"
                                   "Wan [B, C, F, H, W]. For prompt -> MP4 with T5 and the VAE (CogVideoX), use\n"
                                   "`sixbit generate`.")
    p.add_argument("checkpoint", help="converted checkpoint folder (see `sixbit convert`)")
    p.add_argument("--embeds", required=True, help="prompt embeddings (.npy/.safetensors)")
    p.add_argument("--negative-embeds", help="negative-prompt embeddings; required when guidance > 1 "
                                             "(diffusers uses the T5 encoding of '')")
    p.add_argument("--latents-in", help="initial latents in the family's layout (CogVideoX [B, F, C, H, W], Wan "
                                        "[B, C, F, H, W]) instead of noise drawn from --seed")
    p.add_argument("--frames", type=positive_int, help="video frames, 4k + 1 (default: the model's sample size; "
                                                            "49 for CogVideoX, 81 for Wan)")
    p.add_argument("--height", type=positive_int, help="video height in pixels, a multiple of 16 (default: the "
                                                            "model's; 480 for CogVideoX and Wan)")
    p.add_argument("--width", type=positive_int, help="video width in pixels, a multiple of 16 (default: the "
                                                           "model's; 720 for CogVideoX, 832 for Wan)")
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps (50)")
    p.add_argument("--guidance", type=non_negative_float,
                   help="classifier-free guidance scale (CogVideoX 6, Wan 5; 1 disables CFG)")
    p.add_argument("--dynamic-cfg", action="store_true", help="diffusers' use_dynamic_cfg guidance schedule")
    p.add_argument("--scheduler", choices=["ddim", "dpm", "unipc", "euler"],
                   help="CogVideoX: ddim (deterministic; 2B's default) or dpm (stochastic SDE-DPM-Solver++ 2M; 5B's "
                        "default); Wan: unipc (flow UniPC, its default) or euler (flow Euler)")
    p.add_argument("--flow-shift", type=positive_float,
                   help="Wan: the σ shift of the flow schedule (5, Wan's text-to-video default; 3 in diffusers' "
                        "480p folders)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for initial latents and DPM noise (0)")
    _add_devices_flag(p)
    p.add_argument("--out", required=True, help="output latents file (.npy or .safetensors)")
    _add_runtime_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    from sixbit_jax.runtime import CACHE_DTYPES
    from sixbit_jax.shapes.evaluate import MODES
    from sixbit_jax.shapes.pipeline import DEFAULT_GUIDANCE, DEFAULT_PROMPT, DEFAULT_STEPS

    p = sub.add_parser("demo", help="the shipped shapes model: prompt -> out/demo.gif (CPU is fine)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Samples the shapes model that ships with sixbit-jax (a small CogVideoX trained\n"
                                   "here on procedural clips; converted once into the cache, see SIXBIT_CACHE_DIR)\n"
                                   "and writes OUT/demo.gif (and OUT/demo.mp4 when imageio-ffmpeg is installed).\n"
                                   "Prompts follow one grammar: a <colour> <shape> (moving <left|right|up|down> |\n"
                                   "standing still) [on a <gray|navy|brown> background].")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"what to draw ({DEFAULT_PROMPT!r})")
    p.add_argument("--out", default="out", help="output folder (out)")
    p.add_argument("--checkpoint", help="a converted shapes checkpoint instead of the shipped model")
    _add_runtime_flags(p)
    p.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help=f"DDIM steps ({DEFAULT_STEPS})")
    p.add_argument("--guidance", type=non_negative_float, default=DEFAULT_GUIDANCE, help=f"CFG scale ({DEFAULT_GUIDANCE})")
    p.add_argument("--seed", type=non_negative_int, default=0, help="noise seed (0)")
    p.add_argument("--scale", type=positive_int, default=8, help="pixel size in the GIF/MP4 (8: 256x256 frames)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="precision modes vs BF16: PSNR, SSIM, prompt accuracy",
                       description="Samples a fixed prompt set (drawn from the shapes generator) in each mode from "
                                   "identical initial noise; reports PSNR and SSIM against the BF16 samples and "
                                   "prompt accuracy from analytic detectors (checked on generator ground truth "
                                   "first). Writes OUT/results.md, results.json and contact_sheet.png.")
    p.add_argument("checkpoint", nargs="?", help="converted shapes checkpoint (default: the shipped model)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["bf16", "fp32"],
                   help=f"modes to compare; bf16 is always included as the reference (bf16 fp32). The paper's "
                        f"ablation: nvfp4 int8 dmpq dmpq+tdc dmpq+tdc+pdr; w4a16 is NVFP4 weights with bf16 "
                        f"activations. All: {' '.join(MODES)}")
    p.add_argument("--calibration", nargs="+",
                   help="calibration file for the dmpq modes and the delta cache's thresholds (default: the shipped "
                        "model's); several files run each mode that uses one once per file, as rows 'MODE [file]'")
    p.add_argument("--tau-c", type=non_negative_float, nargs="+", help="TDC skip threshold (default: the calibration's); several "
                                                         "values run each TDC mode once per value")
    p.add_argument("--cache-dtype", choices=list(CACHE_DTYPES),
                   help="TDC modes: how the block deltas are stored (float8_e4m3fn, scaled per block; bfloat16 "
                        "doubles the cache)")
    p.add_argument("--prompts", type=positive_int, default=16, help="prompts in the set (16)")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0], help="noise seeds (0)")
    p.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help=f"DDIM steps ({DEFAULT_STEPS})")
    p.add_argument("--guidance", type=non_negative_float, default=DEFAULT_GUIDANCE, help=f"CFG scale ({DEFAULT_GUIDANCE})")
    p.add_argument("--out", default="out/eval", help="output folder (out/eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)
    return parser


INTERRUPTED = 130  # the shell's code for a Ctrl-C


def run() -> None:
    """The console entry point (`sixbit`, `python -m sixbit_jax`): main(), then exit with its code. After a Ctrl-C
    the process ends at once (os._exit) once main has cleaned up: the interpreter's shutdown would otherwise join the
    checkpoint writer's threads, and a signal pending there ends the process by SIGINT instead of code 130."""
    code = main()
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SixbitError as e:
        print(f"sixbit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sixbit {args.command}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return INTERRUPTED
    except OSError as e:  # the machine, not the input: full disk, permissions changed mid-run, I/O errors
        where = f": {e.filename}" if e.filename else ""
        print(f"sixbit {args.command}: error: {e.strerror or e}{where} (nothing half-written was left behind)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run()
