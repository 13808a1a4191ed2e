"""Text input through `orchestrator train` and `orchestrator run` on a real local Ray: the tokenizer
is fitted on the training split only and travels in the checkpoint; a transformer search runs with ASHA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from orchestrator.data.preprocess import assign_splits
from orchestrator.data.text import BpeTokenizer, tokenizer_from_state
from orchestrator.models.build import forward
from orchestrator.train.checkpoint import load_model
from tests.conftest import run_here

pytestmark = pytest.mark.ray

WORD = "zorblattix"  # appears only in rows that the hash split sends to test
FRACTIONS = (0.7, 0.15, 0.15)
VOCAB = 400


def _texts() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    good, bad = ["great", "lovely", "superb", "wonderful"], ["awful", "dreadful", "horrible", "poor"]
    filler = ["the", "movie", "was", "really", "quite", "and", "plot", "actors", "story", "scenes", "very", "long", "short"]
    rows = []
    for i in range(240):
        label = "pos" if i % 2 == 0 else "neg"
        words = [*rng.choice(filler, int(rng.integers(2, 9))), *rng.choice(good if label == "pos" else bad, 2)]
        rng.shuffle(words)
        rows.append((" ".join(words) + f" take {i}", label))
    # Rows with the distinctive word: only those whose hash split (data.seed 0) is test are kept.
    # The split hashes the row's kept columns (data.text.column and data.label), as computed here.
    candidates = pd.DataFrame([(f"{WORD} story {WORD} {i}", "pos" if i % 2 == 0 else "neg") for i in range(200)], columns=["text", "label"])
    test_only = candidates[assign_splits(candidates[["text", "label"]], 0, FRACTIONS) == 2]
    assert len(test_only) >= 15
    return pd.concat([pd.DataFrame(rows, columns=["text", "label"]), test_only], ignore_index=True)


def _spec(tmp_path: Path, df: pd.DataFrame, **sections) -> Path:
    df.to_parquet(tmp_path / "texts.parquet")
    d = {
        "name": "text-job",
        "data": {
            "source": "texts.parquet",
            "label": "label",
            "text": {"column": "text", "tokenizer": "bpe", "vocab_size": VOCAB, "max_length": 24},
        },
        "model": {"arch": "rnn", "hidden": 16, "embedding": 16},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "max_failures": 0},
        "scaling": {"workers": 1},
        "checkpoint": {"metric": "val_accuracy"},
        **sections,
    }
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _vocab(state: dict) -> set[str]:
    return set(json.loads(state["tokenizer_json"])["model"]["vocab"])


def test_bpe_text_job_trains_on_two_workers_and_its_tokenizer_never_saw_the_test_rows(ray_session, tmp_path):
    df = _texts()
    run_here("train", _spec(tmp_path, df, scaling={"workers": 2}), tmp_path / "runs")
    (run,) = (tmp_path / "runs").iterdir()
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["test_rows"] > 0 and 0.0 <= test["test_accuracy"] <= 1.0
    assert {m["world_size"] for m in json.loads((run / "metrics.json").read_text())} == {2}

    loaded = load_model(run / "best_checkpoint")
    pre = loaded.preprocessor
    assert pre.kind == "text" and loaded.meta["input_kind"] == "text" and loaded.meta["vocab_size"] == pre.input.vocab_size
    vocab = _vocab(pre.input.tokenizer)
    assert not any("zorb" in t or "blatt" in t for t in vocab), sorted(t for t in vocab if "z" in t)
    assert len(tokenizer_from_state(pre.input.tokenizer).tokens(WORD)) > 1
    # the control: a tokenizer fitted on every row would have learnt the word
    assert "Ġ" + WORD in _vocab(BpeTokenizer.fit(sorted(df["text"]), VOCAB).to_state())

    # the checkpoint replays its preprocessing: ids and lengths, and padding does not change a prediction
    inputs = {k: torch.from_numpy(v) for k, v in pre.transform_inputs(df.head(8)).items()}
    assert inputs["x"].dtype == torch.int64 and inputs["x"].shape == (8, 24)
    with torch.no_grad():
        out = forward(loaded.model, inputs, loaded.meta["model"])
        padded = loaded.model(inputs["x"], inputs["len"])  # all 24 positions, where forward() trims to the longest row
        assert int(inputs["len"].max()) < 24 and torch.allclose(out, padded, atol=1e-5)
    assert out.shape == (8, 2)


def test_a_transformer_search_over_layers_runs_to_the_end_with_asha(ray_session, tmp_path):
    spec = _spec(
        tmp_path,
        _texts(),
        model={"arch": "transformer", "d_model": 16, "heads": 2, "layers": 1, "ff": 32},
        tune={
            "num_samples": 3,
            "search": "random",
            "space": {"model.layers": {"choice": [1, 2]}},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        },
    )
    run_here("run", spec, tmp_path / "runs")
    (run,) = (tmp_path / "runs").iterdir()
    trials = json.loads((run / "trials.json").read_text())
    assert len(trials) == 3 and {t["status"] for t in trials} <= {"TERMINATED", "PRUNED"}, trials
    assert {t["config"]["model.layers"] for t in trials} <= {1, 2}
    winner = json.loads((run / "winner.json").read_text())
    loaded = load_model(run / "best_checkpoint")
    assert loaded.meta["model"]["layers"] == winner["config"]["model.layers"]
    assert len(loaded.model.encoder.layers) == winner["config"]["model.layers"]
    assert "test_accuracy" in json.loads((run / "test_metrics.json").read_text())
