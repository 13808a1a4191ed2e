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
    assert {
        "digits-cnn.yaml",
        "breast-cancer-mlp.yaml",
        "text-transformer.yaml",
        "text-lstm.yaml",
        "series-lstm.yaml",
        "digits-png-cnn.yaml",
    } <= names


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
    ("unknown model arch", _with("model", {"arch": "resnet"}), "model", "'mlp', 'cnn', 'rnn', 'transformer', 'custom'"),
    ("bad job name", _with("name", "Digits CNN!"), "name", "pattern"),
    ("zero workers", _with("scaling.workers", 0), "scaling.workers", "greater than 0"),
    ("bad cpus_per_worker", _with("scaling.cpus_per_worker", -2), "scaling.cpus_per_worker", "auto"),
    ("image shape not 3-d", _with("data.image.shape", [8, 8]), "data.image.shape", "channels, height, width"),
    ("unknown format", _with("data.source", "digits.txt"), "data", "parquet or csv"),
    ("cnn without image data", _with("data.image", DELETE), "model.arch", "needs image data"),
    ("unknown checkpoint metric", _with("checkpoint.metric", "val_auc"), "checkpoint.metric", "val_loss"),
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
    (
        "value outside the field's bounds",
        {"space": {"train.lr": {"loguniform": [0.001, 100]}}},
        "tune.space.train.lr",
        "less than or equal to 10",
    ),
    (
        "field that does not exist",
        {"space": {"train.learning_rate": {"uniform": [0.1, 0.2]}}},
        "tune.space.train.learning_rate",
        "unknown field",
    ),
    (
        "field of another architecture",
        {"space": {"model.activation": {"choice": ["gelu"]}}},
        "tune.space.model.activation",
        "unknown field",
    ),
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


@pytest.mark.parametrize("rule", ["accuracy >= 1.5x", "auc > 0.5", "accuracy => 0.9"])
def test_bad_promote_rule(rule):
    with pytest.raises(SpecError) as info:
        parse_spec(_with("promote", rule))
    assert info.value.problems[0].startswith("promote:")


def test_the_metrics_people_gate_on_are_accepted_for_a_classification_only():
    spec = parse_spec(_with("checkpoint.metric", "val_roc_auc") | {"promote": "f1 >= 0.9"})
    assert (spec.checkpoint.metric, spec.checkpoint.mode, spec.promote) == ("val_roc_auc", "max", "f1 >= 0.9")
    for rule, words in (("recall >= 1.2", "recall is a fraction between 0 and 1"), ("precision > 1", "can never pass")):
        with pytest.raises(SpecError, match=words):
            parse_spec(_with("promote", rule))
    with pytest.raises(SpecError, match="checkpoint.metric: f1 needs a classification task"):
        parse_spec(_with("data.task", "regression") | {"checkpoint": {"metric": "val_f1"}})


def test_promote_metric_must_fit_the_task():
    with pytest.raises(SpecError, match="rmse needs a regression task"):
        parse_spec(_with("data.task", "classification") | {"promote": "rmse < 3"})


# ------------------------------------------------------------ files that can never be a spec

ALL_SPEC_FILES = sorted([*JOB_FILES, *JOBS.parent.glob("bench/specs/*.yaml"), *JOBS.parent.glob("tests/k8s_specs/*.yaml")])


@pytest.mark.parametrize("path", ALL_SPEC_FILES, ids=lambda p: p.name)
def test_every_spec_in_the_repository_validates(path: Path):
    load_spec(path)


def test_validate_cli_deeply_nested_yaml_is_one_line_not_a_traceback(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("a: " + "[" * 10_000 + "]" * 10_000 + "\n")
    r = run_cli("validate", str(p))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout and "RecursionError" not in r.stderr
    assert "(yaml) line 1, column 35: nested deeper than 32 levels" in r.stderr
    assert len(r.stderr.splitlines()) == 2 and len(r.stderr) < 1000, r.stderr


def test_validate_cli_duplicate_key_names_the_path_and_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text((JOBS / "digits-cnn.yaml").read_text().replace("  epochs: 10\n", "  epochs: 10\n  epochs: 20\n"))
    r = run_cli("validate", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "train.epochs: duplicate key (line 19; first given on line 18)" in r.stderr, r.stderr


def test_a_duplicate_section_is_refused_too(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text((JOBS / "breast-cancer-mlp.yaml").read_text() + "train:\n  epochs: 3\n")
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert info.value.problems[0].startswith("train: duplicate key (line")


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    p = tmp_path / "merge.yaml"
    p.write_text((JOBS / "breast-cancer-mlp.yaml").read_text() + "serve: &s {port: 8100}\noutput: {dir: runs, <<: {}}\n")
    assert load_spec(p).serve.port == 8100


JUNK = {
    "binary.yaml": bytes(range(256)) * 4,
    "empty.yaml": b"",
    "list.yaml": b"- a\n- b\n",
    "scalar.yaml": b"42\n",
    "nul.yaml": b"name: a\x00b\n",
    "huge.yaml": b"# " + b"x" * (2 << 20) + b"\n",
    "two-docs.yaml": b"a: 1\n---\nb: 2\n",
    "alias-bomb.yaml": b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    + b"".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n".encode() for p, c in zip("abcdef", "bcdefg")),
    "alias-cycle.yaml": b"a: &a [*a]\n",
    "tab.yaml": b"name: x\n\tdata: 1\n",
}


def test_validate_cli_refuses_any_file_content_with_one_line_each(tmp_path):
    paths = []
    for name, content in JUNK.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(content)
    r = run_cli("validate", *map(str, paths), str(tmp_path))  # the folder itself too
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 2 * (len(paths) + 1), r.stderr  # a header and one reason per file
    for header, reason in zip(lines[::2], lines[1::2]):
        assert header.startswith("✗ ") and header.endswith(": invalid job spec")
        assert reason.startswith(("    (file): ", "    (yaml) ", "    (top level): ")), reason
    assert "more than 100000 values once aliases are expanded" in r.stderr
    assert "larger than 1024 KiB" in r.stderr


@pytest.mark.parametrize("command", ["train", "run"])
def test_train_and_run_refuse_a_malformed_spec_before_starting_anything(tmp_path, command):
    p = tmp_path / "deep.yaml"
    p.write_text("name: [" + "[" * 5000 + "\n")
    r = run_cli(command, str(p), "-o", str(tmp_path / "runs"))
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert "nested deeper than 32 levels" in r.stderr
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------- specs that can never work


def spec_dict_tabular(**data):
    d = yaml.safe_load((JOBS / "breast-cancer-mlp.yaml").read_text())
    d["data"].update(data)
    return d


def _problems(data) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.exit_code == 2
    return info.value.problems


def _has(problems: list[str], field: str, *words: str) -> bool:
    return any(p.startswith(f"{field}:") and all(w in p for w in words) for p in problems)


@pytest.mark.parametrize(
    "path", ["train.epochs", "train.lr", "scaling.workers", "train.grad_clip", "data.image.shape", "tune.num_samples", "serve.port"]
)
def test_booleans_are_not_numbers(path):
    value = [True, 8, 8] if path == "data.image.shape" else True
    problems = _problems(_with(path, value))
    assert _has(problems, path + ("[0]" if path == "data.image.shape" else ""), "got true"), problems


@pytest.mark.parametrize(
    "path,value,words",
    [
        ("train.grad_clip", float("inf"), "finite"),
        ("train.lr", float("nan"), "finite"),
        ("tune.scheduler.reduction_factor", float("inf"), "finite"),
        ("data.image.shape", [10**6, 10**6, 10**6], "less than or equal to 65536"),
        ("data.image.shape", [64, 8192, 8192], "at most 67,108,864"),
        ("data.seed", 10**30, "less than or equal to 4294967295"),
        ("train.seed", 1e30, "valid integer"),
        ("train.epochs", 10.0, "valid integer"),
        ("model.channels", [32] * 33, "at most 32 items"),
        ("tune.max_concurrent", 0, "greater than or equal to 1 or 'auto'"),
    ],
)
def test_infinite_and_absurd_numbers(path, value, words):
    problems = _problems(_with(path, value))
    field = "data.image.shape[0]" if value == [10**6] * 3 else path
    assert _has(problems, field, words), problems


def test_yaml_numbers_are_read_as_people_write_them(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text((JOBS / "breast-cancer-mlp.yaml").read_text().replace("lr: 0.001", "lr: 1e-3").replace("seed: 0", "seed: 1e30"))
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert info.value.problems == ["data.seed: Input should be a valid integer, got 1e+30"]
    p.write_text(p.read_text().replace("seed: 1e30", "seed: 7"))
    spec = load_spec(p)
    assert spec.train.lr == 1e-3 and spec.data.seed == 7


@pytest.mark.parametrize(
    "rule,words",
    [
        ("accuracy >= 2", "between 0 and 1"),
        ("accuracy > 1", "can never pass"),
        ("accuracy < 0", "can never pass"),
        ("test_accuracy >= -0.5", "between 0 and 1"),
        ("loss < -1", "never negative"),
        ("loss < 0", "can never pass"),
        ("accuracy >= 1e999", "not a finite number"),
    ],
)
def test_promotion_gates_that_can_never_pass(rule, words):
    assert _has(_problems(_with("promote", rule)), "promote", words)


@pytest.mark.parametrize("rule", ["accuracy >= 1", "accuracy >= 0", "accuracy <= 0.5", "loss <= 0", "loss < 0.1"])
def test_promotion_gates_at_the_edges_are_fine(rule):
    assert parse_spec(_with("promote", rule)).promote == rule


def test_regression_gates_on_a_regression_dataset():
    d = spec_dict_tabular(prepare="sklearn:diabetes", label="target") | {"promote": "rmse < 40", "checkpoint": {"metric": "val_mae"}}
    assert parse_spec(d).promote == "rmse < 40"


@pytest.mark.parametrize(
    "path,value,field",
    [
        ("checkpoint.metric", "val_rmse", "checkpoint.metric"),  # digits is a classification dataset
        ("tune.metric", "val_mae", "tune.metric"),
        ("promote", "rmse < 3", "promote"),
        ("data.task", "regression", "data.task"),  # data.prepare sklearn:digits is classification
    ],
)
def test_metrics_of_the_other_task(path, value, field):
    problems = _problems(_with(path, value))
    assert _has(problems, field, "task"), problems


def test_metrics_that_contradict_each_other_when_the_data_decides_the_task():
    d = _with("data.prepare", None) | {"promote": "rmse < 3"}  # the task comes from the label column later
    # neither is known to be the wrong one until the label column is read: both are named
    problems = _problems(d)
    assert _has(problems, "checkpoint.metric, promote", "accuracy needs a classification task and rmse a regression task"), problems
    assert not any(p.startswith("promote:") for p in problems), problems


def test_metric_of_the_other_task_is_refused_where_the_data_decides_it():
    import pyarrow as pa

    from orchestrator.data.ingest import check_columns
    from orchestrator.errors import DataError

    d = _with("data.prepare", None)
    d["checkpoint"]["metric"] = d["tune"]["metric"] = "val_rmse"
    d["train"]["label_smoothing"] = 0
    del d["promote"]
    spec = parse_spec(d)  # no task is known yet: valid
    schema = pa.schema([("image", pa.list_(pa.float32())), ("label", pa.int64())])
    with pytest.raises(DataError) as info:
        check_columns(spec, "digits.parquet", schema)
    msg = str(info.value)
    assert "checkpoint.metric: rmse needs a regression task" in msg and "tune.metric:" in msg and "int64" in msg
    assert (
        check_columns(spec, "digits.parquet", pa.schema([("image", pa.list_(pa.float32())), ("label", pa.float64())])).task == "regression"
    )


@pytest.mark.parametrize(
    "scheduler,field",
    [
        ({"type": "asha", "grace_period": 11}, "tune.scheduler.grace_period"),
        ({"type": "asha", "max_epochs": 20}, "tune.scheduler.max_epochs"),
        ({"type": "asha", "grace_period": 6, "max_epochs": 5}, "tune.scheduler.grace_period"),
    ],
)
def test_asha_rungs_beyond_train_epochs(scheduler, field):
    d = _with("tune.scheduler", scheduler)  # train.epochs is 10
    assert _has(_problems(d), field, "is more than"), _problems(d)
    assert parse_spec(_with("tune.scheduler", {"type": "asha", "grace_period": 10, "max_epochs": 10}))


@pytest.mark.parametrize("key", ["features", "categorical"])
def test_duplicate_feature_names(key):
    d = spec_dict_tabular(features=["mean_radius", "mean_texture", "mean_radius"] if key == "features" else ["mean_radius", "site"])
    if key == "categorical":
        d["data"]["categorical"] = ["site", "site"]
    assert _has(_problems(d), f"data.{key}", "'mean_radius'" if key == "features" else "'site'", "more than once")


def test_odd_keys_are_quoted_on_one_line():
    d = spec_dict_tabular()
    d["train"]["a\nb"] = 1
    d[True] = 1
    problems = _problems(d)
    assert "train['a\\nb']: unknown field" in problems[0] and all("\n" not in p for p in problems)
    assert any(p.startswith("[true]: Keys should be strings") for p in problems), problems


def test_the_format_is_inferred_from_the_file_name_by_one_rule_for_specs_and_init():
    from orchestrator.spec import DataSpec, format_from_name

    assert [format_from_name(n) for n in ("a.parquet", "s3://b/x.PQ", "t.csv", "t.csv.gz", "runs/x.csv.zst", "folder/", "x.json")] == [
        "parquet",
        "parquet",
        "csv",
        "csv",
        "csv",
        None,
        None,
    ]
    assert DataSpec(source="data/rows.csv.gz", label="y").format == "csv"
    with pytest.raises(ValueError, match="cannot infer the format of 'data/rows' from its extension; set data.format"):
        DataSpec(source="data/rows", label="y")
