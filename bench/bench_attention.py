"""8-bit attention (`pallas_kernels/attention_int8_mgpu.py`) against cuDNN bf16 flash attention, on one GPU, one run.

    python bench/bench_attention.py                       # 2B, 5B and Wan-1.3B shapes, every implementation
    python bench/bench_attention.py --shapes 2b --out attention.json

Per shape (B = 2: the CFG batch), in one process, medians of --iters device-synchronised calls after warm-up:
- cudnn: `jax.nn.dot_product_attention(..., implementation="cudnn")`, bf16 (what the models use today);
- mgpu_bf16: JAX's own FlashAttention-3-style Mosaic GPU example (`ops/gpu/attention_mgpu.py`), bf16, on lengths
  padded to its tile multiples (its timing is an indication: it computes on a few more tokens);
- int8: ours, from bf16 q/k/v to bf16 out, the quantization of q and k included; int8_kernel: the kernel alone on
  pre-quantized inputs; int8_quantize: the quantization alone; for each grid order and pipeline depth asked for.
Accuracy at the same shape: cosine similarity and relative L1 of each implementation's output against float32
attention of the same bf16 inputs (random q/k/v with a per-channel offset on k, as DiTs have), on the first --check
query tokens. Correctness at small ragged shapes: the kernel against `int8_attention_reference` run on the host CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_linear import median_seconds  # noqa: E402
from pallas_kernels import attention_int8_mgpu as attn8  # noqa: E402

SHAPES = {  # name -> (batch, tokens, heads, head_dim)
    "2b": (2, 17_776, 30, 64),
    "5b": (2, 17_776, 48, 64),
    "wan1.3b": (2, 32_760, 12, 128),
}


def inputs(shape, seed=0, dtype=jnp.bfloat16):
    b, n, h, d = shape
    kq, kk, kv, ko = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(kq, shape, jnp.float32)
    k = jax.random.normal(kk, shape, jnp.float32) + 2.0 * jax.random.normal(ko, (1, 1, h, d), jnp.float32)
    v = jax.random.normal(kv, shape, jnp.float32)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def attention_flops(shape) -> float:
    b, n, h, d = shape
    return 4.0 * b * h * n * n * d


def float32_attention(q, k, v, rows):
    """Exact attention of the first `rows` queries, float32 (on the device)."""
    q, k, v = (x.astype(jnp.float32) for x in (q[:, :rows], k, v))
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / math.sqrt(q.shape[-1])
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v, precision="highest")


def error(out, ref) -> dict:
    a, b = np.asarray(out, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    return {"cos": float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)),
            "rel_l1": float(np.abs(a - b).sum() / np.abs(b).sum())}


def cudnn(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]), implementation="cudnn")


def mgpu_example():
    from jax.experimental.pallas.ops.gpu import attention_mgpu as ex

    def run(q, k, v):
        n = q.shape[1]
        pad = -(-n // 256) * 256 - n
        # fp16: the example's shared-memory buffers are fp16 whatever the inputs (same tensor-core rate as bf16)
        qp, kp, vp = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).astype(jnp.float16) for x in (q, k, v))
        cfg = ex.TuningConfig(block_q=64 if q.shape[-1] > 64 else 128, block_kv=128, max_concurrent_steps=2)
        return ex.attention(qp, kp, vp, cfg)[:, :n]
    return run


def timed(name, fn, args, iters, flops, results, shape_name):
    try:
        f = jax.jit(fn)
        sec = median_seconds(f, *args, iters=iters)
        row = {"shape": shape_name, "impl": name, "ms": sec * 1e3, "tflops": flops / sec / 1e12}
    except Exception as e:  # noqa: BLE001 (a failing variant must not stop the others)
        row = {"shape": shape_name, "impl": name, "error": f"{type(e).__name__}: {str(e)[:800]}"}
        traceback.print_exc(limit=3)
    results.append(row)
    print(json.dumps(row), flush=True)
    return row


def correctness(results):
    cpu = jax.devices("cpu")[0]
    for shape in [(1, 300, 2, 64), (2, 1000, 3, 128), (1, 129, 1, 64), (1, 64, 2, 64)]:
        q, k, v = inputs(shape, seed=sum(shape))
        try:
            out = jax.jit(attn8.int8_attention_mgpu)(q, k, v)
            with jax.default_device(cpu):
                ref = attn8.int8_attention_reference(*(jax.device_put(x, cpu) for x in (q, k, v)))
            exact = float32_attention(q, k, v, shape[1])
            row = {"shape": shape, "vs_reference": error(out, ref), "vs_float32": error(out, exact),
                   "reference_vs_float32": error(ref, exact),
                   "max_abs_vs_reference": float(np.max(np.abs(np.asarray(out, np.float32) - np.asarray(ref, np.float32)))),
                   "finite": bool(np.isfinite(np.asarray(out, np.float32)).all())}
        except Exception as e:  # noqa: BLE001
            row = {"shape": shape, "error": f"{type(e).__name__}: {str(e)[:1500]}"}
            traceback.print_exc(limit=4)
        results.append(row)
        print(json.dumps(row), flush=True)


def parse_config(spec: str) -> attn8.AttentionConfig | None:
    """A comma-separated list of AttentionConfig fields (short names below); "overlapped": `attn8.OVERLAPPED`;
    "default": None, what the models run (`attn8.default_config`). (Rounds 30-31 logged the overlapped schedule at
    head dim 64 as "tuned".)"""
    if spec == "default":
        return None
    if spec == "overlapped":
        return attn8.OVERLAPPED
    names = {"bq": ("block_q", int), "bkv": ("block_kv", int), "stages": ("stages", int),
             "order": ("heads_minor", lambda v: v == "heads"), "pv": ("pv", str),
             "magic": ("magic_convert", lambda v: v == "1"), "exp16": ("exp16", lambda v: v == "1"),
             "wgs": ("compute_wgs", int), "pp": ("ping_pong", lambda v: v == "1"),
             "overlap": ("overlap", lambda v: v == "1")}
    fields = {}
    for item in spec.split(","):
        key, value = item.split("=")
        name, kind = names[key]
        fields[name] = kind(value)
    return dataclasses.replace(attn8.AttentionConfig(), **fields)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--check", type=int, default=512, help="query tokens compared with float32 attention")
    ap.add_argument("--configs", nargs="+", default=["bq=64", "bq=128", "pv=fp8", "bq=128,pv=fp8"],
                    help="kernel variants: default (the models' configuration), overlapped, or a comma-separated list of "
                         "AttentionConfig fields: bq (block_q), "
                         "bkv (block_kv), stages, order (heads: grid head-minor; q: q-tile-minor), pv (bf16, fp8), "
                         "magic (1: int32 logits converted by integer add and bitcast; 0: by cvt), exp16 (1: "
                         "exponentials in packed fp16, P·V in fp16), wgs (compute warpgroups: 2, 3), pp (1: "
                         "ping-pong turn-taking; 0: none), overlap (1: softmax of block j+1 during P·V of block j)")
    ap.add_argument("--no-correctness", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    print(json.dumps({"jax": jax.__version__, "device": str(jax.devices()[0])}), flush=True)
    results = []
    if not args.no_correctness:
        correctness(results)
    for name in args.shapes:
        shape = SHAPES[name]
        q, k, v = inputs(shape)
        flops = attention_flops(shape)
        ref = float32_attention(q, k, v, args.check)
        timed("cudnn", cudnn, (q, k, v), args.iters, flops, results, name)
        results[-1].update(error(jax.jit(cudnn)(q, k, v)[:, :args.check], ref))
        timed("mgpu_bf16", mgpu_example(), (q, k, v), args.iters, flops, results, name)
        for spec in args.configs:
            cfg = parse_config(spec)
            fn = lambda q, k, v, cfg=cfg: attn8.int8_attention_mgpu(q, k, v, config=cfg)  # noqa: E731
            row = timed(f"int8[{spec}]", fn, (q, k, v), args.iters, flops, results, name)
            if "error" not in row:
                row.update(error(jax.jit(fn)(q, k, v)[:, :args.check], ref))
                print(json.dumps({"accuracy": spec, **{k_: row[k_] for k_ in ("cos", "rel_l1")}}), flush=True)
        cfg = attn8.default_config(shape[-1])
        quantize = jax.jit(lambda q, k: (*attn8.quantize_q(q), *attn8.quantize_k(k, cfg.block_kv)))
        timed("int8_quantize", quantize, (q, k), args.iters, float("nan"), results, name)
        timed("int8_kernel", lambda qc, qs, kc, ks, v: attn8.attend_quantized(qc, qs, kc, ks, v, config=cfg),
              (*quantize(q, k), v), args.iters, flops, results, name)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
