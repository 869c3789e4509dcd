"""Pallas GPU kernels (Triton lowering), one file per kernel, each with its plain-jnp reference beside it.

Empty until the quantized paths land: the BF16 model uses XLA matmuls and cuDNN attention."""
