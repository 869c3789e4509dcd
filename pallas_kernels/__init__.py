"""Pallas GPU kernels (Triton lowering), one file per kernel, each with its plain-jnp reference beside it.

act_quant (Hadamard + INT8/NVFP4 activation quantization), int8_gemm (W4A8), nvfp4_gemm (W4A4), nvfp4_weight_only
(small M); tuning holds the block sizes, common the shared wrapper pieces."""
