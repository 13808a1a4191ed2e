"""Batch prediction's parts that need no Ray: the plan (files, formats, outputs), the per-cell
coercion of table inputs, the model actor's work on one batch, and the output writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator.batch.plan import (
    ERROR,
    PREDICTION,
    SOURCE_ROW,
    added_columns,
    input_files,
    output_format,
    plan_evaluate,
    plan_predict,
    probability_column,
)
from orchestrator.batch.run import FILE, ROW, Predictor, Sink, read_chunks
from orchestrator.errors import OrchestratorError
from tests.serve_support import make_checkpoint, offline_predictions


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("batch") / "ckpt", epochs=10)


def test_input_files_of_a_folder_leave_out_hidden_files_and_refuse_mixed_formats(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.parquet", "2.parquet", "_SUCCESS", ".hidden.parquet", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    files, fmt = input_files(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["2.parquet", "a/1.parquet"] and fmt == "parquet"
    (tmp_path / "3.csv").write_text("x\n1\n")
    with pytest.raises(OrchestratorError, match="several formats \\(csv, parquet\\)"):
        input_files(tmp_path)
    with pytest.raises(OrchestratorError, match="no such file or folder"):
        input_files(tmp_path / "missing")
    with pytest.raises(OrchestratorError, match="unsupported file type .txt"):
        input_files(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OrchestratorError, match="no .csv, .parquet, .jsonl or .json files"):
        input_files(empty)


def test_output_is_one_file_by_its_suffix_or_a_folder_in_the_format_asked():
    assert output_format(Path("out.csv"), None) == ("csv", True)
    assert output_format(Path("out.parquet"), "parquet") == ("parquet", True)
    assert output_format(Path("preds"), None) == ("parquet", False)
    assert output_format(Path("preds"), "jsonl") == ("jsonl", False)
    with pytest.raises(OrchestratorError, match="is a .csv file but --format says parquet"):
        output_format(Path("out.csv"), "parquet")
    with pytest.raises(OrchestratorError, match="--format xml: use one of csv, parquet, jsonl"):
        output_format(Path("preds"), "xml")
    with pytest.raises(OrchestratorError, match="write .jsonl"):
        output_format(Path("out.json"), None)


def test_plan_refuses_to_replace_an_output_without_force_and_to_write_over_its_input(tmp_path):
    src = tmp_path / "rows.csv"
    src.write_text("x\n1\n")
    out = tmp_path / "out.csv"
    out.write_text("old")
    with pytest.raises(OrchestratorError, match="already exists; pass --force"):
        plan_predict(tmp_path / "ckpt", src, out)
    assert plan_predict(tmp_path / "ckpt", src, out, force=True).out == out
    with pytest.raises(OrchestratorError, match="would overwrite the input"):
        plan_predict(tmp_path / "ckpt", src, src, force=True)
    plan = plan_predict(tmp_path / "ckpt", src, tmp_path / "o.parquet", classes=["a", "b"])
    assert plan.added == [SOURCE_ROW, PREDICTION, "probability_a", "probability_b", ERROR]
    assert added_columns(None, True)[0] == "source_file"
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    with pytest.raises(OrchestratorError, match="already holds files; pass --force"):
        plan_evaluate(tmp_path / "ckpt", src, tmp_path / "eval")


def test_a_numeric_cell_that_is_no_number_fails_its_row_not_its_column(checkpoint):
    from orchestrator.train.checkpoint import load_model

    pre = load_model(checkpoint[0]).preprocessor
    rows = checkpoint[1].head(4)[pre.feature_columns].astype(object)
    col = pre.input.numeric[0]
    rows.loc[1, col] = "abc"
    rows.loc[2, col] = " "  # blank: missing, imputed like an empty cell
    fixed, errors = pre.input.coerce(rows)
    assert errors == {1: (col, "'abc' is not a number")}
    assert fixed[col].dtype.kind == "f" and np.isnan(fixed.loc[2, col]) and fixed.loc[0, col] == rows.loc[0, col]


def _batch(rows: pd.DataFrame, file: str) -> pd.DataFrame:
    df = rows.reset_index(drop=True).copy()
    df.insert(0, ROW, np.arange(len(df)))
    df.insert(0, FILE, file)
    return df


def test_the_model_actor_predicts_like_the_model_and_a_bad_row_fails_alone(checkpoint, tmp_path):
    ckpt, test = checkpoint
    path = tmp_path / "rows.csv"
    test.assign(id=range(len(test))).to_csv(path, index=False)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")  # file row 2 (0-based, after the header)
    cells[header.index("mean_radius")] = "abc"
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    (chunk,) = list(read_chunks(path, "csv"))
    out = Predictor(str(ckpt), multi_file=False, root=str(tmp_path))(_batch(chunk, str(path)))

    assert out.loc[2, ERROR] == "row 2, column 'mean_radius': 'abc' is not a number" and out.loc[2, PREDICTION] is None
    others = [i for i in range(len(test)) if i != 2]
    expected = offline_predictions(ckpt, test)
    assert [out.loc[i, PREDICTION] for i in others] == [expected[i] for i in others]
    assert out[ERROR].drop(index=2).isna().all()
    probs = out[[probability_column(c) for c in ("benign", "malignant")]].drop(index=2).to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert list(out["id"]) == list(range(len(test))) and list(out[SOURCE_ROW]) == list(range(len(test)))
    assert FILE in out.columns and ROW not in out.columns  # the file stays for the writer, which drops it


def test_the_parquet_writer_widens_types_across_chunks_and_csv_holds_lists_as_json(tmp_path):
    sink = Sink(tmp_path / "out.parquet", "parquet")
    sink.write(pd.DataFrame({"a": [1, 2], "error": [None, None], "seq": [[1.0, 2.0], [3.0]]}))
    sink.write(pd.DataFrame({"a": [2.5], "error": ["row 2: bad"], "seq": [[4.0]]}))
    sink.close()
    t = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert list(t["a"]) == [1.0, 2.0, 2.5] and list(t["error"].isna()) == [True, True, False] and t["error"][2] == "row 2: bad"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial files left behind

    csv = Sink(tmp_path / "out.csv", "csv")
    csv.write(pd.DataFrame({"seq": [], "img": [], "n": []}))  # an empty chunk first (a header-only CSV file)
    csv.write(pd.DataFrame({"seq": [[1.0, 2.0]], "img": [b"\x89PNG"], "n": [1]}))
    csv.write(pd.DataFrame({"seq": [[3.0]], "img": [b"x"], "n": [2]}))
    csv.close()
    back = pd.read_csv(tmp_path / "out.csv")
    assert [json.loads(s) for s in back["seq"]] == [[1.0, 2.0], [3.0]] and list(back["n"]) == [1, 2] and back["img"][0] == "iVBORw=="

    failed = Sink(tmp_path / "gone.jsonl", "jsonl")
    failed.write(pd.DataFrame({"n": [1]}))
    failed.abort()
    assert not (tmp_path / "gone.jsonl").exists() and not list(tmp_path.glob(".gone*"))
