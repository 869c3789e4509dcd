"""The whole CogVideoX-2B pipeline, ours (`sixbit_jax.pipelines.CogVideoXPipeline`) against diffusers'
`CogVideoXPipeline`, same GPU, real shapes, random weights: T5-XXL prompt encoding, VAE decoding of 13 latent frames
to 49 frames at 480x720, and prompt -> frames end to end.

    python bench/bench_pipeline.py --out results.json            # torch (builds + saves the folder), then jax
    python bench/bench_pipeline.py --steps 50 --vae-iters 3

Each implementation runs in its own process (its own peak memory). The torch process builds a diffusers pipeline
with random weights (T5 v1.1-XXL, the 2B transformer, the VAE; bf16; a tiny sentencepiece tokenizer, since no
real one can be downloaded: it only changes which ids the prompt becomes), saves it with `save_pretrained`, times
it and saves its outputs; the jax process loads that folder with `from_folder` (converting in memory, timed), times
the same stages and reports its differences from torch's outputs. Timings are medians of device-synchronised wall
clock after untimed warm-ups; the end-to-end run is timed once per implementation after a full warm-up run.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "A panda, dressed in a small red jacket and a tiny hat, sits on a wooden stool in a bamboo forest."
LATENT_SHAPE = (1, 13, 16, 60, 90)  # [B, F, C, h, w]: 49 frames at 480x720
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "num_heads": 64, "d_ff": 10240, "num_layers": 24,
          "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
          "feed_forward_proj": "gated-gelu", "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def median_seconds(fn, sync, iters: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs(folder: Path):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(LATENT_SHAPE).astype(np.float32)
    latents = rng.standard_normal(LATENT_SHAPE).astype(np.float32)  # VAE input (already divided by the scale)
    return noise, latents


def run_torch(args) -> dict:
    import shutil

    import diffusers
    import torch
    import transformers

    sys.path.insert(0, str(ROOT / "tests"))
    from pipeline_ref import SCHEDULER, write_spm_model

    folder = Path(args.folder)
    torch.manual_seed(0)
    start = time.perf_counter()
    spm = write_spm_model(folder.parent / "spm")
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        pipe = diffusers.CogVideoXPipeline(
            tokenizer=transformers.T5Tokenizer.from_pretrained(str(spm)),
            text_encoder=transformers.T5EncoderModel(transformers.T5Config(**T5_XXL)).eval(),
            vae=diffusers.AutoencoderKLCogVideoX().eval(),
            transformer=diffusers.CogVideoXTransformer3DModel().eval(),
            scheduler=diffusers.CogVideoXDDIMScheduler(**SCHEDULER, snr_shift_scale=3.0))
    torch.set_default_dtype(torch.float32)
    build = time.perf_counter() - start
    start = time.perf_counter()
    pipe.save_pretrained(folder)
    shutil.copy2(spm / "spiece.model", folder / "tokenizer" / "spiece.model")
    save = time.perf_counter() - start

    noise, latents = inputs(folder)
    sync = lambda _: torch.cuda.synchronize()
    out = {"impl": "torch", "build_s": build, "save_pretrained_s": save}
    with torch.no_grad():
        encode = lambda: pipe.encode_prompt(PROMPT, "", do_classifier_free_guidance=True,
                                            max_sequence_length=226, device="cuda")
        out["encode_s"] = median_seconds(encode, sync, args.iters, warmup=2)
        embeds, negative = encode()
        z = torch.from_numpy(latents).to("cuda", torch.bfloat16)
        decode = lambda: pipe.decode_latents(z * pipe.vae_scaling_factor_image)
        for tiled in (True, False):  # diffusers' enable_tiling (what users turn on against OOM), then its default
            key = "vae_decode_tiled" if tiled else "vae_decode"
            pipe.vae.enable_tiling() if tiled else pipe.vae.disable_tiling()
            torch.cuda.synchronize()
            resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out[f"{key}_s"] = median_seconds(decode, sync, args.vae_iters)
            out[f"{key}_working_gib"] = (torch.cuda.max_memory_allocated() - resident) / 2**30
        frames = ((decode().float() / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 4, 1).cpu().numpy()[0]
        np.savez(folder.parent / "torch_outputs.npz", embeds=embeds.float().cpu().numpy(),
                 negative=negative.float().cpu().numpy(), frames=frames.astype(np.float16))

        def whole():
            return pipe(prompt=PROMPT, negative_prompt="", num_frames=49, height=480, width=720,
                        num_inference_steps=args.steps, guidance_scale=6.0,
                        latents=torch.from_numpy(noise).to("cuda", torch.bfloat16), output_type="np")

        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        video = whole().frames[0]
        torch.cuda.synchronize()
        out["pipeline_s"] = time.perf_counter() - start
        out["pipeline_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        np.save(folder.parent / "torch_pipeline_frames.npy", np.asarray(video, np.float16))
    return out


def run_jax(args) -> dict:
    import jax
    from flax import nnx

    from sixbit_jax.models import t5
    from sixbit_jax.quant.spec import QuantSpec
    from sixbit_jax.models.vae_cogvideox import decode_latents, postprocess
    from sixbit_jax.pipelines.cogvideox import CogVideoXPipeline
    from sixbit_jax.runtime import RuntimeConfig
    from sixbit_jax.sampling import SamplerSettings

    folder = Path(args.folder)
    out = {"impl": "jax", "backend": jax.default_backend(), "jax": jax.__version__}
    noise, latents = inputs(folder)
    ref = np.load(folder.parent / "torch_outputs.npz")
    out.update(vae_alone(folder, latents, args.vae_iters))  # first: the allocator's peak is then the VAE's own

    start = time.perf_counter()
    pipe = CogVideoXPipeline.from_folder(folder, dtype="bf16")
    jax.block_until_ready([nnx.state(m) for m in (pipe.transformer, pipe.text_encoder, pipe.vae)])
    out["load_s"] = time.perf_counter() - start

    ids = pipe.tokenizer.encode([PROMPT], pipe.transformer.config.max_text_seq_length)
    empty = pipe.tokenizer.encode([""], pipe.transformer.config.max_text_seq_length)
    encode = lambda: (t5.encode(pipe.text_encoder, ids), t5.encode(pipe.text_encoder, empty))
    out["encode_s"] = median_seconds(encode, jax.block_until_ready, args.iters, warmup=2)
    embeds, negative = (np.asarray(e, np.float32) for e in encode())
    out["encode_max_abs_diff"] = float(max(np.abs(embeds - ref["embeds"]).max(),
                                           np.abs(negative - ref["negative"]).max()))
    out["encode_max_abs_ref"] = float(np.abs(ref["embeds"]).max())

    z = jax.numpy.asarray(latents * pipe.vae.config.scaling_factor, jax.numpy.bfloat16)
    frames = np.asarray(postprocess(decode_latents(pipe.vae, z)), np.float32)[0]
    out["vae_frames_max_abs_diff"] = float(np.abs(frames - ref["frames"].astype(np.float32)).max())
    out["vae_frames_mean_abs_diff"] = float(np.abs(frames - ref["frames"].astype(np.float32)).mean())

    settings = SamplerSettings(num_steps=args.steps, guidance_scale=6.0)
    video = np.load(folder.parent / "torch_pipeline_frames.npy").astype(np.float32)
    result, out["pipeline_s"] = timed_pipeline(pipe, settings, noise)
    out["pipeline_stages_s"] = result.seconds
    out["pipeline_frames_mean_abs_diff"] = float(np.abs(result.frames[0] - video).mean())
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30

    # The same pipeline with the transformer's block linears in NVFP4 and the INT8 (W4A8) path: precision only,
    # no skipping (TDC's skip rate on random weights says nothing about a trained model's).
    del pipe, result
    gc.collect()
    pipe = CogVideoXPipeline.from_folder(folder, dtype="bf16", quant=QuantSpec())
    result, out["pipeline_int8_s"] = timed_pipeline(pipe, settings, noise, RuntimeConfig(mode="int8", tdc=False))
    out["pipeline_int8_stages_s"] = result.seconds
    out["pipeline_int8_frames_mean_abs_diff"] = float(np.abs(result.frames[0] - video).mean())
    return out


def timed_pipeline(pipe, settings, noise, runtime=None):
    """(output, seconds) of the second of two identical runs (the first compiles)."""
    pipe(PROMPT, settings=settings, latents=noise, runtime=runtime)
    start = time.perf_counter()
    result = pipe(PROMPT, settings=settings, latents=noise, runtime=runtime)
    return result, time.perf_counter() - start


def vae_alone(folder: Path, latents: np.ndarray, iters: int) -> dict:
    """Tiled, then untiled VAE decode times and working memory (the allocator's peak above the resident weights;
    JAX's peak cannot be reset, so the smaller, tiled, run goes first, in a process that has loaded only the VAE)."""
    import jax
    from flax import nnx

    from sixbit_jax.models.vae_cogvideox import decode_latents, postprocess
    from sixbit_jax.pipelines import components

    vae = components.load_vae(folder, dtype="bf16")
    jax.block_until_ready(nnx.state(vae))
    resident = jax.devices()[0].memory_stats()["bytes_in_use"]
    z = jax.numpy.asarray(latents * vae.config.scaling_factor, jax.numpy.bfloat16)
    out = {}
    for tiled in (True, False):
        key = "vae_decode_tiled" if tiled else "vae_decode"
        out[f"{key}_s"] = median_seconds(lambda: postprocess(decode_latents(vae, z, tile=tiled)),  # noqa: B023
                                         jax.block_until_ready, iters)
        out[f"{key}_working_gib"] = (jax.devices()[0].memory_stats()["peak_bytes_in_use"] - resident) / 2**30
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=["torch", "jax"], help="run one implementation here (default: both, "
                        "each in a subprocess)")
    parser.add_argument("--folder", default="/tmp/sixbit-bench-pipeline/CogVideoX-2b",
                        help="where the torch run saves the random pipeline (about 13 GB)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--iters", type=int, default=5, help="timed T5 encodes")
    parser.add_argument("--vae-iters", type=int, default=3, help="timed VAE decodes")
    parser.add_argument("--out", help="write the results (JSON) here")
    args = parser.parse_args()
    if args.impl:
        print(json.dumps({"torch": run_torch, "jax": run_jax}[args.impl](args)), flush=True)
        return
    Path(args.folder).parent.mkdir(parents=True, exist_ok=True)
    results = {}
    for impl in ("torch", "jax"):
        cmd = [sys.executable, __file__, "--impl", impl, "--folder", args.folder, "--steps", str(args.steps),
               "--iters", str(args.iters), "--vae-iters", str(args.vae_iters)]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            results[impl] = {"error": proc.returncode}
            break
        results[impl] = json.loads(lines[-1])
        print(impl, results[impl], flush=True)
    if "pipeline_s" in results.get("jax", {}):
        for key in ("encode_s", "vae_decode_s", "vae_decode_tiled_s", "pipeline_s"):
            results[f"speedup_{key}"] = results["torch"][key] / results["jax"][key]
        results["speedup_pipeline_int8_s"] = results["torch"]["pipeline_s"] / results["jax"]["pipeline_int8_s"]
    results["shapes"] = {"latents": LATENT_SHAPE, "frames": [49, 480, 720], "steps": args.steps, "guidance": 6.0,
                         "text_len": 226}
    print(json.dumps({k: v for k, v in results.items() if k.startswith("speedup")}))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
