"""The spec's `tune` section: the search space, the search and its scheduler."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, StrictFloat, StrictInt, field_validator, model_validator

from orchestrator.spec.base import SpecModel
from orchestrator.spec.metrics import ValMetric

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")


class Param(SpecModel):
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


class AshaSpec(SpecModel):
    type: Literal["asha"] = Field("asha", description="Scheduler tag: asha, which stops poorly scoring trials early.")
    grace_period: int = Field(1, gt=0, le=10_000, description="Epochs every trial runs before it can be stopped.")
    reduction_factor: float = Field(
        2, gt=1, le=100, description="Ratio (> 1) between rungs: only 1/reduction_factor of the trials go on at each rung."
    )
    max_epochs: Optional[int] = Field(
        None, gt=0, le=10_000, description="Epochs the longest trial runs (ASHA's max_t); defaults to train.epochs."
    )


class NoScheduler(SpecModel):
    type: Literal["none"] = Field("none", description="Scheduler tag: none, every trial runs all its epochs.")


class TuneSpec(SpecModel):
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
