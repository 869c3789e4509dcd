"""The shapes model's prompt encoder: a word tokenizer over the grammar's vocabulary and a learned embedding.

Embeddings are token embedding + position embedding, [B, MAX_TOKENS, dim]; prompts are padded with `<pad>`, and the
empty prompt (all padding) is the unconditional input for classifier-free guidance, as "" is for CogVideoX's T5.
Shipped as `text_encoder/config.json` (vocabulary, lengths) and `text_encoder/model.safetensors`."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from sixbit_jax.errors import CheckpointError, InputError
from sixbit_jax.shapes.world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, Clips

PAD = "<pad>"
VOCAB = (PAD, "a", "moving", "standing", "on", "background", *MOTIONS, *SHAPES, *COLOURS, *list(BACKGROUNDS)[1:])
MAX_TOKENS = 12
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
CLASS_NAME = "ShapesPromptEncoder"


class Tokenizer:
    """Whitespace word tokenizer (case-insensitive, full stops ignored) with a closed vocabulary."""

    def __init__(self, vocab=VOCAB, max_length: int = MAX_TOKENS):
        self.vocab, self.max_length = tuple(vocab), max_length
        self._ids = {word: i for i, word in enumerate(self.vocab)}

    def words(self, prompt: str) -> list[str]:
        return prompt.lower().replace(".", " ").split()

    def encode(self, prompts: list[str] | str) -> np.ndarray:
        """[B, max_length] int32 token ids, padded with <pad> (id 0)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = np.zeros((len(prompts), self.max_length), np.int32)
        for row, prompt in enumerate(prompts):
            words = self.words(prompt)
            unknown = [w for w in words if w not in self._ids or w == PAD]
            if unknown:
                raise InputError(f"prompt {prompt!r}: unknown word(s) {', '.join(map(repr, unknown))}; the "
                                 f"vocabulary is: {' '.join(self.vocab[1:])}")
            if len(words) > self.max_length:
                raise InputError(f"prompt {prompt!r} has {len(words)} words; at most {self.max_length} fit")
            ids[row, : len(words)] = [self._ids[w] for w in words]
        return ids


def clip_tokens(clips: Clips) -> jax.Array:
    """Token ids of the clips' captions, built on the device from the caption template (for training); equal to
    `Tokenizer().encode(world.captions(clips))`."""
    ids = {w: i for i, w in enumerate(VOCAB)}
    # Each word class is one contiguous run of VOCAB, in the order of its world table.
    motion_id = ids[MOTIONS[0]] + clips.motion
    shape_id = ids[SHAPES[0]] + clips.shape
    colour_id = ids[next(iter(COLOURS))] + clips.colour
    background_id = ids[list(BACKGROUNDS)[1]] + clips.background - 1
    still = clips.motion == MOTIONS.index("still")
    verb = jnp.where(still, ids["standing"], ids["moving"])
    n = clips.shape.shape[0]
    full = lambda value: jnp.full((n,), ids[value], jnp.int32)  # noqa: E731
    tokens = jnp.stack([full("a"), colour_id, shape_id, verb, motion_id,
                        full("on"), full("a"), background_id, full("background")], axis=1)
    mentioned = jnp.arange(tokens.shape[1])[None, :] < jnp.where(clips.background == 0, 5, 9)[:, None]
    tokens = jnp.where(mentioned, tokens, 0)
    return jnp.pad(tokens, ((0, 0), (0, MAX_TOKENS - tokens.shape[1]))).astype(jnp.int32)


class PromptEncoder(nnx.Module):
    """ids [B, L] -> token_embedding[ids] + position_embedding -> [B, L, dim] float32."""

    def __init__(self, vocab_size: int, max_length: int, dim: int, *, rngs: nnx.Rngs):
        self.token_embedding = nnx.Param(0.5 * jax.random.normal(rngs.params(), (vocab_size, dim)))
        self.position_embedding = nnx.Param(0.5 * jax.random.normal(rngs.params(), (max_length, dim)))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return self.token_embedding[...][ids] + self.position_embedding[...][None, : ids.shape[1]]


class TextEncoder:
    """Tokenizer + trained embeddings: prompts -> [B, MAX_TOKENS, dim] float32 (host-side, numpy)."""

    def __init__(self, tokenizer: Tokenizer, token_embedding: np.ndarray, position_embedding: np.ndarray):
        if token_embedding.shape[0] != len(tokenizer.vocab) or position_embedding.shape[0] != tokenizer.max_length:
            raise CheckpointError(f"text encoder tables {token_embedding.shape}/{position_embedding.shape} do not "
                                  f"match its vocabulary ({len(tokenizer.vocab)}) and length "
                                  f"({tokenizer.max_length})")
        self.tokenizer = tokenizer
        self.token_embedding, self.position_embedding = token_embedding, position_embedding

    @property
    def dim(self) -> int:
        return self.token_embedding.shape[1]

    def __call__(self, prompts: list[str] | str) -> np.ndarray:
        ids = self.tokenizer.encode(prompts)
        return (self.token_embedding[ids] + self.position_embedding[None]).astype(np.float32)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": CLASS_NAME, "vocab": list(self.tokenizer.vocab),
                  "max_length": self.tokenizer.max_length, "dim": self.dim}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file({"token_embedding.weight": self.token_embedding.astype(np.float32),
                   "position_embedding.weight": self.position_embedding.astype(np.float32)}, folder / WEIGHTS_NAME)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "TextEncoder":
        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_NAME).read_text())
            tables = load_file(folder / WEIGHTS_NAME)
            tokenizer = Tokenizer(config["vocab"], int(config["max_length"]))
            return cls(tokenizer, tables["token_embedding.weight"], tables["position_embedding.weight"])
        except FileNotFoundError as e:
            raise CheckpointError(f"text encoder folder {folder} is incomplete: {e.filename} is missing") from None
        except (json.JSONDecodeError, KeyError, SafetensorError, OSError) as e:
            raise CheckpointError(f"text encoder in {folder} is corrupt ({type(e).__name__}: {e})") from None

    @classmethod
    def from_module(cls, module: PromptEncoder) -> "TextEncoder":
        return cls(Tokenizer(), np.asarray(module.token_embedding[...]), np.asarray(module.position_embedding[...]))


def is_shapes_text_encoder(folder: str | Path) -> bool:
    """Whether `folder` holds a shapes prompt encoder (and not, say, a CogVideoX T5 encoder)."""
    try:
        return json.loads((Path(folder) / CONFIG_NAME).read_text()).get("_class_name") == CLASS_NAME
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
