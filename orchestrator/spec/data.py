"""The spec's `data` section: the source, its label and features, one input kind's section, the split."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import ConfigDict, Field, field_validator, model_validator

from orchestrator.spec.base import SpecModel

MAX_IMAGE_VALUES = 1 << 26  # 64 Mi numbers per image (256 MiB as float32), e.g. 4 x 4096 x 4096

_SplitFraction = Annotated[float, Field(gt=0, lt=1)]


class Split(SpecModel):
    """Fractions of rows that go to each split. They must add up to 1."""

    train: _SplitFraction = Field(0.7, description="Fraction (0 to 1) of rows used for training.")
    validation: _SplitFraction = Field(
        0.15, description="Fraction (0 to 1) of rows used for validation (per-epoch metrics, checkpoint score)."
    )
    test: _SplitFraction = Field(0.15, description="Fraction (0 to 1) of rows held out and evaluated once at the end.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "Split":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must add up to 1, got {total:g}")
        return self


class ImageSpec(SpecModel):
    """An image per row: a flat numeric array, an image file's path, or an encoded image's bytes."""

    column: str = Field(
        description="Column that holds each image: a list of prod(shape) numbers; or a PNG/JPEG/... file path (a string, "
        "relative to the source file's folder, or absolute, or a URI); or the encoded file's bytes (binary). "
        "Decided by the column's type."
    )
    shape: list[Annotated[int, Field(gt=0, le=65_536)]] = Field(
        description="Shape of one image as [channels, height, width] in values (pixels); image files are decoded to "
        "channels 1 (grey), 3 (RGB) or 4 (RGBA) and resized to height x width."
    )

    @field_validator("shape")
    @classmethod
    def _three_dims(cls, v: list[int]) -> list[int]:
        if len(v) != 3:
            raise ValueError("shape must be [channels, height, width]")
        if v[0] * v[1] * v[2] > MAX_IMAGE_VALUES:
            raise ValueError(f"shape {v} holds {v[0] * v[1] * v[2]:,} values per image; at most {MAX_IMAGE_VALUES:,}")
        return v


MAX_TEXT_LENGTH = 65_536  # tokens per text, CLS included
MAX_SEQUENCE_LENGTH = 1 << 20  # steps per sequence


class TextSpec(SpecModel):
    """A text per row, tokenized into ids (the tokenizer is fitted on the training split only)."""

    column: str = Field(description="Column that holds each row's text (a string).")
    tokenizer: Literal["byte", "bpe"] = Field(
        "bpe",
        description="byte: one token per UTF-8 byte (no fitting, 260 tokens); bpe: byte-level BPE learnt from the training split's texts.",
    )
    vocab_size: int = Field(
        8000,
        ge=260,
        le=1_000_000,
        description="Most tokens a bpe vocabulary holds, in tokens (special and byte tokens included; bpe only).",
    )
    max_length: int = Field(
        128,
        ge=2,
        le=MAX_TEXT_LENGTH,
        description="Tokens kept per text, in tokens, the leading CLS token included; longer texts keep their first tokens, shorter ones are padded (and masked).",
    )
    lowercase: bool = Field(False, description="Lower-case every text before it is tokenized (in training and serving alike).")


class SequenceSpec(SpecModel):
    """A variable-length numeric sequence per row."""

    column: str = Field(
        description="Column that holds each row's sequence: a list of numbers, or a list of equal-length vectors (lists of numbers)."
    )
    max_length: Optional[int] = Field(
        None,
        gt=0,
        le=MAX_SEQUENCE_LENGTH,
        description="Steps kept per sequence, in steps; longer rows keep their most recent steps. Omit: the longest row of the training split.",
    )


class SeriesSpec(SpecModel):
    """One long ordered series, cut into windows that forecast the next values (regression)."""

    column: str = Field(description="Numeric column that holds the series' values; it is also the forecast target (data.label).")
    order_by: str = Field(description="Column whose order is time order (a date, a timestamp or a number); its values must be distinct.")
    window: int = Field(gt=0, le=100_000, description="Points each input window holds, in points (time steps).")
    horizon: int = Field(
        1,
        gt=0,
        le=10_000,
        description="Points ahead to forecast, in points: the model predicts the next `horizon` values after each window.",
    )


# The input kinds' own sections of `data`, of which a spec holds at most one (none: table columns,
# data.features). An extension adds its kind's section with spec.register_input_section.
# The built-in prepare steps (data.prepare) and their datasets' tasks, so a spec that names one is
# checked before any data is read. data/bundled.py (sklearn:*) and data/corpora.py write them.
PREPARED_TASKS = {
    "sklearn:digits": "classification",
    "sklearn:breast_cancer": "classification",
    "sklearn:wine": "classification",
    "sklearn:diabetes": "regression",
    "text:docstrings": "classification",
    "series:co2": "regression",
    "series:elnino": "regression",
    "images:digits-png": "classification",
}

INPUT_SECTIONS: dict[str, type[SpecModel]] = {"image": ImageSpec, "text": TextSpec, "sequence": SequenceSpec, "series": SeriesSpec}


def input_section_names() -> str:
    """'data.image, data.text, data.sequence or data.series'"""
    names = [f"data.{k}" for k in INPUT_SECTIONS]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _json_schema_label_optional(schema: dict) -> None:
    # data.label is filled in from data.series.column when a series spec leaves it out.
    schema["required"] = [r for r in schema.get("required", []) if r != "label"]


class DataSpec(SpecModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, json_schema_extra=_json_schema_label_optional)

    source: str = Field(
        description="Parquet/CSV file or directory: a local path (relative paths resolve against the spec "
        "file's folder) or any URI pyarrow understands (s3://, gs://, file://, ...)."
    )
    format: Optional[Literal["parquet", "csv"]] = Field(None, description="File format; inferred from the source's extension when omitted.")
    prepare: Optional[Literal[tuple(PREPARED_TASKS)]] = Field(  # type: ignore[valid-type]
        None,
        description="Built-in prepare step: writes this bundled dataset to `source` (Parquet or CSV) if the file does "
        "not exist yet: scikit-learn's (sklearn:*), docstrings of installed libraries labelled by library "
        "(text:docstrings), a real series from statsmodels (series:co2, series:elnino), or the digits as PNG files "
        "beside the table (images:digits-png). Nothing is downloaded.",
    )
    label: str = Field(
        description="Column to predict (required; with data.series it defaults to data.series.column, the only label a series has)."
    )
    task: Optional[Literal["classification", "regression"]] = Field(
        None, description="classification or regression; inferred from the label column's type when omitted (float -> regression)."
    )
    features: Optional[list[str]] = Field(
        None,
        description="Numeric and categorical feature columns (tabular data). Omit to use every other column.",
        json_schema_extra={"uniqueItems": True},
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="Feature columns to one-hot encode (string columns are treated as categorical automatically).",
        json_schema_extra={"uniqueItems": True},
    )
    image: Optional[ImageSpec] = Field(None, description="Image input instead of tabular features.")
    text: Optional[TextSpec] = Field(None, description="Text input (one string per row) instead of tabular features.")
    sequence: Optional[SequenceSpec] = Field(
        None, description="Numeric sequence input (a variable-length list per row) instead of tabular features."
    )
    series: Optional[SeriesSpec] = Field(
        None,
        description="Forecasting from one ordered series instead of rows: windows in, next values out (regression), split in time order.",
    )
    split: Split = Field(default_factory=Split, description="Fractions of rows for train, validation and test; they add up to 1.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the deterministic train/validation/test split (0 to 2**32 - 1).")
    cache: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="memory: preprocess once into Ray's object store before training (fast epochs); "
        "stream: re-read and transform the source every epoch (bounded memory); auto: memory when the "
        "source is at most 1 GiB on disk, else stream.",
    )

    @field_validator("source")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\x00" in v or not v.strip():
            raise ValueError("must be a non-empty path or URI without NUL characters")
        return v

    @field_validator("features", "categorical")
    @classmethod
    def _unique(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        items = v or []
        twice = sorted({c for c in items if items.count(c) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(map(repr, twice))} more than once")
        return v

    @model_validator(mode="before")
    @classmethod
    def _series_label(cls, data: Any) -> Any:
        if isinstance(data, dict) and "label" not in data and isinstance(data.get("series"), dict) and "column" in data["series"]:
            data = {**data, "label": data["series"]["column"]}
        return data

    @property
    def input_kind(self) -> str:
        """table, image, text, sequence, series, or a registered kind."""
        return next((k for k in INPUT_SECTIONS if getattr(self, k, None) is not None), "table")

    @property
    def file_format(self) -> str:
        """parquet or csv: data.format, or what the source's extension says (set when the spec is validated)."""
        if self.format is None:
            raise ValueError(f"cannot infer the format of {self.source!r} from its extension; set data.format to parquet or csv")
        return self.format

    @property
    def input_column(self) -> Optional[str]:
        """The column of a non-tabular input (data.<kind>.column)."""
        kind = self.input_kind
        return None if kind == "table" else getattr(self, kind).column

    @model_validator(mode="after")
    def _features_or_image(self) -> "DataSpec":
        given = [f"data.{k}" for k in INPUT_SECTIONS if getattr(self, k, None) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of {input_section_names()} (got {' and '.join(given)})")
        kind = self.input_kind
        if kind != "table" and self.features:
            raise ValueError(f"give either `features` (tabular) or `{kind}`, not both")
        if kind != "table" and self.categorical:
            raise ValueError(f"`categorical` applies to tabular features, not to `{kind}`")
        if self.series is not None:
            if self.label != self.series.column:
                raise ValueError(
                    f"data.label {self.label!r} differs from data.series.column {self.series.column!r}: a series forecasts "
                    "its own values; leave data.label out"
                )
            if self.series.order_by == self.series.column:
                raise ValueError("data.series.order_by must be another column than data.series.column")
        elif kind != "table" and self.input_column == self.label:
            raise ValueError(f"label column {self.label!r} is also the {kind} column (data.{kind}.column)")
        if self.features and self.label in self.features:
            raise ValueError(f"label column {self.label!r} is also listed in features")
        if self.label in self.categorical:
            raise ValueError(f"label column {self.label!r} is also listed in categorical")
        if self.features is not None and not self.features:
            raise ValueError("features must name at least one column (or be omitted)")
        unknown = sorted(set(self.categorical) - set(self.features or self.categorical))
        if unknown:
            raise ValueError(f"categorical columns {unknown} are not in features")
        if self.format is None:
            self.format = format_from_name(self.source)  # type: ignore[assignment]  # parquet or csv, or None
            if self.format is None:
                raise ValueError(f"cannot infer the format of {self.source!r} from its extension; set data.format to parquet or csv")
        return self


# The file name endings each data.format reads (compressed CSV as Ray Data and pyarrow read it).
FORMAT_EXTENSIONS = {"parquet": ("parquet", "pq"), "csv": ("csv", "csv.gz", "csv.bz2", "csv.br", "csv.zst", "csv.lz4")}


def format_from_name(name: str) -> str | None:
    """parquet or csv from a file name's ending (`x.pq`, `x.csv.gz`), else None: the one rule for
    data.format's default and for `orchestrator init`."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    for fmt, endings in FORMAT_EXTENSIONS.items():
        if any(base.endswith("." + e) for e in endings):
            return fmt
    return None


def is_uri(source: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source))
