"""Checkpoint layout, shared by training, evaluation and serving.

A checkpoint is a directory:
  state.pt            model/optimizer/scheduler state and epoch counters (tensors and plain values only)
  model.json          how to rebuild the network: the spec's model section, input shape, outputs, dropout,
                      the input kind (table, image, text, sequence, series), vocabulary size and max length,
                      and where a custom factory's module was looked for (code_dirs: the spec's folder)
  preprocessing.json  the preprocessing fitted on the training split
  metrics.json        the metrics of the epoch that wrote it

Loading always uses torch.load(weights_only=True): a checkpoint can carry no code.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator.data.preprocess import Preprocessor
from orchestrator.errors import CheckpointError
from orchestrator.models.build import build_model

STATE_FILE = "state.pt"
MODEL_FILE = "model.json"
PREPROCESSING_FILE = "preprocessing.json"
METRICS_FILE = "metrics.json"


def write_checkpoint(
    directory: str | os.PathLike,
    *,
    state: dict[str, Any],
    model_meta: dict[str, Any],
    preprocessing: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
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


def _read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is truncated or corrupt") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}; the checkpoint is corrupt")
    return data


def describe_error(e: Exception, limit: int = 200) -> str:
    """`Type: first sentence` of an exception, on one line (torch's errors run to paragraphs with ANSI codes)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split()).split(". ")[0]
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_model(directory: str | os.PathLike) -> LoadedModel:
    """Rebuild the network and its preprocessing from a checkpoint directory, ready for inference.

    Any file that is missing, truncated, corrupt or does not fit the others raises CheckpointError
    naming that file and the cause (a torn write, a tampered state.pt that holds code, weights of
    another shape).
    """
    d = Path(directory)
    missing = [f for f in (STATE_FILE, MODEL_FILE, PREPROCESSING_FILE) if not (d / f).is_file()]
    if missing:
        raise CheckpointError(f"{d}: not an orchestrator checkpoint (missing {', '.join(missing)})")
    meta = _read_json_file(d / MODEL_FILE)
    try:
        model = build_model(
            meta["model"],
            meta["input_shape"],
            meta["num_outputs"],
            meta.get("dropout", 0.0),
            vocab_size=meta.get("vocab_size"),
            max_length=meta.get("max_length"),
            code_dirs=meta.get("code_dirs") or (),
        )
    except Exception as e:  # a missing key or a value build_model cannot use
        raise CheckpointError(f"{d / MODEL_FILE}: cannot rebuild the network ({describe_error(e)})") from None
    try:
        pre = Preprocessor.from_dict(_read_json_file(d / PREPROCESSING_FILE))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{d / PREPROCESSING_FILE}: not a fitted preprocessing ({describe_error(e)})") from None
    if (d / STATE_FILE).stat().st_size == 0:
        raise CheckpointError(f"{d / STATE_FILE}: empty file; the checkpoint was not written completely")
    try:
        state = read_state(d)
    except Exception as e:  # truncated zip, or a pickle that weights_only refuses (code)
        raise CheckpointError(
            f"{d / STATE_FILE}: cannot load weights ({describe_error(e)}); the file is truncated, corrupt "
            "or holds more than tensors and plain values"
        ) from None
    try:
        model.load_state_dict(state["model"])
    except Exception as e:
        raise CheckpointError(f"{d / STATE_FILE}: the weights do not fit the network of {MODEL_FILE} ({describe_error(e)})") from None
    model.eval()
    metrics = _read_json_file(d / METRICS_FILE) if (d / METRICS_FILE).is_file() else {}
    return LoadedModel(model=model, preprocessor=pre, meta=meta, metrics=metrics, path=str(d))
