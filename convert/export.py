"""sixbit-jax parameters -> a diffusers `transformer/` folder (the converter's key map, run backwards).

Used to ship models trained here (the shapes model) in the layout every CogVideoX tool reads, so that they reach
sixbit-jax through the same `sixbit convert` path as a downloaded checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from convert.cogvideox import expected_tensors
from convert.source import WEIGHTS_NAME
from sixbit_jax.config import CogVideoXConfig


def diffusers_tensors(cfg: CogVideoXConfig, params: dict, dtype=np.float16) -> dict[str, np.ndarray]:
    """{diffusers name: tensor} from a parameter tree in `nnx.to_pure_dict` layout (blocks stacked)."""
    tensors = {}
    for name, spec in expected_tensors(cfg).items():
        leaf = params
        for key in spec.target:
            leaf = leaf[key]
        value = np.asarray(leaf if spec.layer is None else leaf[spec.layer], np.float32)
        tensors[name] = value.reshape(spec.source_shape).astype(dtype)
    return tensors


def write_diffusers_folder(folder: str | Path, cfg: CogVideoXConfig, tensors: dict[str, np.ndarray]) -> Path:
    """config.json + diffusion_pytorch_model.safetensors, as diffusers' save_pretrained writes them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), folder / WEIGHTS_NAME)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return folder
