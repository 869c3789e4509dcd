"""Read a diffusers `transformer/` folder without torch: config.json plus one safetensors file or a sharded set
with its `.index.json`. Only headers are read up front; tensors are read one at a time on request."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from sixbit_jax.config import read_json, transformer_config
from sixbit_jax.errors import CheckpointError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers models (transformer/, vae/)
INDEX_NAME = WEIGHTS_NAME + ".index.json"
TRANSFORMERS_WEIGHTS_NAME = "model.safetensors"  # transformers models (text_encoder/)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of a source checkpoint and where it lands in our parameter tree (a family's key map is a dict of
    these, keyed by source name)."""

    source_key: str
    source_shape: tuple[int, ...]
    target: tuple[str, ...]  # path in the parameter tree
    layer: int | None = None  # row of the stacked block leaf, None for top-level tensors
    target_shape: tuple[int, ...] | None = None  # reshape on the way in (only the patch conv), else source_shape


class TensorSource:
    """Tensor names, shapes and dtypes of a (possibly sharded) safetensors checkpoint; `read(name)` loads one."""

    def __init__(self, files: dict[str, Path]):
        self._file_of = files  # tensor name -> file holding it
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for path in sorted(set(files.values())):
            names = {n for n, f in files.items() if f == path}
            with _open(path) as handle:
                absent = sorted(names - set(handle.keys()))
                if absent:
                    raise CheckpointError(f"{path.name}: the index lists tensors in this shard that it does not "
                                          f"contain: {', '.join(map(repr, absent))}")
                for name in names:
                    info = handle.get_slice(name)
                    self._meta[name] = (tuple(info.get_shape()), info.get_dtype())

    @classmethod
    def from_folder(cls, folder: str | Path, weights_name: str = WEIGHTS_NAME) -> "TensorSource":
        """`weights_name`: the single-file name; a sharded set is found by its `<weights_name>.index.json`."""
        folder = Path(folder)
        index, single = folder / (weights_name + ".index.json"), folder / weights_name
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index}: not a valid safetensors index (weight_map must map tensor names "
                                      f"to shard file names)")
            files = {name: folder / shard for name, shard in weight_map.items()}
            for shard in sorted({p for p in files.values() if not p.exists()}):
                raise CheckpointError(f"{index.name} names shard {shard.name}, which is missing from {folder}")
            return cls(files)
        if single.exists():
            with _open(single) as handle:
                return cls({name: single for name in handle.keys()})
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise CheckpointError(f"{folder} holds only PyTorch pickle weights (.bin/.pt); they are not read because "
                                  f"unpickling can run code. Save the model with safetensors (diffusers' "
                                  f"save_pretrained does by default).")
        raise CheckpointError(f"no {single.name} or {index.name} in {folder}")

    def names(self) -> list[str]:
        return sorted(self._meta)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> str:
        return self._meta[name][1]

    def nbytes(self, name: str) -> int:
        itemsize = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1}.get(self.dtype(name), 4)
        return int(np.prod(self.shape(name), dtype=np.int64)) * itemsize

    def read(self, name: str) -> np.ndarray:
        path = self._file_of[name]
        try:
            with _open(path) as handle:
                return handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path.name}: cannot read tensor {name!r} ({e}); the file may be corrupt") from None


def _open(path: Path):
    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); it may be corrupt or truncated") \
            from None


def component_folder(folder: str | Path, component: str, what: str) -> Path:
    """A model folder holding config.json, or a pipeline folder holding one in `component/`; a CheckpointError
    naming `what` was expected otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{what} source {folder} is not a folder")
    if not (folder / "config.json").exists() and (folder / component / "config.json").exists():
        return folder / component
    if not (folder / "config.json").exists():
        raise CheckpointError(f"no config.json in {folder} (expected a {what} {component}/ folder)")
    return folder


def read_config(folder: str | Path):
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise CheckpointError(f"source {folder} is not a folder (expected a diffusers transformer/ folder)")
    if not path.exists():
        raise CheckpointError(f"no config.json in {folder} (expected a diffusers transformer/ folder)")
    return transformer_config(read_json(path), str(path))
