"""Compile the 8-bit attention kernel once per configuration so ptxas reports its registers, spills and wgmma
serialization (run with MOSAIC_GPU_DUMP_PTXAS=1; Hopper only). One process per configuration keeps the reports apart:

    MOSAIC_GPU_DUMP_PTXAS=1 python3 bench/probe_ptxas.py --config wgs=3,pp=0 --head-dim 64 2>&1 | grep -i spill
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import parse_config  # noqa: E402
from pallas_kernels import attention_int8_mgpu as attn8  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="bq=64", help="AttentionConfig fields, as bench_attention.py --configs takes")
    ap.add_argument("--head-dim", type=int, default=64)
    args = ap.parse_args()
    config = parse_config(args.config)
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 1000, 1, args.head_dim), jnp.bfloat16)
    out = jax.jit(lambda q, k, v: attn8.int8_attention_mgpu(q, k, v, config=config))(q, q, q)
    print(f"compiled {args.config} d={args.head_dim}: finite={bool(jnp.isfinite(out).all())}", flush=True)


if __name__ == "__main__":
    main()
