"""Whole pipelines: prompt -> text encoder -> sampler -> VAE -> frames, one module per model family."""
