"""diffusers CogVideoX `transformer/` folder -> sixbit-jax checkpoint, streaming one tensor at a time.

Host memory holds one copy of the model (the destination tree, in the target dtype) plus the tensor being read."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from convert.cogvideox import TensorSpec, expected_tensors
from convert.source import TensorSource, read_config
from sixbit_jax.checkpoint import abstract_params, check_destination, parse_dtype, save_checkpoint
from sixbit_jax.config import CogVideoXConfig
from sixbit_jax.errors import CheckpointError


def check_tensors(specs: dict[str, TensorSpec], names: list[str], shape_of: Callable[[str], tuple]) -> None:
    """Raise one CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    problems = [f"missing tensor {k} (expected shape {specs[k].source_shape})" for k in sorted(specs.keys() - set(names))]
    problems += [f"unexpected tensor {k} (shape {tuple(shape_of(k))})" for k in sorted(set(names) - specs.keys())]
    problems += [f"tensor {k}: expected shape {specs[k].source_shape}, found {tuple(shape_of(k))}"
                 for k in sorted(specs.keys() & set(names)) if tuple(shape_of(k)) != specs[k].source_shape]
    if problems:
        raise CheckpointError(f"checkpoint does not match the config ({len(problems)} problems):\n  "
                              + "\n  ".join(problems))


def convert_tensors(cfg: CogVideoXConfig, names: list[str], shape_of: Callable[[str], tuple],
                    read: Callable[[str], np.ndarray], dtype, *, progress: bool = False,
                    nbytes: Callable[[str], int] | None = None) -> dict:
    """Map diffusers tensors to the model's parameter tree in `dtype` (numpy leaves)."""
    specs = expected_tensors(cfg)
    check_tensors(specs, names, shape_of)
    dtype = parse_dtype(dtype)
    params = _allocate(abstract_params(cfg, dtype))
    total = sum(nbytes(k) for k in specs) if nbytes else len(specs)
    with tqdm(total=total, disable=not progress, unit="B" if nbytes else "tensor", unit_scale=bool(nbytes),
              desc="converting") as bar:
        for name in sorted(specs):
            spec = specs[name]
            tensor = np.asarray(read(name))
            if not jnp.issubdtype(tensor.dtype, jnp.floating):
                raise CheckpointError(f"tensor {name} has non-float dtype {tensor.dtype}")
            value = tensor.astype(dtype).reshape(spec.target_shape or spec.source_shape)
            leaf = _leaf(params, spec.target)
            if spec.layer is None:
                leaf[...] = value
            else:
                leaf[spec.layer] = value
            bar.update(nbytes(name) if nbytes else 1)
    return params


def _allocate(abstract: dict) -> dict:
    return {k: _allocate(v) if isinstance(v, dict) else np.empty(v.shape, v.dtype) for k, v in abstract.items()}


def _leaf(tree: dict, path: tuple[str, ...]) -> np.ndarray:
    for key in path:
        tree = tree[key]
    return tree


def convert_checkpoint(src: str | Path, dst: str | Path, *, dtype="bf16", overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Convert a diffusers CogVideoX transformer folder to a sixbit-jax checkpoint at `dst` (atomic)."""
    src = Path(src)
    check_destination(dst, overwrite)  # before reading gigabytes, not after
    cfg = read_config(src)
    source = TensorSource.from_folder(src)
    params = convert_tensors(cfg, source.names(), source.shape, source.read, dtype, progress=progress,
                             nbytes=source.nbytes)
    return save_checkpoint(dst, cfg, params, overwrite=overwrite, info={"converted_from": str(src.absolute())})
