"""The job spec: one YAML document that describes data, model, training and scaling.

Pure module: it imports neither Ray nor torch, so validating a spec is fast and safe anywhere.
Every model forbids unknown keys, so a typo is an error that names its field path.
"""

from __future__ import annotations

import copy
import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.errors import SpecError
from orchestrator.errors import one_line as _one_line

NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$"
IMPORT_PATH_RE = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


# Strict: YAML `true` is not the number 1, `1.0e30` is not an integer and "10" is not a number
# (ints are still accepted where a float is expected). Numbers must be finite.
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


MAX_IMAGE_VALUES = 1 << 26  # 64 Mi numbers per image (256 MiB as float32), e.g. 4 x 4096 x 4096

# ------------------------------------------------------------------------------------ metrics

# Every metric a run reports, spelled here once. Each split reports them under its prefix:
# train_ (per epoch), val_ (per epoch, ranks checkpoints and trials) and test_ (once, at the end).
# F1, precision and recall are macro averages over the classes (scikit-learn's average="macro");
# ROC AUC is the binary AUC for two classes, else the macro average of one-vs-rest AUCs. They
# need the whole split's predictions, so validation and test report them and training does not.
LOSS, ACCURACY, RMSE, MAE = "loss", "accuracy", "rmse", "mae"
F1, PRECISION, RECALL, ROC_AUC = "f1", "precision", "recall", "roc_auc"
METRICS: dict[str, tuple[str, Optional[str]]] = {  # name -> (better when, the only task it fits; None: both)
    LOSS: ("min", None),
    ACCURACY: ("max", "classification"),
    F1: ("max", "classification"),
    PRECISION: ("max", "classification"),
    RECALL: ("max", "classification"),
    ROC_AUC: ("max", "classification"),
    RMSE: ("min", "regression"),
    MAE: ("min", "regression"),
}
METRIC_NAMES = tuple(METRICS)
WHOLE_SPLIT_METRICS = (F1, PRECISION, RECALL, ROC_AUC)  # not reported for the training split
FRACTIONS = (ACCURACY, *WHOLE_SPLIT_METRICS)  # between 0 and 1
TRAIN_PREFIX, VAL_PREFIX, TEST_PREFIX = "train_", "val_", "test_"
VAL_LOSS = VAL_PREFIX + LOSS  # the default checkpoint metric
TRAIN_METRICS = tuple(TRAIN_PREFIX + n for n in METRIC_NAMES if n not in WHOLE_SPLIT_METRICS)
VAL_METRICS = tuple(VAL_PREFIX + n for n in METRIC_NAMES)
TEST_METRICS = tuple(TEST_PREFIX + n for n in METRIC_NAMES)
ValMetric = Literal[VAL_METRICS]  # type: ignore[valid-type]  # Literal["val_loss", "val_accuracy", ...]
# Whether a lower ("min") or higher ("max") value is better, for the metrics a spec can name.
METRIC_MODES = {VAL_PREFIX + n: mode for n, (mode, _) in METRICS.items()}


# --------------------------------------------------------------------------------------- data


_SplitFraction = Annotated[float, Field(gt=0, lt=1)]


class Split(_Model):
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


class ImageSpec(_Model):
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


class TextSpec(_Model):
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


class SequenceSpec(_Model):
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


class SeriesSpec(_Model):
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


INPUT_KINDS = ("image", "text", "sequence", "series")  # data fields of which a spec holds at most one


def _json_schema_label_optional(schema: dict) -> None:
    # data.label is filled in from data.series.column when a series spec leaves it out.
    schema["required"] = [r for r in schema.get("required", []) if r != "label"]


class DataSpec(_Model):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, json_schema_extra=_json_schema_label_optional)

    source: str = Field(
        description="Parquet/CSV file or directory: a local path (relative paths resolve against the spec "
        "file's folder) or any URI pyarrow understands (s3://, gs://, file://, ...)."
    )
    format: Optional[Literal["parquet", "csv"]] = Field(None, description="File format; inferred from the source's extension when omitted.")
    prepare: Optional[
        Literal[
            "sklearn:digits",
            "sklearn:breast_cancer",
            "sklearn:wine",
            "sklearn:diabetes",
            "text:docstrings",
            "series:co2",
            "series:elnino",
            "images:digits-png",
        ]
    ] = Field(
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
        twice = sorted({c for c in v or [] if v.count(c) > 1})
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
        """table, image, text, sequence or series."""
        return next((k for k in INPUT_KINDS if getattr(self, k) is not None), "table")

    @property
    def input_column(self) -> Optional[str]:
        """The column of a non-tabular input (data.<kind>.column)."""
        kind = self.input_kind
        return None if kind == "table" else getattr(self, kind).column

    @model_validator(mode="after")
    def _features_or_image(self) -> "DataSpec":
        given = [f"data.{k}" for k in INPUT_KINDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of data.image, data.text, data.sequence or data.series (got {' and '.join(given)})")
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
            self.format = format_from_name(self.source)
            if self.format is None:
                raise ValueError(f"cannot infer the format of {self.source!r} from its extension; set data.format to parquet or csv")
        return self


# -------------------------------------------------------------------------------------- model


class MLPSpec(_Model):
    arch: Literal["mlp"] = Field("mlp", description="Architecture tag: mlp, a fully connected network on the flattened input.")
    hidden: list[Annotated[int, Field(gt=0, le=65_536)]] = Field(
        [128, 64], max_length=64, description="Width of each hidden layer, in units (neurons)."
    )
    activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="Activation after each hidden layer.")
    batch_norm: bool = Field(False, description="Batch normalisation after each hidden layer's linear map, before its activation.")


class CNNSpec(_Model):
    arch: Literal["cnn"] = Field("cnn", description="Architecture tag: cnn, a convolutional network on image data (data.image).")
    channels: list[Annotated[int, Field(gt=0, le=8192)]] = Field(
        [32, 64],
        max_length=32,
        description="Output channels of each 3x3 conv block (conv, batch norm, ReLU, 2x2 max-pool when the map allows).",
    )
    hidden: int = Field(128, gt=0, le=65_536, description="Width of the dense layer before the output layer, in units (neurons).")


class RNNSpec(_Model):
    arch: Literal["rnn"] = Field(
        "rnn", description="Architecture tag: rnn, a recurrent network (LSTM or GRU) over text, sequence or series input."
    )
    cell: Literal["lstm", "gru"] = Field("lstm", description="Recurrent cell: lstm or gru.")
    hidden: int = Field(128, gt=0, le=65_536, description="Hidden state width of each layer and direction, in units.")
    layers: int = Field(1, gt=0, le=64, description="Stacked recurrent layers, a count (train.dropout applies between them).")
    bidirectional: bool = Field(False, description="Also read each sequence backwards; the head sees both directions' states.")
    embedding: int = Field(
        128, gt=0, le=65_536, description="Token embedding width, in units (data.text only; numeric steps go in as they are)."
    )
    pooling: Literal["last", "mean", "max"] = Field(
        "last",
        description="last: the final state at each row's last real step; mean: the outputs averaged over real steps; "
        "max: each output unit's largest value over real steps.",
    )


class TransformerSpec(_Model):
    arch: Literal["transformer"] = Field(
        "transformer",
        description="Architecture tag: transformer, an encoder with sinusoidal positions over text, sequence or series input.",
    )
    d_model: int = Field(128, gt=0, le=65_536, description="Width of the token/step representation, in units; even and divisible by heads.")
    heads: int = Field(4, gt=0, le=1024, description="Attention heads per layer, a count; d_model must be divisible by it.")
    layers: int = Field(2, gt=0, le=64, description="Encoder layers, a count.")
    ff: int = Field(256, gt=0, le=262_144, description="Hidden width of each layer's feed-forward block, in units.")
    max_length: Optional[int] = Field(
        None,
        gt=0,
        le=MAX_SEQUENCE_LENGTH,
        description="Longest input the model accepts, in tokens or steps (positions it encodes); omit: the data's "
        "(data.text.max_length, data.sequence.max_length or the training split's longest row, data.series.window).",
    )
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description="cls: the representation at position 0 (the CLS token for text, a learnt vector for numbers); mean: the average over real positions.",
    )

    @field_validator("d_model")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"d_model ({v}) must be even (the sinusoidal positional encoding pairs its units)")
        return v

    @field_validator("heads")
    @classmethod
    def _heads_fit(cls, v: int, info) -> int:  # a field validator, so the error names model.heads
        d_model = info.data.get("d_model")
        if d_model is not None and d_model % v:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({v})")
        return v


class CustomModelSpec(_Model):
    arch: Literal["custom"] = Field("custom", description="Architecture tag: custom, a model built by your `factory`.")
    factory: str = Field(
        pattern=IMPORT_PATH_RE,
        description="`module:function` returning an nn.Module. Called as "
        "function(input_shape=..., num_outputs=..., dropout=..., **kwargs), plus vocab_size= and max_length= for "
        "text/sequence/series input when the function takes them (or **kwargs). Its forward gets (x) for table and "
        "image input, (x, lengths) for text, sequence and series input.",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the factory.")


ModelSpec = Annotated[Union[MLPSpec, CNNSpec, RNNSpec, TransformerSpec, CustomModelSpec], Field(discriminator="arch")]
SEQUENCE_KINDS = ("text", "sequence", "series")  # the inputs rnn and transformer read


# -------------------------------------------------------------------------------------- train


class EarlyStopping(_Model):
    patience: int = Field(gt=0, le=10_000, description="Epochs in a row without improvement of checkpoint.metric before training stops.")
    min_delta: float = Field(
        0.0, ge=0, le=1e6, description="Smallest change of checkpoint.metric, in that metric's units, that counts as an improvement."
    )


class TrainSpec(_Model):
    epochs: int = Field(
        10, gt=0, le=10_000, description="Epochs (full passes over the train split) each training run or trial runs at most."
    )
    batch_size: int = Field(64, gt=0, le=1_000_000, description="Rows per batch on each worker; a step sees workers x batch_size rows.")
    optimizer: Literal["adamw", "adam", "sgd"] = Field(
        "adamw", description="torch optimizer: adamw (decoupled weight decay), adam or sgd (with `momentum`); all use lr and weight_decay."
    )
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate; the schedule multiplies it by a factor each epoch.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum factor, 0 to below 1 (optimizer: sgd only).")
    schedule: Literal["constant", "cosine", "step", "onecycle"] = Field(
        "constant",
        description="lr per epoch: constant; cosine: towards 0 over the epochs after warm-up; step: x gamma every "
        "step_size epochs; onecycle: 0.1 x lr up to lr at 30% of the epochs, then down towards lr / 25.",
    )
    step_size: int = Field(10, gt=0, le=10_000, description="Epochs between lr decays (schedule: step).")
    gamma: float = Field(0.1, gt=0, le=1, description="Factor (0 to 1) the lr is multiplied by every step_size epochs (schedule: step).")
    warmup_epochs: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Epochs of linear warm-up at the start, epoch e at lr x (e + 1) / (warmup_epochs + 1); "
        "they replace the schedule's first epochs (cosine starts after them); 0: none.",
    )
    weight_decay: float = Field(
        0.0, ge=0, le=1, description="Weight-decay coefficient, 0 to 1 (adamw: decoupled, adam and sgd: L2 on the gradient); 0: none."
    )
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout probability, 0 to below 1, after each mlp hidden layer and the cnn dense layer; rnn: on "
        "embeddings, between layers and before the head; transformer: on embeddings, attention, feed-forward blocks and "
        "before the head (a custom factory gets `dropout`).",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Fraction, 0 to below 1, of the target probability spread over all classes (classification only)."
    )
    class_weights: Optional[Union[Literal["balanced"], dict[Union[int, str], Annotated[float, Field(gt=0, le=1e6)]]]] = Field(
        None,
        description="Weights of the classes in the training loss, for imbalanced labels (classification only): balanced "
        "(rows / (classes x the class's rows in the training split), scikit-learn's rule) or a map from label to weight, "
        "above 0 (a class not listed weighs 1); validation and test metrics stay unweighted.",
    )
    grad_clip: Optional[float] = Field(
        None, gt=0, le=1e6, description="Max global L2 norm of the gradients, clipped before each step; omit to disable."
    )
    early_stopping: Optional[EarlyStopping] = Field(
        None, description="Stop a run when checkpoint.metric stops improving; omit to train all epochs."
    )
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="Autocast dtype on GPU: auto (bf16 where the GPU supports it, else fp16), bf16, fp16 or off; always off on CPU."
    )
    max_failures: int = Field(
        3, ge=0, le=1000, description="Worker-group restarts allowed per run (a count); each resumes from the latest checkpoint."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for weight initialisation and shuffling (0 to 2**32 - 1).")

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainSpec":
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self


class ScalingSpec(_Model):
    workers: int = Field(2, gt=0, le=4096, description="Data-parallel (DDP) worker processes per training run.")
    cpus_per_worker: Union[float, Literal["auto"]] = Field(
        "auto",
        description="CPUs (fractions allowed) reserved per worker. auto: share the cluster's CPUs, leaving room for Ray Data.",
    )
    gpus_per_worker: float = Field(0, ge=0, le=64, description="GPUs (fractions share a GPU) reserved per worker; > 0 trains on GPU.")

    @field_validator("cpus_per_worker")
    @classmethod
    def _positive(cls, v: Union[float, str]) -> Union[float, str]:
        if v != "auto" and not (0 < float(v) <= 1024):
            raise ValueError("must be 'auto' or a number in (0, 1024]")
        return v

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class CheckpointSpec(_Model):
    keep: int = Field(2, gt=0, le=1000, description="Checkpoints kept per run (best by `metric`; the latest is always kept too).")
    metric: ValMetric = Field(VAL_LOSS, description="Validation metric that ranks checkpoints and picks the best one.")

    @property
    def mode(self) -> str:
        return METRIC_MODES[self.metric]


class OutputSpec(_Model):
    dir: str = Field(
        "runs",
        min_length=1,
        pattern=r"^[^\x00]*$",
        description="Folder under which each run gets its own directory (relative to the working directory).",
    )


# --------------------------------------------------------------------------------------- tune

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")


class Param(_Model):
    """One search dimension: exactly one of the distribution keys."""

    loguniform: Optional[Annotated[tuple[StrictFloat, StrictFloat], Field(strict=False)]] = Field(
        None, description="[low, high], both > 0, in the field's units; sampled uniformly on a log scale."
    )
    uniform: Optional[Annotated[tuple[StrictFloat, StrictFloat], Field(strict=False)]] = Field(
        None, description="[low, high], in the field's units; sampled uniformly."
    )
    randint: Optional[Annotated[tuple[StrictInt, StrictInt], Field(strict=False)]] = Field(
        None, description="[low, high] integers, both inclusive."
    )
    choice: Optional[list[Any]] = Field(None, min_length=1, description="Values to sample from.")
    grid: Optional[list[Any]] = Field(None, min_length=1, description="Values that are all tried (search: random only).")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Param":
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)} (got {', '.join(given) or 'none'})")
        kind = given[0]
        if kind in ("loguniform", "uniform", "randint"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind}: low ({lo}) must be below high ({hi})")
            if kind == "loguniform" and lo <= 0:
                raise ValueError("loguniform: bounds must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)

    def sample_values(self) -> list[Any]:
        """Values that stand for this dimension when checking it against the spec: every choice or
        grid value, or both bounds of a range."""
        return list(self.values)


class AshaSpec(_Model):
    type: Literal["asha"] = Field("asha", description="Scheduler tag: asha, which stops poorly scoring trials early.")
    grace_period: int = Field(1, gt=0, le=10_000, description="Epochs every trial runs before it can be stopped.")
    reduction_factor: float = Field(
        2, gt=1, le=100, description="Ratio (> 1) between rungs: only 1/reduction_factor of the trials go on at each rung."
    )
    max_epochs: Optional[int] = Field(
        None, gt=0, le=10_000, description="Epochs the longest trial runs (ASHA's max_t); defaults to train.epochs."
    )


class NoScheduler(_Model):
    type: Literal["none"] = Field("none", description="Scheduler tag: none, every trial runs all its epochs.")


class TuneSpec(_Model):
    space: dict[str, Param] = Field(
        description="Search space: dotted spec paths (train.lr, train.weight_decay, train.dropout, "
        "train.label_smoothing, train.early_stopping.patience, model.hidden, ...) -> distribution.",
        min_length=1,
    )
    metric: Optional[ValMetric] = Field(None, description="Validation metric to optimise; defaults to checkpoint.metric.")
    num_samples: int = Field(8, gt=0, le=10_000, description="Trials to run, a count (each grid point runs once per sample).")
    search: Literal["optuna", "random"] = Field("optuna", description="optuna: TPE; random: random and grid search.")
    scheduler: Annotated[Union[AshaSpec, NoScheduler], Field(discriminator="type")] = Field(
        default_factory=AshaSpec, description="Trial scheduler: asha (default) stops poor trials early; none runs every trial to the end."
    )
    max_concurrent: Union[Annotated[int, Field(ge=1, le=10_000)], Literal["auto"]] = Field(
        "auto", description="Trials running at once, a count; auto derives it from the cluster's CPUs/GPUs and scaling.workers."
    )
    time_budget_s: Optional[float] = Field(
        None, gt=0, le=31_536_000, description="Wall-clock budget of the search in seconds; no new trials start after it."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the search algorithm (0 to 2**32 - 1).")
    include_spec_config: bool = Field(True, description="Evaluate the spec's own settings as the first trial.")

    @field_validator("space")
    @classmethod
    def _paths(cls, v: dict[str, Param]) -> dict[str, Param]:
        for key in v:
            if not re.match(r"^(train|model|data)\.[a-z_]+(\.[a-z_]+)*$", key):
                raise ValueError(f"{key!r}: search keys are dotted paths under train., model. or data. (e.g. train.lr)")
            if key.startswith("data.") and key not in ("data.cache",):
                raise ValueError(f"{key!r}: the data section cannot be searched (splits must stay fixed)")
        return v

    @model_validator(mode="after")
    def _grid_needs_random(self) -> "TuneSpec":
        grids = [k for k, p in self.space.items() if p.kind == "grid"]
        if grids and self.search != "random":
            raise ValueError(f"grid dimensions ({', '.join(grids)}) need search: random")
        return self


PROMOTE_RE = re.compile(rf"^\s*({TEST_PREFIX})?({'|'.join(METRIC_NAMES)})\s*(>=|<=|>|<)\s*([-+]?\d*\.?\d+(e[-+]?\d+)?)\s*$")


def parse_promote(rule: str) -> tuple[str, str, float]:
    m = PROMOTE_RE.match(rule)
    if not m:
        raise ValueError(
            f"expected '<metric> <op> <number>' with metric {', '.join(METRIC_NAMES[:-1])} or {METRIC_NAMES[-1]} "
            "and op >=, >, <= or <, e.g. 'accuracy >= 0.95'"
        )
    name, op, value = m.group(2), m.group(3), float(m.group(4))
    # A gate no model can pass (or every model passes) is a typo, found now rather than after training.
    if not math.isfinite(value):
        raise ValueError(f"threshold {m.group(4)} is not a finite number")
    if name in FRACTIONS and not 0 <= value <= 1:
        raise ValueError(f"{name} is a fraction between 0 and 1; the threshold {value:g} is outside it")
    if name not in FRACTIONS and value < 0:
        raise ValueError(f"{name} is never negative; the threshold {value:g} is below 0")
    if (op == ">" and name in FRACTIONS and value == 1) or (op == "<" and value == 0):
        raise ValueError(f"'{name} {op} {value:g}' can never pass")
    return TEST_PREFIX + name, op, value


# -------------------------------------------------------------------------------------- serve


class Autoscaling(_Model):
    min_replicas: int = Field(1, ge=0, le=4096, description="Fewest replicas the autoscaler keeps (0 scales to zero when idle).")
    max_replicas: int = Field(1, gt=0, le=4096, description="Most replicas the autoscaler starts.")
    target_ongoing_requests: float = Field(8, gt=0, le=100_000, description="Requests in flight per replica that the autoscaler aims for.")

    @model_validator(mode="after")
    def _ordered(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})")
        return self


class ServeSpec(_Model):
    """How the promoted model is served over HTTP by Ray Serve."""

    host: str = Field(
        "127.0.0.1",
        pattern=r"^[A-Za-z0-9.:-]{1,253}$",
        description="Bind address. Loopback by default; 0.0.0.0 exposes the server to the network.",
    )
    port: int = Field(8000, gt=0, lt=65536, description="TCP port of the HTTP server (1 to 65535).")
    route_prefix: str = Field(
        "/", pattern=r"^/[\w\-/]*$", description="URL path prefix the model's endpoints are served under, e.g. /digits."
    )
    max_batch_size: int = Field(32, gt=0, le=4096, description="Dynamic batching: most requests per forward pass.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10, description="Dynamic batching: longest wait to fill a batch, in seconds.")
    autoscaling: Autoscaling = Field(
        default_factory=Autoscaling, description="Replica count bounds and the load per replica the autoscaler aims for."
    )
    max_ongoing_requests: int = Field(64, gt=0, le=100_000, description="Requests one replica works on at once.")
    max_queued_requests: int = Field(
        256,
        ge=-1,
        le=1_000_000,
        description="Requests left waiting, beyond max_ongoing_requests per replica, before the proxy answers HTTP 503; -1 is unbounded.",
    )
    cpus_per_replica: float = Field(0.5, gt=0, le=1024, description="CPUs (fractions allowed) reserved by each replica.")
    gpus_per_replica: float = Field(0, ge=0, le=64, description="GPUs (fractions share a GPU) reserved by each replica; > 0 serves on GPU.")
    max_body_bytes: int = Field(1 << 20, gt=0, le=1 << 30, description="Largest request body in bytes; larger ones get HTTP 413.")
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Longest time, in seconds, a request's body may take to arrive; a slower client gets HTTP 408 and its place is freed.",
    )
    max_receiving_requests: int = Field(
        256,
        ge=0,
        le=100_000,
        description="Requests one replica accepts beyond max_ongoing_requests while their bodies arrive or they wait for a slot: "
        "a slow client holds one of these, never one of the max_ongoing_requests slots.",
    )
    auth_token_env: Optional[str] = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of an environment variable holding a bearer token; when set, every endpoint but "
        "/healthz needs 'Authorization: Bearer <token>'. The token itself never goes in the spec.",
    )


# --------------------------------------------------------------------------------------- spec


class JobSpec(_Model):
    name: str = Field(pattern=NAME_RE, description="Job name: lower-case letters, digits and '-', at most 52 characters.")
    data: DataSpec = Field(description="The dataset: where it is, its label and features, how it splits.")
    model: ModelSpec = Field(
        default_factory=MLPSpec, description="The architecture, by `arch`: mlp (default), cnn, rnn, transformer or custom."
    )
    train: TrainSpec = Field(
        default_factory=TrainSpec, description="How each run trains: epochs, optimizer, learning-rate schedule, regularisation."
    )
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Workers per run and the CPUs/GPUs each reserves.")
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="Which checkpoints are kept and the metric that picks the best."
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where run directories are written.")
    tune: Optional[TuneSpec] = Field(None, description="Hyperparameter and regularisation search; omit to train once.")
    promote: Optional[str] = Field(None, description="Promotion gate on the held-out test split, e.g. 'accuracy >= 0.95' or 'rmse < 40'.")
    serve: Optional[ServeSpec] = Field(None, description="Serve the promoted model after `orchestrator run`.")

    @field_validator("promote")
    @classmethod
    def _promote_rule(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            parse_promote(v)
        return v

    @property
    def tune_metric(self) -> str:
        return (self.tune.metric if self.tune and self.tune.metric else None) or self.checkpoint.metric

    # Where the spec came from; relative data paths resolve against it. Not part of the schema.
    _base_dir: Path = Path(".")

    @property
    def base_dir(self) -> Path:
        return self._base_dir


# ------------------------------------------------------------------------ cross-field checks

# The bundled datasets' tasks, so a spec that names one is checked before any data is read.
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
# What only makes sense for one task (the loss fits both), as _metric_uses names it.
TASK_ONLY = {task: {n for n, (_, only) in METRICS.items() if only == task} for task in ("classification", "regression")}
TASK_ONLY["classification"] |= {"label_smoothing", "class_weights"}


def _metric_uses(spec: JobSpec) -> list[tuple[str, str]]:
    """(field path, metric name without val_/test_) for every metric the spec names."""
    uses = [("checkpoint.metric", spec.checkpoint.metric.removeprefix(VAL_PREFIX))]
    if spec.tune is not None and spec.tune.metric:
        uses.append(("tune.metric", spec.tune.metric.removeprefix(VAL_PREFIX)))
    if spec.promote:
        uses.append(("promote", parse_promote(spec.promote)[0].removeprefix(TEST_PREFIX)))
    if spec.train.label_smoothing:
        uses.append(("train.label_smoothing", "label_smoothing"))
    if spec.train.class_weights is not None:
        uses.append(("train.class_weights", "class_weights"))
    return uses


def task_problems(spec: JobSpec, task: str, why: str) -> list[str]:
    """Metrics and settings of the other task; `why` says how the task is known."""
    other = "regression" if task == "classification" else "classification"
    return [f"{path}: {name} needs a {other} task, but {why}" for path, name in _metric_uses(spec) if name in TASK_ONLY[other]]


def spec_problems(spec: JobSpec) -> list[str]:
    """Checks across sections, each led by the field path to change."""
    problems = []
    d = spec.data
    kind = d.input_kind
    if isinstance(spec.model, CNNSpec) and spec.data.image is None:
        problems.append("model.arch: cnn needs image data: set data.image")
    if isinstance(spec.model, (RNNSpec, TransformerSpec)) and kind not in SEQUENCE_KINDS:
        problems.append(f"model.arch: {spec.model.arch} needs text, sequence or series input: set data.text, data.sequence or data.series")
    if isinstance(spec.model, MLPSpec) and kind in ("text", "sequence"):
        problems.append(f"model.arch: mlp cannot read data.{kind} (variable-length input); use arch rnn or transformer")
    if isinstance(spec.model, TransformerSpec) and spec.model.max_length is not None:
        longest = {
            "text": d.text.max_length if d.text else None,
            "series": d.series.window if d.series else None,
            "sequence": d.sequence.max_length if d.sequence else None,
        }.get(kind)
        field = {"text": "data.text.max_length", "series": "data.series.window", "sequence": "data.sequence.max_length"}.get(kind)
        if longest is not None and spec.model.max_length < longest:
            problems.append(
                f"model.max_length: {spec.model.max_length} is less than {field} ({longest}); the transformer must accept the longest input"
            )
    prepared = PREPARED_TASKS.get(d.prepare or "")
    if d.task and prepared and d.task != prepared:
        problems.append(f"data.task: {d.task}, but data.prepare {d.prepare} is a {prepared} dataset")
    if d.series is not None:
        if d.task == "classification":
            problems.append("data.task: classification, but data.series forecasts numbers (a regression task)")
        else:
            problems += task_problems(spec, "regression", "data.series forecasts numbers (a regression task)")
    elif d.task:
        problems += task_problems(spec, d.task, f"data.task is {d.task}")
    elif prepared:
        problems += task_problems(spec, prepared, f"data.prepare {d.prepare} is a {prepared} dataset")
    else:  # the task is decided from the label column later (data.check_columns); settings must still agree
        implied = [(p, n, t) for p, n in _metric_uses(spec) for t, names in TASK_ONLY.items() if n in names]
        if len({t for *_, t in implied}) > 1:
            # neither field is known to be wrong until the label column decides the task: name both
            c = next(i for i in implied if i[2] == "classification")
            r = next(i for i in implied if i[2] == "regression")
            problems.append(
                f"{c[0]}, {r[0]}: {c[1]} needs a classification task and {r[1]} a regression task; change the one "
                "that does not fit the label column (or set data.task)"
            )
    t = spec.tune
    if t is not None and isinstance(t.scheduler, AshaSpec):
        epochs = spec.train.epochs
        if "train.epochs" in t.space:  # a searched epoch count: the longest value bounds the rungs
            epochs = max([epochs] + [v for v in t.space["train.epochs"].sample_values() if type(v) is int])
        sch = t.scheduler
        if sch.max_epochs and sch.max_epochs > epochs:
            problems.append(
                f"tune.scheduler.max_epochs: {sch.max_epochs} is more than train.epochs ({epochs}); no trial trains longer than train.epochs"
            )
        limit, name = (sch.max_epochs, "tune.scheduler.max_epochs") if sch.max_epochs else (epochs, "train.epochs")
        if sch.grace_period > limit:
            problems.append(f"tune.scheduler.grace_period: {sch.grace_period} is more than {name} ({limit}); ASHA could never stop a trial")
    return problems


# ------------------------------------------------------------------------------------ loading


def _loc(loc: tuple) -> str:
    """('model', 'cnn', 'channels', 0) -> 'model.channels[0]' (the union tag is not a field).
    A key that is not a plain name (spaces, newlines, a number) is quoted: `train['a b']`."""
    out = ""
    for i, part in enumerate(loc):
        if type(part) is int:
            out += f"[{part}]"
        elif len(loc) > i + 1 and loc[i - 1 : i + 1] in (
            ("model", "mlp"),
            ("model", "cnn"),
            ("model", "rnn"),
            ("model", "transformer"),
            ("model", "custom"),
            ("scheduler", "asha"),
            ("scheduler", "none"),
        ):
            continue
        elif not re.fullmatch(r"[A-Za-z_][\w.-]*", str(part)):
            out += f"[{_yaml_scalar(part)}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


MAX_PROBLEMS = 50


def _yaml_scalar(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    return reprlib.repr(v)


# pydantic's name for a member of a plain union (`float`, `literal['auto']`), the last part of its loc
_UNION_MEMBER = re.compile(r"^((constrained-)?(float|int)|literal\[.*\]|function-\w+\[.*\])$")


def _merge_union_errors(errors: list[dict]) -> list[dict]:
    """`x: number or 'auto'` fails as one error per union member; report them as one line for `x`."""
    out: list[dict] = []
    for e in errors:
        loc = tuple(e["loc"])
        if loc and isinstance(loc[-1], str) and _UNION_MEMBER.match(loc[-1]) and e["type"] not in ("extra_forbidden", "missing"):
            e = {**e, "loc": loc[:-1]}
            if out and tuple(out[-1]["loc"]) == e["loc"] and out[-1].get("union"):
                out[-1]["msg"] += " or " + e["msg"].removeprefix("Input should be ")
                continue
            e["union"] = True
        out.append(e)
    return out


def format_validation_error(err: ValidationError) -> list[str]:
    lines = []
    for e in _merge_union_errors(err.errors(include_url=False)):
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `orchestrator schema` lists every field)"
        elif e["type"] == "union_tag_invalid":
            ctx = e.get("ctx", {})
            msg = f"unknown {ctx.get('discriminator', 'type')} {ctx.get('tag')}; expected one of {ctx.get('expected_tags')}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] != "value_error" and isinstance(e.get("input"), (bool, int, float, str, type(None))):
            msg += f", got {_yaml_scalar(e['input'])}"  # e.g. `got true` where a number belongs
        path = _loc(tuple(e["loc"]))
        if e["type"] == "invalid_key":  # pydantic turns the key into an index or a string; name it as written
            path = (_loc(tuple(e["loc"])[:-1]) if len(e["loc"]) > 1 else "") + f"[{_yaml_scalar(e['input'])}]"
        lines.append(_one_line(f"{path}: {msg}"))
    if len(lines) > MAX_PROBLEMS:  # e.g. a file of 10,000 unknown keys
        lines = lines[:MAX_PROBLEMS] + [f"(top level): and {len(lines) - MAX_PROBLEMS} more problems"]
    return lines


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Copy of a spec dict with dotted paths set (a missing or null parent becomes a mapping)."""
    out = copy.deepcopy(data)
    for path, value in overrides.items():
        *parents, last = path.split(".")
        node = out
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[last] = value
    return out


def check_search_space(spec: JobSpec) -> list[str]:
    """Every value a search dimension can take must make a valid spec; problems name the dimension."""
    if spec.tune is None:
        return []
    base = spec.model_dump(mode="json", exclude={"tune", "promote"})
    problems = []
    for key, param in spec.tune.space.items():
        for value in param.sample_values():
            try:
                lines = spec_problems(JobSpec.model_validate(apply_overrides(base, {key: value})))
            except ValidationError as err:
                lines = format_validation_error(err)
            problems += [_one_line(f"tune.space.{key}: value {reprlib.repr(value)} gives an invalid spec: {line}") for line in lines]
            if lines:
                break
    return problems


def parse_spec(data: Any, *, source: str = "<spec>", base_dir: Optional[Path] = None) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(source, [f"(top level): expected a mapping of fields, got {type(data).__name__}"])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, format_validation_error(err)) from None
    problems = spec_problems(spec) or check_search_space(spec)
    if problems:
        raise SpecError(source, problems)
    spec._base_dir = (base_dir or Path(".")).resolve()
    return spec


MAX_SPEC_BYTES = 1 << 20  # a job spec is a few KiB; a bound keeps `validate` fast on any file
MAX_YAML_DEPTH = 32  # real specs nest about 7 deep; PyYAML's composer recurses once per level
MAX_YAML_NODES = 100_000  # after expanding aliases: an alias bomb must not reach the validator


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML would keep the last silently), nesting deeper
    than MAX_YAML_DEPTH (before PyYAML's recursion can fail) and alias bombs."""

    def __init__(self, stream):
        super().__init__(stream)
        self._path: list[str] = []
        self._aliases = False

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = True
        if isinstance(index, yaml.ScalarNode):
            part = index.value
        elif isinstance(index, int):
            part = f"[{index}]"
        else:
            part = "(key)" if parent is not None else ""
        if len(self._path) >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_YAML_DEPTH} levels (at {_join_path(self._path)})",
                self.peek_event().start_mark,
            )
        self._path.append(part)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple, yaml.Node] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                first = seen.setdefault((key.tag, key.value), key)
                if first is not key:
                    raise _DuplicateKey(_join_path([*self._path, key.value]), key.start_mark.line + 1, first.start_mark.line + 1)
        return node

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and self._aliases:
            _expanded_size(node, {}, set())
        return node


# YAML 1.1 (PyYAML) reads `1e-3` as a string; YAML 1.2 and people read it as a number. With strict
# number fields the string would be refused, so exponent floats without a dot are floats here.
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


class _DuplicateKey(Exception):
    def __init__(self, path: str, line: int, first_line: int):
        self.path, self.line, self.first_line = path, line, first_line


def _join_path(parts: list[str]) -> str:
    return "".join(p if p.startswith("[") or i <= 1 else "." + p for i, p in enumerate(parts)) or "(top level)"


def _expanded_size(node: yaml.Node, memo: dict, active: set, level: int = 1) -> int:
    """Values the document holds with every alias expanded. Refuses cycles, more than MAX_YAML_NODES
    values and (aliases inside aliased collections) nesting deeper than MAX_YAML_DEPTH."""
    if id(node) not in memo:
        if id(node) in active:
            raise yaml.composer.ComposerError(None, None, "an alias refers to the collection that contains it", node.start_mark)
        active.add(id(node))
        children = (
            [n for kv in node.value for n in kv]
            if isinstance(node, yaml.MappingNode)
            else node.value
            if isinstance(node, yaml.SequenceNode)
            else []
        )
        if children and level >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded", node.start_mark
            )
        size = 1 + sum(_expanded_size(n, memo, active, level + 1) for n in children)
        height = 1 + max((memo[id(n)][1] for n in children), default=0)
        active.discard(id(node))
        memo[id(node)] = (size, height)
    size, height = memo[id(node)]
    if size > MAX_YAML_NODES:
        raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_NODES} values once aliases are expanded", node.start_mark)
    if level + height - 1 > MAX_YAML_DEPTH:
        raise yaml.composer.ComposerError(
            None, None, f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded", node.start_mark
        )
    return size


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.reader.ReaderError):
        code = e.character if isinstance(e.character, int) else ord(e.character)
        return f"(yaml) character {e.position + 1}: unacceptable character #x{code:04x}: {e.reason}"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    context, problem = getattr(e, "context", None), getattr(e, "problem", None)
    return f"(yaml) {where}{' '.join(filter(None, [context, problem])) or e}"


def read_spec_yaml(path: str | Path) -> Any:
    """The parsed YAML of a spec file; any unreadable or malformed file is a SpecError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # read at most one byte too many: the file may be /dev/zero
            raw = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(str(path), ["(file): file not found"]) from None
    except OSError as e:
        raise SpecError(str(path), [_one_line(f"(file): cannot read: {e.__class__.__name__}: {e.strerror or e}")]) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(str(path), [f"(file): larger than {MAX_SPEC_BYTES // 1024} KiB; a job spec is a small YAML file"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [f"(file): not UTF-8 text (byte {e.start + 1}); a job spec is a YAML file"]) from None
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise SpecError(str(path), [_one_line(f"{e.path}: duplicate key (line {e.line}; first given on line {e.first_line})")]) from None
    except yaml.YAMLError as e:
        raise SpecError(str(path), [_one_line(_yaml_problem(e))]) from None
    except RecursionError:  # not expected with the depth bound; never a traceback all the same
        raise SpecError(str(path), [f"(yaml) nested too deep (at most {MAX_YAML_DEPTH} levels)"]) from None


def load_spec(path: str | Path) -> JobSpec:
    path = Path(path)
    return parse_spec(read_spec_yaml(path), source=str(path), base_dir=path.parent)


def json_schema() -> dict:
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orchestrator job spec"
    return schema


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


def resolve_source(spec: JobSpec) -> str:
    """Absolute local path or URI of the dataset."""
    src = spec.data.source
    if is_uri(src):
        return src
    p = Path(src).expanduser()
    if not p.is_absolute():
        p = spec.base_dir / p
    return str(p.resolve())
