"""Data checks that run on the driver before any Ray task: no Ray is started here."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from orchestrator.data.ingest import _describe_failure, _mark_infinite, check_columns, check_source_files
from orchestrator.data.kinds.table import TableInput
from orchestrator.data.preprocess import Preprocessor
from orchestrator.errors import DataError
from orchestrator.spec import parse_spec
from tests.conftest import spec_dict


def _frame(n=20):
    return pd.DataFrame({"a": np.arange(n, dtype=float), "city": ["x", "y"] * (n // 2), "label": ["p", "q"] * (n // 2)})


def _spec(tmp_path, **data):
    d = spec_dict("breast-cancer-mlp.yaml")
    d["data"] = {"source": str(tmp_path / "t.parquet"), "label": "label", **data}
    return parse_spec(d, base_dir=tmp_path)


def test_mixed_folder_is_refused_with_counts(tmp_path):
    for i in range(3):
        _frame().to_parquet(tmp_path / f"p{i}.parquet")
    for i in range(2):
        _frame().to_csv(tmp_path / f"c{i}.csv", index=False)
    (tmp_path / "_SUCCESS").write_text("")  # writers' marker files are not data
    (tmp_path / ".p0.parquet.crc").write_text("x")
    with pytest.raises(DataError) as info:
        check_source_files(str(tmp_path), "parquet")
    msg = str(info.value)
    assert str(tmp_path) in msg and "3 .parquet files and 2 .csv files" in msg and "data.format parquet" in msg
    with pytest.raises(DataError, match="2 .csv files"):
        check_source_files(str(tmp_path), "csv")


def test_folder_of_one_format_passes(tmp_path):
    _frame().to_parquet(tmp_path / "a.parquet")
    _frame().to_parquet(tmp_path / "b.pq")
    (tmp_path / "_SUCCESS").write_text("")
    assert check_source_files(str(tmp_path), "parquet") is True
    assert check_source_files(str(tmp_path / "a.parquet"), "parquet") is False


def test_folder_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"1 \.txt file; data.format csv reads only \.csv"):
        check_source_files(str(tmp_path), "csv")
    (tmp_path / "notes.txt").unlink()
    with pytest.raises(DataError, match="holds no .parquet/.pq files"):
        check_source_files(str(tmp_path), "parquet")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_empty_file_is_named(tmp_path, fmt):
    (tmp_path / f"good.{fmt}").write_bytes(b"x")
    (tmp_path / f"empty.{fmt}").write_bytes(b"")
    for src in (tmp_path, tmp_path / f"empty.{fmt}"):
        with pytest.raises(DataError) as info:
            check_source_files(str(src), fmt)
        assert f"{tmp_path / f'empty.{fmt}'}: empty file (0 bytes), not a {fmt} file" in str(info.value)


def test_ray_data_csv_failure_becomes_pyarrows_cause(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("a,b,label\n1,2,p\n3,4,q\n5,6,7,8\n")
    # what Ray Data raises (pyarrow's message is lost on the way from the read task)
    ray_msg = (
        f"Failed to read CSV file: {path}. Please check the CSV file has correct format, or filter out "
        "non-CSV file with 'partition_filter' field.\nFailed to read stream iteratively after 1/10 attempts"
    )
    msg = _describe_failure(str(tmp_path), "csv", ValueError(ray_msg))
    assert msg == f"{path}: cannot read as CSV: Row #4: Expected 3 columns, got 4: 5,6,7,8"


def test_other_failures_keep_the_first_meaningful_line(tmp_path):
    inner = ValueError("Failed to apply UDF transform after 1/1 attempts\ncolumn 'a': +inf/-inf values cannot be standardised")
    outer = RuntimeError("wrapper")
    outer.__cause__ = inner
    assert (
        _describe_failure("x.parquet", "parquet", outer)
        == "x.parquet: cannot read as parquet: column 'a': +inf/-inf values cannot be standardised"
    )


def test_string_feature_is_one_hot_encoded_as_documented(tmp_path):
    schema = pa.Schema.from_pandas(_frame(), preserve_index=False)
    cols = check_columns(_spec(tmp_path, features=["a", "city"]), "t.parquet", schema)
    assert cols.numeric == ["a"] and cols.categorical == ["city"] and cols.auto_categorical == ["city"]
    cols = check_columns(_spec(tmp_path), "t.parquet", schema)  # features omitted: every other column
    assert cols.categorical == ["city"]
    cols = check_columns(_spec(tmp_path, features=["a", "city"], categorical=["city"]), "t.parquet", schema)
    assert cols.auto_categorical == []


def test_feature_of_another_type_says_what_is_accepted(tmp_path):
    df = _frame().assign(when=pd.Timestamp("2024-01-01"))
    with pytest.raises(DataError) as info:
        check_columns(_spec(tmp_path, features=["a", "when"]), "t.parquet", pa.Schema.from_pandas(df, preserve_index=False))
    msg = str(info.value)
    assert "'when' (data.features) has type timestamp" in msg and "numbers, booleans or strings" in msg


def test_infinite_values_are_counted_and_refused_by_the_transform():
    df = pd.DataFrame({"a": [1.0, np.inf, -np.inf, np.nan], "b": [True, False, True, None]})
    marked = _mark_infinite(df, columns=["a", "b"])
    assert marked["__inf:a"].tolist() == [0, 1, 1, 0] and marked["__inf:b"].sum() == 0
    pre = Preprocessor(task="regression", label="y", input=TableInput(numeric=["a"], means=[0.0], stds=[1.0]))
    with pytest.raises(ValueError, match=r"column 'a': \+inf/-inf values cannot be standardised"):
        pre.transform_features(df)
    assert np.isfinite(pre.transform_features(df.iloc[[0, 3]])).all()  # NaN is still imputed


def test_a_hive_partitioned_folder_is_checked_from_one_listing(tmp_path):
    """`city=...` folders are a column, as Ray Data reads them; markers and hidden files are no data;
    the rows and the label's classes are read from the files that one listing found."""
    from orchestrator.data.files import list_source
    from orchestrator.data.preflight import check_data

    folder = tmp_path / "table"
    for city in ("oslo", "rome"):
        (folder / f"city={city}").mkdir(parents=True)
        _frame().drop(columns="city").to_parquet(folder / f"city={city}" / "part-0.parquet")
        (folder / f"city={city}" / ".part-0.parquet.crc").write_text("x")
    (folder / "_SUCCESS").write_text("")
    listing = list_source(str(folder))
    assert listing.is_dir and [f.base_name for f in listing.files] == ["part-0.parquet"] * 2
    assert listing.bytes == sum(p.stat().st_size for p in folder.rglob("part-0.parquet"))

    spec = _spec(tmp_path, source=str(folder), format="parquet", features=["a", "city"], categorical=["city"])
    check = check_data(spec)
    assert check.ok, check.problems
    assert check.rows == 40 and check.columns.categorical == ["city"]

    # the partition column as the label: its classes are read from the listed files
    by_city = _spec(tmp_path, source=str(folder), format="parquet", features=["a"], label="city", task="classification")
    assert check_data(by_city).ok
    shutil.rmtree(folder / "city=rome")
    problems = check_data(by_city).problems
    assert problems and "holds one class only ('oslo')" in problems[0], problems
