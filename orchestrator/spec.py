"""The job spec: one YAML document that describes data, model, training and scaling.

Pure module: it imports neither Ray nor torch, so validating a spec is fast and safe anywhere.
Every model forbids unknown keys, so a typo is an error that names its field path.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.errors import SpecError

NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$"
IMPORT_PATH_RE = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------- data


class Split(_Model):
    """Fractions of rows that go to each split. They must add up to 1."""

    train: float = Field(0.7, gt=0, lt=1, description="Fraction of rows used for training.")
    validation: float = Field(0.15, gt=0, lt=1, description="Fraction used for validation (per-epoch metrics, checkpoint score).")
    test: float = Field(0.15, gt=0, lt=1, description="Held-out fraction, evaluated once at the end.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "Split":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must add up to 1, got {total:g}")
        return self


class ImageSpec(_Model):
    """An image stored as a flat numeric array in one column."""

    column: str = Field(description="Column that holds each image as a list of numbers.")
    shape: list[Annotated[int, Field(gt=0)]] = Field(
        description="Shape of one image as [channels, height, width]; the column holds prod(shape) values."
    )

    @field_validator("shape")
    @classmethod
    def _three_dims(cls, v: list[int]) -> list[int]:
        if len(v) != 3:
            raise ValueError("shape must be [channels, height, width]")
        return v


class DataSpec(_Model):
    source: str = Field(
        description="Parquet/CSV file or directory: a local path (relative paths resolve against the spec "
        "file's folder) or any URI pyarrow understands (s3://, gs://, file://, ...)."
    )
    format: Optional[Literal["parquet", "csv"]] = Field(
        None, description="File format; inferred from the source's extension when omitted."
    )
    prepare: Optional[Literal["sklearn:digits", "sklearn:breast_cancer", "sklearn:wine", "sklearn:diabetes"]] = Field(
        None,
        description="Built-in prepare step: writes this bundled scikit-learn dataset to `source` "
        "as Parquet if the file does not exist yet.",
    )
    label: str = Field(description="Column to predict.")
    task: Optional[Literal["classification", "regression"]] = Field(
        None, description="Inferred from the label column's type when omitted (float -> regression)."
    )
    features: Optional[list[str]] = Field(
        None, description="Numeric and categorical feature columns (tabular data). Omit to use every other column."
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="Feature columns to one-hot encode (string columns are treated as categorical automatically).",
    )
    image: Optional[ImageSpec] = Field(None, description="Image input instead of tabular features.")
    split: Split = Field(default_factory=Split)
    seed: int = Field(0, ge=0, description="Seed of the deterministic train/validation/test split.")
    cache: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="memory: preprocess once into Ray's object store before training (fast epochs); "
        "stream: re-read and transform the source every epoch (bounded memory); auto: memory when the "
        "source is at most 1 GiB on disk, else stream.",
    )

    @model_validator(mode="after")
    def _features_or_image(self) -> "DataSpec":
        if self.image is not None and self.features:
            raise ValueError("give either `features` (tabular) or `image`, not both")
        if self.image is not None and self.categorical:
            raise ValueError("`categorical` applies to tabular features, not to `image`")
        if self.features and self.label in self.features:
            raise ValueError(f"label column {self.label!r} is also listed in features")
        if self.features is not None and not self.features:
            raise ValueError("features must name at least one column (or be omitted)")
        unknown = sorted(set(self.categorical) - set(self.features or self.categorical))
        if unknown:
            raise ValueError(f"categorical columns {unknown} are not in features")
        if self.format is None:
            suffix = self.source.rstrip("/").rsplit(".", 1)[-1].lower()
            if suffix in ("parquet", "pq"):
                self.format = "parquet"
            elif suffix in ("csv",):
                self.format = "csv"
            else:
                raise ValueError(
                    f"cannot infer the format of {self.source!r} from its extension; set data.format to parquet or csv"
                )
        return self


# -------------------------------------------------------------------------------------- model


class MLPSpec(_Model):
    arch: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0)]] = Field([128, 64], description="Width of each hidden layer.")
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    batch_norm: bool = False


class CNNSpec(_Model):
    arch: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(gt=0)]] = Field(
        [32, 64], description="Output channels of each 3x3 conv block (conv, batch norm, ReLU, 2x2 max-pool when the map allows)."
    )
    hidden: int = Field(128, gt=0, description="Width of the dense layer before the output layer.")


class CustomModelSpec(_Model):
    arch: Literal["custom"] = "custom"
    factory: str = Field(
        pattern=IMPORT_PATH_RE,
        description="`module:function` returning an nn.Module. Called as "
        "function(input_shape=..., num_outputs=..., dropout=..., **kwargs).",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the factory.")


ModelSpec = Annotated[Union[MLPSpec, CNNSpec, CustomModelSpec], Field(discriminator="arch")]


# -------------------------------------------------------------------------------------- train


class EarlyStopping(_Model):
    patience: int = Field(gt=0, description="Epochs without improvement of the checkpoint metric before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


class TrainSpec(_Model):
    epochs: int = Field(10, gt=0, le=10_000)
    batch_size: int = Field(64, gt=0, le=1_000_000, description="Per-worker batch size.")
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum (sgd only).")
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "constant"
    step_size: int = Field(10, gt=0, description="Epochs between lr decays (schedule: step).")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor (schedule: step).")
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up epochs (constant and cosine schedules).")
    weight_decay: float = Field(0.0, ge=0, le=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Classification only.")
    grad_clip: Optional[float] = Field(None, gt=0, description="Max global gradient norm; none to disable.")
    early_stopping: Optional[EarlyStopping] = None
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="GPU only. auto: bf16 where the GPU supports it, else fp16; always off on CPU."
    )
    max_failures: int = Field(3, ge=0, description="Worker-group restarts allowed; each resumes from the latest checkpoint.")
    seed: int = Field(0, ge=0, description="Seed for weight initialisation and shuffling.")

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainSpec":
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self


class ScalingSpec(_Model):
    workers: int = Field(2, gt=0, le=4096, description="Data-parallel (DDP) workers.")
    cpus_per_worker: Union[float, Literal["auto"]] = Field(
        "auto",
        description="CPUs reserved per worker. auto: share the cluster's CPUs, leaving room for Ray Data.",
    )
    gpus_per_worker: float = Field(0, ge=0, le=64, description="GPUs per worker; > 0 trains on GPU.")

    @field_validator("cpus_per_worker")
    @classmethod
    def _positive(cls, v: Union[float, str]) -> Union[float, str]:
        if v != "auto" and not (0 < float(v) <= 1024):
            raise ValueError("must be 'auto' or a number in (0, 1024]")
        return v

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


METRIC_MODES = {
    "val_loss": "min",
    "val_accuracy": "max",
    "val_rmse": "min",
    "val_mae": "min",
}


class CheckpointSpec(_Model):
    keep: int = Field(2, gt=0, description="Checkpoints kept (best by `metric`; the latest is always kept too).")
    metric: Literal["val_loss", "val_accuracy", "val_rmse", "val_mae"] = Field(
        "val_loss", description="Validation metric that ranks checkpoints and picks the best one."
    )

    @property
    def mode(self) -> str:
        return METRIC_MODES[self.metric]


class OutputSpec(_Model):
    dir: str = Field("runs", description="Folder under which each run gets its own directory (relative to the working directory).")


# --------------------------------------------------------------------------------------- tune

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")


class Param(_Model):
    """One search dimension: exactly one of the distribution keys."""

    loguniform: Optional[tuple[float, float]] = Field(None, description="[low, high], both > 0; sampled on a log scale.")
    uniform: Optional[tuple[float, float]] = Field(None, description="[low, high].")
    randint: Optional[tuple[int, int]] = Field(None, description="[low, high], both inclusive.")
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
        """Values that stand for this dimension when checking it against the spec."""
        v = self.values
        return list(v) if self.kind in ("choice", "grid", "loguniform", "uniform", "randint") else [v]


class AshaSpec(_Model):
    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, gt=0, description="Epochs every trial runs before it can be stopped.")
    reduction_factor: float = Field(2, gt=1, description="Only 1/reduction_factor of trials go on at each rung.")
    max_epochs: Optional[int] = Field(None, gt=0, description="Longest a trial runs; defaults to train.epochs.")


class NoScheduler(_Model):
    type: Literal["none"] = "none"


class TuneSpec(_Model):
    space: dict[str, Param] = Field(
        description="Search space: dotted spec paths (train.lr, train.weight_decay, train.dropout, "
        "train.label_smoothing, train.early_stopping.patience, model.hidden, ...) -> distribution.",
        min_length=1,
    )
    metric: Optional[Literal["val_loss", "val_accuracy", "val_rmse", "val_mae"]] = Field(
        None, description="Validation metric to optimise; defaults to checkpoint.metric."
    )
    num_samples: int = Field(8, gt=0, le=10_000, description="Trials to run (each grid point counts once per sample).")
    search: Literal["optuna", "random"] = Field("optuna", description="optuna: TPE; random: random and grid search.")
    scheduler: Annotated[Union[AshaSpec, NoScheduler], Field(discriminator="type")] = Field(default_factory=AshaSpec)
    max_concurrent: Union[int, Literal["auto"]] = Field(
        "auto", description="Trials at once; auto derives it from the cluster's CPUs/GPUs and scaling.workers."
    )
    time_budget_s: Optional[float] = Field(None, gt=0, description="Wall-clock budget; no new trials start after it.")
    seed: int = Field(0, ge=0, description="Seed of the search algorithm.")
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
        if isinstance(self.max_concurrent, int) and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1 or 'auto'")
        grids = [k for k, p in self.space.items() if p.kind == "grid"]
        if grids and self.search != "random":
            raise ValueError(f"grid dimensions ({', '.join(grids)}) need search: random")
        return self


PROMOTE_RE = re.compile(r"^\s*(test_)?(accuracy|loss|rmse|mae)\s*(>=|<=|>|<)\s*([-+]?\d*\.?\d+(e[-+]?\d+)?)\s*$")


def parse_promote(rule: str) -> tuple[str, str, float]:
    m = PROMOTE_RE.match(rule)
    if not m:
        raise ValueError("expected '<metric> <op> <number>' with metric accuracy, loss, rmse or mae and op >=, >, <= or <, e.g. 'accuracy >= 0.95'")
    return f"test_{m.group(2)}", m.group(3), float(m.group(4))


# -------------------------------------------------------------------------------------- serve


class Autoscaling(_Model):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, gt=0)
    target_ongoing_requests: float = Field(8, gt=0, description="Per-replica load the autoscaler aims for.")

    @model_validator(mode="after")
    def _ordered(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})")
        return self


class ServeSpec(_Model):
    """How the promoted model is served over HTTP by Ray Serve."""

    host: str = Field("127.0.0.1", description="Bind address. Loopback by default; 0.0.0.0 exposes the server to the network.")
    port: int = Field(8000, gt=0, lt=65536)
    route_prefix: str = Field("/", pattern=r"^/[\w\-/]*$")
    max_batch_size: int = Field(32, gt=0, le=4096, description="Dynamic batching: most requests per forward pass.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10, description="Dynamic batching: longest wait to fill a batch.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    max_ongoing_requests: int = Field(64, gt=0, description="Requests one replica works on at once.")
    max_queued_requests: int = Field(256, ge=-1, description="Requests queued beyond that before answering 503; -1 is unbounded.")
    cpus_per_replica: float = Field(0.5, gt=0)
    gpus_per_replica: float = Field(0, ge=0)
    max_body_bytes: int = Field(1 << 20, gt=0, description="Larger request bodies get HTTP 413.")
    auth_token_env: Optional[str] = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of an environment variable holding a bearer token; when set, every endpoint but "
        "/healthz needs 'Authorization: Bearer <token>'. The token itself never goes in the spec.",
    )


# --------------------------------------------------------------------------------------- spec


class JobSpec(_Model):
    name: str = Field(pattern=NAME_RE, description="Job name: lower-case letters, digits and '-', at most 52 characters.")
    data: DataSpec
    model: ModelSpec = Field(default_factory=MLPSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    tune: Optional[TuneSpec] = Field(None, description="Hyperparameter and regularisation search; omit to train once.")
    promote: Optional[str] = Field(
        None, description="Promotion gate on the held-out test split, e.g. 'accuracy >= 0.95' or 'rmse < 40'."
    )
    serve: Optional[ServeSpec] = Field(None, description="Serve the promoted model after `orchestrator run`.")

    @field_validator("promote")
    @classmethod
    def _promote_rule(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            parse_promote(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "JobSpec":
        if isinstance(self.model, CNNSpec) and self.data.image is None:
            raise ValueError("model.arch cnn needs image data: set data.image")
        task = self.data.task
        if task == "regression":
            if self.checkpoint.metric == "val_accuracy":
                raise ValueError("checkpoint.metric val_accuracy needs a classification task")
            if self.train.label_smoothing:
                raise ValueError("train.label_smoothing applies to classification only")
        if task == "classification" and self.checkpoint.metric in ("val_rmse", "val_mae"):
            raise ValueError(f"checkpoint.metric {self.checkpoint.metric} needs a regression task")
        if self.promote:
            metric = parse_promote(self.promote)[0]
            if task == "regression" and metric == "test_accuracy":
                raise ValueError("promote: accuracy needs a classification task")
            if task == "classification" and metric in ("test_rmse", "test_mae"):
                raise ValueError(f"promote: {metric[5:]} needs a regression task")
        return self

    @property
    def tune_metric(self) -> str:
        return (self.tune.metric if self.tune and self.tune.metric else None) or self.checkpoint.metric

    # Where the spec came from; relative data paths resolve against it. Not part of the schema.
    _base_dir: Path = Path(".")

    @property
    def base_dir(self) -> Path:
        return self._base_dir


# ------------------------------------------------------------------------------------ loading


def _loc(loc: tuple) -> str:
    """('model', 'cnn', 'channels', 0) -> 'model.channels[0]' (the union tag is not a field)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and loc[i - 1] == "model" and part in ("mlp", "cnn", "custom") and len(loc) > i + 1:
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors(include_url=False):
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
        lines.append(f"{_loc(tuple(e['loc']))}: {msg}")
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
                JobSpec.model_validate(apply_overrides(base, {key: value}))
            except ValidationError as err:
                for line in format_validation_error(err):
                    problems.append(f"tune.space.{key}: value {value!r} gives an invalid spec: {line}")
                break
    return problems


def parse_spec(data: Any, *, source: str = "<spec>", base_dir: Optional[Path] = None) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(source, [f"(top level): expected a mapping of fields, got {type(data).__name__}"])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, format_validation_error(err)) from None
    problems = check_search_space(spec)
    if problems:
        raise SpecError(source, problems)
    spec._base_dir = (base_dir or Path(".")).resolve()
    return spec


def load_spec(path: str | Path) -> JobSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError(str(path), [f"cannot read: {e.__class__.__name__}: {e}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(str(path), [f"(yaml) {where}{problem}"]) from None
    return parse_spec(data, source=str(path), base_dir=path.parent)


def spec_to_dict(spec: JobSpec) -> dict:
    return spec.model_dump(mode="json")


def json_schema() -> dict:
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orchestrator job spec"
    return schema


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
