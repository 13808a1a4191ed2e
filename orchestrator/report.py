"""report.html and PNGs for a run: learning curves, best-so-far over time, hyperparameters vs metric."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orchestrator.spec import METRIC_MODES  # noqa: E402


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def learning_curves(trials: list[dict], metric: str, winner: Optional[str]):
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in trials:
        pts = [(e["epoch"], e[metric]) for e in t["epochs"] if _finite(e.get(metric)) and "epoch" in e]
        if not pts:
            continue
        x, y = zip(*pts)
        is_winner = t["trial_id"] == winner
        ax.plot(x, y, marker="o", ms=3, lw=2.5 if is_winner else 1, alpha=1 if is_winner else 0.6,
                label=f"{t['trial_id']}{' (winner)' if is_winner else ''}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, every trial")
    ax.grid(alpha=0.3)
    if len(trials) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def best_so_far(trials: list[dict], metric: str):
    mode = METRIC_MODES[metric]
    pts = sorted(
        (e["time_total_s_abs"], e[metric]) for t in trials for e in t["epochs"] if _finite(e.get(metric)) and _finite(e.get("time_total_s_abs"))
    )
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if pts:
        best, xs, ys = None, [], []
        for x, y in pts:
            best = y if best is None else (min(best, y) if mode == "min" else max(best, y))
            xs.append(x)
            ys.append(best)
        ax.step(xs, ys, where="post")
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.4)
    ax.set_xlabel("seconds since the search started")
    ax.set_ylabel(f"best {metric} so far")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def params_vs_metric(trials: list[dict], metric: str, params: list[str]):
    n = max(1, len(params))
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
            if all(x > 0 for x in xs) and max(xs) / min(xs) > 50:
                ax.set_xscale("log")
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


def write_report(run_dir: Path, *, title: str, trials: list[dict], metric: str, winner: Optional[str], summary: dict) -> Path:
    """Writes learning_curves.png, best_so_far.png, params.png and report.html (PNGs embedded)."""
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
    images = {
        "learning_curves.png": _png(learning_curves(trials, metric, winner), run_dir / "learning_curves.png"),
        "best_so_far.png": _png(best_so_far(trials, metric), run_dir / "best_so_far.png"),
    }
    if params:
        images["params.png"] = _png(params_vs_metric(trials, metric, params), run_dir / "params.png")
    mode = METRIC_MODES[metric]
    rows = []
    for t in trials:
        vals = [e[metric] for e in t["epochs"] if _finite(e.get(metric))]
        best = (min(vals) if mode == "min" else max(vals)) if vals else None
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in t["config"].items())
        rows.append(
            f"<tr{' class=win' if t['trial_id'] == winner else ''}><td>{html.escape(t['trial_id'])}</td><td>{html.escape(t['status'])}</td>"
            f"<td>{len(t['epochs'])}</td><td>{'' if best is None else f'{best:.4f}'}</td><td>{html.escape(cfg)}</td>"
            f"<td>{html.escape(t.get('error') or '')}</td></tr>"
        )
    summary_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items())
    imgs = "".join(f'<h2>{name[:-4].replace("_", " ")}</h2><img alt="{name}" src="data:image/png;base64,{b64}">' for name, b64 in images.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}}tr.win{{background:#e6ffe6}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(title)}</h1><table>{summary_rows}</table>
<h2>trials (by {html.escape(metric)})</h2><table><tr><th>trial</th><th>status</th><th>epochs</th><th>best {html.escape(metric)}</th><th>config</th><th>error</th></tr>
{''.join(rows)}</table>{imgs}</body></html>"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)
