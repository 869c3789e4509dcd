"""Resident transformer weight bytes of each shipped config, bf16 against a `--quant nvfp4` checkpoint: exact bytes
of the stored arrays, read off the model's parameter tree (what `sixbit convert` prints for a converted folder).
No device needed.

    python3 bench/bench_weights.py wan2.1-1.3b wan2.1-14b cogvideox-2b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import jax

    from sixbit_jax.checkpoint import abstract_params
    from sixbit_jax.config import named_config
    from sixbit_jax.quant.spec import QuantSpec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="config names in configs/")
    args = parser.parse_args()
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    print("| model | bf16 | NVFP4 checkpoint | ratio |\n|---|---|---|---|")
    for name in args.models:
        cfg = named_config(name)
        bf16, nvfp4 = nbytes(abstract_params(cfg, "bf16")), nbytes(abstract_params(cfg, "bf16", QuantSpec()))
        print(f"| {name} | {bf16 / 1e9:.2f} GB | {nvfp4 / 1e9:.2f} GB | 1/{bf16 / nvfp4:.2f} |")


if __name__ == "__main__":
    main()
