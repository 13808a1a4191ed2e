"""Tokenizers for text inputs: strings -> padded token ids plus lengths.

Pure numpy plus the `tokenizers` library (no torch, no Ray), so the same object encodes Ray Data
batches during training and request payloads in the serving replica.

Two kinds, one interface (`encode`, `vocab_size`, `to_state`):
- `ByteTokenizer`: no fitting; a token is one byte of the UTF-8 encoding (vocabulary 256 + specials).
- `BpeTokenizer`: byte-level BPE trained with `tokenizers` from an iterator of training-split texts,
  in memory and offline.

Special ids are fixed for every kind: PAD=0, UNK=1, CLS=2, EOS=3; real tokens start at 4. Models
embed with `padding_idx=PAD`; `encode(..., add_cls=True)` puts CLS at position 0, which a transformer
with cls pooling reads.

State: `to_state()` returns a plain JSON-able dict (for BPE it holds the tokenizer's own
`tokenizer.json` text), saved in every checkpoint; `tokenizer_from_state(state)` rebuilds the exact
same tokenizer. Nothing is unpickled.
"""

from __future__ import annotations

from typing import Any, Iterable, Union

import numpy as np

PAD, UNK, CLS, EOS = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<unk>", "<cls>", "<eos>")  # index == id
NUM_SPECIALS = len(SPECIAL_TOKENS)
STATE_VERSION = 1


class TextInputError(ValueError):
    """A text that cannot be encoded; `index` is its position in the list passed to `encode`."""

    def __init__(self, index: int, message: str):
        self.index = index
        super().__init__(f"text {index}: {message}")


def _check_texts(texts: list[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("encode takes a list of strings, not one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TextInputError(i, f"expected a string, got {type(t).__name__}")
        if t == "":
            raise TextInputError(i, "empty string (an empty text has no tokens to predict from)")


def _pad(token_lists: list[list[int]], max_length: int, add_cls: bool, truncate: bool) -> tuple[np.ndarray, np.ndarray]:
    """Prepend CLS when asked, keep the first `max_length` tokens (CLS included), pad with PAD."""
    if not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) or max_length < 1 + int(add_cls):
        raise ValueError(f"max_length must be an integer >= {1 + int(add_cls)}, got {max_length!r}")
    n = len(token_lists)
    ids: np.ndarray = np.full((n, int(max_length)), PAD, dtype=np.int64)
    lengths: np.ndarray = np.zeros(n, dtype=np.int64)
    for i, toks in enumerate(token_lists):
        if add_cls:
            toks = [CLS, *toks]
        if len(toks) > max_length and not truncate:
            raise TextInputError(i, f"{len(toks)} tokens, more than max_length {max_length}")
        toks = toks[:max_length]  # the head of a text is kept: titles and openings carry most signal
        ids[i, : len(toks)] = toks
        lengths[i] = len(toks)
    return ids, lengths


class ByteTokenizer:
    """One token per UTF-8 byte: id = byte + NUM_SPECIALS. Needs no fitting."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 256 + NUM_SPECIALS

    def encode(self, texts: list[str], max_length: int, add_cls: bool, *, truncate: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Token ids int64 [n, max_length] (PAD-filled) and lengths int64 [n] (>= 1).

        Texts longer than `max_length` tokens are cut to their first tokens, or, with
        `truncate=False` (serving), raise `TextInputError` naming the text's index.
        """
        _check_texts(texts)
        token_lists = [[b + NUM_SPECIALS for b in t.encode("utf-8")] for t in texts]
        return _pad(token_lists, max_length, add_cls, truncate)

    def to_state(self) -> dict:
        return {"kind": self.kind, "version": STATE_VERSION}


class BpeTokenizer:
    """Byte-level BPE (the GPT-2 scheme) from the `tokenizers` library.

    Every byte is in the initial alphabet, so any text encodes without UNK; merges are learnt
    only from the texts given to `fit` (the caller passes the training split only).
    """

    kind = "bpe"

    def __init__(self, tokenizer: Any):
        """Wraps a `tokenizers.Tokenizer`; use `fit` or `tokenizer_from_state` to make one."""
        self._tok = tokenizer

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int) -> "BpeTokenizer":
        """Train on `texts` (any iterable, consumed once) up to `vocab_size` tokens, specials included.

        The result may hold fewer tokens when the texts have fewer merges to learn. Deterministic:
        the same texts in the same order give the same vocabulary.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        min_size = 256 + NUM_SPECIALS
        if not isinstance(vocab_size, (int, np.integer)) or isinstance(vocab_size, bool) or vocab_size < min_size:
            raise ValueError(f"vocab_size must be an integer >= {min_size} (256 bytes + {NUM_SPECIALS} special tokens), got {vocab_size!r}")
        tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK]))
        # add_prefix_space: a word's first occurrence in a text gets the same token as elsewhere.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            special_tokens=list(SPECIAL_TOKENS),  # first, so their ids are 0..3
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            min_frequency=2,  # a pair seen once is not a pattern
            show_progress=False,
        )

        def checked() -> Iterable[str]:
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TextInputError(i, f"expected a string, got {type(t).__name__}")
                yield t

        tok.train_from_iterator(checked(), trainer=trainer)
        for i, name in enumerate(SPECIAL_TOKENS):
            assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def tokens(self, text: str) -> list[str]:
        """The pieces one text splits into (byte-level symbols, 'Ġ' marks a leading space); for inspection."""
        _check_texts([text])
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, texts: list[str], max_length: int, add_cls: bool, *, truncate: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Token ids int64 [n, max_length] (PAD-filled) and lengths int64 [n] (>= 1).

        Texts longer than `max_length` tokens are cut to their first tokens, or, with
        `truncate=False` (serving), raise `TextInputError` naming the text's index.
        """
        _check_texts(texts)
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return _pad([e.ids for e in encoded], max_length, add_cls, truncate)

    def to_state(self) -> dict:
        return {"kind": self.kind, "version": STATE_VERSION, "tokenizer_json": self._tok.to_str()}


Tokenizer = Union[ByteTokenizer, BpeTokenizer]


def tokenizer_from_state(state: dict) -> Tokenizer:
    """Rebuild a tokenizer from `to_state()` output (after a JSON round trip); same ids as before."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        from tokenizers import Tokenizer as HfTokenizer

        text = state.get("tokenizer_json")
        if not isinstance(text, str):
            raise ValueError("bpe tokenizer state has no 'tokenizer_json' string")
        return BpeTokenizer(HfTokenizer.from_str(text))
    raise ValueError(f"unknown tokenizer state kind {kind!r}; expected 'byte' or 'bpe'")
