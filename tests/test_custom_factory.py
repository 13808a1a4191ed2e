"""A custom model's factory is found the same way by every process that rebuilds the model: on
Python's path, else in the spec's folder recorded in the checkpoint (no Ray here)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import torch

from orchestrator.data.kinds.table import TableInput
from orchestrator.errors import OrchestratorError
from orchestrator.models.build import build_model
from orchestrator.train.checkpoint import write_checkpoint
from tests.conftest import ROOT
from tests.jobs_support import FACTORY


@pytest.fixture
def spec_folder(tmp_path, monkeypatch):
    """A folder with a spec's model module in it, a working directory elsewhere, and sys.path and
    sys.modules restored afterwards."""
    folder = tmp_path / "project"
    folder.mkdir()
    name = f"mymodels_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(FACTORY)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    yield folder, name
    sys.modules.pop(name, None)


def test_the_spec_folder_is_searched_after_pythons_path(spec_folder):
    folder, name = spec_folder
    spec = {"arch": "custom", "factory": f"{name}:build", "kwargs": {"width": 4}}
    with pytest.raises(OrchestratorError) as e:
        build_model(spec, [5], 2, 0.0)
    assert f"cannot import module {name!r}" in str(e.value) and "looked in Python's path" in str(e.value)
    with pytest.raises(OrchestratorError) as e:
        build_model(spec, [5], 2, 0.0, code_dirs=[str(folder.parent / "not-there")])
    assert str(folder.parent / "not-there") in str(e.value)
    model = build_model(spec, [5], 2, 0.0, code_dirs=[str(folder)])
    assert model(torch.zeros(3, 5)).shape == (3, 2)
    assert sys.path[-1] == str(folder)  # appended: never shadows an installed module


def test_a_checkpoint_of_a_custom_model_loads_in_a_fresh_process_from_another_folder(spec_folder, tmp_path):
    folder, name = spec_folder
    sys.path.append(str(folder))
    model_spec = {"arch": "custom", "factory": f"{name}:build", "kwargs": {}}
    model = build_model(model_spec, [5], 2, 0.0)
    ckpt = tmp_path / "ckpt"
    from orchestrator.data.preprocess import Preprocessor

    write_checkpoint(
        ckpt,
        state={"model": model.state_dict(), "optimizer": {}, "epoch": 1},
        model_meta={
            "model": model_spec,
            "input_shape": [5],
            "num_outputs": 2,
            "dropout": 0.0,
            "task": "classification",
            "job": "custom",
            "code_dirs": [str(folder)],
        },
        preprocessing=Preprocessor(
            task="classification", label="y", input=TableInput(numeric=[f"f{i}" for i in range(5)], means=[0.0] * 5, stds=[1.0] * 5)
        ).to_dict(),
        metrics={},
    )
    probe = "import sys; from orchestrator.train.checkpoint import load_model; m = load_model(sys.argv[1]); print(type(m.model).__name__)"
    r = subprocess.run(
        [sys.executable, "-c", probe, str(ckpt)],
        cwd=tmp_path / "elsewhere",
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "Sequential"
