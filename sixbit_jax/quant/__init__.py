"""Quantization formats (NVFP4, INT8, block Hadamard) and the quantized linear paths built on them."""
