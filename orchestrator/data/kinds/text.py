"""text: one string per row (data.text), tokenized into ids by a byte tokenizer or a byte-level BPE
fitted on the training split's texts only (orchestrator/data/text.py).

Every text starts with a CLS token and is padded to max_length; "len" counts its real tokens.
Training keeps a long text's first tokens; serving refuses a text longer than the model takes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from orchestrator.data.kinds.base import ColumnCheck, Columns, InputKind, TrainSplit, is_text_type
from orchestrator.data.values import is_missing
from orchestrator.errors import DataError, shown_value
from orchestrator.spec import TextSpec

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec


@dataclass
class TextInput(InputKind):
    name = "text"
    section = TextSpec
    section_description = "Text input (one string per row) instead of tabular features."
    steps = True
    token_ids = True

    column: str = ""
    tokenizer: Optional[dict] = None  # orchestrator.data.text state (a bpe one holds its tokenizer.json)
    max_length: int = 0  # tokens per text, the leading CLS included
    lowercase: bool = False
    vocab_size: int = 0

    # ---------------------------------------------------------------- spec and source columns
    @classmethod
    def check_type(cls, check: ColumnCheck, column: str, t: pa.DataType) -> str:
        if not is_text_type(t):
            if pa.types.is_binary(t) or pa.types.is_large_binary(t):  # what pyarrow makes of a CSV column that is not UTF-8
                where = check.locate_non_utf8(column)
                raise DataError(
                    f"{where or check.src}: column {column!r} (data.text.column) holds bytes that are not UTF-8 text; save the file as UTF-8"
                )
            raise DataError(f"{check.src}: column {column!r} (data.text.column) has type {t}; it must hold strings")
        return ""

    @classmethod
    def row_check(cls, spec: JobSpec, columns: Columns, src: str) -> Optional[Callable[[Any, str], Optional[str]]]:
        return lambda v, where: text_problem(v)

    # ----------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, train: TrainSplit) -> TextInput:
        """The tokenizer fitted on the training split's texts (collected on the driver, sorted so the
        vocabulary does not depend on the order the blocks were read in)."""
        from orchestrator.data.text import BpeTokenizer, ByteTokenizer

        t = cls.section_of(train.spec.data)
        texts = train.values(t.column)
        if not texts:
            raise DataError(f"{train.src}: the training split is empty (too few rows for data.split)")
        missing = sum(1 for v in texts if not isinstance(v, str))
        empty = sum(1 for v in texts if isinstance(v, str) and not v.strip())
        if missing or empty:
            what = " and ".join(
                filter(None, [f"{missing} missing values" if missing else "", f"{empty} empty or whitespace-only texts" if empty else ""])
            )
            raise DataError(
                f"{train.src}: column {t.column!r} (data.text.column) holds {what} in the training split; every row needs a text"
            )
        if t.lowercase:
            texts = [v.lower() for v in texts]
        tok = ByteTokenizer() if t.tokenizer == "byte" else BpeTokenizer.fit(sorted(texts), t.vocab_size)
        return cls(column=t.column, tokenizer=tok.to_state(), max_length=t.max_length, lowercase=t.lowercase, vocab_size=tok.vocab_size)

    # ------------------------------------------------------------------ what the model sees
    def columns(self) -> list[str]:
        return [self.column]

    def input_shape(self) -> list[int]:
        return [self.max_length]

    def vocab(self) -> Optional[int]:
        return self.vocab_size

    def transform(self, df: pd.DataFrame, *, truncate: bool = True) -> dict[str, np.ndarray]:
        from orchestrator.data.text import TextInputError, tokenizer_from_state

        tok = self.__dict__.get("_tokenizer")
        if tok is None:  # built once per state (a bpe one parses its tokenizer.json)
            tok = self.__dict__["_tokenizer"] = tokenizer_from_state(self.tokenizer or {})
        texts = list(df[self.column])
        if self.lowercase:
            texts = [t.lower() if isinstance(t, str) else t for t in texts]
        try:
            ids, lengths = tok.encode(texts, self.max_length, add_cls=True, truncate=truncate)
        except TextInputError as e:
            raise ValueError(f"column {self.column!r}: row {e.index}: {str(e).split(': ', 1)[1]}") from None
        return {"x": ids, "len": lengths}

    # ---------------------------------------------------------------------------- serving
    def char_limit(self) -> int:
        """Characters a text may have at most. A text of more characters would need more than
        max_length tokens anyway (no token spans more bytes than the vocabulary's longest), so the
        limit refuses nothing the model could take, and keeps the tokenizer's work per request bounded."""
        return longest_token_bytes(self.tokenizer) * max(1, int(self.max_length))

    def record_fields(self) -> dict[str, Any]:
        limit = self.char_limit()
        return {
            "f0": (
                Annotated[str, Field(strict=True, min_length=1, max_length=limit), AfterValidator(not_blank)],
                Field(
                    alias=self.column,
                    description=f"text: a string of at most {self.max_length} tokens ({self.max_length - 1} "
                    f"after the leading CLS) and at most {limit} characters; longer texts are refused, not truncated",
                ),
            )
        }

    def example(self) -> dict[str, Any]:
        """A short text that fits max_length tokens."""
        text = "an example text to classify"
        while len(text) > 1:
            try:
                self.transform(pd.DataFrame({self.column: [text]}), truncate=False)
                break
            except ValueError:
                text = text[: len(text) // 2].strip() or text[0]
        return {self.column: text}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "column": self.column,
            "type": "string",
            "tokenizer": (self.tokenizer or {}).get("kind"),
            "max_length": self.max_length,
            "max_characters": self.char_limit(),
            "lowercase": self.lowercase,
            "note": "max_length counts tokens, the leading CLS included; longer texts are refused, not truncated",
        }

    def note(self) -> str:
        return (
            f"Input: text. Each record's `{self.column}` is a string of at most {self.max_length} tokens "
            f"({(self.tokenizer or {}).get('kind')} tokenizer, the leading CLS included); longer texts are refused, not truncated."
        )

    def explain(self, message: str) -> str:
        if "more than max_length" in message:
            message += " (data.text.max_length; served texts are not truncated: shorten the text)"
        return message

    # ------------------------------------------------------------------- predicting files
    def text_columns(self) -> tuple[str, ...]:
        return (self.column,)


def text_problem(v: Any) -> Optional[str]:
    """What is wrong with one text cell of the source, or None."""
    if is_missing(v):
        return "missing text (every row needs one)"
    if not isinstance(v, str):
        return f"expected text, got {type(v).__name__} {shown_value(v)}"
    if not v:
        return "missing or empty text (every row needs one; a CSV holds a missing text as an empty one)"
    if not v.strip():
        return "whitespace-only text (it has nothing to predict from; serving refuses it too)"
    return None


def longest_token_bytes(state: Optional[dict]) -> int:
    """The most UTF-8 bytes one token of the tokenizer stands for (1 for the byte tokenizer)."""
    if not isinstance(state, dict) or state.get("kind") == "byte":
        return 1
    try:  # a byte-level BPE's vocabulary spells every byte as one character; added (special) tokens are plain text
        tok = json.loads(state["tokenizer_json"])
        return max([len(p) for p in tok["model"]["vocab"]] + [len(t["content"].encode("utf-8")) for t in tok.get("added_tokens", [])])
    except (KeyError, TypeError, ValueError):
        return 64


def not_blank(v: str) -> str:
    if not v.strip():
        raise PydanticCustomError("string_blank", "text is only whitespace: send the text to predict from")
    return v


KIND = TextInput
