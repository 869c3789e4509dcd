"""One CogVideoX transformer block at full size, BF16 against the quantized paths, in one run.

    python bench/bench_block.py --model cogvideox-2b --paths bf16 int8

Random weights, B = 2 (the CFG batch), 49 frames at 480x720: 17,550 video + 226 text tokens per sample. Rows:
- `bf16`: the float block (XLA matmuls, cuDNN attention): the BF16 model's block;
- one row per quantized path (`int8`, `nvfp4`, `bf16-w4a16`): the NVFP4-weight block with every linear on that path;
  `int8-group`: the INT8 path with one activation scale per row and 128-wide K group instead of per row;
- `attention`: the block's attention call alone (q, k, v already projected), so each row's time without attention
  is its time minus this one.
Median of --iters device-synchronised calls after warm-up; prints a JSON line per row and a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from bench.bench_linear import median_seconds  # noqa: E402
from sixbit_jax.config import CogVideoXConfig  # noqa: E402
from sixbit_jax.layers import LinearRuntime, QuantDense, dot_product_attention  # noqa: E402
from sixbit_jax.models import CogVideoXTransformer3D  # noqa: E402
from sixbit_jax.quant.model import quantize_model  # noqa: E402

BATCH, FRAMES, HEIGHT, WIDTH = 2, 13, 60, 90


def one_block(model):
    """The model's only block as a (graphdef, state) pair."""
    block_def, stacked = nnx.split(model.transformer_blocks)
    return block_def, jax.tree.map(lambda leaf: leaf[0], stacked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cogvideox-2b")
    parser.add_argument("--paths", nargs="+", default=["bf16", "int8"])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", help="JSON results file")
    args = parser.parse_args()

    cfg = dataclasses.replace(CogVideoXConfig.named(args.model), num_layers=1)
    model = CogVideoXTransformer3D(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    quantized = quantize_model(model)
    keys = jax.random.split(jax.random.key(1), 3)
    n_video = FRAMES * (HEIGHT // cfg.patch_size) * (WIDTH // cfg.patch_size)
    video = jax.random.normal(keys[0], (BATCH, n_video, cfg.inner_dim), jnp.bfloat16)
    text = jax.random.normal(keys[1], (BATCH, cfg.max_text_seq_length, cfg.inner_dim), jnp.bfloat16)
    temb_act = jax.random.normal(keys[2], (BATCH, cfg.time_embed_dim), jnp.bfloat16)
    tables = model.positional_tables(FRAMES, HEIGHT, WIDTH)

    rows = []

    def record(name, seconds):
        rows.append({"row": name, "ms": seconds * 1e3})
        print(json.dumps(rows[-1]), flush=True)

    for path in args.paths:
        block_def, state = one_block(model if path == "bf16" else quantized)
        linear_path = {"bf16-w4a16": "bf16", "int8-group": "int8"}.get(path, path)
        QuantDense.int8_group_size = 128 if path == "int8-group" else None  # read while tracing, below

        @jax.jit
        def run(state, video, text, block_def=block_def, linear_path=linear_path):
            return nnx.merge(block_def, state)(video, text, temb_act, tables, LinearRuntime(path=linear_path))

        record(path, median_seconds(run, state, video, text, iters=args.iters))

    heads = cfg.num_attention_heads
    n = n_video + cfg.max_text_seq_length
    q, k, v = (jax.random.normal(key, (BATCH, n, heads, cfg.attention_head_dim), jnp.bfloat16)
               for key in jax.random.split(jax.random.key(2), 3))
    record("attention", median_seconds(jax.jit(dot_product_attention), q, k, v, iters=args.iters))

    attention = rows[-1]["ms"]
    base = next(r for r in rows if r["row"] == "bf16")["ms"]
    print(f"\n{args.model}, one block, B={BATCH}, {n} tokens, median of {args.iters} (ms)")
    print("| path | block | vs bf16 | block without attention | vs bf16 |")
    print("|---|---|---|---|---|")
    for r in rows[:-1]:
        r["vs_bf16"] = base / r["ms"]
        r["ms_without_attention"] = r["ms"] - attention
        r["vs_bf16_without_attention"] = (base - attention) / r["ms_without_attention"]
        print(f"| {r['row']} | {r['ms']:.2f} | {r['vs_bf16']:.2f}x | {r['ms_without_attention']:.2f} | "
              f"{r['vs_bf16_without_attention']:.2f}x |")
    print(f"| attention alone | {attention:.2f} | | | |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(model=args.model, device=jax.devices()[0].device_kind,
                                                  jax=jax.__version__, rows=rows), indent=2))


if __name__ == "__main__":
    main()
