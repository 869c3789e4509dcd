"""LayerNorm + AdaLN modulation at CogVideoX-2B/5B block shape: our XLA formulation against variants and PyTorch.

    python bench/probe_norm.py [--torch]

The block's two norm sites (norm1, norm2) each normalise [2, 17,776, D] and modulate it. Rows: our `layer_norm`
then `* (1 + scale) + shift` (two-pass variance, as shipped), the one-pass variance (E[x^2] - E[x]^2, one
multi-output reduction), and with --torch, `torch.nn.functional.layer_norm` + the same modulation in eager and
`torch.compile`. Medians of device-synchronised single calls, ms, with the memory floor (read x, write y) at the
copy rate measured in the same run. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.bench_linear import median_seconds  # noqa: E402
from sixbit_jax.layers.norm import layer_norm  # noqa: E402

TOKENS = 17_776


def one_pass_layer_norm(x, weight, bias, eps):
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.maximum((xf * xf).mean(-1, keepdims=True) - mean * mean, 0.0)
    y = (xf - mean) * jax.lax.rsqrt(var + eps) * weight.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def modulated(norm):
    return jax.jit(lambda x, w, b, scale, shift: norm(x, w, b, 1e-5) * (1 + scale) + shift)


def torch_rows(d: int, iters: int) -> dict:
    import torch

    x = torch.randn(2, TOKENS, d, device="cuda", dtype=torch.bfloat16)
    w, b = torch.ones(d, device="cuda", dtype=torch.bfloat16), torch.zeros(d, device="cuda", dtype=torch.bfloat16)
    scale, shift = (torch.randn(2, 1, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))

    def eager(x):
        return torch.nn.functional.layer_norm(x, (d,), w, b, 1e-5) * (1 + scale) + shift

    rows = {}
    for name, fn in (("torch_eager", eager), ("torch_compile", torch.compile(eager))):
        for _ in range(3):
            fn(x)
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        rows[name] = round(sorted(times)[len(times) // 2], 4)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--torch", action="store_true")
    args = parser.parse_args()
    for d in (1920, 3072):
        keys = jax.random.split(jax.random.PRNGKey(d), 3)
        x = jax.random.normal(keys[0], (2, TOKENS, d), jnp.bfloat16)
        w, b = jnp.ones((d,), jnp.bfloat16), jnp.zeros((d,), jnp.bfloat16)
        scale, shift = (jax.random.normal(key, (2, 1, d), jnp.bfloat16) for key in keys[1:])
        ms = {name: round(median_seconds(modulated(norm), x, w, b, scale, shift, iters=args.iters) * 1e3, 4)
              for name, norm in (("ours_two_pass", layer_norm), ("one_pass", one_pass_layer_norm))}
        copy = median_seconds(jax.jit(lambda x: x * 2), x, iters=args.iters)
        ms["memory_floor"] = round(copy * 1e3, 4)  # read x, write y: the same bytes as one scale pass
        if args.torch:
            ms.update(torch_rows(d, args.iters))
        print(json.dumps({"D": d, "shape": [2, TOKENS, d], "ms": ms}), flush=True)


if __name__ == "__main__":
    main()
