"""Checkpoint conversion: diffusers safetensors in, sixbit-jax (orbax) checkpoints out."""

from convert.converter import convert_checkpoint, convert_tensors

__all__ = ["convert_checkpoint", "convert_tensors"]
