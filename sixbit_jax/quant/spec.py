"""How a quantized model stores its block linears (the checkpoint's `quant` record), and the one constructor the
model families use for a block linear: a float Dense, or its NVFP4 QuantDense counterpart."""

from __future__ import annotations

import dataclasses

from sixbit_jax.errors import ConfigError
from sixbit_jax.layers import Dense, QuantDense
from sixbit_jax.quant.formats import HADAMARD_BLOCK


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """NVFP4 weights, with a block Hadamard transform of this size folded into the activation-quantized linears
    (attention projections, FFN). Weight-only linears (AdaLN modulation, Wan's text-side cross-attention keys and
    values) are NVFP4 weights with activations in the model dtype. Embeddings, norms, the output head and the
    attention math stay in the model dtype."""

    hadamard_block: int = HADAMARD_BLOCK

    def to_dict(self) -> dict:
        return {"weights": "nvfp4", "hadamard_block": self.hadamard_block}

    @classmethod
    def from_dict(cls, raw: dict | None) -> "QuantSpec | None":
        if raw is None:
            return None
        if raw.get("weights") != "nvfp4":
            raise ConfigError(f"unsupported quantization {raw!r}: only NVFP4 weights are implemented")
        return cls(hadamard_block=int(raw.get("hadamard_block", HADAMARD_BLOCK)))


def block_linear(in_features: int, out_features: int, *, dtype, rngs, quant: QuantSpec | None,
                 weight_only: bool = False):
    """A float Dense, or its NVFP4 QuantDense counterpart in a quantized model."""
    if quant is None:
        return Dense(in_features, out_features, dtype=dtype, rngs=rngs)
    return QuantDense(in_features, out_features, hadamard_block=0 if weight_only else quant.hadamard_block,
                      weight_only=weight_only, dtype=dtype)
