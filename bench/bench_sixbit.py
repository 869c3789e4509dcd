"""6Bit runtime: whole-run time, bit mix, skips, resident weights and peak memory per mode, at full CogVideoX or Wan
shape (`--model wan2.1-1.3b`: 81 frames at 480x832, guidance 5, flow UniPC).

    python3 bench/bench_sixbit.py --model cogvideox-2b --steps 50 --modes bf16 int8 nvfp4 full --out results.json

Random weights (none can be downloaded): each mode runs in its own process (so peak memory is its own), samples
once to compile and once timed, with CFG (batch 2) at 49 frames 480x720. Modes: bf16 (the float model), int8
(static W4A8), nvfp4 (static W4A4), dmpq (routing only) and full (DMPQ + TDC + PDR). Random weights give no
meaningful predictor: the DMPQ modes use alpha=1, beta=0 and --tau-q on Γ, and every row reports the bit mix and
skip fraction it actually took.

Mode replay runs the route mix of the trained embedded model instead: it samples the shipped shapes model with
its calibration (DMPQ + TDC + PDR, --replay-tau-c, 16 prompts), stretches that run's route table to this model's
steps and blocks (`runtime.resample_schedule`) and replays it. Mode replay-int8 replays the same skips with every
NVFP4 block on INT8 instead: Hopper has no FP4 tensor cores, so there INT8 is the fast path for those blocks.

Every mode also exists as MODE+attn8: the same run with the blocks' self-attention on the 8-bit attention kernel
(`RuntimeConfig.attention="int8"`); bf16+attn8 runs the float model with it. MODE+attn8o does the same with the
kernel's overlapped schedule (`attention_int8_mgpu.OVERLAPPED`) at head dim 64, which the models do not run by
default yet (BENCHMARKS.md, issue 15)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

BASE_MODES = ("bf16", "int8", "nvfp4", "dmpq", "full", "replay", "replay-int8")
ATTN8, ATTN8_OVERLAPPED = "+attn8", "+attn8o"
MODES = BASE_MODES + tuple(m + suffix for suffix in (ATTN8, ATTN8_OVERLAPPED) for m in BASE_MODES)


def cached_schedule(path: str | None, steps: int, layers: int, tau_c: float | None, cache_dtype: str) -> dict:
    """`embedded_model_schedule` as JSON-ready fields, read from `path` when a run with the same arguments wrote it
    there (each replay mode's process would otherwise rerun the shapes model), else computed (and written)."""
    from pathlib import Path

    key = {"steps": steps, "layers": layers, "tau_c": tau_c, "cache_dtype": cache_dtype}
    if path and Path(path).exists():
        cached = json.loads(Path(path).read_text())
        if cached.get("key") == key:
            return cached
    schedule, summary, knobs = embedded_model_schedule(steps, layers, tau_c, cache_dtype)
    fields = {"key": key, "schedule": [list(map(int, row)) for row in schedule], "knobs": knobs,
              "bits_with_skips": summary.bits_with_skips, "bits_without_skips": summary.bits_without_skips,
              "skip_fraction": summary.skip_fraction, "route_fraction": summary.route_fraction}
    fields = json.loads(json.dumps(fields, default=float))  # numpy scalars as floats, tuples as lists
    if path:
        tmp = f"{path}.partial-{os.getpid()}"
        Path(tmp).write_text(json.dumps(fields))
        os.replace(tmp, path)
    return fields


def embedded_model_schedule(steps: int, layers: int, tau_c: float | None, cache_dtype: str):
    """(route schedule for [steps, layers], RunSummary and knobs of the embedded model's own run)."""
    import tempfile
    from pathlib import Path

    from convert import convert_checkpoint
    from sixbit_jax.quant.spec import QuantSpec
    from sixbit_jax.runtime import RuntimeConfig, calibration_fields, resample_schedule
    from sixbit_jax.shapes.evaluate import eval_prompts
    from sixbit_jax.shapes.pipeline import PACKAGED_CALIBRATION, PACKAGED_MODEL, ShapesPipeline

    fields = calibration_fields(PACKAGED_CALIBRATION) | ({"tau_c": tau_c} if tau_c is not None else {})
    runtime = RuntimeConfig(mode="sixbit", tdc=True, cache_dtype=cache_dtype, **fields)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = convert_checkpoint(PACKAGED_MODEL, Path(tmp) / "ckpt", dtype="fp32", quant=QuantSpec(), progress=False)
        result = ShapesPipeline.from_checkpoint(ckpt, dtype="bf16")(eval_prompts(16), runtime=runtime).result
    return resample_schedule(result.stats.route, steps, layers), result.summary, runtime.knobs()


def run_mode(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from sixbit_jax.config import WanConfig, named_config
    from sixbit_jax.models import model_class
    from sixbit_jax.models.block_control import INT8, NVFP4
    from sixbit_jax.quant.model import quantize_model
    from sixbit_jax.runtime import RuntimeConfig
    from sixbit_jax.sampling import SamplerSettings, sample

    cfg = named_config(args.model)
    base, attention = args.mode, "bf16"
    for suffix in (ATTN8, ATTN8_OVERLAPPED):
        if args.mode.endswith(suffix):
            base, attention = args.mode.removesuffix(suffix), "int8"
    if args.mode.endswith(ATTN8_OVERLAPPED):  # the overlapped kernel schedule where the head dim allows it
        from pallas_kernels import attention_int8_mgpu as attn8
        attn8.DEFAULT_CONFIGS[64] = attn8.OVERLAPPED
    # Built (and quantized) on the host, then moved: the device's peak then measures the sampling run, as it does
    # for a user who loads a converted checkpoint, not a float model that was quantized in place.
    with jax.default_device(jax.devices("cpu")[0]):
        model = model_class(cfg)(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
        if base != "bf16":
            model = quantize_model(model)  # only the NVFP4 block weights stay resident
    nnx.update(model, jax.device_put(nnx.state(model), jax.devices()[0]))
    runtime, embedded = None, None
    if base.startswith("replay"):
        embedded = cached_schedule(args.schedule_cache, args.steps, cfg.num_layers, args.replay_tau_c,
                                   args.cache_dtype)
        schedule = tuple(tuple(row) for row in embedded.pop("schedule"))
        embedded.pop("key")
        if base == "replay-int8":
            schedule = tuple(tuple(INT8 if r == NVFP4 else r for r in row) for row in schedule)
        runtime = RuntimeConfig(mode="replay", schedule=schedule, cache_dtype=args.cache_dtype, attention=attention)
    elif base != "bf16" or attention != "bf16":
        layers = (1.0,) * cfg.num_layers
        runtime = {
            "bf16": RuntimeConfig(mode="bf16"),
            "int8": RuntimeConfig(mode="int8"),
            "nvfp4": RuntimeConfig(mode="nvfp4"),
            "dmpq": RuntimeConfig(mode="sixbit", alpha=layers, beta=(0.0,) * cfg.num_layers, tau_q=args.tau_q),
            "full": RuntimeConfig(mode="sixbit", alpha=layers, beta=(0.0,) * cfg.num_layers, tau_q=args.tau_q,
                                  tdc=True, pdr=True, tau_c=args.tau_c, cache_dtype=args.cache_dtype),
        }[base]
        runtime = dataclasses.replace(runtime, attention=attention)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model)))
    rng = np.random.default_rng(0)
    text_tokens = 512 if isinstance(cfg, WanConfig) else cfg.max_text_seq_length  # Wan: umT5's padded length
    text = jnp.asarray(rng.standard_normal((1, text_tokens, cfg.text_embed_dim)), jnp.bfloat16)
    settings = SamplerSettings(num_steps=args.steps, guidance_scale=model.DEFAULT_GUIDANCE)
    size = dict(frames=args.frames, height=args.height, width=args.width)  # None: the model's default video
    first = sample(model, text, text * 0, settings=settings, runtime=runtime, **size)
    start = time.perf_counter()
    result = sample(model, text, text * 0, settings=settings, runtime=runtime, **size)
    seconds = time.perf_counter() - start
    stats = jax.devices()[0].memory_stats() or {}
    summary = result.summary
    return {"mode": args.mode, "model": args.model, "steps": args.steps, "seconds": seconds,
            "seconds_per_step": seconds / args.steps, "first_call_seconds": first.seconds,
            "weight_bytes": weight_bytes, "peak_bytes": stats.get("peak_bytes_in_use"),
            "bits_with_skips": summary.bits_with_skips if summary else 16.0,
            "bits_without_skips": summary.bits_without_skips if summary else 16.0,
            "skip_fraction": summary.skip_fraction if summary else 0.0,
            "bf16_fallbacks": summary.bf16_fallbacks if summary else 0,
            "route_fraction": summary.route_fraction if summary else {"bf16": 1.0},
            "knobs": runtime.knobs() if runtime else None, "embedded_model_run": embedded,
            "device": jax.devices()[0].device_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cogvideox-2b", help="a config in configs/ (CogVideoX or Wan)")
    parser.add_argument("--frames", type=int, help="video frames (default: the model's, 49 / Wan 81)")
    parser.add_argument("--height", type=int, help="video height in pixels (default: the model's)")
    parser.add_argument("--width", type=int, help="video width in pixels (default: the model's)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--mode", choices=MODES, help="(internal) run one mode in this process")
    parser.add_argument("--tau-q", type=float, default=0.5, help="DMPQ threshold on Γ (alpha=1, beta=0)")
    parser.add_argument("--tau-c", type=float, default=0.3, help="TDC threshold (full)")
    parser.add_argument("--replay-tau-c", type=float, help="TDC threshold of the embedded model's run (replay; "
                                                           "default: its calibration's)")
    parser.add_argument("--cache-dtype", default="float8_e4m3fn", help="delta cache dtype (full, replay)")
    parser.add_argument("--schedule-cache", help="JSON file for the embedded model's route table: the first replay "
                                                 "mode writes it, later ones (and later runs) read it")
    parser.add_argument("--out", help="JSON results file")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    cache_folder = os.path.dirname(os.path.abspath(args.schedule_cache)) if args.schedule_cache else None
    if cache_folder and not os.access(cache_folder, os.W_OK):
        parser.error(f"--schedule-cache {args.schedule_cache}: folder {cache_folder} is missing or not writable")
    rows = []
    for mode in args.modes:
        command = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--steps", str(args.steps),
                   "--tau-q", str(args.tau_q), "--tau-c", str(args.tau_c), "--cache-dtype", args.cache_dtype]
        command += [x for name in ("frames", "height", "width") if getattr(args, name) is not None
                    for x in (f"--{name}", str(getattr(args, name)))]
        if args.replay_tau_c is not None:
            command += ["--replay-tau-c", str(args.replay_tau_c)]
        if args.schedule_cache:
            command += ["--schedule-cache", args.schedule_cache]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{mode}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if args.out:  # after every mode, so a run cut short keeps what it measured
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=2)
        r = rows[-1]
        print(f"{mode:12s} {r['seconds']:7.2f} s ({r['seconds_per_step'] * 1e3:.0f} ms/step) | bits "
              f"{r['bits_with_skips']:.2f}/{r['bits_without_skips']:.2f} | skipped {r['skip_fraction']:.0%} | "
              f"weights {r['weight_bytes'] / 2**30:.2f} GiB | peak {(r['peak_bytes'] or 0) / 2**30:.2f} GiB | "
              f"{r['route_fraction']}", flush=True)
    base = next((r for r in rows if r["mode"] == "bf16"), None)
    if base:
        for r in rows:
            r["speedup_vs_bf16"] = base["seconds"] / r["seconds"]
            r["weights_vs_bf16"] = base["weight_bytes"] / r["weight_bytes"]
            print(f"{r['mode']:12s} speed-up vs bf16 {r['speedup_vs_bf16']:.2f}x, weights 1/{r['weights_vs_bf16']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
