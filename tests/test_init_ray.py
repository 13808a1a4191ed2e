"""`orchestrator init DATA` on each example's data and on a CSV of our own (a regression with a
categorical column, missing values and an id): the spec it writes validates with its data and
trains. Training uses the spec as written but for train.epochs (1 here, 20 as written), in this
process on the session's Ray; the text and image-file corpora are cut to their first rows of each
class. Two of the seven are not trained here: their specs equal one that is, but for the data
section (SAME_AS), and the data path each stands for trains in other tests (digits arrays in
test_train_ray, a numeric table in most of them); each training costs a Ray Train start."""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from orchestrator.cli import run as run_commands
from orchestrator.data.corpora import write_corpus
from orchestrator.pipeline import train_job
from orchestrator.spec import load_spec
from orchestrator.ui import make_console

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _houses(path):
    rng = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame(
        {
            "customer_id": range(n),
            "age": rng.integers(18, 80, n).astype(float),
            "city": rng.choice(["oslo", "rome", "lima"], n),
            "income": rng.normal(50, 10, n),
        }
    )
    df.loc[::7, "age"] = np.nan
    df["price"] = 3 * df["income"] + rng.normal(0, 5, n) + (df["city"] == "rome") * 20
    df.to_csv(path, index=False)


# data file -> (model.arch, task, input kind) that init must choose
EXPECTED = {
    "breast_cancer.parquet": ("mlp", "classification", "table"),
    "digits.parquet": ("cnn", "classification", "image"),
    "diabetes.parquet": ("mlp", "regression", "table"),
    "elnino.parquet": ("rnn", "regression", "series"),
    "docstrings.parquet": ("rnn", "classification", "text"),
    "digits-png.parquet": ("cnn", "classification", "image"),
    "houses.csv": ("mlp", "regression", "table"),
}
# data file -> the trained file whose spec it equals but for its data section
SAME_AS = {"digits.parquet": "digits-png.parquet", "diabetes.parquet": "houses.csv"}


def test_init_writes_a_spec_that_validates_and_trains_for_each_example_and_a_csv(ray_session, data_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("breast_cancer.parquet", "digits.parquet", "diabetes.parquet"):
        (data / name).write_bytes((data_dir / name).read_bytes())
    write_corpus("series:elnino", data / "elnino.parquet")
    # the text and image-file corpora cut to their first rows (the same columns, so the same spec)
    # to keep this test short: training on all 6,600 texts or 1,797 PNG files took most of 4 minutes
    for name, per_class in (("text:docstrings", 50), ("images:digits-png", 20)):
        path = data / f"{name.split(':')[1]}.parquet"
        write_corpus(name, path)
        pd.read_parquet(path).groupby("label").head(per_class).to_parquet(path, index=False)
    _houses(data / "houses.csv")
    specs = tmp_path / "specs"
    # the commands in this process (typer's runner): two subprocesses per file cost about 40 s here
    app, cli = typer.Typer(), CliRunner()
    run_commands.register(app)
    written, trained = {}, []
    for file, (arch, task, kind) in EXPECTED.items():
        out = specs / file.replace(".", "-").replace("-parquet", ".yaml").replace("-csv", ".yaml")
        r = cli.invoke(app, ["init", str(data / file), "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert cli.invoke(app, ["validate", str(out)]).exit_code == 0
        spec = load_spec(out)
        assert (spec.model.arch, spec.data.input_kind) == (arch, kind), (file, spec.model.arch, spec.data.input_kind)
        if file == "houses.csv":
            assert "left out: 'customer_id': an id" in r.output and spec.data.categorical == ["city"] and spec.data.label == "price"
        written[file] = yaml.safe_load(out.read_text())
        if file in SAME_AS:
            continue
        d = yaml.safe_load(out.read_text())
        d["train"]["epochs"] = 1
        short = out.with_name(out.stem + "-1epoch.yaml")
        short.write_text(yaml.safe_dump(d))
        t0 = time.monotonic()
        result = train_job(load_spec(short), short, output=tmp_path / "runs", console=make_console(file=io.StringIO()))
        print(f"{file}: trained in {time.monotonic() - t0:.1f} s")
        metric = "test_accuracy" if task == "classification" else "test_rmse"
        assert metric in result.test_metrics and np.isfinite(result.test_metrics[metric]), (file, result.test_metrics)
        trained.append(file)
    assert len(trained) == len(EXPECTED) - len(SAME_AS)
    for file, twin in SAME_AS.items():
        assert twin in trained and EXPECTED[file][:2] == EXPECTED[twin][:2]
        spec, twin_spec = ({k: v for k, v in written[f].items() if k not in ("name", "data")} for f in (file, twin))
        assert spec == twin_spec, (file, twin)
