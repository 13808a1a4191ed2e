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
