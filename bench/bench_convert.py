"""Peak host memory and time of `sixbit convert` against the model's size.

    python bench/bench_convert.py --layers 16        # a CogVideoX-2B-width model with 16 blocks, bf16 output

Writes a random diffusers-layout source (float32) to a temporary folder, then converts it in a fresh process and
reads that process's peak resident memory (VmHWM) before and after the conversion."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status(field: str) -> int:
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(field))
    return int(line.split()[1]) * 1024


def convert_and_measure(src: str, dst: str, dtype: str) -> None:
    import jax  # noqa: F401  (import cost is part of the baseline, not of the conversion)
    import orbax.checkpoint  # noqa: F401

    from convert import convert_checkpoint
    from sixbit_jax.checkpoint import abstract_params
    from sixbit_jax.config import CogVideoXConfig

    baseline = _status("VmHWM")
    start = time.perf_counter()
    convert_checkpoint(src, dst, dtype=dtype, progress=False)
    seconds = time.perf_counter() - start
    cfg = CogVideoXConfig.from_json(Path(src) / "config.json")
    model_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract_params(cfg, dtype)))
    print("RESULT " + json.dumps(dict(model_bytes=model_bytes, baseline_bytes=baseline,
                                      peak_bytes=_status("VmHWM"), seconds=seconds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cogvideox-2b")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        return convert_and_measure(*args._child, args.dtype)

    from convert.synthetic import write_random_transformer
    from sixbit_jax.config import CogVideoXConfig

    cfg = dataclasses.replace(CogVideoXConfig.named(args.config), num_layers=args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_random_transformer(Path(tmp) / "src", cfg)
        proc = subprocess.run([sys.executable, __file__, "--dtype", args.dtype, "--_child", str(src),
                               str(Path(tmp) / "dst")], capture_output=True, text=True, check=True)
    r = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    growth = r["peak_bytes"] - r["baseline_bytes"]
    print(f"{args.config} x {args.layers} layers -> {args.dtype}: model {r['model_bytes'] / 2**30:.2f} GiB, "
          f"peak host memory growth {growth / 2**30:.2f} GiB = {growth / r['model_bytes']:.2f}x the model, "
          f"{r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
