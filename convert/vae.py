"""diffusers VAE folders (`vae/`) -> sixbit-jax VAEs: the conversion every VAE family shares.

The key map is simple by construction: our VAE modules carry the diffusers names, so a diffusers key split at the
dots (list indices as ints) is the parameter's path in `nnx.to_pure_dict`. Only convolution kernels change layout:
PyTorch [O, I, kT, kH, kW] / [O, I, kH, kW] -> ours [kT, kH, kW, I, O] / [kH, kW, I, O] (channels-last convs).
The expected tensors are read off the model's own parameter tree, so the converter cannot drift from the model.
A family (`VAEFamily`) names its config class, its model class, its abstract parameter tree and, optionally, how
to tell which config field mis-shaped tensors contradict."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from convert.converter import check_tensors
from convert.source import TensorSource, component_folder
from sixbit_jax.checkpoint import flat_leaves, parse_dtype
from sixbit_jax.errors import CheckpointError

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


def vae_folder(folder: str | Path) -> Path:
    """A diffusers `vae/` folder, or a pipeline folder holding one."""
    return component_folder(folder, "vae", "diffusers VAE")


@dataclasses.dataclass(frozen=True)
class VAEFamily:
    config_class: Any  # with from_json
    model_class: Any  # model_class(cfg, dtype=, rngs=)
    abstract_params: Callable[[Any, Any], dict]  # (cfg, dtype) -> the parameter tree as ShapeDtypeStructs
    config_hint: Callable[[Any, list[str], Callable[[str], tuple]], str | None] | None = None

    def expected_tensors(self, cfg, dtype=jnp.float32) -> dict[str, VAETensorSpec]:
        """Every tensor a diffusers checkpoint of this config holds, keyed by its diffusers name. (`dtype` only
        picks which traced model the shapes are read from: the one about to be built.)"""
        return {s.source_key: s for s in (_spec(path, leaf.shape)
                                          for path, leaf in flat_leaves(self.abstract_params(cfg, dtype)))}

    def converted_leaves(self, cfg, names: list[str], shape_of: Callable[[str], tuple],
                         read: Callable[[str], np.ndarray], dtype, *, progress: bool = False,
                         nbytes: Callable[[str], int] | None = None) -> Iterator[tuple[tuple, np.ndarray]]:
        """Yield (parameter path, numpy leaf in `dtype`) one tensor at a time, as convert.converter does for the
        transformer. Paths hold ints for list indices (`("decoder", "up_blocks", 0, ...)`). Every tensor's name and
        shape is checked before the first is read: one CheckpointError names each missing, unexpected or
        mis-shaped tensor."""
        dtype = parse_dtype(dtype)
        specs = self.expected_tensors(cfg, dtype)
        hint = self.config_hint(cfg, names, shape_of) if self.config_hint else None
        check_tensors(specs, names, shape_of, "VAE checkpoint", hint=hint)
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

    def read_config(self, folder: str | Path):
        return self.config_class.from_json(vae_folder(folder) / "config.json")

    def leaves(self, folder: str | Path, *, dtype="bf16", progress: bool = False
               ) -> Iterator[tuple[tuple, np.ndarray]]:
        """Converted (path, numpy leaf) pairs of a diffusers `vae/` folder: what a component checkpoint writer
        takes."""
        folder = vae_folder(folder)
        source = TensorSource.from_folder(folder)
        return self.converted_leaves(self.read_config(folder), source.names(), source.shape, source.read, dtype,
                                     progress=progress, nbytes=source.nbytes)

    def from_leaves(self, cfg, leaves, dtype):
        """A VAE in `dtype` on the default device from (path, leaf) pairs (e.g. restored from a component
        checkpoint)."""
        from sixbit_jax.checkpoint import module_from_leaves

        dtype = parse_dtype(dtype)
        return module_from_leaves(lambda: self.model_class(cfg, dtype=dtype, rngs=nnx.Rngs(0)), leaves, "VAE")

    def load(self, folder: str | Path, *, dtype="bf16", progress: bool = False):
        """A diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors, or a sharded set), or a
        pipeline folder holding one -> the VAE with parameters in `dtype` on the default device. All names and
        shapes are checked first; tensors are then read and converted one at a time."""
        folder = vae_folder(folder)
        return self.from_leaves(self.read_config(folder), self.leaves(folder, dtype=dtype, progress=progress), dtype)
