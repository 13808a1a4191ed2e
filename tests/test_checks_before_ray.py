"""What a new user meets before Ray starts: `validate` reads the data and prints every problem at
once, `run` and `train` refuse bad data in seconds without starting Ray or leaving a run
directory, and `resume` of a run that has no search says so (no Ray here)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tests.conftest import ROOT, run_cli
from tests.processes import run_watching


def _spec(folder: Path, **data) -> Path:
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {"a": rng.normal(size=60), "b": rng.normal(size=60), "city": rng.choice(["oslo", "rome"], 60), "label": rng.choice(["p", "q"], 60)}
    ).to_parquet(folder / "table.parquet")
    d = {
        "name": "new-user",
        "data": {"source": "table.parquet", "label": "label", **data},
        "model": {"arch": "mlp", "hidden": [8]},
        "train": {"epochs": 1},
        "scaling": {"workers": 1},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_validate_reads_the_data_and_prints_every_problem_at_once(tmp_path):
    bad = _spec(tmp_path, label="target", features=["a", "height", "city"])
    r = run_cli("validate", str(bad))
    assert r.returncode == 2, r.stdout + r.stderr
    src = tmp_path / "table.parquet"
    lines = r.stderr.splitlines()
    assert lines[0] == f"✗ {bad}: the data does not fit the spec"
    assert f"    {src}: column 'target' (data.label) not found" in lines
    assert any(
        line.startswith(f"    {src}: column 'height' (data.features) not found; the file has ['a', 'b', 'city', 'label']") for line in lines
    ), lines
    assert "Traceback" not in r.stderr

    ok = run_cli("validate", "--no-data", str(bad))  # the spec alone is valid
    assert ok.returncode == 0 and "1 worker)" in ok.stdout, ok.stdout + ok.stderr

    good = _spec(tmp_path)
    r = run_cli("validate", str(good))
    assert r.returncode == 0, r.stderr
    assert f"✓ {good}: new-user (mlp, 1 worker, classification, 60 rows)" in r.stdout


def test_validate_refuses_one_class_and_too_few_rows(tmp_path):
    pd.DataFrame({"a": np.arange(50.0), "label": ["p"] * 50}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"a": np.arange(4.0), "label": ["p", "q"] * 2}).to_parquet(tmp_path / "tiny.parquet")
    for name, source in (("one", "one.csv"), ("tiny", "tiny.parquet")):
        (tmp_path / f"{name}.yaml").write_text(
            yaml.safe_dump({"name": name, "data": {"source": source, "label": "label"}, "model": {"arch": "mlp", "hidden": [4]}})
        )
    r = run_cli("validate", str(tmp_path / "one.yaml"), str(tmp_path / "tiny.yaml"))
    assert r.returncode == 2
    assert f"{tmp_path / 'one.csv'}: column 'label' (data.label) holds one class only ('p'); a classification needs two or more" in r.stderr
    assert (
        f"{tmp_path / 'tiny.parquet'}: 4 rows are too few for data.split (validation 0.15 x 4 = 0.6, test 0.15 x 4 = 0.6 rows)" in r.stderr
    )


def test_run_and_train_refuse_bad_data_before_ray_starts(tmp_path):
    bad = _spec(tmp_path, label="target", features=["a", "height"])
    exe = str(Path(sys.executable).parent / "orchestrator")
    for command in ("run", "train"):
        rc, out, started = run_watching(
            [exe, command, str(bad), "-o", str(tmp_path / "runs")], cwd=ROOT, env={**os.environ, "COLUMNS": "200"}
        )
        assert rc == 2, out
        assert "error: the data does not fit the spec (2 problems):" in out
        assert "column 'target' (data.label) not found" in out and "column 'height' (data.features) not found" in out
        ray = [p for p in started if any(n in " ".join(_cmdline(p)) for n in ("raylet", "gcs_server"))]
        assert not ray, "Ray was started for a job whose data does not fit"
        assert not (tmp_path / "runs").exists(), "a run directory was left for a job that never started"


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except Exception:
        return []


def test_resume_of_a_train_run_says_there_is_no_search(tmp_path):
    good = _spec(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text(good.read_text())
    (run / "run.json").write_text(json.dumps({"spec_path": str(good), "base_dir": str(tmp_path), "created": "x", "kind": "train"}))
    r = run_cli("resume", str(run))
    assert r.returncode == 1
    assert "a run of `orchestrator train` (one training, no search) has nothing to resume" in r.stderr
    assert "never started" not in r.stderr


def test_version_and_help_read_plainly():
    from importlib.metadata import version

    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"orchestrator {version('orchestrator')} (Ray {version('ray')}, torch {version('torch')})"
    for args in ((), ("run",), ("serve",), ("cluster", "local", "up")):
        h = run_cli(*args, "--help", env={"COLUMNS": "80"})
        assert h.returncode == 0, h.stderr
        assert "<bool>" not in h.stdout and "╭" not in h.stdout, h.stdout  # flags show no type; plain text, no boxes
        assert all(len(line) <= 80 for line in h.stdout.splitlines()), h.stdout


def test_missing_image_files_of_a_csv_are_named_before_ray(tmp_path):
    from orchestrator.data.preflight import MISSING_SHOWN, check_data
    from orchestrator.spec import load_spec

    (tmp_path / "imgs").mkdir()
    paths = [f"imgs/{i:03d}.png" for i in range(30)]
    for p in paths[:20]:
        (tmp_path / p).write_bytes(b"not read here: only whether it exists")
    pd.DataFrame({"path": paths, "label": ["a", "b"] * 15}).to_csv(tmp_path / "images.csv", index=False)
    d = {
        "name": "images",
        "data": {"source": "images.csv", "format": "csv", "label": "label", "image": {"column": "path", "shape": [1, 8, 8]}},
        "model": {"arch": "cnn"},
        "train": {"epochs": 1},
        "scaling": {"workers": 1},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(d))
    check = check_data(load_spec(tmp_path / "job.yaml"))
    (problem,) = check.problems
    shown = [str(tmp_path / p) for p in paths[20 : 20 + MISSING_SHOWN]]
    assert problem == (
        f"{tmp_path / 'images.csv'}: image file not found (column 'path'): {', '.join(shown)} (and {10 - MISSING_SHOWN} more of 30 rows)"
    ), problem


def test_class_weights_that_name_no_label_value_are_refused_before_ray(tmp_path):
    spec = _spec(tmp_path)
    d = yaml.safe_load(spec.read_text())
    d["train"]["class_weights"] = {"p": 2.0, "r": 3.0}
    spec.write_text(yaml.safe_dump(d))
    r = run_cli("validate", str(spec))
    assert r.returncode == 2, r.stdout + r.stderr
    assert (
        f"    {tmp_path / 'table.parquet'}: train.class_weights names 'r', no value of column 'label' (data.label); its values: 'p', 'q'"
    ) in r.stderr.splitlines(), r.stderr
