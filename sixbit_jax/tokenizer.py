"""T5's tokenizer from a pipeline's `tokenizer/` folder: `spiece.model` with the `sentencepiece` package (what the
hub's CogVideoX and Wan folders ship), else `tokenizer.json` with the `tokenizers` package (what transformers 5's
`save_pretrained` writes). No transformers at run time.

It reproduces what the pipelines get from transformers' T5Tokenizer with
`padding="max_length", max_length=L, truncation=True, add_special_tokens=True`:

    ids = the text's pieces, cut to L - 1, then EOS, then PAD up to L

(CogVideoX: L = 226, no mask; Wan: L = 512 and mask = the real tokens including EOS). sentencepiece applies the
model's own normaliser (NFKC, whitespace folding), as transformers' converted tokenizer does.

transformers also treats the special tokens' spellings in the text as those tokens: `</s>`, `<pad>`, `<unk>` and
the sentinels `<extra_id_0>` ... `<extra_id_{extra_ids-1}>` (ids counted down from the end of the vocabulary: `<extra_id_0>`
is the highest). We split them out the same way for sentencepiece, which alone would spell them out piece by piece;
tokenizer.json lists them as added tokens, which `tokenizers` splits out itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from sixbit_jax.errors import CheckpointError, InputError

MODEL_NAME = "spiece.model"
DEFAULT_EXTRA_IDS = 100  # transformers' T5Tokenizer default when tokenizer_config.json does not say


JSON_NAME = "tokenizer.json"


class T5Tokenizer:
    """Texts -> int32 token ids [B, max_length] (and optionally the attention mask), as T5's pipelines tokenize.
    Subclasses say how a text becomes pieces and set pad_id, eos_id and vocab_size."""

    pad_id: int
    eos_id: int
    vocab_size: int

    def pieces(self, text: str) -> list[int]:
        """Token ids of one text, without EOS, padding or truncation."""
        raise NotImplementedError

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
            if not isinstance(text, str):
                raise InputError(f"texts must be strings; got {type(text).__name__}")
            tokens = self.pieces(text)[:max_length - 1] + [self.eos_id]
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return ids, mask


def load_tokenizer(folder: str | Path) -> T5Tokenizer:
    """The tokenizer of a tokenizer folder (or of a pipeline folder's `tokenizer/`): spiece.model if present, else
    tokenizer.json."""
    folder = Path(folder)
    if not (folder / MODEL_NAME).exists() and not (folder / JSON_NAME).exists() and (folder / "tokenizer").is_dir():
        folder = folder / "tokenizer"
    if not folder.is_dir():
        raise CheckpointError(f"tokenizer folder {folder} does not exist")
    if (folder / MODEL_NAME).exists():
        return SentencePieceTokenizer.from_folder(folder)
    if (folder / JSON_NAME).exists():
        return JsonTokenizer.from_folder(folder)
    raise CheckpointError(f"no {MODEL_NAME} or {JSON_NAME} in {folder} (expected a T5 tokenizer folder)")


class SentencePieceTokenizer(T5Tokenizer):
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
            raise CheckpointError(f"no {MODEL_NAME} in {folder} (expected a T5 tokenizer folder)")
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(model_proto=path.read_bytes())
        except (RuntimeError, OSError, TypeError) as e:
            raise CheckpointError(f"{path} is not a readable sentencepiece model ({e}); it may be corrupt") from None
        return cls(processor, extra_ids=_extra_ids(folder))

    def pieces(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(self._special_pattern.split(text)):
            ids.extend([self.special_ids[part]] if i % 2 else self._sp.encode(part))
        return ids


class JsonTokenizer(T5Tokenizer):
    """A `tokenizer.json` (transformers' fast T5 tokenizer, as transformers 5 saves it) through `tokenizers`."""

    def __init__(self, tokenizer):
        # A saved tokenizer.json may carry the padding and truncation its last user set; we pad and cut ourselves.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        ids = {name: tokenizer.token_to_id(token) for name, token in (("pad", "<pad>"), ("eos", "</s>"))}
        missing = [name for name, value in ids.items() if value is None]
        if missing:
            raise CheckpointError(f"the tokenizer.json defines no {' or '.join(missing)} token (<pad>, </s>); T5 "
                                  f"needs both")
        self.pad_id, self.eos_id = ids["pad"], ids["eos"]
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "JsonTokenizer":
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise CheckpointError(f"{folder} has only a {JSON_NAME}, which needs the tokenizers package: pip install "
                                  f"tokenizers (or add the model's {MODEL_NAME})") from None
        path = Path(folder) / JSON_NAME
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise CheckpointError(f"{path} is not a readable tokenizer.json ({e}); it may be corrupt") from None

    def pieces(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids


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
