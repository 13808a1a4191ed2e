"""The whole job spec, one section per field."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo

from orchestrator.spec.base import NAME_RE, SpecModel
from orchestrator.spec.data import INPUT_SECTIONS, DataSpec, is_uri
from orchestrator.spec.metrics import parse_promote
from orchestrator.spec.model import ARCHITECTURES, ArchSpec, MLPSpec, ModelSpec, model_union
from orchestrator.spec.serve import ServeSpec
from orchestrator.spec.train import CheckpointSpec, OutputSpec, ScalingSpec, TrainSpec
from orchestrator.spec.tune import TuneSpec


class JobSpec(SpecModel):
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


def resolve_source(spec: JobSpec) -> str:
    """Absolute local path or URI of the dataset."""
    src = spec.data.source
    if is_uri(src):
        return src
    p = Path(src).expanduser()
    if not p.is_absolute():
        p = spec.base_dir / p
    return str(p.resolve())


# ---------------------------------------------------------------- the lists extensions add to


def _rebuild() -> None:
    """Validation and the JSON Schema follow the registries: rebuild what embeds them."""
    JobSpec.model_fields["model"] = FieldInfo.from_annotated_attribute(
        model_union(),  # type: ignore[arg-type]  # an Annotated union, as a field's annotation may be
        Field(default_factory=MLPSpec, description=JobSpec.model_fields["model"].description),
    )
    DataSpec.model_rebuild(force=True)
    JobSpec.model_rebuild(force=True)


def register_architecture(section: type[ArchSpec]) -> None:
    """Add a model section to `model`'s union; its `arch` field's Literal value is the tag."""
    tag = section.model_fields["arch"].default if "arch" in section.model_fields else None
    if not isinstance(tag, str) or not issubclass(section, ArchSpec):
        raise TypeError(f"{section.__name__}: a model section subclasses spec.ArchSpec and declares arch: Literal['<name>'] = '<name>'")
    if ARCHITECTURES.get(tag) is section:
        return
    if tag in ARCHITECTURES:
        raise ValueError(f"model arch {tag!r} has a section already ({ARCHITECTURES[tag].__name__})")
    ARCHITECTURES[tag] = section
    _rebuild()


def unregister_architecture(tag: str) -> None:
    if ARCHITECTURES.pop(tag, None) is not None:
        _rebuild()


def register_input_section(name: str, section: type[SpecModel], description: str) -> None:
    """Add `data.<name>`, an input kind's section (it names its column in a `column` field)."""
    if INPUT_SECTIONS.get(name) is section:
        return
    if name in DataSpec.model_fields:
        raise ValueError(f"data.{name} exists already")
    if "column" not in section.model_fields:
        raise TypeError(f"{section.__name__}: an input kind's section names its column in a `column` field")
    INPUT_SECTIONS[name] = section
    DataSpec.model_fields[name] = FieldInfo.from_annotated_attribute(
        Optional[section],  # type: ignore[arg-type]  # an Optional of the section, as a field's annotation may be
        Field(None, description=description),
    )
    _rebuild()


def unregister_input_section(name: str) -> None:
    if INPUT_SECTIONS.pop(name, None) is not None:
        del DataSpec.model_fields[name]
        _rebuild()
