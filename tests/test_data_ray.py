"""Ray Data ingest against a real local Ray: splits, train-only fitting, clear data errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator.data.ingest import prepare_data
from orchestrator.data.preprocess import SPLITS
from orchestrator.errors import DataError
from orchestrator.spec import parse_spec
from tests.conftest import spec_dict

pytestmark = pytest.mark.ray


def _spec(data_dir, job, train=None, **data):
    d = spec_dict(job, **({"train": train} if train else {}))
    d["data"] = {k: v for k, v in {**d["data"], **data}.items() if v is not None}
    return parse_spec(d, base_dir=data_dir)


def _row_keys(ds, cols):
    df = ds.to_pandas()
    return {
        tuple(np.asarray(v, dtype=float).tobytes() if isinstance(v, (list, np.ndarray)) else v for v in row)
        for row in df[cols].itertuples(index=False)
    }


def test_splits_are_disjoint_and_cover_every_row(ray_session, data_dir):
    spec = _spec(data_dir, "digits-cnn.yaml", source=str(data_dir / "digits.parquet"), prepare=None)
    prepared = prepare_data(spec)
    keys = {name: _row_keys(prepared.raw[name], ["image", "label"]) for name in SPLITS}
    total = pd.read_parquet(data_dir / "digits.parquet")
    all_keys = _row_keys(ray_session.data.from_pandas(total), ["image", "label"])
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert keys["train"] | keys["validation"] | keys["test"] == all_keys
    counts = {n: prepared.raw[n].count() for n in SPLITS}
    assert sum(counts.values()) == len(total)
    assert abs(counts["train"] / len(total) - 0.7) < 0.05
    # same seed, same split; the transformed datasets have the same rows as the raw ones
    again = prepare_data(spec)
    assert _row_keys(again.raw["test"], ["image", "label"]) == keys["test"]
    assert prepared.transformed["test"].count() == counts["test"]


def test_preprocessing_is_fitted_on_the_training_split_only(ray_session, data_dir):
    spec = _spec(data_dir, "breast-cancer-mlp.yaml", source=str(data_dir / "breast_cancer.parquet"), prepare=None)
    prepared = prepare_data(spec)
    pre = prepared.preprocessor
    train = prepared.raw["train"].to_pandas()
    full = pd.read_parquet(data_dir / "breast_cancer.parquet")
    col = pre.input.numeric[0]
    assert pre.input.means[0] == pytest.approx(train[col].mean(), rel=1e-9)
    assert pre.input.stds[0] == pytest.approx(train[col].std(ddof=0), rel=1e-6)
    assert pre.input.means[0] != pytest.approx(full[col].mean(), rel=1e-6)  # not the whole file's statistics
    assert pre.train_rows == len(train)
    assert pre.classes == sorted(train["label"].unique().tolist())
    x = prepared.transformed["train"].to_pandas()["x"]
    stacked = np.stack(x.to_numpy())
    assert np.allclose(stacked[:, : len(pre.input.numeric)].mean(axis=0), 0, atol=1e-4)  # standardised on train


def test_image_statistics_are_fitted_on_train(ray_session, data_dir):
    spec = _spec(data_dir, "digits-cnn.yaml", source=str(data_dir / "digits.parquet"), prepare=None)
    prepared = prepare_data(spec)
    train = np.stack(prepared.raw["train"].to_pandas()["image"].to_numpy())
    assert prepared.preprocessor.input.mean == pytest.approx(train.mean(), rel=1e-6)
    assert prepared.preprocessor.input.std == pytest.approx(train.std(), rel=1e-6)


def test_csv_source_and_categorical_features(ray_session, data_dir, tmp_path):
    df = pd.read_csv(data_dir / "breast_cancer.csv")
    df["site"] = np.where(df.index % 3 == 0, "north", "south")
    path = tmp_path / "bc.csv"
    df.to_csv(path, index=False)
    spec = _spec(tmp_path, "breast-cancer-mlp.yaml", source=str(path), prepare=None, features=["mean_radius", "site"], categorical=["site"])
    prepared = prepare_data(spec)
    assert prepared.preprocessor.input.categorical == {"site": ["north", "south"]}
    assert prepared.preprocessor.input_shape == [3]


def test_regression_label(ray_session, data_dir):
    d = spec_dict("breast-cancer-mlp.yaml")
    d["data"] = {"source": str(data_dir / "diabetes.parquet"), "label": "target"}
    d["checkpoint"] = {"metric": "val_rmse"}
    prepared = prepare_data(parse_spec(d))
    assert prepared.preprocessor.task == "regression"
    assert prepared.preprocessor.num_outputs == 1


@pytest.mark.parametrize(
    "data,words",
    [
        ({"source": "missing.parquet", "prepare": None}, ["missing.parquet", "data file not found"]),
        ({"label": "diagnosis"}, ["'diagnosis'", "data.label", "not found"]),
        ({"features": ["mean_radius", "mean_colour"]}, ["'mean_colour'", "data.features", "not found"]),
        ({"features": ["mean_radius", "when"]}, ["'when'", "numbers, booleans or strings"]),
        ({"task": "regression"}, ["'label'", "regression needs a numeric label"]),
    ],
    ids=["missing file", "missing label", "missing feature", "timestamp feature", "string regression label"],
)
def test_bad_data_gets_a_clear_error_naming_file_and_column(ray_session, data_dir, tmp_path, data, words):
    df = pd.read_parquet(data_dir / "breast_cancer.parquet")
    df["when"] = pd.Timestamp("2024-01-01")
    path = tmp_path / "bc.parquet"
    df.to_parquet(path)
    data = {"source": str(path), "prepare": None, **data}
    if data["source"] == "missing.parquet":
        data["source"] = str(tmp_path / "missing.parquet")
    spec = _spec(tmp_path, "breast-cancer-mlp.yaml", **data)
    with pytest.raises(DataError) as info:
        prepare_data(spec)
    msg = str(info.value)
    assert str(tmp_path) in msg
    for w in words:
        assert w in msg


def test_image_column_must_hold_arrays(ray_session, data_dir, tmp_path):
    df = pd.read_parquet(data_dir / "breast_cancer.parquet")
    path = tmp_path / "flat.parquet"
    df.to_parquet(path)
    spec = _spec(tmp_path, "digits-cnn.yaml", source=str(path), prepare=None, image={"column": "mean_radius", "shape": [1, 1, 1]})
    with pytest.raises(DataError, match="'mean_radius' .*must be a list of numbers"):
        prepare_data(spec)


def test_infinite_values_outside_the_training_split_are_refused(ray_session, data_dir, tmp_path):
    from orchestrator.data.preprocess import assign_splits

    df = pd.read_parquet(data_dir / "breast_cancer.parquet")[["mean_radius", "mean_texture", "label"]]
    spec = _spec(
        tmp_path, "breast-cancer-mlp.yaml", source=str(tmp_path / "inf.parquet"), prepare=None, features=["mean_radius", "mean_texture"]
    )
    with_inf = df.assign(mean_radius=np.inf)
    s = spec.data.split
    outside = assign_splits(with_inf, spec.data.seed, (s.train, s.validation, s.test)) != 0  # a row's split follows its values
    df.loc[outside, "mean_radius"] = np.inf
    df.to_parquet(tmp_path / "inf.parquet")
    with pytest.raises(DataError) as info:
        prepare_data(spec)
    assert (
        str(info.value)
        == f"{tmp_path / 'inf.parquet'}: column 'mean_radius': +inf/-inf values cannot be standardised; replace or drop them"
    )


def test_pq_file_and_folder_are_read_as_parquet(ray_session, data_dir, tmp_path):
    """The spec infers Parquet from `.pq`; Ray Data's own extension filter alone would skip it."""
    df = pd.read_parquet(data_dir / "breast_cancer.parquet")
    (tmp_path / "parts").mkdir()
    df.iloc[:300].to_parquet(tmp_path / "parts" / "a.pq")
    df.iloc[300:].to_parquet(tmp_path / "parts" / "b.parquet")
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    df.iloc[:100].to_parquet(tmp_path / "export.bin")  # a file named in data.source is read whatever its name
    for src, rows in ((tmp_path / "parts" / "a.pq", 300), (tmp_path / "parts", len(df)), (tmp_path / "export.bin", 100)):
        prepared = prepare_data(_spec(tmp_path, "breast-cancer-mlp.yaml", source=str(src), prepare=None, format="parquet"))
        assert sum(prepared.raw[n].count() for n in SPLITS) == rows


def test_a_small_file_prepared_on_the_driver_equals_ray_datas_preparation(ray_session, data_dir, tmp_path):
    """A small local file is read, split, fitted and transformed on the driver; the same rows as a
    folder go through Ray Data's tasks. Both must give the same fitted state and the same rows, with
    missing values, strings, categories and a boolean feature (0/1 on both paths), and the class
    counts that train.class_weights: balanced weighs the loss by."""
    df = pd.read_csv(data_dir / "breast_cancer.csv")
    df["site"] = np.where(df.index % 3 == 0, "north", "south")
    df["big"] = df["mean_radius"] > df["mean_radius"].median()
    df.loc[df.index % 17 == 0, "mean_texture"] = np.nan
    (tmp_path / "folder").mkdir()
    df.to_parquet(tmp_path / "one.parquet")
    df.to_parquet(tmp_path / "folder" / "part-0.parquet")
    features = ["mean_radius", "mean_texture", "big", "site"]
    prepared = {}
    for name, src in (("driver", tmp_path / "one.parquet"), ("ray data", tmp_path / "folder")):
        spec = _spec(
            tmp_path,
            "breast-cancer-mlp.yaml",
            train={"class_weights": "balanced"},
            source=str(src),
            prepare=None,
            format="parquet",
            features=features,
            categorical=["site"],
        )
        prepared[name] = prepare_data(spec)
    driver, ray_data = prepared["driver"], prepared["ray data"]
    a, b = driver.preprocessor.to_dict(), ray_data.preprocessor.to_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9) if isinstance(a[k], list) and a[k] and isinstance(a[k][0], float) else a[k] == b[k], k
    assert driver.preprocessor.input_shape == [1 + 1 + 1 + 2]
    labels = driver.raw["train"].to_pandas()["label"]
    pre = driver.preprocessor
    assert pre.class_counts == [int((labels == c).sum()) for c in pre.classes] and sum(pre.class_counts) == pre.train_rows
    from sklearn.utils.class_weight import compute_class_weight

    from orchestrator.train.plan import class_weight_vector

    want = compute_class_weight("balanced", classes=np.array(pre.classes), y=labels.to_numpy())
    assert class_weight_vector("balanced", pre.classes, pre.class_counts) == pytest.approx(list(want))
    for split in SPLITS:
        on_driver, in_tasks = (p.transformed[split].to_pandas() for p in (driver, ray_data))
        assert len(on_driver) == len(in_tasks) > 0
        by_row = lambda f: f.assign(k=f["x"].map(lambda v: np.asarray(v).tobytes())).sort_values("k")  # noqa: E731
        on_driver, in_tasks = by_row(on_driver), by_row(in_tasks)
        np.testing.assert_allclose(np.stack(on_driver["x"]), np.stack(in_tasks["x"]), rtol=1e-6)
        np.testing.assert_array_equal(on_driver["y"].to_numpy(), in_tasks["y"].to_numpy())
