from sixbit_jax.layers.attention import dot_product_attention
from sixbit_jax.layers.dense import Dense
from sixbit_jax.layers.norm import LayerNorm

__all__ = ["Dense", "LayerNorm", "dot_product_attention"]
