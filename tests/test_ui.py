"""Text from outside (worker errors, paths, user data) reaches the terminal verbatim, never as rich markup."""

from __future__ import annotations

import io

import pytest
import typer

from orchestrator.cli import common as clitools
from orchestrator.cli.common import friendly, make_console
from orchestrator.errors import OrchestratorError
from orchestrator.tune.plan import TrialRecord
from orchestrator.ui import EpochProgress, TrialTable, metrics_table

# What gloo says when a peer dies, plus tags rich would apply or choke on, and an emoji code.
NASTY = "closing tag '[/__w/pytorch/gloo/pair.cc:537]' [bold]x[/] :smile: [red]"


def _console() -> tuple[object, io.StringIO]:
    buf = io.StringIO()
    return make_console(file=buf, width=400, force_terminal=False, color_system=None), buf


def test_epoch_progress_prints_worker_errors_and_epochs_verbatim():
    console, buf = _console()
    with EpochProgress(console, epochs=3, label=NASTY) as progress:
        progress.on_event({"kind": "failure", "errors": {1: f"RuntimeError: {NASTY}"}})
        progress.on_event({"kind": "epoch", "metrics": {"epoch": 2, "val_loss": 0.5, "restored_from_epoch": 1, "epoch_time_s": 1.25}})
        progress.on_event({"kind": "epoch", "metrics": {"epoch": 3, "val_loss": 0.4, "early_stopped": True}})
    out = buf.getvalue()
    assert f"worker 1 failed: RuntimeError: {NASTY}\nrestarting from the latest checkpoint" in out
    assert "epoch   2  val_loss=0.5000  1.2s  (resumed after epoch 1)" in out
    assert "early stopping after epoch 3" in out


def test_failures_say_whether_the_run_restarts():
    console, buf = _console()
    with EpochProgress(console, epochs=3) as progress:
        progress.on_event({"kind": "failure", "errors": {0: "ActorDiedError: x"}, "failure": 1, "max_failures": 1, "restarting": True})
        progress.on_event({"kind": "failure", "errors": {0: "ActorDiedError: x"}, "failure": 2, "max_failures": 1, "restarting": False})
    lines = [line for line in buf.getvalue().splitlines() if line]
    assert lines == [
        "worker 0 failed: ActorDiedError: x",
        "restarting from the latest checkpoint (restart 1 of 1 allowed by train.max_failures)",
        "worker 0 failed: ActorDiedError: x",
        "no restarts left: train.max_failures is 1",
    ]


def test_progress_columns_do_not_read_markup():
    """The bar's own columns (label and the info field) render through TextColumn, which has its own markup switch."""
    console, buf = _console()
    progress = EpochProgress(console, epochs=2, label=NASTY)
    progress.progress.update(progress.task, info=NASTY)
    console.print(progress.progress.make_tasks_table(progress.progress.tasks))
    assert buf.getvalue().count(NASTY) == 2


def test_friendly_error_is_printed_verbatim(monkeypatch):
    console, buf = _console()
    monkeypatch.setattr(clitools, "err_console", console)

    @friendly
    def fails():
        raise OrchestratorError(f"training failed: {NASTY}")

    with pytest.raises(typer.Exit) as exc:
        fails()
    assert exc.value.exit_code == 1
    assert buf.getvalue().strip() == f"error: training failed: {NASTY}"


def test_trial_table_renders_errors_and_config_verbatim():
    console, buf = _console()

    class Tracker:
        records = {
            "t1": TrialRecord("t1", {"train.optimizer": NASTY}, status="ERROR", error=NASTY[:80]),
            "t2": TrialRecord(NASTY, {"train.lr": 0.01}, status="RUNNING", epochs=[{"val_loss": 0.25}]),
        }

    table = TrialTable(console, "val_loss", total=2)
    table.tracker = Tracker()
    console.print(table._render())
    out = buf.getvalue()
    assert f"optimizer={NASTY}  {NASTY[:80]}" in out
    assert NASTY in out.replace(f"optimizer={NASTY}", "")  # the trial id too
    assert "ERROR" in out and "0.2500" in out


def test_metrics_table_prints_keys_and_values_verbatim():
    console, buf = _console()
    console.print(metrics_table(NASTY, {"test_accuracy": 0.9, NASTY: NASTY}))
    out = buf.getvalue()
    assert out.count(NASTY) == 3
    assert "0.9000" in out


def test_every_cli_console_ignores_markup():
    from orchestrator.cli import serve as serve_cli

    for c in (clitools.console, clitools.err_console, serve_cli.console, serve_cli.err_console):
        with c.capture() as cap:
            c.print(NASTY, highlight=False, soft_wrap=True)
        assert cap.get().strip() == NASTY
