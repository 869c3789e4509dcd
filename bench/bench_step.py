"""Full-size CogVideoX denoising steps (the transformer forward on the CFG batch) or a whole sampling loop, ours vs
diffusers, same GPU.

    python bench/bench_step.py --model cogvideox-2b             # all implementations, one subprocess each
    python bench/bench_step.py --model cogvideox-2b --impl jax  # one implementation, prints a JSON line
    python bench/bench_step.py --model cogvideox-2b --steps 50  # the whole 50-step CFG loop instead of one step

Random weights at the real shapes: B=2 (CFG), 49 frames at 480x720 -> latents [2, 13, 16, 60, 90], 17,550 video +
226 text = 17,776 tokens per sample. Each implementation runs in its own process so its peak device memory is its
own. Reported: median of --iters timed forwards after --warmup untimed ones (device-synchronised wall clock), and
peak device memory (weights included). diffusers runs eager PyTorch with SDPA, its default (`torch`), and the same
model under `torch.compile` with its default mode (`torch-compile`; compilation happens in the untimed first call).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 2  # the CFG batch: negative and positive prompt


def forward_flops(cfg, args) -> float:
    """Analytic FLOPs of one forward for the whole batch (cogvideox.md section 5)."""
    d, text_len = cfg.inner_dim, cfg.max_text_seq_length
    n_vid = args.frames * (args.height // cfg.patch_size) * (args.width // cfg.patch_size)
    n = n_vid + text_len
    patch = cfg.in_channels * cfg.patch_size**2
    per_sample = (cfg.num_layers * (24 * n * d * d + 4 * n * n * d) + 2 * n_vid * patch * d * 2
                  + 2 * text_len * cfg.text_embed_dim * d)
    return BATCH * per_sample


def bench_jax(cfg, args) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sixbit_jax.checkpoint import model_from_params
    from sixbit_jax.models import CogVideoXTransformer3D

    start = time.perf_counter()
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(
        CogVideoXTransformer3D(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))))()
    model = model_from_params(cfg, params)
    del params
    keys = jax.random.split(jax.random.key(1), 2)
    latents = jax.random.normal(keys[0], (BATCH, args.frames, cfg.in_channels, args.height, args.width), jnp.bfloat16)
    text = jax.random.normal(keys[1], (BATCH, cfg.max_text_seq_length, cfg.text_embed_dim), jnp.bfloat16)
    timesteps = jnp.array([999, 999], jnp.int32)
    tables = model.positional_tables(args.frames, args.height, args.width)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))
    build_s = time.perf_counter() - start

    if args.steps:  # the whole CFG sampling loop for one video: [negative; positive] x the same latents
        from sixbit_jax.sampling import SamplerSettings, sample

        settings = SamplerSettings(scheduler="ddim", num_steps=args.steps)
        run = lambda: sample(model, text[1:], text[:1], latents=latents[:1], settings=settings).latents  # noqa: E731
    else:
        run = lambda: forward(state, latents, text, timesteps, tables)  # noqa: E731
    start = time.perf_counter()
    out = run().block_until_ready()
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        run().block_until_ready()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        run().block_until_ready()
        times.append(time.perf_counter() - start)
    stats = jax.devices()[0].memory_stats() or {}
    return dict(impl="sixbit-jax bf16 (XLA + cuDNN attention)", times=times, peak_bytes=stats.get("peak_bytes_in_use"),
                build_s=build_s, compile_s=compile_s, finite=bool(jnp.isfinite(out).all()),
                versions=f"jax {jax.__version__}")


def bench_torch(cfg, args) -> dict:
    import diffusers
    import torch

    from sixbit_jax.models.cogvideox import rope_tables

    start = time.perf_counter()
    kwargs = {k: v for k, v in cfg.to_dict().items() if k != "_class_name"}
    with torch.device("cuda"):
        model = diffusers.CogVideoXTransformer3DModel(**kwargs).to(torch.bfloat16).eval()
    gen = torch.Generator(device="cuda").manual_seed(1)
    latents = torch.randn(BATCH, args.frames, cfg.in_channels, args.height, args.width, generator=gen, device="cuda",
                          dtype=torch.bfloat16)
    text = torch.randn(BATCH, cfg.max_text_seq_length, cfg.text_embed_dim, generator=gen, device="cuda",
                       dtype=torch.bfloat16)
    timesteps = torch.tensor([999, 999], device="cuda")
    if args.impl == "torch-compile":
        model = torch.compile(model)
    rope = None
    if cfg.use_rotary_positional_embeddings:
        cos, sin = rope_tables(cfg, args.frames, args.height // cfg.patch_size, args.width // cfg.patch_size)
        rope = (torch.tensor(cos, dtype=torch.float32, device="cuda"),
                torch.tensor(sin, dtype=torch.float32, device="cuda"))
    build_s = time.perf_counter() - start

    def forward():
        with torch.inference_mode():
            return model(hidden_states=latents, encoder_hidden_states=text, timestep=timesteps,
                         image_rotary_emb=rope, return_dict=False)[0]

    def sampling_loop():
        """CogVideoXPipeline.__call__'s denoising loop (DDIM, guidance 6), without the text encoder and VAE."""
        scheduler = diffusers.CogVideoXDDIMScheduler(
            beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
            prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
            snr_shift_scale=3.0 if cfg.flavour == "2b" else 1.0, timestep_spacing="trailing")
        scheduler.set_timesteps(args.steps, device="cuda")
        x = latents[:1]
        with torch.inference_mode():
            for t in scheduler.timesteps:
                v = model(hidden_states=torch.cat([x, x]), encoder_hidden_states=text, timestep=t.expand(2),
                          image_rotary_emb=rope, return_dict=False)[0].float()
                v_uncond, v_text = v.chunk(2)
                x = scheduler.step(v_uncond + 6.0 * (v_text - v_uncond), t, x, return_dict=False)[0].to(x.dtype)
        return x

    run = sampling_loop if args.steps else forward

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = run()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.iters):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
    mode = "torch.compile" if args.impl == "torch-compile" else "PyTorch eager"
    return dict(impl=f"diffusers bf16 ({mode}, SDPA)", times=times,
                peak_bytes=torch.cuda.max_memory_allocated(), build_s=build_s, compile_s=compile_s,
                finite=bool(torch.isfinite(out).all()),
                versions=f"torch {torch.__version__}, diffusers {diffusers.__version__}")


def run_one(args) -> None:
    from sixbit_jax.config import CogVideoXConfig

    cfg = CogVideoXConfig.named(args.model)
    result = (bench_jax if args.impl == "jax" else bench_torch)(cfg, args)
    forwards = args.steps or 1
    result.update(model=args.model, steps=args.steps, median_s=statistics.median(result["times"]),
                  tflops=forwards * forward_flops(cfg, args) / statistics.median(result["times"]) / 1e12)
    print("RESULT " + json.dumps(result), flush=True)


IMPLS = ("jax", "torch", "torch-compile")


def run_all(args) -> None:
    results = []
    for impl in IMPLS:
        cmd = [sys.executable, __file__, "--model", args.model, "--impl", impl, "--iters", str(args.iters),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--frames", str(args.frames),
               "--height", str(args.height),
               "--width", str(args.width)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{impl} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"{impl}: median {results[-1]['median_s']:.4f} s", flush=True)
        if args.json:  # after every implementation, so a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=2))
    what = (f"{args.steps}-step DDIM sampling loop with CFG" if args.steps
            else "one denoising step (transformer forward)")
    print(f"\n{args.model}: {what}, B={BATCH}, "
          f"{args.frames}x{args.height}x{args.width} latents, "
          f"median of {args.iters}")
    print("| implementation | median time (s) | TFLOP/s | peak memory (GiB) | first call (s) | versions |")
    print("|---|---|---|---|---|---|")
    for r in results:
        peak = f"{r['peak_bytes'] / 2**30:.1f}" if r["peak_bytes"] else "n/a"
        print(f"| {r['impl']} | {r['median_s']:.3f} | {r['tflops']:.0f} | {peak} | {r['compile_s']:.1f} | "
              f"{r['versions']} |")
    ours = next((r for r in results if r["impl"].startswith("sixbit-jax")), None)
    for r in results:
        if ours and r is not ours:
            print(f"ratio {r['impl']} / sixbit-jax time: {r['median_s'] / ours['median_s']:.3f}x; "
                  f"peak memory ratio: {r['peak_bytes'] / ours['peak_bytes']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cogvideox-2b", help="config name in configs/")
    parser.add_argument("--impl", choices=[*IMPLS, "all"], default="all",
                        help="one implementation (prints a RESULT line), or all of them in subprocesses")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0,
                        help="time a whole N-step DDIM sampling loop (CFG, guidance 6) instead of one forward")
    parser.add_argument("--frames", type=int, default=13, help="latent frames (13 = 49 video frames)")
    parser.add_argument("--height", type=int, default=60, help="latent height (60 = 480 px)")
    parser.add_argument("--width", type=int, default=90, help="latent width (90 = 720 px)")
    parser.add_argument("--json", help="write the results of --impl all here")
    args = parser.parse_args()
    run_all(args) if args.impl == "all" else run_one(args)


if __name__ == "__main__":
    main()
