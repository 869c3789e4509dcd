"""The DiT families. Each model class offers the same interface to the sampler, the runtime and the checkpoints
(see sixbit_jax.sampling); `model_class` picks a config's."""

from sixbit_jax.config import CogVideoXConfig, WanConfig
from sixbit_jax.errors import ConfigError
from sixbit_jax.models.cogvideox import CogVideoXTransformer3D, PositionalTables
from sixbit_jax.models.wan import WanTransformer3D

MODEL_CLASSES = {CogVideoXConfig: CogVideoXTransformer3D, WanConfig: WanTransformer3D}


def model_class(cfg) -> type:
    """The model class of a transformer config."""
    if type(cfg) not in MODEL_CLASSES:
        raise ConfigError(f"no model family for config {type(cfg).__name__}")
    return MODEL_CLASSES[type(cfg)]


__all__ = ["CogVideoXTransformer3D", "PositionalTables", "WanTransformer3D", "model_class"]
