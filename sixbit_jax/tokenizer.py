"""T5's tokenizer from a pipeline's `tokenizer/spiece.model`, with the `sentencepiece` package alone.

It reproduces what the pipelines get from transformers' T5Tokenizer with
`padding="max_length", max_length=L, truncation=True, add_special_tokens=True`:

    ids = sentencepiece pieces of the text, cut to L - 1, then EOS, then PAD up to L

(CogVideoX: L = 226, no mask; Wan: L = 512 and mask = the real tokens including EOS). sentencepiece applies the
model's own normaliser (NFKC, whitespace folding), as transformers' converted tokenizer does.

transformers also treats the special tokens' spellings in the text as those tokens: `</s>`, `<pad>`, `<unk>` and
the sentinels `<extra_id_0>` ... `<extra_id_{extra_ids-1}>` (ids counted down from the end of the vocabulary: `<extra_id_0>`
is the highest). We split them out the same way; sentencepiece alone would spell them out piece by piece."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from sixbit_jax.errors import CheckpointError, InputError

MODEL_NAME = "spiece.model"
DEFAULT_EXTRA_IDS = 100  # transformers' T5Tokenizer default when tokenizer_config.json does not say


class SentencePieceTokenizer:
    """Texts -> int32 token ids [B, max_length] (and optionally the attention mask), as T5's pipelines tokenize."""

    def __init__(self, processor, *, extra_ids: int = DEFAULT_EXTRA_IDS):
        self._sp = processor
        self.pad_id, self.eos_id = processor.pad_id(), processor.eos_id()
        for name, value in (("pad", self.pad_id), ("eos", self.eos_id)):
            if value < 0:
                raise CheckpointError(f"the sentencepiece model defines no {name} id; T5 needs pad and eos ids")
        size = processor.get_piece_size()
        specials = {processor.id_to_piece(i): i for i in (self.pad_id, self.eos_id, processor.unk_id()) if i >= 0}
        specials.update({f"<extra_id_{n}>": size + extra_ids - 1 - n for n in range(extra_ids)})
        self.special_ids = specials
        self.vocab_size = size + extra_ids
        # Longest first, so that a spelling is never cut short by a special token that is its prefix.
        alternatives = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
        self._special_pattern = re.compile(f"({alternatives})")

    @classmethod
    def from_folder(cls, folder: str | Path) -> "SentencePieceTokenizer":
        """A tokenizer folder holding `spiece.model` (a pipeline folder with `tokenizer/` works too). The number of
        sentinel tokens comes from `tokenizer_config.json`'s `extra_ids` if present, else transformers' default."""
        import sentencepiece as spm  # imported here: only the text path needs it

        folder = Path(folder)
        if not (folder / MODEL_NAME).exists() and (folder / "tokenizer" / MODEL_NAME).exists():
            folder = folder / "tokenizer"
        path = folder / MODEL_NAME
        if not folder.is_dir():
            raise CheckpointError(f"tokenizer folder {folder} does not exist")
        if not path.exists():
            if (folder / "tokenizer.json").exists():
                raise CheckpointError(f"{folder} has tokenizer.json but no {MODEL_NAME}: only sentencepiece models "
                                      f"({MODEL_NAME}) are supported")
            raise CheckpointError(f"no {MODEL_NAME} in {folder} (expected a T5 tokenizer folder)")
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(model_proto=path.read_bytes())
        except (RuntimeError, OSError, TypeError) as e:
            raise CheckpointError(f"{path} is not a readable sentencepiece model ({e}); it may be corrupt") from None
        return cls(processor, extra_ids=_extra_ids(folder))

    def pieces(self, text: str) -> list[int]:
        """Token ids of one text, without EOS, padding or truncation."""
        if not isinstance(text, str):
            raise InputError(f"texts must be strings; got {type(text).__name__}")
        ids: list[int] = []
        for i, part in enumerate(self._special_pattern.split(text)):
            ids.extend([self.special_ids[part]] if i % 2 else self._sp.encode(part))
        return ids

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        """int32 [len(texts), max_length]: the first max_length - 1 pieces, EOS, then pad ids."""
        return self.encode_with_mask(texts, max_length)[0]

    def encode_with_mask(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask): the ids of `encode` and an int32 mask that is 1 on the real tokens, EOS included."""
        if isinstance(texts, str):
            raise InputError("texts must be a list of strings, not one string")
        if max_length < 1:
            raise InputError(f"max_length must be at least 1 (room for EOS); got {max_length}")
        ids = np.full((len(texts), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_length), np.int32)
        for row, text in enumerate(texts):
            tokens = self.pieces(text)[:max_length - 1] + [self.eos_id]
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return ids, mask


def _extra_ids(folder: Path) -> int:
    config = folder / "tokenizer_config.json"
    if not config.exists():
        return DEFAULT_EXTRA_IDS
    try:
        value = json.loads(config.read_text()).get("extra_ids", DEFAULT_EXTRA_IDS)
    except (json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"{config} is not a valid JSON object ({e})") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{config}: extra_ids must be a non-negative integer; got {value!r}")
    return value
