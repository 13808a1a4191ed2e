"""Small real checkpoints of every new input kind (text, sequence, series, image files), made without Ray Train.

Each builder fits a Preprocessor on its training rows by hand (a BPE tokenizer from
orchestrator.data.text for text), builds the model with build_model, trains it for a few steps in
plain torch and saves it with write_checkpoint exactly as a training run does. `offline` is what the
model itself says about rows, through the training-side transform.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
from PIL import Image

from orchestrator.data.kinds.image import ImageInput
from orchestrator.data.kinds.sequence import SequenceInput
from orchestrator.data.kinds.series import SERIES_TARGET, SeriesInput
from orchestrator.data.kinds.text import TextInput
from orchestrator.data.preprocess import Preprocessor
from orchestrator.data.sequences import make_windows
from orchestrator.data.text import BpeTokenizer
from orchestrator.models.build import build_model, forward
from orchestrator.train.checkpoint import load_model, write_checkpoint

GOOD = ["great", "lovely", "fine", "happy", "bright", "warm"]
BAD = ["awful", "grim", "sad", "cold", "broken", "dull"]
FILLER = ["the", "day", "was", "a", "very", "movie", "and", "it", "felt", "so", "quite", "really"]


def texts(n: int, seed: int) -> pd.DataFrame:
    """Short sentences; the label says which word pool their one sentiment word came from."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = "pos" if rng.random() < 0.5 else "neg"
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 7))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(GOOD if label == "pos" else BAD)))
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


def sequences(n: int, seed: int, features: int = 2, longest: int = 8) -> pd.DataFrame:
    """Variable-length lists of vectors; the target is the mean of the first feature minus the last step's second."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        steps = rng.normal([5.0, -2.0][:features], [2.0, 1.0][:features], size=(int(rng.integers(1, longest + 1)), features))
        rows.append({"readings": steps.round(3).tolist(), "y": float(steps[:, 0].mean() - steps[-1, -1])})
    return pd.DataFrame(rows)


def series_values(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (20 + 5 * np.sin(t / 6.0) + rng.normal(0, 0.3, n)).round(4)


def _fit(model, model_spec, inputs: dict, y: torch.Tensor, classification: bool, steps: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        out = forward(model, inputs, model_spec)
        loss = torch.nn.functional.cross_entropy(out, y) if classification else torch.nn.functional.mse_loss(out.reshape(y.shape), y)
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def _save(dest: Path, pre: Preprocessor, model_spec: dict, classification: bool, train: pd.DataFrame, steps: int = 40) -> Path:
    torch.manual_seed(0)
    model = build_model(model_spec, pre.input_shape, pre.num_outputs, 0.0, vocab_size=pre.vocab_size, max_length=pre.max_length)
    data = pre.transform(train)
    inputs = {k: torch.from_numpy(v) for k, v in data.items() if k != "y"}
    loss = _fit(model, model_spec, inputs, torch.from_numpy(data["y"]), classification, steps)
    write_checkpoint(
        dest,
        state={"model": model.state_dict(), "optimizer": {}, "epoch": 0},
        model_meta={
            "model": model_spec,
            "input_shape": pre.input_shape,
            "num_outputs": pre.num_outputs,
            "dropout": 0.0,
            "task": pre.task,
            "job": f"{pre.kind}-test",
            "input_kind": pre.kind,
            "vocab_size": pre.vocab_size,
            "max_length": pre.max_length,
        },
        preprocessing=pre.to_dict(),
        metrics={"epoch": 0, "train_loss": loss},
    )
    return Path(dest)


def text_checkpoint(dest: Path, max_length: int = 16) -> tuple[Path, pd.DataFrame]:
    """A transformer text classifier over a BPE tokenizer fitted on the training texts; returns (checkpoint, test rows)."""
    train, test = texts(240, seed=1), texts(40, seed=2)
    tok = BpeTokenizer.fit(train["text"].tolist(), 300)
    pre = Preprocessor(
        task="classification",
        label="label",
        input=TextInput(column="text", tokenizer=tok.to_state(), max_length=max_length, vocab_size=tok.vocab_size),
        classes=sorted(train["label"].unique().tolist()),
        train_rows=len(train),
    )
    spec = {"arch": "transformer", "d_model": 16, "heads": 2, "layers": 1, "ff": 32, "pooling": "cls"}
    return _save(dest, pre, spec, True, train), test


def sequence_checkpoint(dest: Path) -> tuple[Path, pd.DataFrame]:
    """A GRU regressor over sequences of 2-feature vectors (1..8 steps)."""
    train, test = sequences(200, seed=3), sequences(30, seed=4)
    steps = np.concatenate([np.asarray(r) for r in train["readings"]])
    pre = Preprocessor(
        task="regression",
        label="y",
        input=SequenceInput(
            column="readings", max_length=8, features=2, means=steps.mean(axis=0).tolist(), stds=steps.std(axis=0).tolist()
        ),
        target_mean=float(train["y"].mean()),
        target_std=float(train["y"].std(ddof=0)),
        train_rows=len(train),
    )
    spec = {"arch": "rnn", "cell": "gru", "hidden": 16, "layers": 1, "pooling": "last"}
    return _save(dest, pre, spec, False, train), test


def series_checkpoint(dest: Path, window: int = 6, horizon: int = 3) -> tuple[Path, pd.DataFrame]:
    """An LSTM forecaster on windows of one series; test rows are later windows (column `value`)."""
    values = series_values()
    x, y = make_windows(values, window, horizon)
    cut = 300
    head = values[: cut + window]

    def frame(xs, ys):
        return pd.DataFrame(
            {
                "value": [r[:, 0].tolist() for r in xs],
                SERIES_TARGET: [v.tolist() if horizon > 1 else float(v) for v in ys],
            }
        )

    train, test = frame(x[:cut], y[:cut]), frame(x[cut + window + horizon :], y[cut + window + horizon :])
    pre = Preprocessor(
        task="regression",
        label=SERIES_TARGET,
        input=SeriesInput(column="value", window=window, horizon=horizon, mean=float(head.mean()), std=float(head.std())),
        target_mean=float(head.mean()),
        target_std=float(head.std()),
        train_rows=len(train),
    )
    spec = {"arch": "rnn", "cell": "lstm", "hidden": 16, "layers": 1, "pooling": "last"}
    return _save(dest, pre, spec, False, train), test


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_checkpoint(dest: Path, folder: Path) -> tuple[Path, pd.DataFrame]:
    """A CNN on scikit-learn's digits written as 8x8 PNG files under `folder`, trained from their paths
    (image_source "path", relative to `folder`); test rows hold paths relative to `folder`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(300):
        name = f"d{i:04d}.png"
        (folder / name).write_bytes(png(digits.images[i] * (255.0 / 16.0)))
        rows.append({"path": name, "label": int(digits.target[i])})
    df = pd.DataFrame(rows)
    train, test = df.iloc[:260].reset_index(drop=True), df.iloc[260:].reset_index(drop=True)
    pre = Preprocessor(
        task="classification",
        label="label",
        input=ImageInput(column="path", shape=[1, 8, 8], source="path", root=str(folder)),
        classes=sorted(train["label"].unique().tolist()),
        train_rows=len(train),
    )
    pixels = pre.input.pixels(train["path"])
    pre.input.mean, pre.input.std = float(pixels.mean()), float(pixels.std())
    spec = {"arch": "cnn", "channels": [8], "hidden": 16}
    return _save(dest, pre, spec, True, train, steps=60), test


def offline(checkpoint: Path, rows: pd.DataFrame) -> tuple[list, Optional[np.ndarray]]:
    """(decoded predictions, class probabilities or None) of the checkpoint's own model on `rows`,
    through the training-side transform (image paths read by the preprocessor itself)."""
    loaded = load_model(checkpoint)
    inputs = {k: torch.from_numpy(v) for k, v in loaded.preprocessor.transform_inputs(rows).items()}
    with torch.no_grad():
        out = forward(loaded.model, inputs, loaded.meta["model"]).float()
    probs = torch.softmax(out, dim=1).numpy() if loaded.preprocessor.task == "classification" else None
    return loaded.preprocessor.decode(out.numpy()), probs
