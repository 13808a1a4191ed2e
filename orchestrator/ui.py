"""Terminal output: the consoles (`make_console`) and progress for long work (epochs, trials)."""

from __future__ import annotations

from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from orchestrator.spec import ACCURACY, F1, LOSS, MAE, RMSE, TRAIN_PREFIX, VAL_PREFIX


def make_console(**kwargs) -> Console:
    """Every console of the CLI. What it prints comes from outside too (worker errors, paths, user
    data; gloo's errors contain `[/...]`), so no string is ever read as rich markup or `:emoji:`
    codes: styles go in through `style=` or `rich.text.Text`."""
    return Console(markup=False, emoji=False, **kwargs)


# in each epoch's log line, with the checkpoint metric when it is none of these (metrics.json has all)
SHOWN = (TRAIN_PREFIX + LOSS, TRAIN_PREFIX + ACCURACY, *(VAL_PREFIX + n for n in (LOSS, ACCURACY, F1, RMSE, MAE)))
IN_BAR = tuple(VAL_PREFIX + n for n in (LOSS, ACCURACY, RMSE))  # beside the progress bar


def fmt_metrics(m: dict[str, Any], keys=SHOWN) -> str:
    return "  ".join(f"{k}={m[k]:.4f}" for k in keys if isinstance(m.get(k), (int, float)))


class EpochProgress:
    """A progress bar over epochs plus one log line per epoch (kept in non-interactive logs too)."""

    def __init__(self, console: Console, epochs: int, label: str = "training", metric: Optional[str] = None):
        self.console = console
        self.shown = SHOWN + ((metric,) if metric and metric not in SHOWN else ())
        self.progress = Progress(
            # TextColumn reads its text as markup unless told not to
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            console=console,
            transient=True,
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
            line = Text.assemble(
                f"epoch {m['epoch']:>3}  {fmt_metrics(m, self.shown)}  ", (f"{m.get('epoch_time_s', 0):.1f}s", "dim"), note
            )
            self.progress.console.print(line, highlight=False)
            self.progress.update(self.task, completed=m["epoch"], info=fmt_metrics(m, IN_BAR))
            if m.get("early_stopped"):
                self.progress.console.print(f"early stopping after epoch {m['epoch']}", style="yellow")
        elif event["kind"] == "failure":
            for rank, err in event["errors"].items():
                # Text, not a str: the error (gloo's messages contain `[/...]`) is never read as markup.
                # Its first line only: Ray's follow with the actor's repr (the whole text is in summary.json).
                first = next((line for line in str(err).splitlines() if line.strip()), "")
                self.progress.console.print(Text(f"worker {rank} failed: {first}", style="yellow"), highlight=False)
            n, limit = event.get("failure", 1), event.get("max_failures")
            if event.get("restarting", True):
                then = "restarting from the latest checkpoint" + (
                    f" (restart {n} of {limit} allowed by train.max_failures)" if limit is not None else ""
                )
            else:
                then = f"no restarts left: train.max_failures is {limit}"
            self.progress.console.print(then, style="yellow", highlight=False)


def titled_table(title: str, **options) -> Table:
    """A table at least as wide as its title: a narrow table (two short columns) would otherwise
    wrap a title such as "winner on the held-out test split" mid-phrase. The title is plain text."""
    return Table(title=Text(title), min_width=len(title), **options)


def metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    t = titled_table(title, show_header=False, title_justify="left")
    for k, v in metrics.items():
        t.add_row(Text(str(k)), Text(f"{v:.4f}" if isinstance(v, float) else str(v)))
    return t


def fmt_config(config: dict, *, short: bool = True) -> str:
    """A trial's sampled values, rounded to what a reader needs (lr=0.00274); `short`: each
    parameter by its last name (lr), else by its spec path (train.lr)."""
    return ", ".join(f"{k.split('.')[-1] if short else k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in config.items())


class TrialTable:
    """Live table of trials with a progress bar over completed trials."""

    def __init__(self, console: Console, metric: str, total: int):
        from rich.live import Live

        self.console, self.metric, self.total = console, metric, total
        self.tracker = None
        # to a terminal, a live table; to a file or pipe (CI, nohup), a plain line per finished trial
        # as it finishes, and the whole table once at the end
        self.live = Live(self._render(), console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
        self.reported: set[str] = set()

    def __enter__(self) -> "TrialTable":
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
        else:
            self.console.print(self._render())

    def update(self, tracker) -> None:
        self.tracker = tracker
        if self.live is not None:
            self.live.update(self._render())
        else:
            self._print_finished()

    def _print_finished(self) -> None:
        from orchestrator.tune.plan import FINAL_STATUSES

        records: list = list(self.tracker.records.values()) if self.tracker else []
        done = sum(r.status in FINAL_STATUSES for r in records)
        for r in records:
            if r.status in FINAL_STATUSES and r.trial_id not in self.reported:
                self.reported.add(r.trial_id)
                best = r.best(self.metric)
                shown = f"best {self.metric}={best:.4f}" if best is not None else f"no {self.metric}"
                line = f"trial {r.trial_id} {r.status.lower()} ({done}/{self.total} done): {len(r.epochs)} epochs, {shown}, {fmt_config(r.config)}"
                self.console.print(Text(line + (f": {r.error[:200]}" if r.error else "")), highlight=False, soft_wrap=True)

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar

        records: list = list(self.tracker.records.values()) if self.tracker else []
        from orchestrator.tune.plan import FINAL_STATUSES

        done = sum(r.status in FINAL_STATUSES for r in records)
        t = titled_table(f"trials ({done}/{self.total} done)", title_justify="left")
        for col in ("trial", "status", "epochs", f"best {self.metric}", "config"):
            t.add_column(col)
        colors = {"RUNNING": "cyan", "TERMINATED": "green", "PRUNED": "yellow", "EARLY_STOPPED": "yellow", "ERROR": "red"}
        for r in records:
            best = r.best(self.metric)
            cfg = fmt_config(r.config)
            # cells are Text so that trial errors and config values are never read as markup
            t.add_row(
                Text(r.trial_id),
                Text(r.status, style=colors.get(r.status, "white")),
                str(len(r.epochs)),
                "" if best is None else f"{best:.4f}",
                Text.assemble(cfg, (f"  {r.error[:80]}", "red") if r.error else ""),
            )
        return Group(t, ProgressBar(total=max(self.total, 1), completed=done, width=60), Text(""))
