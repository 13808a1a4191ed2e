"""`orchestrator serve`, `orchestrator predict` and `orchestrator evaluate`, and serving at the end of `orchestrator run`.

cli/main.py calls `register(app)`; the heavy imports (Ray, torch, FastAPI) happen only when a command runs.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.cli.common import console, err_console, friendly, quiet
from orchestrator.errors import NotPromotedError, OrchestratorError
from orchestrator.serve.client import DEFAULT_CHUNK, ServeTarget, curl_example, predict_file, resolve_target, test_row
from orchestrator.ui import titled_table


def _print_ready(console: Console, url: str, target: ServeTarget, name: str) -> None:
    import httpx

    from orchestrator.data.preprocess import Preprocessor
    from orchestrator.serve.deployment import metrics_url
    from orchestrator.serve.schemas import example_record, record_model

    version = "?"
    try:
        version = httpx.get(f"{url}/healthz", timeout=10).json().get("model_version", "?")
    except Exception:
        pass
    pre = Preprocessor.load(target.checkpoint / "preprocessing.json")
    # a test row is a request as it is only when the source column holds what a request sends (not
    # a series' single points, nor image paths); and it must pass the request schema
    row = test_row(target.job, pre.feature_columns) if pre.input.rows_are_requests() else None
    if row is not None:
        try:
            record_model(pre).model_validate(row)
        except ValueError:  # pydantic's ValidationError
            row = None
    record = row if row is not None else example_record(pre)
    spec = target.serve
    job = target.job.name if target.job is not None else None  # the job's name; `name` is the Serve application's
    app = f", Serve application {name}" if job and job != name else ""
    console.print(
        Text.assemble(("serving", "bold green"), f" {job or name} (model version {version}{app}) at ", (url, "bold")),
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"  checkpoint: {target.checkpoint}", highlight=False, soft_wrap=True)
    console.print(f"  POST {url}/predict   GET {url}/metadata   GET {url}/healthz   docs: {url}/docs", highlight=False, soft_wrap=True)
    console.print(
        f"  batching: up to {spec.max_batch_size} records per forward pass, {spec.batch_wait_timeout_s * 1000:g} ms wait; "
        f"replicas {spec.autoscaling.min_replicas}-{spec.autoscaling.max_replicas}; "
        f"auth: {'bearer token from $' + spec.auth_token_env if spec.auth_token_env else 'off'}",
        highlight=False,
        soft_wrap=True,
    )
    m = metrics_url()
    if m:
        console.print(f"  Prometheus metrics (ray_orchestrator_serve_*): {m}", highlight=False, soft_wrap=True)
    from orchestrator.runtime import serve_ingress

    ingress = serve_ingress() or {}
    if ingress.get("haproxy"):
        console.print(
            f"  HTTP ingress: HAProxy (stats :{ingress['stats_port']}/stats, Prometheus :{ingress['metrics_port']}/metrics, "
            "on all interfaces)",
            highlight=False,
            soft_wrap=True,
        )
    elif ingress:
        console.print(
            "  HTTP ingress: Serve's Python proxy (RAY_SERVE_ENABLE_HA_PROXY=1 selects HAProxy: about 2-3x the "
            "throughput, but its stats and metrics listeners bind all interfaces; see docs/serving.md)",
            highlight=False,
            soft_wrap=True,
        )
    if spec.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"  listening on {spec.host}: reachable from the network", style="yellow", highlight=False)
    console.print(f"try it ({'a row of the held-out test split' if row is not None else 'training means'}):", highlight=False)
    console.print(curl_example(url, record, spec.auth_token_env), highlight=False, soft_wrap=True)
    console.print("Ctrl-C stops the server", style="dim")


def _wait_for_interrupt(name: str, console: Console) -> None:
    """Block until Ctrl-C or SIGTERM, then remove the app (and stop Serve when nothing else runs)."""
    from ray import serve

    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # SIGINT too, explicitly: a process started in the background by a non-interactive shell
        # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt, so the banner's
        # "Ctrl-C stops the server" would be false there.
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with console.status("stopping the server"):
            try:
                serve.delete(name)
                if not serve.status().applications:
                    serve.shutdown()
            except Exception as e:  # already gone: nothing left to stop
                err_console.print(Text(f"while stopping: {e}", style="yellow"), highlight=False)
        console.print("server stopped")


def _warnings_only(record) -> bool:
    return record.levelno >= 30  # logging.WARNING


def _quiet_serve_logs(verbose: bool) -> None:
    """Serve's driver-side INFO lines ("Started Serve", "Connecting to existing Serve app") are noise
    here; Serve resets its logger's level and handlers when it starts, but not the logger's filters."""
    import logging

    logger = logging.getLogger("ray.serve")
    if not verbose and _warnings_only not in logger.filters:
        logger.addFilter(_warnings_only)


def serve_target(
    target: ServeTarget, *, name: str, console: Console, address: Optional[str] = None, version: Optional[str] = None, block: bool = True
) -> str:
    from orchestrator.serve.deployment import deploy

    with console.status(Text(f"deploying {target.checkpoint} on Ray Serve")):  # a str status is read as markup
        url = deploy(target.checkpoint, target.serve, name=name, version=version, address=address)
    _print_ready(console, url, target, name)
    if block:
        _wait_for_interrupt(name, console)
    return url


def serve_after_run(result, spec, console: Console, force: bool) -> None:
    """End of `orchestrator run` with a serve section: serve the promoted winner until Ctrl-C."""
    if getattr(result, "interrupted", False) or not result.best_checkpoint:
        console.print("nothing to serve: the run did not finish with a best checkpoint", style="yellow")
        return
    if not result.promoted and not force:
        raise NotPromotedError(
            f"not serving: the winner was not promoted ({result.decision.get('reason', 'no reason recorded')}); "
            f"serve it anyway with: orchestrator serve {result.run_dir} --force"
        )
    _quiet_serve_logs(False)
    target = ServeTarget(
        checkpoint=Path(result.best_checkpoint), serve=spec.serve, run_dir=Path(result.run_dir), decision=result.decision, job=spec
    )
    serve_target(target, name=spec.name, console=console)


def _predictions_table(rows: list[dict]) -> Table:
    table = titled_table(f"{len(rows)} predictions (model version {rows[0].get('model_version')})" if rows else "no predictions")
    table.add_column("row", justify="right")
    table.add_column("prediction")
    has_probs = any("probabilities" in r for r in rows)
    if has_probs:
        table.add_column("probability", justify="right")
    for r in rows:
        cells = [str(r["row"]), str(r["prediction"])]
        if has_probs:
            cells.append(f"{max(r['probabilities'].values()):.3f}" if r.get("probabilities") else "")
        table.add_row(*cells)
    return table


# ---------------------------------------------------------------------------------- commands


def serve_command(
    target: Path = typer.Argument(
        ..., metavar="RUN_DIR|CHECKPOINT", help="Run directory (serves its best_checkpoint) or checkpoint directory."
    ),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default: the spec's serve.host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port (default: the spec's serve.port, 8000)."),
    spec_path: Optional[Path] = typer.Option(None, "--spec", help="Job spec whose serve section to use (default: the run's own spec)."),
    force: bool = typer.Option(False, "--force", help="Serve a model that did not pass the promotion gate."),
    name: str = typer.Option("orchestrator", "--name", help="Serve application name (deploying again under it rolls over)."),
    version: Optional[str] = typer.Option(None, "--version", help="Model version to report (default: digest of the weights)."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs."),
) -> None:
    """Serve a trained model over HTTP with Ray Serve until Ctrl-C (POST /predict, GET /metadata, /healthz, /docs)."""
    resolved = resolve_target(target, spec_path=spec_path, host=host, port=port, force=force)
    if resolved.decision is not None and not resolved.decision.get("promoted"):
        err_console.print(
            Text(f"serving a model that was not promoted (--force): {resolved.decision.get('reason')}", style="yellow"), highlight=False
        )
    _quiet_serve_logs(verbose)
    if verbose:
        from orchestrator.runtime import init_ray

        token_env = resolved.serve.auth_token_env
        init_ray(address, verbose=True, secret_env=[token_env] if token_env else ())
    with quiet(verbose):
        serve_target(resolved, name=name, console=console, address=address, version=version)


def _is_url(target: str) -> bool:
    return target.lower().startswith(("http://", "https://"))


def _write_rows(rows: list[dict], out: Path, force: bool) -> None:
    """The server's answers as a file: row, prediction and one probability column per class."""
    import pandas as pd

    from orchestrator.batch.plan import PREDICTION, output_format, probability_column
    from orchestrator.batch.run import Sink

    fmt, one_file = output_format(out, None)
    if not one_file:
        raise OrchestratorError(f"-o {out}: name a .csv, .jsonl or .parquet file")
    if out.exists() and not force:
        raise OrchestratorError(f"-o {out}: already exists; pass --force to replace it")
    flat = []
    for r in rows:
        row = {"row": r["row"], PREDICTION: r["prediction"]}
        row.update({probability_column(k): v for k, v in (r.get("probabilities") or {}).items()})
        row["model_version"] = r.get("model_version")
        flat.append(row)
    sink = Sink(out, fmt)
    try:
        sink.write(pd.DataFrame(flat))
        sink.close()
    except BaseException:
        sink.abort()
        raise


def _predict_from_server(
    url: str, file: Path, token_env: Optional[str], chunk: int, as_json: bool, out: Optional[Path], force: bool
) -> None:
    import os

    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise OrchestratorError(f"--token-env {token_env}: that environment variable is not set")
    rows = predict_file(url, file, token=token, chunk=chunk, warn=lambda m: err_console.print(Text(m, style="yellow"), highlight=False))
    if out is not None:
        _write_rows(rows, out, force)
        console.print(f"{len(rows)} predictions written to {out}", highlight=False, soft_wrap=True)
    elif as_json:
        for r in rows:
            typer.echo(json.dumps(r))
    else:
        console.print(_predictions_table(rows))


def _batch_target(target: str):
    """RUN|CHECKPOINT -> its ServeTarget (a run that was not promoted: a warning, not a refusal)."""
    from orchestrator.serve.client import resolve_target

    resolved = resolve_target(Path(target), force=True)
    if resolved.decision is not None and not resolved.decision.get("promoted"):
        err_console.print(
            Text(f"note: this model was not promoted ({resolved.decision.get('reason')})", style="yellow"), highlight=False, soft_wrap=True
        )
    return resolved


def _progress(status):
    started = time.monotonic()

    def update(rows: int, failed: int) -> None:
        rate = rows / max(1e-9, time.monotonic() - started)
        status.update(Text(f"predicted {rows:,} rows ({failed:,} failed), {rate:,.0f} rows/s"))

    return update


def predict_command(
    target: str = typer.Argument(
        ...,
        metavar="URL|RUN|CHECKPOINT",
        help="A model server's URL (http://127.0.0.1:8000), or a run directory or checkpoint to predict with offline (Ray Data).",
    ),
    file: Path = typer.Argument(
        ..., metavar="FILE|DIR", help="Records to predict: .csv, .parquet, .jsonl or .json, or a folder of them (offline only)."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        metavar="OUT",
        help="Write the input's rows with their predictions: a .csv, .parquet or .jsonl file, or a folder "
        "(one output file per input file, in --format). Required offline.",
    ),
    fmt: Optional[str] = typer.Option(
        None, "--format", metavar="FORMAT", help="Output format for a folder OUT: parquet (default), csv or jsonl."
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    actors: int = typer.Option(1, "--actors", min=1, help="Offline: model copies predicting in parallel."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Offline: records per forward pass."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Offline: Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)."
    ),
    token_env: Optional[str] = typer.Option(None, "--token-env", help="Server: environment variable holding the bearer token."),
    chunk: int = typer.Option(DEFAULT_CHUNK, "--chunk", min=1, help="Server: records per request."),
    as_json: bool = typer.Option(False, "--json", help="Server, without -o: print JSON lines instead of a table."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs."),
) -> None:
    """Predict the records of a file: through a model server (URL), or offline from a run or checkpoint
    with Ray Data, writing every input row with its prediction, class probabilities and error (if any)."""
    if _is_url(target):
        _predict_from_server(target, file, token_env, chunk, as_json, out, force)
        return
    if out is None:
        raise OrchestratorError("offline prediction writes a file: pass -o OUT (a .csv, .parquet or .jsonl file, or a folder)")
    from orchestrator.batch.plan import plan_predict
    from orchestrator.data.preprocess import Preprocessor

    resolved = _batch_target(target)
    pre = Preprocessor.load(resolved.checkpoint / "preprocessing.json")
    plan = plan_predict(
        resolved.checkpoint,
        file,
        out,
        fmt=fmt,
        force=force,
        classes=pre.classes if pre.task == "classification" else None,
        batch_size=batch_size,
        actors=actors,
    )
    from orchestrator.batch.run import predict_files
    from orchestrator.runtime import init_ray

    with quiet(verbose):
        with console.status("starting Ray"):
            init_ray(address, verbose=verbose)
        with console.status(Text(f"predicting {len(plan.files)} file(s) with {resolved.checkpoint}")) as status:
            done = predict_files(plan, on_progress=_progress(status))
    failed = done["failed"]
    console.print(
        Text.assemble(
            ("predicted", "bold green"),
            f" {done['rows']:,} rows in {done['seconds']:.1f} s -> {plan.out}"
            + (f" ({len(done['outputs'])} files)" if len(done["outputs"]) > 1 else ""),
        ),
        highlight=False,
        soft_wrap=True,
    )
    if failed:
        err_console.print(
            Text(f"{failed:,} rows could not be predicted (their 'error' column says why); the first:", style="yellow"), highlight=False
        )
        for e in done["errors"]:
            err_console.print(f"  {e}", highlight=False, soft_wrap=True)


def evaluate_command(
    target: Path = typer.Argument(..., metavar="RUN|CHECKPOINT", help="Run directory (its best_checkpoint) or checkpoint directory."),
    file: Path = typer.Argument(..., metavar="FILE|DIR", help="Labelled records: .csv, .parquet, .jsonl or .json, or a folder of them."),
    out: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        metavar="DIR",
        help="Where to write metrics.json, details.json and the plots (default: RUN/evaluations/<file>).",
    ),
    force: bool = typer.Option(False, "--force", help="Write into DIR even if it holds files."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs."),
) -> None:
    """Score a model on a labelled file (its label column as in training): the test metrics, per-class
    scores and a confusion matrix (classification) or residuals (regression)."""
    from orchestrator.batch.plan import default_evaluation_dir, plan_evaluate

    resolved = _batch_target(str(target))
    plan = plan_evaluate(resolved.checkpoint, file, out or default_evaluation_dir(resolved.run_dir, resolved.checkpoint, file), force=force)
    from orchestrator.batch.run import evaluate_files
    from orchestrator.runtime import init_ray

    with quiet(verbose):
        with console.status("starting Ray"):
            init_ray(address, verbose=verbose)
        with console.status(Text(f"scoring {resolved.checkpoint} on {file}")):
            metrics, details = evaluate_files(plan)
    table = titled_table(f"{file}: {metrics.get('rows', 0):,} labelled rows")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if k != "rows":
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    if details.get("per_class"):
        per = titled_table("per class")
        for c in ("class", "precision", "recall", "F1", "rows"):
            per.add_column(c, justify="left" if c == "class" else "right")
        for c in details["per_class"]:
            per.add_row(str(c["class"]), f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", str(c["support"]))
        console.print(per)
    console.print(f"written to {plan.out}: metrics.json, details.json and the plots", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `serve`, `predict` and `evaluate` to the orchestrator CLI."""
    app.command("serve")(friendly(serve_command))
    app.command("predict")(friendly(predict_command))
    app.command("evaluate")(friendly(evaluate_command))
