"""Train the shapes model: the CogVideoX architecture (our Flax code) on procedural clips, in pixel space.

    python -m sixbit_jax.shapes.train --out runs/shapes --steps 12000

Objective: v-prediction on the CogVideoX DDIM training schedule (scaled-linear betas, SNR shift 3, zero terminal
SNR), timesteps uniform over 0..999, MSE. Clips are drawn fresh on the device every step (`world.sample_clips`);
captions are dropped (replaced by the empty prompt) 10% of the time so classifier-free guidance works. Float32
master weights and AdamW, bfloat16 forward and backward; the exported weights are an exponential moving average.

The output folder is a pipeline in diffusers layout, ready for `sixbit convert`:
    transformer/        config.json + diffusion_pytorch_model.safetensors (float16, diffusers key names)
    text_encoder/       the prompt encoder (vocabulary + embedding tables)
    loss.png, train_log.json, README.md (model card), model_index.json
It is rewritten (atomically) every --export-every seconds, so a run cut short still leaves its latest weights."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from convert.export import diffusers_tensors, write_diffusers_folder
from sixbit_jax import rng
from sixbit_jax.checkpoint import atomic_folder
from sixbit_jax.config import CogVideoXConfig
from sixbit_jax.media import line_chart
from sixbit_jax.models import CogVideoXTransformer3D
from sixbit_jax.schedulers import SchedulerConfig
from sixbit_jax.schedulers.cogvideox import alphas_cumprod
from sixbit_jax.shapes import world
from sixbit_jax.shapes.text import CLASS_NAME, MAX_TOKENS, VOCAB, PromptEncoder, TextEncoder, clip_tokens

DEFAULT_CONFIG = "cogvideox-shapes"
TIMING_STEPS = 100  # steps timed (after the compiling one) before a time budget is turned into a step count


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 12000  # replaced by what fits when `minutes` is set
    minutes: float | None = None  # time budget: after TIMING_STEPS steps, `steps` is set to fill it
    batch: int = 128
    learning_rate: float = 4e-4
    warmup_steps: int = 500
    final_lr_fraction: float = 0.1  # cosine decay from learning_rate down to this fraction of it
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    seed: int = 0
    compute_dtype: str = "bfloat16"
    log_every: int = 50


def init_params(cfg: CogVideoXConfig, seed: int) -> dict:
    """Float32 parameters {"transformer", "text"} as nnx States. The AdaLN modulations and the output projection
    start at zero (DiT's adaLN-Zero), so every block starts as the identity and training is stable from step 0."""
    rngs = nnx.Rngs(seed)
    model = CogVideoXTransformer3D(cfg, dtype=jnp.float32, rngs=rngs)
    for dense in (model.transformer_blocks.norm1.linear, model.transformer_blocks.norm2.linear,
                  model.norm_out.linear, model.proj_out):
        dense.weight[...] = jnp.zeros_like(dense.weight[...])
        dense.bias[...] = jnp.zeros_like(dense.bias[...])
    encoder = PromptEncoder(len(VOCAB), MAX_TOKENS, cfg.text_embed_dim, rngs=rngs)
    return {"transformer": nnx.state(model), "text": nnx.state(encoder)}


def make_train_step(cfg: CogVideoXConfig, settings: TrainSettings):
    """(params, ema, opt_state, step, total_steps, key) -> (params, ema, opt_state, loss), jitted, buffers
    donated."""
    compute = jnp.dtype(settings.compute_dtype)
    model_def = nnx.graphdef(nnx.eval_shape(lambda: CogVideoXTransformer3D(cfg, dtype=compute, rngs=nnx.Rngs(0))))
    encoder_def = nnx.graphdef(nnx.eval_shape(
        lambda: PromptEncoder(len(VOCAB), MAX_TOKENS, cfg.text_embed_dim, rngs=nnx.Rngs(0))))
    ac = alphas_cumprod(SchedulerConfig.for_model(cfg.flavour))
    sqrt_ac, sqrt_1m_ac = jnp.asarray(np.sqrt(ac), jnp.float32), jnp.asarray(np.sqrt(1 - ac), jnp.float32)
    optimizer = make_optimizer(settings)

    def loss_fn(params, key):
        k_clips, k_drop, k_t, k_noise = jax.random.split(key, 4)
        clips = world.sample_clips(k_clips, settings.batch)
        x0 = world.to_latents(world.render(clips))
        ids = clip_tokens(clips)
        dropped = jax.random.uniform(k_drop, (settings.batch,)) < settings.caption_dropout
        ids = jnp.where(dropped[:, None], 0, ids)
        text = nnx.merge(encoder_def, params["text"])(ids)
        t = jax.random.randint(k_t, (settings.batch,), 0, sqrt_ac.shape[0])
        noise = rng.normal(k_noise, x0.shape)
        a, s = sqrt_ac[t][:, None, None, None, None], sqrt_1m_ac[t][:, None, None, None, None]
        noisy, target = a * x0 + s * noise, a * noise - s * x0
        model = nnx.merge(model_def, jax.tree.map(lambda p: p.astype(compute), params["transformer"]))
        prediction = model(noisy.astype(compute), text.astype(compute), t).astype(jnp.float32)
        return jnp.mean((prediction - target) ** 2)

    def train_step(params, ema, opt_state, step, total_steps, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, jax.random.fold_in(key, step))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        lr = learning_rate(settings, step, total_steps)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        decay = jnp.minimum(settings.ema_decay, (1.0 + step) / (10.0 + step))  # short memory early on
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        return params, ema, opt_state, loss

    return jax.jit(train_step, donate_argnums=(0, 1, 2)), optimizer


def make_optimizer(settings: TrainSettings) -> optax.GradientTransformation:
    """AdamW without its learning rate, which `train_step` applies from `learning_rate(step, total)`: the total
    step count is a traced argument, so a time budget can set it after the first steps without recompiling."""
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip), optax.scale_by_adam(b2=0.99),
                       optax.add_decayed_weights(settings.weight_decay))


def learning_rate(settings: TrainSettings, step, total_steps):
    """Linear warmup to the peak, then cosine decay to final_lr_fraction of it at total_steps."""
    peak = settings.learning_rate
    warm = peak * (step + 1) / settings.warmup_steps
    progress = jnp.clip((step - settings.warmup_steps) / jnp.maximum(total_steps - settings.warmup_steps, 1), 0, 1)
    floor = peak * settings.final_lr_fraction
    cosine = floor + (peak - floor) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < settings.warmup_steps, warm, cosine)


def train(cfg: CogVideoXConfig, settings: TrainSettings, out: str | Path, *, export_every_s: float = 120.0,
          progress: bool = True) -> Path:
    """Train, exporting the EMA weights to `out` every `export_every_s` seconds and at the end."""
    if settings.minutes is not None and settings.steps < settings.warmup_steps:
        raise ValueError("with a time budget, --steps is an upper bound and must cover the warmup")
    from tqdm import tqdm

    params = init_params(cfg, settings.seed)
    ema = jax.tree.map(jnp.copy, params)
    train_step, optimizer = make_train_step(cfg, settings)
    opt_state = optimizer.init(params)
    key = jax.random.key(settings.seed + 1)
    log = {"step": [], "loss": [], "seconds": []}
    pending = []
    start = last_export = time.perf_counter()
    total = settings.steps
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress)
    step, timing_start = 0, None
    while step < total:
        params, ema, opt_state, loss = train_step(params, ema, opt_state, jnp.int32(step), jnp.int32(total), key)
        pending.append(loss)
        if settings.minutes is not None and step == 0:
            loss.block_until_ready()
            timing_start = time.perf_counter()  # compilation is over
        if settings.minutes is not None and step == TIMING_STEPS:
            loss.block_until_ready()
            per_step = (time.perf_counter() - timing_start) / TIMING_STEPS
            left = settings.minutes * 60 - (time.perf_counter() - start)
            total = min(settings.steps, max(settings.warmup_steps, step + 1 + int(left / per_step)))
            settings = dataclasses.replace(settings, steps=total)
            bar.reset(total=total)
            bar.update(step)
        if len(pending) == settings.log_every or step == total - 1:
            mean_loss = float(jnp.mean(jnp.stack(pending)))  # one host sync per log interval
            pending.clear()
            log["step"].append(step + 1)
            log["loss"].append(mean_loss)
            log["seconds"].append(time.perf_counter() - start)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            if not np.isfinite(mean_loss):
                raise FloatingPointError(f"training loss became {mean_loss} by step {step + 1}")
            if time.perf_counter() - last_export > export_every_s:
                export_model(out, cfg, ema, settings, log)
                last_export = time.perf_counter()
        bar.update(1)
        step += 1
    bar.close()
    return export_model(out, cfg, ema, settings, log)


def export_model(out: str | Path, cfg: CogVideoXConfig, params: dict, settings: TrainSettings, log: dict) -> Path:
    """Write the pipeline folder (see the module docstring) atomically, replacing an earlier export."""
    transformer = jax.device_get(nnx.to_pure_dict(params["transformer"]))
    encoder = nnx.merge(nnx.graphdef(nnx.eval_shape(
        lambda: PromptEncoder(len(VOCAB), MAX_TOKENS, cfg.text_embed_dim, rngs=nnx.Rngs(0)))), params["text"])
    with atomic_folder(out, overwrite=True) as tmp:
        write_diffusers_folder(tmp / "transformer", cfg, diffusers_tensors(cfg, transformer))
        TextEncoder.from_module(encoder).save(tmp / "text_encoder")
        (tmp / "model_index.json").write_text(json.dumps(
            {"_class_name": "ShapesPipeline", "transformer": "CogVideoXTransformer3DModel",
             "text_encoder": CLASS_NAME, "frames": world.FRAMES, "height": world.SIZE,
             "width": world.SIZE}, indent=2) + "\n")
        record = {"settings": dataclasses.asdict(settings), "device": jax.devices()[0].device_kind,
                  "date": datetime.date.today().isoformat(), "parameters": _count(params["transformer"]), **log}
        (tmp / "train_log.json").write_text(json.dumps(record) + "\n")
        if log["step"]:
            line_chart(tmp / "loss.png", log["step"], {"training loss (v-prediction MSE)": log["loss"]},
                       title=f"cogvideox-shapes: {len(log['step'])} points, batch {settings.batch}",
                       x_label="step", log_y=True)
        (tmp / "README.md").write_text(model_card(cfg, record))
    return Path(out)


def _count(state) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def model_card(cfg: CogVideoXConfig, record: dict) -> str:
    s = record["settings"]
    steps = record["step"][-1] if record["step"] else 0
    final = np.mean(record["loss"][-10:]) if record["loss"] else float("nan")
    minutes = record["seconds"][-1] / 60 if record["seconds"] else 0.0
    return f"""# cogvideox-shapes

A {record['parameters'] / 1e6:.1f}M-parameter CogVideoX-architecture video DiT (the diffusers
`CogVideoXTransformer3DModel`, 2B flavour: 3D sin-cos positions) trained from scratch by sixbit-jax on procedural
clips. It is the project's embedded default and its quantization test bed; it is not a general video model.

- **Data**: `sixbit_jax/shapes/world.py`. {world.FRAMES} frames of {world.SIZE}x{world.SIZE} RGB, pixel space (no VAE):
  one {'/'.join(world.SHAPES)} in one of {len(world.COLOURS)} colours ({', '.join(world.COLOURS)}), moving
  left/right/up/down or standing still, on black or a {'/'.join(list(world.BACKGROUNDS)[1:])} background.
  Captions: "a red circle moving right", "a cyan square standing still on a navy background".
- **Text**: a word tokenizer over the grammar's {len(VOCAB)}-word vocabulary and learned token + position
  embeddings ({cfg.max_text_seq_length} x {cfg.text_embed_dim}), in `text_encoder/`.
- **Config**: {cfg.num_layers} layers, {cfg.num_attention_heads} heads x {cfg.attention_head_dim}, patch
  {cfg.patch_size}, time embedding {cfg.time_embed_dim} (`transformer/config.json`).
- **Training**: v-prediction, CogVideoX DDIM schedule (SNR shift 3, zero terminal SNR), {steps} steps of batch
  {s['batch']}, AdamW lr {s['learning_rate']} (warmup {s['warmup_steps']}, cosine to x{s['final_lr_fraction']}),
  {s['caption_dropout']:.0%} caption dropout, EMA {s['ema_decay']}, bf16 compute; {minutes:.1f} min on
  {record['device']}, {record['date']}. Final training loss {final:.4f} (mean of the last 10 log points);
  curve in `loss.png`, numbers in `train_log.json`.
- **Weights**: float16 safetensors in diffusers key layout (`transformer/`); convert with `sixbit convert`.
- **Reproduce**: `python -m sixbit_jax.shapes.train --out <folder> --steps {steps} --batch {s['batch']}`.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sixbit_jax.shapes.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="pipeline folder to write (replaced atomically)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"model config in configs/ ({DEFAULT_CONFIG})")
    defaults = TrainSettings()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps (the upper bound with "
                                                                          "--minutes)")
    parser.add_argument("--minutes", type=float, help="time budget: train as many steps as fit (timed on the "
                                                        f"first {TIMING_STEPS}), the schedule fitted to them")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--warmup", type=int, default=defaults.warmup_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--compute-dtype", default=defaults.compute_dtype, choices=["bfloat16", "float32"])
    parser.add_argument("--export-every", type=float, default=120.0, help="seconds between exports (120)")
    args = parser.parse_args(argv)
    settings = TrainSettings(steps=args.steps, minutes=args.minutes, batch=args.batch, learning_rate=args.lr, warmup_steps=args.warmup,
                             seed=args.seed, compute_dtype=args.compute_dtype)
    out = train(CogVideoXConfig.named(args.config), settings, args.out, export_every_s=args.export_every)
    print(f"exported {out}")


if __name__ == "__main__":
    main()
