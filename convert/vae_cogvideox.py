"""diffusers `AutoencoderKLCogVideoX` (`vae/` folder) -> sixbit-jax CogVideoXVAE.

The key map is simple by construction: our modules carry the diffusers names, so a diffusers key split at the dots
(list indices as ints) is the parameter's path in `nnx.to_pure_dict`. Only convolution kernels change layout:
PyTorch [O, I, kT, kH, kW] / [O, I, kH, kW] -> ours [kT, kH, kW, I, O] / [kH, kW, I, O] (channels-last convs).
The expected tensors are read off the model's own parameter tree, so the converter cannot drift from the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from convert.converter import check_tensors
from convert.source import TensorSource, component_folder
from sixbit_jax.checkpoint import flat_leaves, parse_dtype
from sixbit_jax.errors import CheckpointError
from sixbit_jax.models.vae_cogvideox import CogVideoXVAE, CogVideoXVAEConfig, abstract_vae_params

# ours -> torch axis order, by kernel rank (the inverse permutation takes torch to ours)
_TORCH_AXES = {5: (4, 3, 0, 1, 2), 4: (3, 2, 0, 1)}


@dataclasses.dataclass(frozen=True)
class VAETensorSpec:
    source_key: str
    source_shape: tuple[int, ...]
    target: tuple[str | int, ...]  # path in the parameter tree
    transpose: tuple[int, ...] | None = None  # torch -> ours axis order for conv kernels, else None


def _spec(path: tuple, shape: tuple[int, ...]) -> VAETensorSpec:
    key = ".".join(map(str, path))
    if path[-1] == "weight" and len(shape) in _TORCH_AXES:
        to_torch = _TORCH_AXES[len(shape)]
        return VAETensorSpec(key, tuple(shape[a] for a in to_torch), path, tuple(np.argsort(to_torch)))
    return VAETensorSpec(key, tuple(shape), path)


def expected_tensors(cfg: CogVideoXVAEConfig, dtype=jnp.float32) -> dict[str, VAETensorSpec]:
    """Every tensor a diffusers checkpoint of this config holds, keyed by its diffusers name. (`dtype` only picks
    which traced model the shapes are read from: the one about to be built.)"""
    return {s.source_key: s for s in (_spec(path, leaf.shape)
                                      for path, leaf in flat_leaves(abstract_vae_params(cfg, dtype)))}


def converted_vae_leaves(cfg: CogVideoXVAEConfig, names: list[str], shape_of: Callable[[str], tuple],
                         read: Callable[[str], np.ndarray], dtype, *, progress: bool = False,
                         nbytes: Callable[[str], int] | None = None) -> Iterator[tuple[tuple, np.ndarray]]:
    """Yield (parameter path, numpy leaf in `dtype`) one tensor at a time, as convert.converter.converted_leaves
    does for the transformer. Paths hold ints for list indices (`("decoder", "up_blocks", 0, ...)`). Every
    tensor's name and shape is checked before the first is read."""
    dtype = parse_dtype(dtype)
    specs = expected_tensors(cfg, dtype)
    check_tensors(specs, names, shape_of, "VAE checkpoint")
    total = sum(nbytes(k) for k in specs) if nbytes else len(specs)
    with tqdm(total=total, disable=not progress, unit="B" if nbytes else "tensor", unit_scale=bool(nbytes),
              desc="converting VAE") as bar:
        for spec in specs.values():
            tensor = np.asarray(read(spec.source_key))
            if not jnp.issubdtype(tensor.dtype, jnp.floating):
                raise CheckpointError(f"tensor {spec.source_key} has non-float dtype {tensor.dtype}")
            if spec.transpose is not None:
                tensor = tensor.transpose(spec.transpose)
            yield spec.target, np.ascontiguousarray(tensor.astype(dtype))
            bar.update(nbytes(spec.source_key) if nbytes else 1)


def vae_folder(folder: str | Path) -> Path:
    """A diffusers `vae/` folder, or a pipeline folder holding one."""
    return component_folder(folder, "vae", "diffusers VAE")


def read_vae_config(folder: str | Path) -> CogVideoXVAEConfig:
    return CogVideoXVAEConfig.from_json(vae_folder(folder) / "config.json")


def load_vae(folder: str | Path, *, dtype="bf16", progress: bool = False) -> CogVideoXVAE:
    """A diffusers CogVideoX `vae/` folder (config.json + diffusion_pytorch_model.safetensors, or a sharded set),
    or a pipeline folder holding one -> CogVideoXVAE with parameters in `dtype` on the default device. All names
    and shapes are checked first; tensors are then read and converted one at a time."""
    folder = vae_folder(folder)
    return vae_from_leaves(read_vae_config(folder), vae_leaves(folder, dtype=dtype, progress=progress), dtype)


def vae_leaves(folder: str | Path, *, dtype="bf16", progress: bool = False) -> Iterator[tuple[tuple, np.ndarray]]:
    """Converted (path, numpy leaf) pairs of a diffusers `vae/` folder: what a component checkpoint writer takes."""
    folder = vae_folder(folder)
    source = TensorSource.from_folder(folder)
    return converted_vae_leaves(read_vae_config(folder), source.names(), source.shape, source.read, dtype,
                                progress=progress, nbytes=source.nbytes)


def vae_from_leaves(cfg: CogVideoXVAEConfig, leaves, dtype) -> CogVideoXVAE:
    """A VAE in `dtype` on the default device from (path, leaf) pairs (e.g. restored from a component checkpoint)."""
    from sixbit_jax.checkpoint import module_from_leaves

    dtype = parse_dtype(dtype)
    return module_from_leaves(lambda: CogVideoXVAE(cfg, dtype=dtype, rngs=nnx.Rngs(0)), leaves, "VAE")
