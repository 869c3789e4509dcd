"""`sixbit`: convert diffusers CogVideoX checkpoints, sample latents, run the demo."""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from sixbit_jax.errors import InputError, SixbitError

DESCRIPTION = """\
sixbit-jax: CogVideoX video diffusion transformers in JAX.

Pipeline today: convert a diffusers transformer/ folder, then sample latents from T5 text embeddings you computed
elsewhere. Text encoding (T5) and VAE decoding to a video are not part of sixbit-jax yet; they arrive in a later
release. Until then `sample` writes the final latents [B, F, C, H, W]."""


def _peak_memory() -> str:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"peak device memory {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
    return f"peak host memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def cmd_convert(args) -> None:
    from convert import convert_checkpoint

    start = time.perf_counter()
    dst = convert_checkpoint(args.src, args.dst, dtype=args.dtype, overwrite=args.force, progress=not args.quiet)
    print(f"converted {args.src} -> {dst} ({args.dtype}) in {time.perf_counter() - start:.1f} s | {_peak_memory()}")


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
    from sixbit_jax.sampling import SamplerSettings, sample

    settings = SamplerSettings(scheduler=args.scheduler, num_steps=args.steps, guidance_scale=args.guidance,
                               use_dynamic_cfg=args.dynamic_cfg, seed=args.seed)
    if Path(args.out).suffix not in (".npy", ".safetensors"):
        raise InputError(f"--out {args.out}: use a .npy or .safetensors file name")
    model = load_checkpoint(args.checkpoint)
    embeds = _load_embeds(args.embeds, "prompt", model)
    negative = _load_embeds(args.negative_embeds, "negative", model) if args.negative_embeds else None
    latents = load_array(args.latents_in, ("latents",)) if args.latents_in else None
    if latents is not None and latents.ndim == 4:
        latents = latents[None]
    result = sample(model, embeds, negative, latents=latents, settings=settings, frames=args.frames,
                    height=args.height, width=args.width, progress=not args.quiet)
    out = np.asarray(jax.device_get(result.latents)).astype(np.float32)
    save_array(args.out, out, "latents")
    batch = out.shape[0] * (2 if settings.uses_cfg else 1)
    print(f"sampled {settings.num_steps} {settings.scheduler} steps (guidance {settings.guidance_scale}"
          f"{', dynamic' if settings.use_dynamic_cfg else ''}, model batch {batch}) in {result.seconds:.1f} s "
          f"(compile included) | {_peak_memory()} | precision: {model.dtype.name} 100% of linears "
          f"| wrote {args.out} {list(out.shape)} float32")


def cmd_demo(args) -> None:
    """Tiny random model end to end: diffusers-layout folder -> convert -> sample."""
    from convert import convert_checkpoint
    from convert.synthetic import write_random_transformer
    from sixbit_jax.config import CogVideoXConfig
    from sixbit_jax.io import save_array

    out = Path(args.out)
    cfg = CogVideoXConfig.named(args.config)
    src = write_random_transformer(out / "transformer", cfg, seed=args.seed)
    print(f"wrote a random {args.config} diffusers folder to {src}")
    ckpt = out / "checkpoint"
    cmd_convert(argparse.Namespace(src=src, dst=ckpt, dtype=args.dtype, force=True, quiet=args.quiet))
    rng = np.random.default_rng(args.seed)
    shape = (1, cfg.max_text_seq_length, cfg.text_embed_dim)
    save_array(out / "prompt_embeds.npy", rng.standard_normal(shape).astype(np.float32), "prompt_embeds")
    save_array(out / "negative_embeds.npy", rng.standard_normal(shape).astype(np.float32), "negative_prompt_embeds")
    cmd_sample(argparse.Namespace(
        checkpoint=ckpt, embeds=out / "prompt_embeds.npy", negative_embeds=out / "negative_embeds.npy",
        latents_in=None, frames=None, height=None, width=None, steps=args.steps, guidance=6.0, dynamic_cfg=False,
        scheduler=args.scheduler, seed=args.seed, out=out / "latents.npy", quiet=args.quiet))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sixbit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="diffusers transformer/ folder -> sixbit-jax checkpoint",
                       description="Convert a diffusers CogVideoX transformer folder (config.json plus "
                                   "diffusion_pytorch_model.safetensors, or shards with their .index.json) to a "
                                   "sixbit-jax (orbax) checkpoint. Reads safetensors only, one tensor at a time; "
                                   "writes atomically (a failed conversion leaves nothing at DST).")
    p.add_argument("src", help="diffusers transformer/ folder")
    p.add_argument("dst", help="checkpoint folder to create")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="stored weight dtype (bf16)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("sample", help="denoise latents from text embeddings",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Sample with one jitted lax.scan over timesteps and classifier-free guidance.\n"
                                   "Inputs are T5 text embeddings [B, L, text_dim] (226 tokens for CogVideoX) in\n"
                                   ".npy or .safetensors; the output is the final latent [B, F, C, H, W] (float32).\n"
                                   "Text encoding and VAE decoding are not included yet (a later release).")
    p.add_argument("checkpoint", help="converted checkpoint folder (see `sixbit convert`)")
    p.add_argument("--embeds", required=True, help="prompt embeddings (.npy/.safetensors)")
    p.add_argument("--negative-embeds", help="negative-prompt embeddings; required when guidance > 1 "
                                             "(diffusers uses the T5 encoding of '')")
    p.add_argument("--latents-in", help="initial latents [B, F, C, H, W] instead of noise drawn from --seed")
    p.add_argument("--frames", type=int, help="video frames (1 + 4k; default: the model's 49)")
    p.add_argument("--height", type=int, help="video height in pixels (multiple of 16; default 480)")
    p.add_argument("--width", type=int, help="video width in pixels (multiple of 16; default 720)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (50)")
    p.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance scale (6; 1 disables CFG)")
    p.add_argument("--dynamic-cfg", action="store_true", help="diffusers' use_dynamic_cfg guidance schedule")
    p.add_argument("--scheduler", choices=["ddim", "dpm"], default="ddim",
                   help="ddim (deterministic; recommended for 2B) or dpm (stochastic SDE-DPM-Solver++ 2M; 5B)")
    p.add_argument("--seed", type=int, default=0, help="seed for initial latents and DPM noise (0)")
    p.add_argument("--out", required=True, help="output latents file (.npy or .safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="tiny random model end to end (convert + sample), CPU is fine",
                       description="Writes a random-weight diffusers-layout model, converts it and samples from "
                                   "random embeddings: a check that the whole pipeline runs on this machine.")
    p.add_argument("--out", default="demo-out", help="output folder (demo-out)")
    p.add_argument("--config", default="cogvideox-tiny", help="config in configs/ (cogvideox-tiny)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--scheduler", choices=["ddim", "dpm"], default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SixbitError as e:
        print(f"sixbit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
