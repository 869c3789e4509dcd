"""Tiny random diffusers Wan transformers and their JAX conversions (shared by the Wan tests)."""

import diffusers
import torch
from flax import nnx

from convert.wan import converted_leaves
from sixbit_jax.checkpoint import module_from_leaves, parse_dtype
from sixbit_jax.config import WanConfig
from sixbit_jax.models.wan import WanTransformer3D


def random_wan(config: dict, seed: int = 0, weight_scale: float | None = 0.3):
    """A diffusers WanTransformer3DModel of `config` with every tensor re-randomised (norm weights around 1).
    Matrices get std `weight_scale` (large: every path of a parity test matters), or 1/sqrt(fan-in) with None (a
    trained model's scale, for tests of quantization error)."""
    model = diffusers.WanTransformer3DModel(**config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            matrix_scale = weight_scale or p[0].numel() ** -0.5
            scale = 0.1 if "norm" in name else (matrix_scale if p.ndim > 1 else 0.1)
            p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + torch.randn(p.shape, generator=gen)
                    * scale)
    return model


def state_dict(model, rename=lambda k: k):
    return {rename(k): v.detach().float().numpy() for k, v in model.state_dict().items()}


def jax_wan(model, dtype="fp32", rename=lambda k: k):
    """The diffusers model converted (through `convert.wan`) to our WanTransformer3D."""
    cfg = WanConfig.from_dict(dict(model.config))
    sd = state_dict(model, rename)
    leaves = converted_leaves(cfg, list(sd), lambda k: sd[k].shape, sd.__getitem__, dtype)
    return module_from_leaves(lambda: WanTransformer3D(cfg, dtype=parse_dtype(dtype), rngs=nnx.Rngs(0)), leaves)
