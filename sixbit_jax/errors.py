"""Errors the user can act on. The CLI prints these as one clear message instead of a traceback."""


class SixbitError(Exception):
    """Base class: something about the user's input, files or configuration is wrong."""


class ConfigError(SixbitError):
    """A model or sampler configuration is missing a field, has a bad value or asks for an unsupported feature."""


class CheckpointError(SixbitError):
    """A source or converted checkpoint is missing, corrupt, or does not match the model's expected layout."""


class InputError(SixbitError):
    """An input array (text embeddings, latents) has the wrong shape, dtype or file format."""


class SamplingError(SixbitError):
    """Sampling produced non-finite values."""
