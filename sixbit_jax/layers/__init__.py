from sixbit_jax.layers.attention import block_implementation, dot_product_attention
from sixbit_jax.layers.dense import Dense, project
from sixbit_jax.layers.norm import LayerNorm, RMSNorm
from sixbit_jax.layers.quant_dense import LinearRuntime, QuantDense

__all__ = ["Dense", "project", "LayerNorm", "RMSNorm", "LinearRuntime", "QuantDense", "block_implementation",
           "dot_product_attention"]
