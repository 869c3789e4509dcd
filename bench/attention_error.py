"""8-bit attention's error on realistic activations: the q, k, v of every self-attention call in a model forward
pass, against float32 attention of the same inputs (cosine similarity and relative L1 per call).

    python bench/attention_error.py --model shapes            # the trained shapes model, one denoising step per t
    python bench/attention_error.py --model cogvideox-2b --layers 2 --batch 1   # real 2B shape, random weights

shapes: the shipped model (`sixbit_jax/assets/cogvideox-shapes`) on the eval prompts, at timesteps early, middle
and late in the DDIM schedule, on noised latents of its own samples. cogvideox-2b (or -5b, wan2.1-1.3b): random
weights at the real shape (49 frames at 480x720; Wan 81 at 480x832), the first --layers blocks only (the CPU cost
of a full forward). The int8 path here is the kernel's jnp reference (`int8_attention_reference`), the same
function the GPU kernel is tested against; --rows limits the queries compared (the keys are always all of them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pallas_kernels.attention_int8_mgpu import int8_attention_reference  # noqa: E402
from sixbit_jax.layers import attention as attention_layer  # noqa: E402


def recording_attention(records: list, rows: int, pv: str):
    """A drop-in for dot_product_attention that also measures the int8 path on the first `rows` queries."""
    original = attention_layer.dot_product_attention

    def record(cos, rel_l1, shape):
        records.append({"cos": float(cos), "rel_l1": float(rel_l1), "shape": [int(s) for s in shape]})

    def attention(q, k, v, *, implementation=None):
        n = min(rows, q.shape[1])
        exact = original(q[:, :n].astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                         implementation="xla").astype(jnp.float32)
        approx = int8_attention_reference(q[:, :n].astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                                          v.astype(jnp.bfloat16), pv=pv).astype(jnp.float32)
        a, b = approx.ravel(), exact.ravel()
        cos = a @ b / jnp.linalg.norm(a) / jnp.linalg.norm(b)
        rel_l1 = jnp.abs(a - b).sum() / jnp.abs(b).sum()
        jax.debug.callback(record, cos, rel_l1, jnp.asarray(q.shape))
        return original(q, k, v, implementation=implementation)

    return attention


def shapes_inputs(prompts: int):
    """(model, list of (latents, text, t) forward inputs) for the shipped shapes model."""
    import tempfile

    from convert import convert_checkpoint
    from sixbit_jax.shapes.evaluate import eval_prompts
    from sixbit_jax.shapes.pipeline import PACKAGED_MODEL, ShapesPipeline

    tmp = tempfile.mkdtemp()
    ckpt = convert_checkpoint(PACKAGED_MODEL, Path(tmp) / "ckpt", dtype="fp32", progress=False)
    pipe = ShapesPipeline.from_checkpoint(ckpt, dtype="bf16")
    prompts = eval_prompts(prompts)
    clean = jnp.asarray(pipe(prompts, steps=10).result.latents)
    text = pipe.text_encoder(prompts)
    inputs = []
    for t in (900, 500, 100):  # early, middle, late
        noise = jax.random.normal(jax.random.PRNGKey(t), clean.shape, clean.dtype)
        alpha = 1.0 - t / 1000.0
        inputs.append((jnp.sqrt(alpha) * clean + jnp.sqrt(1 - alpha) * noise, text, t))
    return pipe.model, inputs


def random_inputs(name: str, layers: int, batch: int):
    from flax import nnx

    from sixbit_jax.config import WanConfig, named_config
    from sixbit_jax.models import model_class

    cfg = named_config(name)
    cfg = type(cfg)(**{**cfg.__dict__, "num_layers": layers})
    model = model_class(cfg)(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    latents = jnp.asarray(rng.standard_normal(model.latent_shape(batch)), jnp.bfloat16)
    text_tokens = 512 if isinstance(cfg, WanConfig) else cfg.max_text_seq_length
    text = jnp.asarray(rng.standard_normal((batch, text_tokens, cfg.text_embed_dim)), jnp.bfloat16)
    return model, [(latents, text, 500)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes", help="shapes, or a config in configs/ (random weights)")
    ap.add_argument("--layers", type=int, default=1, help="random-weight models: blocks to run")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=8, help="shapes model: eval prompts")
    ap.add_argument("--rows", type=int, default=512, help="queries compared per call")
    ap.add_argument("--pv", default="bf16", choices=["bf16", "fp8"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from sixbit_jax.models import cogvideox, wan

    model, inputs = shapes_inputs(args.prompts) if args.model == "shapes" else random_inputs(
        args.model, args.layers, args.batch)
    records: list = []
    patched = recording_attention(records, args.rows, args.pv)
    cogvideox.dot_product_attention = wan.dot_product_attention = patched
    for latents, text, t in inputs:
        model(latents, text, jnp.full((latents.shape[0],), t))
        jax.effects_barrier()
    cos = np.array([r["cos"] for r in records])
    rel = np.array([r["rel_l1"] for r in records])
    summary = {"model": args.model, "pv": args.pv, "calls": len(records), "cos_min": float(cos.min()),
               "cos_median": float(np.median(cos)), "rel_l1_median": float(np.median(rel)),
               "rel_l1_max": float(rel.max()), "shapes": sorted({tuple(r["shape"]) for r in records})}
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "calls": records}, indent=1))


if __name__ == "__main__":
    main()
