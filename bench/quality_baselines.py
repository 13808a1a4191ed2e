"""Simple baselines for the text, time-series and image-file example datasets, on the project's splits.

    .venv/bin/python bench/quality_baselines.py [--out FILE]

For each offline corpus (orchestrator/data/corpora.py) it builds the data, makes the split the
project uses, fits a scikit-learn baseline on the training part (choosing its one regularisation
knob on validation) and reports the test score:

- text:docstrings   hash split (assign_splits, seed 0, 0.7/0.15/0.15); TF-IDF + logistic regression
                    test accuracy (and the majority-class rate, for scale)
- series:co2,       windows of 24, horizon 1, split 70/15/15 in time order with the project's gap after
  series:elnino     each boundary (no validation/test window touches a training-period point);
                    test RMSE of the naive last-value forecast and of Ridge on the window
- images:digits-png the PNG files read back with PIL; hash split of the (path, label) table;
                    logistic regression on the pixels, test accuracy

One function per dataset returns a dict; results go to bench/results/quality_baselines.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.data.corpora import digits_png_folder, series_frame, text_frame  # noqa: E402
from orchestrator.data.preprocess import assign_splits  # noqa: E402

SEED = 0
FRACTIONS = (0.7, 0.15, 0.15)
WINDOW = 24
HORIZON = 1
RESULTS = ROOT / "bench" / "results" / "quality_baselines.json"


def chronological_windows(values: np.ndarray, window: int = WINDOW, horizon: int = HORIZON,
                          fractions: tuple[float, float, float] = FRACTIONS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The project's series split: windows over the whole series, cut in time order by `fractions`,
    with the window + horizon - 1 windows after each boundary dropped, so no validation or test window
    touches a training-period point (orchestrator.data.sequences). Returns {split: (X [m, window], y [m])}.
    """
    from orchestrator.data.sequences import chronological_split, make_windows

    x, y = make_windows(values, window, horizon)
    ranges = chronological_split(len(x), fractions, window, horizon)
    return {name: (x[r.start : r.stop, :, 0].astype(np.float64), y[r.start : r.stop].astype(np.float64))
            for name, r in ranges.items()}


def _rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(y)) ** 2)))


def text_baseline() -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t0 = time.perf_counter()
    df = text_frame()
    split = assign_splits(df, SEED, FRACTIONS)
    parts = {name: df[split == code] for code, name in enumerate(("train", "validation", "test"))}
    tr, va, te = parts["train"], parts["validation"], parts["test"]
    best = None
    for c in (1.0, 10.0, 100.0):
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
            LogisticRegression(C=c, max_iter=3000),
        )
        model.fit(tr["text"], tr["label"])
        val_acc = float((model.predict(va["text"]) == va["label"]).mean())
        if best is None or val_acc > best[0]:
            best = (val_acc, c, model)
    val_acc, c, model = best
    test_acc = float((model.predict(te["text"]) == te["label"]).mean())
    majority = tr["label"].value_counts().idxmax()
    return {
        "dataset": "text:docstrings",
        "rows": {k: len(v) for k, v in parts.items()},
        "classes": sorted(df["label"].unique().tolist()),
        "majority_class_test_accuracy": float((te["label"] == majority).mean()),
        "tfidf_logreg": {"C": c, "validation_accuracy": val_acc, "test_accuracy": test_acc},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def series_baseline(name: str = "co2") -> dict:
    from sklearn.linear_model import Ridge

    t0 = time.perf_counter()
    df = series_frame(name)
    w = chronological_windows(df["value"].to_numpy())
    (xtr, ytr), (xva, yva), (xte, yte) = w["train"], w["validation"], w["test"]
    best = None
    for alpha in (0.01, 0.1, 1.0, 10.0, 100.0):
        model = Ridge(alpha=alpha).fit(xtr, ytr)
        val = _rmse(model.predict(xva), yva)
        if best is None or val < best[0]:
            best = (val, alpha, model)
    val, alpha, model = best
    return {
        "dataset": f"series:{name}",
        "points": len(df),
        "window": WINDOW,
        "horizon": HORIZON,
        "windows": {k: len(v[1]) for k, v in w.items()},
        "naive_last_value": {"validation_rmse": _rmse(xva[:, -1], yva), "test_rmse": _rmse(xte[:, -1], yte)},
        "ridge_on_window": {"alpha": alpha, "validation_rmse": val, "test_rmse": _rmse(model.predict(xte), yte)},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def image_baseline(folder: Path | None = None) -> dict:
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder or tmp)
        table = digits_png_folder(root)
        x = np.stack([np.asarray(Image.open(root / p).convert("L"), dtype=np.float64).ravel() / 255.0
                      for p in table["path"]])
    y = table["label"].to_numpy()
    split = assign_splits(table, SEED, FRACTIONS)
    best = None
    for c in (0.1, 1.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x[split == 0], y[split == 0])
        val_acc = float((model.predict(x[split == 1]) == y[split == 1]).mean())
        if best is None or val_acc > best[0]:
            best = (val_acc, c, model)
    val_acc, c, model = best
    return {
        "dataset": "images:digits-png",
        "rows": {name: int((split == code).sum()) for code, name in enumerate(("train", "validation", "test"))},
        "image_size": [int(np.sqrt(x.shape[1]))] * 2,
        "logreg_pixels": {"C": c, "validation_accuracy": val_acc,
                          "test_accuracy": float((model.predict(x[split == 2]) == y[split == 2]).mean())},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    results = {
        "text": text_baseline(),
        "series_co2": series_baseline("co2"),
        "series_elnino": series_baseline("elnino"),
        "images": image_baseline(),
    }
    for key, r in results.items():
        print(key, json.dumps(r, indent=None))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "seed": SEED, "fractions": FRACTIONS}
    a.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
