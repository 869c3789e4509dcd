"""A random-weight diffusers-layout CogVideoX `transformer/` folder, for the demo and for trying the pipeline
without downloading weights. Written with numpy only (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert.cogvideox import expected_tensors
from convert.export import write_diffusers_folder
from sixbit_jax.config import CogVideoXConfig


def write_random_transformer(folder: str | Path, cfg: CogVideoXConfig, *, seed: int = 0) -> Path:
    """Weights ~ N(0, 1/fan_in) (biases and norm shifts small, norm scales near 1), float32."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, spec in expected_tensors(cfg).items():
        shape = spec.source_shape
        if len(shape) == 1:
            base = 1.0 if name.endswith("norm.weight") or "norm_final.weight" in name or "norm_q.weight" in name \
                or "norm_k.weight" in name else 0.0
            tensors[name] = (base + 0.02 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            tensors[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return write_diffusers_folder(folder, cfg, tensors)
