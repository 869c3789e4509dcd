"""sixbit-jax: 6Bit-Diffusion (NVFP4/INT8 mixed precision + temporal delta cache) for video DiTs in JAX."""
