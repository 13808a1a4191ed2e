"""Simple baselines for the text, time-series and image-file example datasets, on the project's splits.

    .venv/bin/python bench/quality_baselines.py [--out FILE]                      # baselines only
    .venv/bin/python bench/quality_baselines.py --with-orchestrator [--jobs NAME...] [--out FILE]

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

With --with-orchestrator it also trains each example job (jobs/*.yaml, the spec's own settings)
with `orchestrator train JOB -o TMP` in a subprocess, reads the winner's held-out test metrics from
the run directory's test_metrics.json (never the console), and prints one table per job: the
baseline, the orchestrator's result, the bar issue 13 sets and pass/fail. The bars:

- text jobs:   test accuracy >= TF-IDF + logistic regression's test accuracy - 0.03
- series job:  test RMSE <= 0.8 x the naive last-value forecast's test RMSE
- image job:   test accuracy >= 0.97 (what the array-based digits CNN reaches)

Both sides use the same split (the orchestrator's own; each table says whether the test row
counts agree). Results go to bench/results/quality.json; with --jobs NAME... only those jobs are
trained and the other jobs' rows already in that file are kept.
Every job starts Ray, so on a shared machine run this under the shared lock.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
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
RESULTS_WITH_JOBS = ROOT / "bench" / "results" / "quality.json"


def chronological_windows(
    values: np.ndarray, window: int = WINDOW, horizon: int = HORIZON, fractions: tuple[float, float, float] = FRACTIONS
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The project's series split: windows over the whole series, cut in time order by `fractions`,
    with the window + horizon - 1 windows after each boundary dropped, so no validation or test window
    touches a training-period point (orchestrator.data.sequences). Returns {split: (X [m, window], y [m])}.
    """
    from orchestrator.data.sequences import chronological_split, make_windows

    x, y = make_windows(values, window, horizon)
    ranges = chronological_split(len(x), fractions, window, horizon)
    return {name: (x[r.start : r.stop, :, 0].astype(np.float64), y[r.start : r.stop].astype(np.float64)) for name, r in ranges.items()}


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
        x = np.stack([np.asarray(Image.open(root / p).convert("L"), dtype=np.float64).ravel() / 255.0 for p in table["path"]])
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
        "logreg_pixels": {
            "C": c,
            "validation_accuracy": val_acc,
            "test_accuracy": float((model.predict(x[split == 2]) == y[split == 2]).mean()),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


# job file -> (baseline key in the results, how the bar is computed); the bars of issue 13.
JOBS = {
    "series-lstm": "series_elnino",
    "digits-png-cnn": "images",
    "text-lstm": "text",
    "text-transformer": "text",
}
TEXT_MARGIN = 0.03  # text: within 3 accuracy points of TF-IDF + logistic regression, or above
SERIES_RATIO = 0.8  # series: test RMSE at least 20% below the naive last-value forecast
IMAGE_BAR = 0.97  # images: the array-based digits CNN's accuracy


def train_job(job: str, out: Path, timeout_s: float = 3600) -> dict:
    """`orchestrator train jobs/JOB.yaml -o OUT` in a subprocess; the run directory's test metrics."""
    exe = Path(sys.executable).with_name("orchestrator")
    cmd = [str(exe), "train", str(ROOT / "jobs" / f"{job}.yaml"), "-o", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    seconds = round(time.perf_counter() - t0, 1)
    runs = sorted(p for p in out.iterdir() if (p / "test_metrics.json").is_file()) if out.is_dir() else []
    if r.returncode not in (0, 3) or not runs:  # 3: trained, but not promoted by the job's own gate
        tail = (r.stdout + r.stderr)[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode} without test metrics:\n{tail}")
    run = runs[-1]
    return {
        "test": json.loads((run / "test_metrics.json").read_text()),
        "summary": json.loads((run / "summary.json").read_text()),
        "seconds": seconds,
        "exit_code": r.returncode,
    }


def judge(job: str, baselines: dict, outcome: dict) -> dict:
    """One job's comparison row: the baseline, the orchestrator's test score, the bar and pass/fail."""
    test = outcome["test"]
    base = baselines[JOBS[job]]
    if JOBS[job] == "text":
        b = base["tfidf_logreg"]["test_accuracy"]
        row = {
            "metric": "test accuracy",
            "baseline": "TF-IDF + logistic regression",
            "baseline_value": b,
            "orchestrator": test["test_accuracy"],
            "bar": f">= {b - TEXT_MARGIN:.4f} (baseline - {TEXT_MARGIN})",
            "passed": test["test_accuracy"] >= b - TEXT_MARGIN,
        }
    elif JOBS[job].startswith("series"):
        b = base["naive_last_value"]["test_rmse"]
        row = {
            "metric": "test RMSE",
            "baseline": "naive last value",
            "baseline_value": b,
            "orchestrator": test["test_rmse"],
            "bar": f"<= {SERIES_RATIO * b:.4f} ({SERIES_RATIO} x baseline)",
            "passed": test["test_rmse"] <= SERIES_RATIO * b,
            "ridge_on_window_test_rmse": base["ridge_on_window"]["test_rmse"],
        }
    else:
        b = base["logreg_pixels"]["test_accuracy"]
        row = {
            "metric": "test accuracy",
            "baseline": "logistic regression on pixels",
            "baseline_value": b,
            "orchestrator": test["test_accuracy"],
            "bar": f">= {IMAGE_BAR}",
            "passed": test["test_accuracy"] >= IMAGE_BAR,
        }
    counts = base.get("rows") or base.get("windows")  # the baseline's split, to check it is the same one
    best_val = outcome["summary"].get("best_validation") or {}  # the checkpoint the job kept, chosen on validation
    row.update(
        job=job,
        test_rows=test.get("test_rows"),
        baseline_test_rows=counts["test"],
        epochs_run=outcome["summary"].get("epochs_run"),
        best_epoch=outcome["summary"].get("best_epoch"),
        best_validation=best_val,
        train_seconds=outcome["seconds"],
        promoted_by_job_gate=outcome["summary"].get("promoted"),
    )
    return row


def print_table(row: dict) -> None:
    same = "same split" if row["test_rows"] == row["baseline_test_rows"] else f"baseline has {row['baseline_test_rows']}"
    print(f"\n{row['job']} ({row['metric']}, {row['test_rows']} test rows, {same})")
    width = 40
    print(f"  {'baseline: ' + row['baseline']:<{width}} {row['baseline_value']:.4f}")
    print(f"  {'orchestrator train':<{width}} {row['orchestrator']:.4f}   ({row['epochs_run']} epochs, {row['train_seconds']} s)")
    print(f"  {'bar':<{width}} {row['bar']}")
    print(f"  {'result':<{width}} {'PASS' if row['passed'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results file (default {RESULTS.relative_to(ROOT)}, or {RESULTS_WITH_JOBS.relative_to(ROOT)} with --with-orchestrator)",
    )
    ap.add_argument("--with-orchestrator", action="store_true", help="also train the example jobs and compare")
    ap.add_argument(
        "--jobs",
        nargs="+",
        choices=sorted(JOBS),
        default=sorted(JOBS),
        metavar="NAME",
        help=f"example jobs to train with --with-orchestrator (default all: {', '.join(sorted(JOBS))})",
    )
    a = ap.parse_args(argv)
    out = a.out or (RESULTS_WITH_JOBS if a.with_orchestrator else RESULTS)
    needed = {JOBS[j] for j in a.jobs} if a.with_orchestrator else {"text", "series_co2", "series_elnino", "images"}
    builders = {
        "text": text_baseline,
        "series_co2": lambda: series_baseline("co2"),
        "series_elnino": lambda: series_baseline("elnino"),
        "images": image_baseline,
    }
    results = {key: build() for key, build in builders.items() if key in needed}
    for key, r in results.items():
        print(key, json.dumps(r, indent=None))
    meta = {"python": platform.python_version(), "machine": platform.machine(), "seed": SEED, "fractions": FRACTIONS}
    report: dict = {"meta": meta, "results": results}
    if a.with_orchestrator:
        comparisons = []
        with tempfile.TemporaryDirectory(prefix="quality-runs-") as tmp:
            for job in a.jobs:
                row = judge(job, results, train_job(job, Path(tmp) / job))
                print_table(row)
                comparisons.append(row)
        print(f"\n{sum(r['passed'] for r in comparisons)}/{len(comparisons)} jobs meet their bar")
        # --jobs runs a subset: the other jobs' rows (and the baselines they were judged against) are kept
        earlier = json.loads(out.read_text()) if out.is_file() else {}
        ran = {r["job"] for r in comparisons}
        kept = [r for r in earlier.get("comparisons", []) if r["job"] not in ran]
        report["results"] = {**earlier.get("results", {}), **results}
        report["comparisons"] = sorted([*kept, *comparisons], key=lambda r: r["job"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
