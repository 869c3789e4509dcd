"""Full-size denoising steps (the transformer forward on the CFG batch) or a whole sampling loop, ours vs diffusers,
same GPU; CogVideoX or Wan (any config in configs/).

    python bench/bench_step.py --model cogvideox-2b             # all implementations, one subprocess each
    python bench/bench_step.py --model cogvideox-2b --impl jax  # one implementation, prints a JSON line
    python bench/bench_step.py --model cogvideox-2b --steps 50  # the whole 50-step CFG loop instead of one step
    python bench/bench_step.py --model wan2.1-1.3b              # Wan: 81 frames at 480x832, 512 text tokens

Random weights at the real shapes, B=2 (CFG). CogVideoX: 49 frames at 480x720 -> latents [2, 13, 16, 60, 90],
17,550 video + 226 text = 17,776 tokens per sample. Wan: latents [2, 16, 21, 60, 104], 32,760 video tokens and a
512-token text context. The loop is each family's pipeline loop: DDIM and guidance 6 (CogVideoX), UniPC with
shift 5 and guidance 5 (Wan). Each implementation runs in its own process so its peak device memory is its
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
WAN_TEXT_TOKENS = 512
DEFAULT_LATENTS = {"cogvideox": (13, 60, 90), "wan": (21, 60, 104)}  # (frames, height, width) of the latents


def is_wan(cfg) -> bool:
    from sixbit_jax.config import WanConfig

    return isinstance(cfg, WanConfig)


def forward_flops(cfg, args) -> float:
    """Analytic FLOPs of one forward for the whole batch (cogvideox.md and wan2.1.md section 5)."""
    d = cfg.inner_dim
    if is_wan(cfg):
        pt, ph, pw = cfg.patch_size
        n, text = (args.frames // pt) * (args.height // ph) * (args.width // pw), WAN_TEXT_TOKENS
        block = 12 * n * d * d + 4 * n * d * cfg.ffn_dim + 4 * n * n * d + 4 * n * text * d + 4 * text * d * d
        return BATCH * (cfg.num_layers * block + 2 * n * 64 * d * 2 + 2 * text * (4096 * d + d * d))
    text_len = cfg.max_text_seq_length
    n_vid = args.frames * (args.height // cfg.patch_size) * (args.width // cfg.patch_size)
    n = n_vid + text_len
    patch = cfg.in_channels * cfg.patch_size**2
    per_sample = (cfg.num_layers * (24 * n * d * d + 4 * n * n * d) + 2 * n_vid * patch * d * 2
                  + 2 * text_len * cfg.text_embed_dim * d)
    return BATCH * per_sample


def input_shapes(cfg, args) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(latents, text) shapes of the CFG batch in the family's layout."""
    if is_wan(cfg):
        return ((BATCH, cfg.in_channels, args.frames, args.height, args.width),
                (BATCH, WAN_TEXT_TOKENS, cfg.text_dim))
    return ((BATCH, args.frames, cfg.in_channels, args.height, args.width),
            (BATCH, cfg.max_text_seq_length, cfg.text_embed_dim))


def bench_jax(cfg, args) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sixbit_jax.checkpoint import model_from_params
    from sixbit_jax.models import model_class

    start = time.perf_counter()
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(
        model_class(cfg)(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))))()
    model = model_from_params(cfg, params)
    del params
    keys = jax.random.split(jax.random.key(1), 2)
    latents_shape, text_shape = input_shapes(cfg, args)
    latents = jax.random.normal(keys[0], latents_shape, jnp.bfloat16)
    text = jax.random.normal(keys[1], text_shape, jnp.bfloat16)
    timesteps = jnp.array([999, 999], jnp.float32)
    tables = model.tables_for(latents.shape)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))
    build_s = time.perf_counter() - start

    if args.steps:  # the whole CFG sampling loop for one video: [negative; positive] x the same latents
        from sixbit_jax.sampling import SamplerSettings, sample

        settings = SamplerSettings(num_steps=args.steps, guidance_scale=5.0 if is_wan(cfg) else 6.0)
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
    wan = is_wan(cfg)
    with torch.device("cuda"):
        model_cls = diffusers.WanTransformer3DModel if wan else diffusers.CogVideoXTransformer3DModel
        model = model_cls(**kwargs).to(torch.bfloat16).eval()
    gen = torch.Generator(device="cuda").manual_seed(1)
    latents_shape, text_shape = input_shapes(cfg, args)
    latents = torch.randn(*latents_shape, generator=gen, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(*text_shape, generator=gen, device="cuda", dtype=torch.bfloat16)
    timesteps = torch.tensor([999, 999], device="cuda")
    if args.impl == "torch-compile":
        model = torch.compile(model)
    extra = {}
    if not wan and cfg.use_rotary_positional_embeddings:
        from sixbit_jax.models.cogvideox import rope_tables

        cos, sin = rope_tables(cfg, args.frames, args.height // cfg.patch_size, args.width // cfg.patch_size)
        extra["image_rotary_emb"] = (torch.tensor(cos, dtype=torch.float32, device="cuda"),
                                     torch.tensor(sin, dtype=torch.float32, device="cuda"))
    build_s = time.perf_counter() - start

    def forward(x=latents, t=timesteps, context=text):
        with torch.inference_mode():
            return model(hidden_states=x, encoder_hidden_states=context, timestep=t, return_dict=False, **extra)[0]

    def cogvideox_loop():
        """CogVideoXPipeline.__call__'s denoising loop (DDIM, guidance 6), without the text encoder and VAE."""
        scheduler = diffusers.CogVideoXDDIMScheduler(
            beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
            prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
            snr_shift_scale=3.0 if cfg.flavour == "2b" else 1.0, timestep_spacing="trailing")
        scheduler.set_timesteps(args.steps, device="cuda")
        x = latents[:1]
        for t in scheduler.timesteps:
            v_uncond, v_text = forward(torch.cat([x, x]), t.expand(2)).float().chunk(2)
            x = scheduler.step(v_uncond + 6.0 * (v_text - v_uncond), t, x, return_dict=False)[0].to(x.dtype)
        return x

    def wan_loop():
        """WanPipeline.__call__'s denoising loop (UniPC, shift 5, guidance 5; float32 latents, one forward per
        branch as the pipeline runs them), without the text encoder and VAE."""
        scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                      num_train_timesteps=1000, flow_shift=5.0)
        scheduler.set_timesteps(args.steps, device="cuda")
        x = latents[:1].float()
        for t in scheduler.timesteps:
            cond = forward(x.to(torch.bfloat16), t.expand(1), text[1:])
            uncond = forward(x.to(torch.bfloat16), t.expand(1), text[:1])
            x = scheduler.step(uncond + 5.0 * (cond - uncond), t, x, return_dict=False)[0]
        return x

    sampling_loop = wan_loop if wan else cogvideox_loop
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
    cfg = family_config(args)
    result = (bench_jax if args.impl == "jax" else bench_torch)(cfg, args)
    forwards = args.steps or 1
    result.update(model=args.model, steps=args.steps, median_s=statistics.median(result["times"]),
                  tflops=forwards * forward_flops(cfg, args) / statistics.median(result["times"]) / 1e12)
    print("RESULT " + json.dumps(result), flush=True)


def family_config(args):
    """The named config; fills --frames/--height/--width left unset with the family's default video."""
    sys.path.insert(0, str(ROOT))
    from sixbit_jax.config import named_config

    cfg = named_config(args.model)
    defaults = DEFAULT_LATENTS["wan" if is_wan(cfg) else "cogvideox"]
    for name, value in zip(("frames", "height", "width"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return cfg


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
    what = (f"{args.steps}-step sampling loop with CFG" if args.steps
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
    parser.add_argument("--frames", type=int, help="latent frames (CogVideoX 13 = 49 video frames; Wan 21 = 81)")
    parser.add_argument("--height", type=int, help="latent height (60 = 480 px)")
    parser.add_argument("--width", type=int, help="latent width (CogVideoX 90 = 720 px; Wan 104 = 832)")
    parser.add_argument("--json", help="write the results of --impl all here")
    args = parser.parse_args()
    family_config(args)  # fills the family's default latent size
    run_all(args) if args.impl == "all" else run_one(args)


if __name__ == "__main__":
    main()
