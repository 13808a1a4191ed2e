"""Terminal progress for long work: epochs of a training run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

SHOWN = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_rmse", "val_mae")


def fmt_metrics(m: dict[str, Any], keys=SHOWN) -> str:
    return "  ".join(f"{k}={m[k]:.4f}" for k in keys if isinstance(m.get(k), (int, float)))


class EpochProgress:
    """A progress bar over epochs plus one log line per epoch (kept in non-interactive logs too)."""

    def __init__(self, console: Console, epochs: int, label: str = "training"):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console, transient=True,
        )
        self.task = self.progress.add_task(label, total=epochs, info="starting workers")

    def __enter__(self) -> "EpochProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def on_event(self, event: dict) -> None:
        if event["kind"] == "epoch":
            m = event["metrics"]
            resumed = m.get("restored_from_epoch", -1)
            note = f"  (resumed after epoch {resumed})" if resumed >= 0 and m["epoch"] == resumed + 1 else ""
            self.progress.console.print(f"epoch {m['epoch']:>3}  {fmt_metrics(m)}  [dim]{m.get('epoch_time_s', 0):.1f}s[/]{note}", highlight=False)
            self.progress.update(self.task, completed=m["epoch"], info=fmt_metrics(m, ("val_loss", "val_accuracy", "val_rmse")))
            if m.get("early_stopped"):
                self.progress.console.print(f"[yellow]early stopping after epoch {m['epoch']}[/]")
        elif event["kind"] == "failure":
            for rank, err in event["errors"].items():
                self.progress.console.print(f"[yellow]worker {rank} failed: {err}; restarting from the latest checkpoint[/]", highlight=False)


def metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    for k, v in metrics.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    return t


class TrialTable:
    """Live table of trials with a progress bar over completed trials."""

    def __init__(self, console: Console, metric: str, total: int):
        from rich.live import Live

        self.console, self.metric, self.total = console, metric, total
        self.tracker = None
        self.live = Live(self._render(), console=console, refresh_per_second=2, transient=False)

    def __enter__(self) -> "TrialTable":
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.update(self._render())
        self.live.stop()
        if not self.live.console.is_terminal:
            self.live.console.line()  # to a file or pipe the last render ends without a newline

    def update(self, tracker) -> None:
        self.tracker = tracker
        self.live.update(self._render())

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        records = list(self.tracker.records.values()) if self.tracker else []
        from orchestrator.tune import FINAL_STATUSES

        done = sum(r.status in FINAL_STATUSES for r in records)
        t = Table(title=f"trials ({done}/{self.total} done)", title_justify="left")
        for col in ("trial", "status", "epochs", f"best {self.metric}", "config"):
            t.add_column(col)
        colors = {"RUNNING": "cyan", "TERMINATED": "green", "PRUNED": "yellow", "EARLY_STOPPED": "yellow", "ERROR": "red"}
        for r in records:
            best = r.best(self.metric)
            cfg = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in r.config.items())
            t.add_row(r.trial_id, f"[{colors.get(r.status, 'white')}]{r.status}[/]", str(len(r.epochs)),
                      "" if best is None else f"{best:.4f}", cfg + (f"  [red]{r.error[:80]}[/]" if r.error else ""))
        return Group(t, ProgressBar(total=max(self.total, 1), completed=done, width=60), Text(""))
