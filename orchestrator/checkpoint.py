"""Checkpoint layout, shared by training, evaluation and serving.

A checkpoint is a directory:
  state.pt            model/optimizer/scheduler state and epoch counters (tensors and plain values only)
  model.json          how to rebuild the network: the spec's model section, input shape, outputs, dropout
  preprocessing.json  the preprocessing fitted on the training split
  metrics.json        the metrics of the epoch that wrote it

Loading always uses torch.load(weights_only=True): a checkpoint can carry no code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator.errors import OrchestratorError
from orchestrator.models import build_model
from orchestrator.preprocess import Preprocessor

STATE_FILE = "state.pt"
MODEL_FILE = "model.json"
PREPROCESSING_FILE = "preprocessing.json"
METRICS_FILE = "metrics.json"


def write_checkpoint(directory: str | os.PathLike, *, state: dict[str, Any], model_meta: dict[str, Any], preprocessing: dict[str, Any], metrics: dict[str, Any]) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(state, d / STATE_FILE)
    (d / MODEL_FILE).write_text(json.dumps(model_meta, indent=2))
    (d / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2))
    (d / METRICS_FILE).write_text(json.dumps(metrics, indent=2))


def read_state(directory: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    return torch.load(Path(directory) / STATE_FILE, map_location=map_location, weights_only=True)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocessor: Preprocessor
    meta: dict[str, Any]
    metrics: dict[str, Any]
    path: str


def load_model(directory: str | os.PathLike) -> LoadedModel:
    """Rebuild the network and its preprocessing from a checkpoint directory, ready for inference."""
    d = Path(directory)
    missing = [f for f in (STATE_FILE, MODEL_FILE, PREPROCESSING_FILE) if not (d / f).is_file()]
    if missing:
        raise OrchestratorError(f"{d}: not an orchestrator checkpoint (missing {', '.join(missing)})")
    meta = json.loads((d / MODEL_FILE).read_text())
    pre = Preprocessor.load(d / PREPROCESSING_FILE)
    model = build_model(meta["model"], meta["input_shape"], meta["num_outputs"], meta.get("dropout", 0.0))
    try:
        state = read_state(d)
    except Exception as e:
        raise OrchestratorError(f"{d / STATE_FILE}: cannot load weights: {e}") from None
    model.load_state_dict(state["model"])
    model.eval()
    metrics = json.loads((d / METRICS_FILE).read_text()) if (d / METRICS_FILE).is_file() else {}
    return LoadedModel(model=model, preprocessor=pre, meta=meta, metrics=metrics, path=str(d))
