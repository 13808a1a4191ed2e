"""A toy input kind, a toy architecture, a serving check and a submission backend, defined and
registered in this file alone (no edit to the package), as docs/extending.md describes: the kind and
the architecture train, checkpoint, serve and predict end to end; the CLI loads them from the
environment and submits through the backend.

The toy kind reads a point written as text, "x;y" (one column of strings, which no built-in kind
parses), standardises its two coordinates with the training split's statistics, and serves a
record whose field is that text. The toy architecture is a one-hidden-layer network whose width
the spec sets (model.width). Registering adds `data.point` and `model.arch: toy` to the spec's
schema; unregistering takes them out again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from pydantic import Field
from torch import nn

from orchestrator import extensions
from orchestrator.cli import backends
from orchestrator.cli.backends import Backend, SubmitRequest
from orchestrator.data import kinds
from orchestrator.data.kinds import ColumnCheck, InputKind, TrainSplit
from orchestrator.errors import DataError, OrchestratorError
from orchestrator.models import registry
from orchestrator.models.registry import Architecture, ModelInputs
from orchestrator.serve.guard import register_check, unregister_check
from orchestrator.serve.schemas import ClientError
from orchestrator.spec import ArchSpec, SpecModel

EXTENSION = "tests.test_extending:register"


# ------------------------------------------------------------------------------ the toy kind


class PointSpec(SpecModel):
    column: str = Field(description="Column holding each row's point as text, 'x;y'.")


def parse_points(values, column: str) -> np.ndarray:
    out = np.zeros((len(values), 2), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            x, y = (float(p) for p in str(v).split(";"))
        except ValueError:
            raise ValueError(f"column {column!r}: row {i}: expected a point 'x;y', got {v!r}") from None
        out[i] = (x, y)
    return out


@dataclass
class PointInput(InputKind):
    name = "point"
    section = PointSpec
    section_description = "A point per row, written 'x;y', instead of tabular features."

    column: str = ""
    means: tuple = (0.0, 0.0)
    stds: tuple = (1.0, 1.0)

    @classmethod
    def check_type(cls, check: ColumnCheck, column: str, t: pa.DataType) -> str:
        if not pa.types.is_string(t) and not pa.types.is_large_string(t):
            raise DataError(f"{check.src}: column {column!r} (data.point.column) has type {t}; it must hold 'x;y' text")
        return ""

    @classmethod
    def fit(cls, train: TrainSplit) -> PointInput:
        column = train.spec.data.point.column
        points = parse_points(train.values(column), column)
        return cls(column=column, means=list(points.mean(axis=0)), stds=list(points.std(axis=0)))

    def columns(self) -> list[str]:
        return [self.column]

    def input_shape(self) -> list[int]:
        return [2]

    def transform(self, df: pd.DataFrame, *, truncate: bool = True) -> dict[str, np.ndarray]:
        points = parse_points(list(df[self.column]), self.column)
        return {"x": ((points - np.asarray(self.means)) / np.asarray(self.stds)).astype(np.float32)}

    def record_fields(self) -> dict[str, Any]:
        return {"f0": (str, Field(alias=self.column, description="a point, 'x;y'"))}

    def example(self) -> dict[str, Any]:
        return {self.column: f"{self.means[0]:.3f};{self.means[1]:.3f}"}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "column": self.column, "type": "string", "format": "x;y"}

    def note(self) -> str:
        return f"Input: a point. Each record's `{self.column}` is its coordinates as text, 'x;y'."


# ---------------------------------------------------------------------- the toy architecture


class ToySpec(ArchSpec):
    arch: Literal["toy"] = Field("toy", description="Architecture tag: toy, one hidden layer on a point.")
    width: int = Field(8, gt=0, le=1024, description="Hidden units.")

    def data_problems(self, data) -> list[str]:
        return [] if data.input_kind == "point" else ["model.arch: toy reads data.point only"]


def build_toy(spec: ToySpec, inputs: ModelInputs) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs.input_shape[0], spec.width), nn.ReLU(), nn.Linear(spec.width, inputs.num_outputs))


TOY = Architecture(name="toy", spec=ToySpec, build=build_toy, flatten=True, lengths=False)


# -------------------------------------------------------------------------- a serving check


def no_blocked_clients(guard, headers: dict, path: str):
    if headers.get(b"x-toy-client") == b"blocked":
        return ClientError(403, "this client is blocked")
    return None


# ------------------------------------------------------------------ a submission backend


def toy_backend(request: SubmitRequest) -> None:
    if request.given("kubeconfig"):
        raise OrchestratorError("--kubeconfig does not apply to the toy backend")
    print(f"toy backend: {request.spec_path.name} dry_run={request.dry_run} image={request.options['image']}")


def register_backend() -> None:
    backends.register(Backend("toy", toy_backend))


def register() -> None:
    """The extension: what ORCHESTRATOR_EXTENSIONS=tests.test_extending:register would call."""
    kinds.register(PointInput)
    registry.register(TOY)
    register_check(no_blocked_clients)


def unregister() -> None:
    unregister_check(no_blocked_clients)
    registry.unregister("toy")
    kinds.unregister("point")
    extensions.forget(EXTENSION)


@pytest.fixture
def extension():
    extensions.use(EXTENSION)
    yield
    unregister()


# ------------------------------------------------------------------------------------- tests


def blobs(n: int, seed: int) -> pd.DataFrame:
    """Two well-separated blobs of points, labelled by blob."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    xy = rng.normal(0, 0.5, (n, 2)) + np.where(label[:, None] == 1, [3.0, 3.0], [0.0, 0.0])
    return pd.DataFrame({"point": [f"{x:.4f};{y:.4f}" for x, y in xy], "label": np.where(label == 1, "b", "a")})


def write_spec(tmp_path) -> str:
    blobs(600, 0).to_csv(tmp_path / "points.csv", index=False)
    spec = {
        "name": "toy-points",
        "data": {"source": "points.csv", "label": "label", "point": {"column": "point"}},
        "model": {"arch": "toy", "width": 16},
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.01},
        "scaling": {"workers": 1},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_registering_adds_the_section_and_the_arch_to_the_spec_and_unregistering_takes_them_out(tmp_path):
    from orchestrator.spec import json_schema, load_spec

    before = json_schema()
    extensions.use(EXTENSION)
    try:
        schema = json_schema()
        assert "point" in schema["$defs"]["DataSpec"]["properties"]
        assert "ToySpec" in schema["$defs"]
        spec = load_spec(write_spec(tmp_path))
        assert spec.data.input_kind == "point" and spec.model.width == 16
        assert extensions.used() == [EXTENSION]
    finally:
        unregister()
    assert json_schema() == before and extensions.used() == []


def test_the_cli_loads_extensions_from_the_environment_and_submits_through_a_backend_one_registers(tmp_path):
    from tests.conftest import run_cli

    spec = write_spec(tmp_path)
    unknown = run_cli("validate", str(spec))
    assert unknown.returncode == 2 and "data.point: unknown field" in unknown.stderr, unknown.stderr
    env = {"ORCHESTRATOR_EXTENSIONS": f"{EXTENSION},tests.test_extending:register_backend", "ORCHESTRATOR_SUBMIT_BACKEND": "toy"}
    assert run_cli("validate", str(spec), env=env).returncode == 0
    sent = run_cli("submit", str(spec), "--dry-run", "--image", "img:1", env=env)
    assert sent.returncode == 0 and sent.stdout.strip() == "toy backend: toy.yaml dry_run=True image=img:1", sent.stdout + sent.stderr
    refused = run_cli("submit", str(spec), "--kubeconfig", "k", env=env)
    assert refused.returncode == 1 and "error: --kubeconfig does not apply to the toy backend" in refused.stderr, refused.stderr
    nowhere = run_cli("submit", str(spec), env={**env, "ORCHESTRATOR_SUBMIT_BACKEND": "nope"})
    assert nowhere.returncode == 1, nowhere.stderr
    assert "ORCHESTRATOR_SUBMIT_BACKEND=nope: no such submission backend (known: ray-jobs, k8s, toy)" in nowhere.stderr
    broken = run_cli("validate", str(spec), env={"ORCHESTRATOR_EXTENSIONS": "tests.no_such_module:register"})
    assert broken.returncode == 1 and "extension 'tests.no_such_module:register': cannot import module" in broken.stderr, broken.stderr


@pytest.mark.ray
def test_a_toy_kind_and_arch_train_checkpoint_serve_and_predict_end_to_end(ray_session, extension, tmp_path):
    import httpx
    from ray import serve

    from orchestrator.batch.plan import plan_predict
    from orchestrator.batch.run import predict_files
    from orchestrator.serve.deployment import deploy
    from orchestrator.spec import ServeSpec
    from orchestrator.train.checkpoint import load_model
    from tests.conftest import run_here
    from tests.serve_support import free_port

    # train: Ray Data tasks transform the points and a Ray Train worker fits the toy model
    result = run_here("train", write_spec(tmp_path), tmp_path / "runs")
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["test"]["test_accuracy"] > 0.95, summary
    assert "inputs=[2]" in result.console_text

    # checkpoint: the fitted state is the kind's own, rebuilt through the registries
    checkpoint = run / "best_checkpoint"
    saved = json.loads((checkpoint / "preprocessing.json").read_text())
    assert saved["input"]["kind"] == "point" and saved["input"]["column"] == "point"
    loaded = load_model(checkpoint)
    assert isinstance(loaded.preprocessor.input, PointInput) and isinstance(loaded.model, nn.Sequential)

    # serve: a Serve replica (another process) calls the extension before it loads the checkpoint
    port = free_port()
    url = deploy(checkpoint, ServeSpec(port=port, cpus_per_replica=0.25), name="toy-points")
    try:
        meta = httpx.get(f"{url}/metadata", timeout=30).json()
        assert meta["input"] == {"kind": "point", "column": "point", "type": "string", "format": "x;y"}
        answer = httpx.post(f"{url}/predict", json=[{"point": "0.1;-0.2"}, {"point": "3.1;2.9"}], timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == ["a", "b"]
        bad = httpx.post(f"{url}/predict", json={"point": "here"}, timeout=60)
        assert bad.status_code == 422 and "expected a point 'x;y'" in bad.text, bad.text
        blocked = httpx.post(f"{url}/predict", json={"point": "0;0"}, headers={"x-toy-client": "blocked"}, timeout=60)
        assert blocked.status_code == 403 and blocked.json()["detail"] == "this client is blocked", blocked.text
    finally:
        serve.delete("toy-points")
        serve.shutdown()

    # predict a file: Ray Data actors (other processes) call the extension too
    fresh = blobs(50, 1)
    fresh[["point"]].to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "predicted.csv"
    stats = predict_files(plan_predict(checkpoint, tmp_path / "new.csv", out, classes=["a", "b"]))
    assert stats["rows"] == 50 and stats["failed"] == 0, stats
    predicted = pd.read_csv(out)
    assert (predicted["prediction"] == fresh["label"]).mean() > 0.95
