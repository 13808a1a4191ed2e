"""report.html and PNGs for a run: learning curves, the winner's losses, best-so-far over time,
hyperparameters vs metric, and the test split's details (a confusion matrix and per-class scores
for a classification; predicted against true values, residuals and forecasts for a regression).
A chart with nothing to draw is left out, not drawn empty."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orchestrator.spec import LOSS, METRIC_MODES, TRAIN_PREFIX, VAL_PREFIX  # noqa: E402

WIDE = 50  # a positive axis whose values span more than this factor is drawn on a log scale


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _log_if_wide(ax, values: Sequence[Any], axis: str = "y") -> None:
    if values and min(values) > 0 and max(values) / min(values) > WIDE:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def learning_curves(trials: list[dict], metric: str, winner: Optional[str]):
    curves = [(t, [(e["epoch"], e[metric]) for e in t["epochs"] if _finite(e.get(metric)) and "epoch" in e]) for t in trials]
    curves = [(t, pts) for t, pts in curves if pts]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for t, pts in curves:
        x, y = zip(*pts)
        is_winner = t["trial_id"] == winner
        ax.plot(
            x,
            y,
            marker="o",
            ms=3,
            lw=2.5 if is_winner else 1,
            alpha=1 if is_winner else 0.6,
            label=f"{t['trial_id']}{' (winner)' if is_winner else ''}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, every trial" if len(curves) > 1 else f"{metric} per epoch")
    _log_if_wide(ax, [v for _, pts in curves for _, v in pts])
    ax.grid(alpha=0.3)
    if 1 < len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def loss_curves(trials: list[dict], winner: Optional[str]):
    """The winner's training and validation loss per epoch (the one trial of a train run)."""
    t = next((t for t in trials if t["trial_id"] == winner), trials[0] if len(trials) == 1 else None)
    if t is None:
        return None
    lines = {
        name: [(e["epoch"], e[name]) for e in t["epochs"] if _finite(e.get(name)) and "epoch" in e]
        for name in (TRAIN_PREFIX + LOSS, VAL_PREFIX + LOSS)
    }
    if not any(lines.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, pts in lines.items():
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"losses of {t['trial_id']}" + (" (the winner)" if len(trials) > 1 else ""))
    _log_if_wide(ax, [v for pts in lines.values() for _, v in pts])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_matrix(details: dict):
    """Rows: true class; columns: predicted; colour: the share of the true class's rows."""
    import numpy as np

    m = np.asarray(details["confusion"], dtype=float)
    if m.size == 0 or m.sum() == 0:
        return None
    classes = [c if len(c) <= 14 else c[:13] + "…" for c in details["classes"]]
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = min(3 + 0.45 * n, 12)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix, test split ({int(m.sum())} rows; colour: share of the true class)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def residuals(details: dict):
    """Predicted against true values, and the residuals' histogram (every forecast step pooled)."""
    import numpy as np

    true, pred = np.asarray(details["true"], dtype=float).reshape(-1), np.asarray(details["predicted"], dtype=float).reshape(-1)
    if true.size == 0:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.scatter(true, pred, s=8, alpha=0.5)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    a.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="predicted = true")
    a.set_xlabel("true value")
    a.set_ylabel("predicted value")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    err = pred - true
    b.hist(err, bins=min(50, max(10, err.size // 10)))
    b.axvline(0, color="grey", lw=1, ls="--")
    b.set_xlabel("residual (predicted - true)")
    b.set_ylabel("rows")
    b.grid(alpha=0.3)
    shown = f"{len(details['true'])} of {details['rows']}" if details["rows"] > len(details["true"]) else f"{details['rows']}"
    fig.suptitle(f"test split: {shown} rows" + (f", {details['horizon']} steps each" if details.get("horizon", 1) > 1 else ""))
    fig.tight_layout()
    return fig


def forecasts(details: dict, windows: int = 4):
    """A few test windows of a multi-step forecast: the true next values and the forecast."""
    if details.get("horizon", 1) <= 1 or not details["true"]:
        return None
    n = len(details["true"])
    picks = sorted({round(i * (n - 1) / max(windows - 1, 1)) for i in range(min(windows, n))})
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3), squeeze=False)
    for ax, i in zip(axes[0], picks):
        steps = range(1, len(details["true"][i]) + 1)
        ax.plot(steps, details["true"][i], marker="o", ms=3, label="true")
        ax.plot(steps, details["predicted"][i], marker="x", ms=4, label="forecast")
        ax.set_xlabel("steps ahead")
        ax.set_title(f"window {i + 1} of {n}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def best_so_far(trials: list[dict], metric: str):
    mode = METRIC_MODES[metric]
    pts = sorted(
        (e["time_total_s_abs"], e[metric])
        for t in trials
        for e in t["epochs"]
        if _finite(e.get(metric)) and _finite(e.get("time_total_s_abs"))
    )
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    best, xs, ys = None, [], []
    for x, y in pts:
        best = y if best is None else (min(best, y) if mode == "min" else max(best, y))
        xs.append(x)
        ys.append(best)
    ax.step(xs, ys, where="post")
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.4)
    _log_if_wide(ax, [p[1] for p in pts])
    ax.set_xlabel("seconds since the search started")
    ax.set_ylabel(f"best {metric} so far")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def params_vs_metric(trials: list[dict], metric: str, params: list[str]):
    drawn = {p for p in params for t in trials if p in t["config"] and any(_finite(e.get(metric)) for e in t["epochs"])}
    params = [p for p in params if p in drawn]
    if not params:
        return None
    n = len(params)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    mode = METRIC_MODES[metric]
    for i, p in enumerate(params):
        ax = axes[i // cols][i % cols]
        xs, ys, colors = [], [], []
        for t in trials:
            vals = [e[metric] for e in t["epochs"] if _finite(e.get(metric))]
            if not vals or p not in t["config"]:
                continue
            v = t["config"][p]
            xs.append(v if _finite(v) else str(v))
            ys.append(min(vals) if mode == "min" else max(vals))
            colors.append(len(vals))
        if xs and all(_finite(x) for x in xs):
            ax.scatter(xs, ys, c=colors, cmap="viridis")
            _log_if_wide(ax, xs, "x")
        elif xs:
            labels = sorted(set(map(str, xs)))
            ax.scatter([labels.index(str(x)) for x in xs], ys, c=colors, cmap="viridis")
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set_xlabel(p)
        ax.set_ylabel(f"best {metric}")
        ax.grid(alpha=0.3)
    for j in range(len(params), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("hyperparameters vs metric (colour: epochs run)")
    fig.tight_layout()
    return fig


def _png(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = buf.getvalue()
    path.write_bytes(data)
    return base64.b64encode(data).decode()


def save_png(fig, path: Path) -> Path:
    """Write one chart as a PNG file (evaluate's plots)."""
    _png(fig, path)
    return path


def write_report(
    run_dir: Path, *, title: str, trials: list[dict], metric: str, winner: Optional[str], summary: dict, details: Optional[dict] = None
) -> Path:
    """Writes report.html and, where they have something to draw, learning_curves.png, losses.png,
    best_so_far.png, params.png, confusion_matrix.png, residuals.png and forecasts.png (each
    embedded in the page too). `details`: the test split's (train/metrics.py split_details)."""
    # time axis: seconds since the first result of the search (Tune stamps each result)
    stamps = [e["timestamp"] for t in trials for e in t["epochs"] if _finite(e.get("timestamp"))]
    t0 = min(stamps) if stamps else 0
    for t in trials:
        for e in t["epochs"]:
            if _finite(e.get("timestamp")):
                e["time_total_s_abs"] = e["timestamp"] - t0
            elif _finite(e.get("elapsed_s")):
                e["time_total_s_abs"] = e["elapsed_s"]
    params = sorted({k for t in trials for k in t["config"]})
    charts = {
        "learning_curves.png": lambda: learning_curves(trials, metric, winner),
        "losses.png": lambda: loss_curves(trials, winner),
        "best_so_far.png": lambda: best_so_far(trials, metric) if len(trials) > 1 else None,
        "params.png": lambda: params_vs_metric(trials, metric, params) if params else None,
    }
    if details and details.get("task") == "classification":
        charts["confusion_matrix.png"] = lambda: confusion_matrix(details)
    elif details:
        charts["residuals.png"] = lambda: residuals(details)
        charts["forecasts.png"] = lambda: forecasts(details)
    images = {}
    for name, draw in charts.items():
        fig = draw()
        if fig is not None:
            images[name] = _png(fig, run_dir / name)
    mode = METRIC_MODES[metric]

    def best_of(t: dict) -> Optional[float]:
        vals = [e[metric] for e in t["epochs"] if _finite(e.get(metric))]
        return (min(vals) if mode == "min" else max(vals)) if vals else None

    # best first (a trial with no metric last), the winner highlighted
    scored = [(best_of(t), t) for t in trials]
    ranked = sorted(scored, key=lambda bt: (bt[0] is None, 0 if bt[0] is None else (bt[0] if mode == "min" else -bt[0])))
    rows = []
    for rank, (best, t) in enumerate(ranked, 1):
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in t["config"].items())
        rows.append(
            f"<tr{' class=win' if t['trial_id'] == winner else ''}><td>{rank}</td><td>{html.escape(t['trial_id'])}</td><td>{html.escape(t['status'])}</td>"
            f"<td>{len(t['epochs'])}</td><td>{'' if best is None else f'{best:.4f}'}</td><td>{html.escape(cfg)}</td>"
            f"<td>{html.escape(t.get('error') or '')}</td></tr>"
        )
    summary_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items())
    imgs = "".join(
        f'<h2>{name[:-4].replace("_", " ")}</h2><img alt="{name}" src="data:image/png;base64,{b64}">' for name, b64 in images.items()
    )
    per_class = ""
    if details and details.get("per_class"):
        cells = "".join(
            f"<tr><td>{html.escape(c['class'])}</td><td>{c['precision']:.4f}</td><td>{c['recall']:.4f}</td><td>{c['f1']:.4f}</td>"
            f"<td>{c['support']}</td></tr>"
            for c in details["per_class"]
        )
        per_class = (
            "<h2>per class, test split</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>rows</th></tr>"
            f"{cells}</table>"
        )
    order = "best first" if len(trials) > 1 else "one run"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}}tr.win{{background:#e6ffe6}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(title)}</h1><table>{summary_rows}</table>{per_class}
<h2>trials by {html.escape(metric)} ({order})</h2><table><tr><th>#</th><th>trial</th><th>status</th><th>epochs</th><th>best {html.escape(metric)}</th><th>config</th><th>error</th></tr>
{"".join(rows)}</table>{imgs}</body></html>"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)
