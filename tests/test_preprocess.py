"""Split assignment and preprocessing transforms (pure pandas/numpy, no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator.data.kinds.image import ImageInput
from orchestrator.data.kinds.table import TableInput
from orchestrator.data.preprocess import UNKNOWN_LABEL, Preprocessor, assign_splits


def frame(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 5, n), "img": [rng.random(4) for _ in range(n)]})


def test_split_is_deterministic_and_independent_of_chunking():
    df = frame()
    whole = assign_splits(df, 7, (0.7, 0.15, 0.15))
    chunked = np.concatenate([assign_splits(df.iloc[i : i + 333], 7, (0.7, 0.15, 0.15)) for i in range(0, len(df), 333)])
    shuffled_idx = np.random.default_rng(1).permutation(len(df))
    shuffled = assign_splits(df.iloc[shuffled_idx], 7, (0.7, 0.15, 0.15))
    assert (whole == chunked).all()
    assert (whole[shuffled_idx] == shuffled).all()


def test_split_fractions_and_seed():
    df = frame(20000)
    codes = assign_splits(df, 0, (0.7, 0.15, 0.15))
    frac = np.bincount(codes, minlength=3) / len(codes)
    assert np.allclose(frac, [0.7, 0.15, 0.15], atol=0.02)
    other = assign_splits(df, 1, (0.7, 0.15, 0.15))
    assert (codes != other).mean() > 0.2  # another seed gives another split


def test_identical_rows_share_a_split():
    df = pd.concat([frame(50)] * 3, ignore_index=True)
    codes = assign_splits(df, 3, (0.5, 0.25, 0.25)).reshape(3, 50)
    assert (codes[0] == codes[1]).all() and (codes[1] == codes[2]).all()


def test_tabular_transform_standardises_encodes_and_imputes():
    pre = Preprocessor(
        task="classification",
        label="y",
        input=TableInput(numeric=["a"], means=[10.0], stds=[2.0], categorical={"c": ["red", "blue"]}),
        classes=["no", "yes"],
    )
    df = pd.DataFrame({"a": [12.0, np.nan], "c": ["blue", "green"], "y": ["yes", "maybe"]})
    out = pre.transform(df)
    assert out["x"].dtype == np.float32 and out["x"].shape == (2, 3)
    assert out["x"][0].tolist() == [1.0, 0.0, 1.0]
    assert out["x"][1].tolist() == [0.0, 0.0, 0.0]  # NaN -> training mean; unseen category -> zeros
    assert out["y"].tolist() == [1, UNKNOWN_LABEL]
    assert pre.input_shape == [3] and pre.num_outputs == 2


def test_image_transform_checks_length():
    pre = Preprocessor(task="classification", label="y", input=ImageInput(column="img", shape=[1, 2, 2], mean=1.0, std=2.0), classes=[0, 1])
    out = pre.transform_features(pd.DataFrame({"img": [np.array([1, 3, 5, 7.0])]}))
    assert out.shape == (1, 1, 2, 2) and out.reshape(-1).tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="holds 3 values per row"):
        pre.transform_features(pd.DataFrame({"img": [np.array([1, 2, 3.0])]}))


def test_regression_round_trip_and_json_persistence(tmp_path):
    pre = Preprocessor(
        task="regression", label="y", input=TableInput(numeric=["a"], means=[0.0], stds=[1.0]), target_mean=100.0, target_std=10.0
    )
    y = pre.transform_labels(pd.Series([110.0, 90.0]))
    assert y.tolist() == [1.0, -1.0]
    assert pre.decode(np.array([[1.0], [-1.0]])) == [110.0, 90.0]
    pre.save(tmp_path / "p.json")
    assert Preprocessor.load(tmp_path / "p.json") == pre


def test_plain_value_turns_numpy_into_json_values():
    from orchestrator.data.preprocess import plain_value

    assert type(plain_value(np.int64(3))) is int and type(plain_value(np.float32(0.5))) is float
    assert plain_value(np.array([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert plain_value((np.bool_(True), "x", None)) == [True, "x", None]
    nan = plain_value(np.float64("nan"))
    assert nan != nan  # kept: a category lookup simply finds nothing
    assert plain_value([1.0, float("nan"), np.array([np.nan])], nan_as_none=True) == [1.0, None, [None]]


# A fitted preprocessing as checkpoints wrote it before input kinds held their own state: every
# kind's fields flat on the Preprocessor, prefixed by kind (the text ones from a real checkpoint's
# preprocessing.json, the tokenizer cut short).
LEGACY = {
    "text": {
        "task": "classification",
        "label": "label",
        "numeric": [],
        "means": [],
        "stds": [],
        "categorical": {},
        "image_column": None,
        "image_shape": None,
        "image_mean": 0.0,
        "image_std": 1.0,
        "image_source": "array",
        "image_root": None,
        "text_column": "text",
        "tokenizer": {"kind": "byte"},
        "text_max_length": 32,
        "text_lowercase": True,
        "text_vocab_size": 260,
        "sequence_column": None,
        "sequence_max_length": 0,
        "sequence_features": 0,
        "sequence_means": [],
        "sequence_stds": [],
        "series_column": None,
        "series_window": 0,
        "series_horizon": 0,
        "series_mean": 0.0,
        "series_std": 1.0,
        "classes": ["a", "b"],
        "class_counts": None,
        "target_mean": 0.0,
        "target_std": 1.0,
        "train_rows": 10,
    },
    "series": {
        "task": "regression",
        "label": "__target",
        "series_column": "v",
        "series_window": 3,
        "series_horizon": 2,
        "series_mean": 5.0,
        "series_std": 2.0,
        "target_mean": 5.0,
        "target_std": 2.0,
    },
    "image": {
        "task": "classification",
        "label": "y",
        "image_column": "p",
        "image_shape": [1, 2, 2],
        "image_source": "path",
        "image_root": "/data",
        "image_mean": 3.0,
        "classes": [0, 1],
    },
    "sequence": {
        "task": "regression",
        "label": "y",
        "sequence_column": "s",
        "sequence_max_length": 4,
        "sequence_features": 2,
        "sequence_means": [1.0, 2.0],
        "sequence_stds": [1.0, 1.0],
    },
    "table": {
        "task": "regression",
        "label": "y",
        "numeric": ["a"],
        "means": [1.0],
        "stds": [2.0],
        "categorical": {"c": ["x"]},
        "target_std": 3.0,
    },
}


@pytest.mark.parametrize("kind", list(LEGACY))
def test_a_preprocessing_saved_before_input_kinds_loads_as_its_kind(kind):
    pre = Preprocessor.from_dict(LEGACY[kind])
    assert pre.kind == kind
    saved = pre.to_dict()
    assert saved["input"]["kind"] == kind and Preprocessor.from_dict(saved) == pre  # and saves in today's layout
    if kind == "text":
        assert (pre.input.column, pre.input.max_length, pre.input.lowercase, pre.input.vocab_size) == ("text", 32, True, 260)
        assert pre.classes == ["a", "b"] and pre.train_rows == 10 and pre.max_length == 32 and pre.vocab_size == 260
    if kind == "series":
        assert pre.num_outputs == 2 and pre.input_shape == [3, 1] and pre.input.mean == 5.0
    if kind == "image":
        assert pre.input.source == "path" and pre.input.root == "/data" and pre.input_shape == [1, 2, 2]
    if kind == "table":
        assert pre.input.categorical == {"c": ["x"]} and pre.input_shape == [2] and pre.target_std == 3.0


def test_a_preprocessing_of_neither_layout_is_refused():
    with pytest.raises(TypeError):
        Preprocessor.from_dict({"colour": 1})
    with pytest.raises(TypeError):
        Preprocessor.from_dict({"task": "regression", "label": "y", "input": "table"})
