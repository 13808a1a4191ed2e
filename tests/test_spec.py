"""Job spec validation: the examples pass, mistakes fail with field paths (no Ray)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import SpecError
from orchestrator.spec import JobSpec, json_schema, load_spec, parse_spec, resolve_source
from tests.conftest import JOBS, run_cli

JOB_FILES = sorted(JOBS.glob("*.yaml"))


def test_there_are_example_jobs():
    names = {p.name for p in JOB_FILES}
    assert {"digits-cnn.yaml", "breast-cancer-mlp.yaml"} <= names


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_example_jobs_validate(path: Path):
    spec = load_spec(path)
    assert isinstance(spec, JobSpec)
    assert spec.base_dir == path.parent.resolve()


def test_validate_cli_passes_on_every_job():
    r = run_cli("validate", *map(str, JOB_FILES))
    assert r.returncode == 0, r.stderr
    for p in JOB_FILES:
        assert str(p) in r.stdout


BASE = yaml.safe_load((JOBS / "digits-cnn.yaml").read_text())


def _with(path: str, value):
    """Copy of BASE with `a.b.c` set to value (value DELETE removes the key)."""
    d = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(last)
    else:
        node[last] = value
    return d


DELETE = object()

# (what is wrong, mutated spec, field path expected in the error, words expected in the reason)
MISTAKES = [
    ("unknown top-level field", _with("trian", {"epochs": 3}), "trian", "unknown field"),
    ("typo in a nested field", _with("train.epoch", 3), "train.epoch", "unknown field"),
    ("missing required field", _with("data.label", DELETE), "data.label", "missing"),
    ("wrong type", _with("train.epochs", "ten"), "train.epochs", "integer"),
    ("negative learning rate", _with("train.lr", -0.1), "train.lr", "greater than 0"),
    ("dropout out of range", _with("train.dropout", 1.5), "train.dropout", "less than 1"),
    ("splits do not add up", _with("data.split", {"train": 0.8, "validation": 0.3, "test": 0.1}), "data.split", "add up to 1"),
    ("unknown optimizer", _with("train.optimizer", "adagradd"), "train.optimizer", "adamw"),
    ("unknown model arch", _with("model", {"arch": "transformer"}), "model", "'mlp', 'cnn', 'custom'"),
    ("bad job name", _with("name", "Digits CNN!"), "name", "pattern"),
    ("zero workers", _with("scaling.workers", 0), "scaling.workers", "greater than 0"),
    ("bad cpus_per_worker", _with("scaling.cpus_per_worker", -2), "scaling.cpus_per_worker", "auto"),
    ("image shape not 3-d", _with("data.image.shape", [8, 8]), "data.image.shape", "channels, height, width"),
    ("unknown format", _with("data.source", "digits.txt"), "data", "parquet or csv"),
    ("cnn without image data", _with("data.image", DELETE), "(top level)", "needs image data"),
    ("unknown checkpoint metric", _with("checkpoint.metric", "val_f1"), "checkpoint.metric", "val_loss"),
    ("bad custom factory path", _with("model", {"arch": "custom", "factory": "not a path"}), "model.factory", "pattern"),
    ("early stopping without patience", _with("train.early_stopping", {"min_delta": 0.1}), "train.early_stopping.patience", "missing"),
    ("serve port out of range", _with("serve", {"port": 70000}), "serve.port", "less than 65536"),
    ("bad cnn channel", _with("model.channels", [32, -1]), "model.channels[1]", "greater than 0"),
]


@pytest.mark.parametrize("what,data,field,reason", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_name_their_field(what, data, field, reason):
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="bad.yaml")
    problems = info.value.problems
    assert any(p.startswith(f"{field}:") and reason in p for p in problems), problems


def test_every_problem_is_reported_at_once():
    d = _with("train.lr", -1)
    d["train"]["epochs"] = 0
    d["bogus"] = 1
    with pytest.raises(SpecError) as info:
        parse_spec(d)
    fields = {p.split(":")[0] for p in info.value.problems}
    assert {"train.lr", "train.epochs", "bogus"} <= fields


def test_validate_cli_exits_2_with_field_paths_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with("train.epoch", 3) | {"scaling": {"workers": -1}}))
    good = JOBS / "digits-cnn.yaml"
    r = run_cli("validate", str(good), str(bad))
    assert r.returncode == 2
    assert "train.epoch: unknown field" in r.stderr
    assert "scaling.workers:" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "✓" in r.stdout  # the good file is still reported as valid


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert "line" in info.value.problems[0] and str(p) == info.value.source


def test_missing_spec_file(tmp_path):
    r = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "file not found" in r.stderr


def test_non_mapping_spec(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert "expected a mapping" in info.value.problems[0]


def test_schema_command_prints_json_schema_that_accepts_the_examples():
    import jsonschema

    r = run_cli("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema == json_schema()
    for p in JOB_FILES:
        jsonschema.validate(yaml.safe_load(p.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_with("train.epoch", 3), schema)


def test_relative_source_resolves_against_spec_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "job.yaml"
    p.write_text(yaml.safe_dump(BASE))
    spec = load_spec(p)
    assert resolve_source(spec) == str((tmp_path / "sub" / "data" / "digits.parquet").resolve())
    uri = parse_spec(_with("data.source", "s3://bucket/digits.parquet"))
    assert resolve_source(uri) == "s3://bucket/digits.parquet"


TUNE_MISTAKES = [
    ("value outside the field's bounds", {"space": {"train.lr": {"loguniform": [0.001, 100]}}}, "tune.space.train.lr", "less than or equal to 10"),
    ("field that does not exist", {"space": {"train.learning_rate": {"uniform": [0.1, 0.2]}}}, "tune.space.train.learning_rate", "unknown field"),
    ("field of another architecture", {"space": {"model.activation": {"choice": ["gelu"]}}}, "tune.space.model.activation", "unknown field"),
    ("two distributions", {"space": {"train.lr": {"uniform": [0.1, 0.2], "choice": [0.1]}}}, "tune.space.train.lr", "exactly one"),
    ("reversed bounds", {"space": {"train.dropout": {"uniform": [0.5, 0.1]}}}, "tune.space.train.dropout", "must be below"),
    ("grid with optuna", {"space": {"train.lr": {"grid": [0.1, 0.2]}}}, "tune", "need search: random"),
    ("search over the data split", {"space": {"data.seed": {"choice": [1, 2]}}}, "tune.space", "cannot be searched"),
    ("unknown scheduler", {"space": {"train.lr": {"uniform": [0.1, 0.2]}}, "scheduler": {"type": "hyperband"}}, "tune.scheduler", "asha"),
]


@pytest.mark.parametrize("what,tune,field,reason", TUNE_MISTAKES, ids=[m[0] for m in TUNE_MISTAKES])
def test_search_space_mistakes_name_their_dimension(what, tune, field, reason):
    d = copy.deepcopy(BASE)
    d["tune"] = tune
    with pytest.raises(SpecError) as info:
        parse_spec(d)
    assert any(p.startswith(field) and reason in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("rule", ["accuracy >= 1.5x", "f1 > 0.5", "accuracy => 0.9"])
def test_bad_promote_rule(rule):
    with pytest.raises(SpecError) as info:
        parse_spec(_with("promote", rule))
    assert info.value.problems[0].startswith("promote:")


def test_promote_metric_must_fit_the_task():
    with pytest.raises(SpecError, match="rmse needs a regression task"):
        parse_spec(_with("data.task", "classification") | {"promote": "rmse < 3"})
