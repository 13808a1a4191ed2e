"""The spec's `model` section: one typed section per architecture, told apart by `arch`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator

from orchestrator.spec.base import IMPORT_PATH_RE, SpecModel
from orchestrator.spec.data import MAX_SEQUENCE_LENGTH

if TYPE_CHECKING:
    from orchestrator.spec.data import DataSpec

SEQUENCE_KINDS = ("text", "sequence", "series")  # the inputs rnn and transformer read


class ArchSpec(SpecModel):
    """The section of one architecture: a subclass declares `arch: Literal["<name>"]` (its tag, the
    first field) and its settings with their defaults, the only place they are defined."""

    def data_problems(self, data: DataSpec) -> list[str]:
        """What of the data section this architecture cannot read, each problem led by `model.arch`."""
        return []


class MLPSpec(ArchSpec):
    arch: Literal["mlp"] = Field("mlp", description="Architecture tag: mlp, a fully connected network on the flattened input.")
    hidden: list[Annotated[int, Field(gt=0, le=65_536)]] = Field(
        [128, 64], max_length=64, description="Width of each hidden layer, in units (neurons)."
    )
    activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="Activation after each hidden layer.")
    batch_norm: bool = Field(False, description="Batch normalisation after each hidden layer's linear map, before its activation.")

    def data_problems(self, data: DataSpec) -> list[str]:
        kind = data.input_kind
        if kind in ("text", "sequence"):
            return [f"model.arch: mlp cannot read data.{kind} (variable-length input); use arch rnn or transformer"]
        return []


class CNNSpec(ArchSpec):
    arch: Literal["cnn"] = Field("cnn", description="Architecture tag: cnn, a convolutional network on image data (data.image).")
    channels: list[Annotated[int, Field(gt=0, le=8192)]] = Field(
        [32, 64],
        max_length=32,
        description="Output channels of each 3x3 conv block (conv, batch norm, ReLU, 2x2 max-pool when the map allows).",
    )
    hidden: int = Field(128, gt=0, le=65_536, description="Width of the dense layer before the output layer, in units (neurons).")

    def data_problems(self, data: DataSpec) -> list[str]:
        return ["model.arch: cnn needs image data: set data.image"] if data.input_kind != "image" else []


def sequence_input_problems(arch: str, data: DataSpec) -> list[str]:
    if data.input_kind not in SEQUENCE_KINDS:
        return [f"model.arch: {arch} needs text, sequence or series input: set data.text, data.sequence or data.series"]
    return []


class RNNSpec(ArchSpec):
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

    def data_problems(self, data: DataSpec) -> list[str]:
        return sequence_input_problems("rnn", data)


class TransformerSpec(ArchSpec):
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

    def data_problems(self, data: DataSpec) -> list[str]:
        problems = sequence_input_problems("transformer", data)
        longest = {
            "text": data.text.max_length if data.text else None,
            "series": data.series.window if data.series else None,
            "sequence": data.sequence.max_length if data.sequence else None,
        }.get(data.input_kind)
        field = {"text": "data.text.max_length", "series": "data.series.window", "sequence": "data.sequence.max_length"}.get(
            data.input_kind
        )
        if self.max_length is not None and longest is not None and self.max_length < longest:
            problems.append(
                f"model.max_length: {self.max_length} is less than {field} ({longest}); the transformer must accept the longest input"
            )
        return problems


class CustomModelSpec(ArchSpec):
    arch: Literal["custom"] = Field("custom", description="Architecture tag: custom, a model built by your `factory`.")
    factory: str = Field(
        pattern=IMPORT_PATH_RE,
        description="`module:function` returning an nn.Module. Called as "
        "function(input_shape=..., num_outputs=..., dropout=..., **kwargs), plus vocab_size= and max_length= for "
        "text/sequence/series input when the function takes them (or **kwargs). Its forward gets (x) for table and "
        "image input, (x, lengths) for text, sequence and series input.",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the factory.")


# Every section `model.arch` can name, by tag. An extension adds one with spec.register_architecture.
ARCHITECTURES: dict[str, type[ArchSpec]] = {
    "mlp": MLPSpec,
    "cnn": CNNSpec,
    "rnn": RNNSpec,
    "transformer": TransformerSpec,
    "custom": CustomModelSpec,
}


def model_union() -> Any:
    """The type of JobSpec.model: one of ARCHITECTURES' sections, chosen by `arch`."""
    return Annotated[Union[tuple(ARCHITECTURES.values())], Field(discriminator="arch")]


ModelSpec = model_union()
