"""Job spec validation of the text, sequence, series and image-file inputs and the rnn/transformer
models: valid specs pass, mistakes fail with their field paths (no Ray)."""

from __future__ import annotations

import copy

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import JobSpec, json_schema, parse_spec

TEXT = {
    "name": "text",
    "data": {"source": "t.parquet", "label": "label", "text": {"column": "text", "tokenizer": "bpe", "vocab_size": 2000, "max_length": 64}},
    "model": {"arch": "transformer", "d_model": 32, "heads": 4, "layers": 2, "ff": 64},
}
SEQUENCE = {
    "name": "seq",
    "data": {"source": "s.parquet", "label": "label", "sequence": {"column": "readings"}},
    "model": {"arch": "rnn", "cell": "gru", "hidden": 16},
}
SERIES = {
    "name": "series",
    "data": {"source": "co2.parquet", "series": {"column": "value", "order_by": "date", "window": 24}},
    "model": {"arch": "rnn", "hidden": 16},
}


def _with(base: dict, **sections) -> dict:
    d = copy.deepcopy(base)
    for path, value in sections.items():
        *parents, last = path.split("__")
        node = d
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return d


def _problems(d: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(d)
    return info.value.problems


def _has(problems: list[str], field: str, *words: str) -> bool:
    return any(p.startswith(f"{field}:") and all(w in p for w in words) for p in problems)


def test_the_new_inputs_and_models_validate():
    text = parse_spec(TEXT)
    assert text.data.input_kind == "text" and text.model.pooling == "cls" and text.model.max_length is None
    seq = parse_spec(SEQUENCE)
    assert seq.data.input_kind == "sequence" and seq.data.sequence.max_length is None and seq.model.cell == "gru"
    series = parse_spec(SERIES)
    # a series forecasts its own values: the label defaults to the series column
    assert series.data.input_kind == "series" and series.data.label == "value" and series.data.series.horizon == 1
    files = parse_spec(_with(TEXT, data__text=None, data__image={"column": "path", "shape": [3, 32, 32]}, model={"arch": "cnn"}))
    assert files.data.input_kind == "image"
    assert parse_spec(_with(SERIES, model={"arch": "mlp", "hidden": [8]}))  # an mlp reads a fixed window
    assert parse_spec(_with(TEXT, model={"arch": "rnn", "bidirectional": True, "pooling": "mean"}))


def test_the_json_schema_lets_a_series_spec_leave_out_its_label():
    import jsonschema

    schema = json_schema()
    jsonschema.validate(SERIES, schema)
    assert "label" not in schema["$defs"]["DataSpec"]["required"]
    no_label = copy.deepcopy(TEXT)
    del no_label["data"]["label"]
    with pytest.raises(SpecError) as info:  # elsewhere the label is still required, named as before
        parse_spec(no_label)
    assert any(p.startswith("data.label: required field is missing") for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    "what,data,field,words",
    [
        ("two input kinds", _with(TEXT, data__sequence={"column": "readings"}), "data", ("at most one of", "data.text and data.sequence")),
        (
            "three input kinds",
            _with(SERIES, data__image={"column": "i", "shape": [1, 8, 8]}, data__text={"column": "t"}),
            "data",
            ("data.image and data.text and data.series",),
        ),
        ("text and features", _with(TEXT, data__features=["a"]), "data", ("`features`", "`text`")),
        ("sequence and categorical", _with(SEQUENCE, data__categorical=["a"]), "data", ("`categorical`", "`sequence`")),
        ("label is the text column", _with(TEXT, data__label="text"), "data", ("also the text column",)),
        ("series label is another column", _with(SERIES, data__label="other"), "data", ("differs from data.series.column",)),
        (
            "series ordered by itself",
            _with(SERIES, data__series={"column": "value", "order_by": "value", "window": 4}),
            "data",
            ("order_by",),
        ),
        (
            "unknown tokenizer",
            _with(TEXT, data__text={"column": "text", "tokenizer": "wordpiece"}),
            "data.text.tokenizer",
            ("'byte'", "'bpe'"),
        ),
        (
            "vocabulary below the byte alphabet",
            _with(TEXT, data__text={"column": "text", "vocab_size": 100}),
            "data.text.vocab_size",
            ("260",),
        ),
        (
            "text max_length 1",
            _with(TEXT, data__text={"column": "text", "max_length": 1}),
            "data.text.max_length",
            ("greater than or equal to 2",),
        ),
        (
            "series without a window",
            _with(SERIES, data__series={"column": "value", "order_by": "date"}),
            "data.series.window",
            ("missing",),
        ),
        (
            "zero horizon",
            _with(SERIES, data__series={"column": "value", "order_by": "date", "window": 4, "horizon": 0}),
            "data.series.horizon",
            ("greater than 0",),
        ),
        (
            "sequence max_length 0",
            _with(SEQUENCE, data__sequence={"column": "r", "max_length": 0}),
            "data.sequence.max_length",
            ("greater than 0",),
        ),
    ],
)
def test_input_mistakes_name_their_field(what, data, field, words):
    problems = _problems(data)
    assert _has(problems, field, *words), problems


@pytest.mark.parametrize(
    "what,data,field,words",
    [
        (
            "heads do not divide d_model",
            _with(TEXT, model={"arch": "transformer", "d_model": 30, "heads": 4}),
            "model.heads",
            ("divisible by heads",),
        ),
        ("odd d_model", _with(TEXT, model={"arch": "transformer", "d_model": 33, "heads": 3}), "model.d_model", ("even",)),
        ("unknown rnn cell", _with(SEQUENCE, model={"arch": "rnn", "cell": "rnn_tanh"}), "model.cell", ("'lstm'", "'gru'")),
        ("unknown rnn pooling", _with(SEQUENCE, model={"arch": "rnn", "pooling": "cls"}), "model.pooling", ("'last'", "'mean'")),
        (
            "unknown transformer pooling",
            _with(TEXT, model={"arch": "transformer", "pooling": "last"}),
            "model.pooling",
            ("'cls'", "'mean'"),
        ),
        ("zero rnn layers", _with(SEQUENCE, model={"arch": "rnn", "layers": 0}), "model.layers", ("greater than 0",)),
        ("a field of the other architecture", _with(SEQUENCE, model={"arch": "rnn", "heads": 2}), "model.heads", ("unknown field",)),
        ("rnn on table data", _with(SEQUENCE, data__sequence=None), "model.arch", ("rnn needs text, sequence or series input",)),
        (
            "transformer on images",
            _with(TEXT, data__text=None, data__image={"column": "i", "shape": [1, 8, 8]}),
            "model.arch",
            ("transformer needs text, sequence or series input",),
        ),
        ("cnn on text", _with(TEXT, model={"arch": "cnn"}), "model.arch", ("cnn needs image data",)),
        ("mlp on text", _with(TEXT, model={"arch": "mlp"}), "model.arch", ("mlp cannot read data.text",)),
        (
            "transformer shorter than the texts",
            _with(TEXT, model={"arch": "transformer", "d_model": 32, "max_length": 32}),
            "model.max_length",
            ("less than data.text.max_length (64)",),
        ),
        (
            "transformer shorter than the window",
            _with(SERIES, model={"arch": "transformer", "d_model": 32, "max_length": 8}),
            "model.max_length",
            ("less than data.series.window (24)",),
        ),
    ],
)
def test_model_mistakes_name_their_field(what, data, field, words):
    problems = _problems(data)
    assert _has(problems, field, *words), problems


@pytest.mark.parametrize(
    "path,value,field",
    [
        ("checkpoint", {"metric": "val_accuracy"}, "checkpoint.metric"),
        ("promote", "accuracy >= 0.9", "promote"),
        ("train", {"label_smoothing": 0.1}, "train.label_smoothing"),
    ],
)
def test_a_series_is_a_regression_and_refuses_classification_settings(path, value, field):
    problems = _problems(_with(SERIES, **{path: value}))
    assert _has(problems, field, "classification task", "data.series forecasts numbers"), problems


def test_a_series_with_data_task_classification_is_refused():
    assert _has(_problems(_with(SERIES, data__task="classification")), "data.task", "regression")
    assert parse_spec(_with(SERIES, data__task="regression", checkpoint={"metric": "val_rmse"}, promote="rmse < 1"))


@pytest.mark.parametrize(
    "base,space",
    [
        (
            SEQUENCE,
            {"model.hidden": {"choice": [8, 16, 32]}, "model.layers": {"randint": [1, 3]}, "model.cell": {"choice": ["lstm", "gru"]}},
        ),
        (
            SEQUENCE,
            {
                "model.bidirectional": {"choice": [True, False]},
                "model.pooling": {"choice": ["last", "mean"]},
                "model.embedding": {"choice": [8, 16]},
            },
        ),
        (
            TEXT,
            {
                "model.layers": {"randint": [1, 4]},
                "model.heads": {"choice": [1, 2, 4, 8]},
                "model.d_model": {"choice": [32, 64]},
                "model.ff": {"choice": [32, 128]},
                "model.pooling": {"choice": ["cls", "mean"]},
                "model.max_length": {"choice": [64, 128]},
            },
        ),
        (
            TEXT,
            {
                "train.dropout": {"uniform": [0.0, 0.5]},
                "train.weight_decay": {"loguniform": [1e-6, 1e-2]},
                "train.early_stopping.patience": {"randint": [1, 3]},
                "train.label_smoothing": {"uniform": [0.0, 0.2]},
            },
        ),
    ],
)
def test_every_new_model_field_is_searchable(base, space):
    spec = parse_spec(_with(base, tune={"space": space, "num_samples": 2}))
    assert set(spec.tune.space) == set(space)


@pytest.mark.parametrize(
    "space,field,words",
    [
        ({"model.heads": {"choice": [4, 3]}}, "tune.space.model.heads", ("value 3", "divisible by heads")),
        ({"model.max_length": {"choice": [64, 16]}}, "tune.space.model.max_length", ("value 16", "less than data.text.max_length")),
        ({"model.channels": {"choice": [[8]]}}, "tune.space.model.channels", ("unknown field",)),
        ({"data.text.vocab_size": {"choice": [500, 1000]}}, "tune.space", ("cannot be searched",)),
    ],
)
def test_search_values_that_break_the_model_name_their_dimension(space, field, words):
    problems = _problems(_with(TEXT, tune={"space": space, "num_samples": 2}))
    assert _has(problems, field, *words), problems


def test_the_new_fields_are_described():
    """Every field of the new sections has a description in the JSON schema, as the rest of the spec."""
    defs = json_schema()["$defs"]
    for name in ("TextSpec", "SequenceSpec", "SeriesSpec", "RNNSpec", "TransformerSpec", "ImageSpec"):
        for field, prop in defs[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
    assert JobSpec.model_fields["model"].description.count("transformer") == 1
