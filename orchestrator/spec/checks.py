"""Checks across sections, each problem led by the field path to change."""

from __future__ import annotations

import copy
import reprlib
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import one_line
from orchestrator.spec.data import PREPARED_TASKS
from orchestrator.spec.errors import format_validation_error
from orchestrator.spec.job import JobSpec
from orchestrator.spec.metrics import METRICS, TEST_PREFIX, VAL_PREFIX, parse_promote
from orchestrator.spec.tune import AshaSpec

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
    problems += spec.model.data_problems(d)
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
            problems += [one_line(f"tune.space.{key}: value {reprlib.repr(value)} gives an invalid spec: {line}") for line in lines]
            if lines:
                break
    return problems
