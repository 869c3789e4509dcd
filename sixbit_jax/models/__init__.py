from sixbit_jax.models.cogvideox import CogVideoXTransformer3D, PositionalTables

__all__ = ["CogVideoXTransformer3D", "PositionalTables"]
