"""Arrays in and out of `.npy` and `.safetensors` files (text embeddings in, latents out).

Never unpickles: `.npy` is read with allow_pickle=False. Writes go to a temporary file renamed into place."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np

from sixbit_jax.errors import InputError

FORMATS = (".npy", ".safetensors")


def _check_format(path: Path) -> None:
    if path.suffix not in FORMATS:
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FORMATS)}")


def load_array(path: str | Path, preferred_names: tuple[str, ...] = ()) -> np.ndarray:
    """One array from a .npy file, or from a .safetensors file holding one tensor (or one named in
    `preferred_names` when it holds several)."""
    path = Path(path)
    _check_format(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a {path.suffix} file")
    if path.suffix == ".npy":
        return _numeric(path, _load_npy(path))
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    if len(tensors) == 1:
        return _numeric(path, next(iter(tensors.values())))
    for name in preferred_names:
        if name in tensors:
            return _numeric(path, tensors[name])
    raise InputError(f"{path} holds tensors {sorted(tensors)}; expected one, or one named "
                     f"{' / '.join(preferred_names)}")


def _load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise InputError(f"{path}: not a .npy file (no NumPy header; save arrays with numpy.save)")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickled" in str(e) or "Object arrays" in str(e):
            raise InputError(f"{path}: holds Python objects, which are never unpickled; save a numeric array") from None
        raise InputError(f"{path}: a damaged .npy file ({e})") from None
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:  # bf16 saved through ml_dtypes
        array = array.view(ml_dtypes.bfloat16)
    return array


def _numeric(path: Path, array: np.ndarray) -> np.ndarray:
    """Embeddings and latents are floating point; integers or strings mean the wrong file."""
    if not np.issubdtype(array.dtype, np.floating) and array.dtype != ml_dtypes.bfloat16:
        raise InputError(f"{path}: holds {array.dtype} values; expected floating-point numbers")
    return array


def save_array(path: str | Path, array: np.ndarray, name: str) -> Path:
    path = Path(path)
    _check_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}{path.suffix}")
    try:
        if path.suffix == ".npy":
            np.save(tmp, np.ascontiguousarray(array))
        else:
            from safetensors.numpy import save_file

            save_file({name: np.ascontiguousarray(array)}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
