"""`orchestrator serve` and `orchestrator predict`, and serving at the end of `orchestrator run`.

cli.py calls `register(app)`; the heavy imports (Ray, torch, FastAPI) happen only when a command runs.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.clitools import friendly, make_console
from orchestrator.errors import OrchestratorError

console = make_console()
err_console = make_console(stderr=True)


class NotPromotedError(OrchestratorError):
    """Serving refused: the model failed the promotion gate (exit 3, like `orchestrator run`)."""

    exit_code = 3


DEFAULT_CHUNK = 256
RETRIES_ON_503 = 5


# ------------------------------------------------------------------------------ what to serve


@dataclass
class ServeTarget:
    checkpoint: Path
    serve: Any  # ServeSpec
    run_dir: Optional[Path] = None
    decision: Optional[dict] = None
    job: Any = None  # JobSpec of the run, when it can be read (for an example request)


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_job_spec(run_dir: Path):
    """The run's JobSpec (spec.resolved.json, relative paths against the original spec's folder)."""
    from orchestrator.errors import SpecError
    from orchestrator.spec import parse_spec

    resolved = _read_json(run_dir / "spec.resolved.json")
    meta = _read_json(run_dir / "run.json") or {}
    if not isinstance(resolved, dict):
        return None
    try:
        return parse_spec(resolved, source=str(run_dir / "spec.resolved.json"), base_dir=Path(meta.get("base_dir", run_dir)))
    except SpecError:
        return None


def resolve_target(path: Path, *, spec_path: Optional[Path] = None, host: Optional[str] = None, port: Optional[int] = None,
                   force: bool = False) -> ServeTarget:
    """RUN_DIR -> its best_checkpoint and its spec's serve section; CHECKPOINT -> itself.

    A run whose promotion.json says not promoted (or that has no decision) is refused unless `force`.
    """
    from pydantic import ValidationError

    from orchestrator.checkpoint import STATE_FILE
    from orchestrator.spec import ServeSpec, load_spec

    p = Path(path).expanduser().resolve()
    if (p / "best_checkpoint").is_dir():
        run_dir, ckpt = p, p / "best_checkpoint"
    elif (p / STATE_FILE).is_file():
        ckpt = p
        run_dir = p.parent if (p.parent / "promotion.json").is_file() or (p.parent / "run.json").is_file() else None
    elif not p.exists():
        raise OrchestratorError(f"{path}: no such run directory or checkpoint")
    else:
        raise OrchestratorError(f"{path}: neither a run directory (with best_checkpoint/) nor a checkpoint (with {STATE_FILE})")

    decision = None
    if run_dir is not None:
        decision = _read_json(run_dir / "promotion.json")
        if not isinstance(decision, dict):
            decision = {"promoted": False, "reason": "the run has no promotion decision (promotion.json); it may not have finished"}
        if not decision.get("promoted") and not force:
            raise NotPromotedError(
                f"{run_dir}: the model was not promoted ({decision.get('reason', 'no reason recorded')}); "
                "pass --force to serve it anyway"
            )

    job = _run_job_spec(run_dir) if run_dir is not None else None
    if spec_path is not None:
        serve = load_spec(spec_path).serve or ServeSpec()
    elif job is not None and job.serve is not None:
        serve = job.serve
    else:
        serve = ServeSpec()
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if updates:
        try:
            serve = ServeSpec.model_validate({**serve.model_dump(), **updates})
        except ValidationError as e:
            raise OrchestratorError("; ".join(f"--{x['loc'][0]}: {x['msg']}" for x in e.errors(include_url=False))) from None
    return ServeTarget(checkpoint=ckpt, serve=serve, run_dir=run_dir, decision=decision, job=job)


# ------------------------------------------------------------------------------ example request


def _py(v: Any) -> Any:
    import numpy as np

    if isinstance(v, np.ndarray):
        return [_py(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_py(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def test_row(job, columns: list[str]) -> Optional[dict]:
    """The first row of the held-out test split among the source's first rows (local files only)."""
    import pandas as pd

    from orchestrator.preprocess import assign_splits
    from orchestrator.spec import is_uri, resolve_source

    if job is None:
        return None
    try:
        src = resolve_source(job)
        if is_uri(src) or not Path(src).is_file():
            return None
        d = job.data
        keep = list(dict.fromkeys([*columns, d.label]))
        if d.format == "csv":
            df = pd.read_csv(src, nrows=500)
        else:
            import pyarrow.parquet as pq

            batch = next(pq.ParquetFile(src).iter_batches(batch_size=500, columns=keep), None)
            if batch is None:
                return None
            df = batch.to_pandas()
        df = df[keep]
        df = df[df[d.label].notna()]
        codes = assign_splits(df, d.seed, (d.split.train, d.split.validation, d.split.test))
        rows = df[codes == 2]
        if rows.empty:
            return None
        return {c: _py(v) for c, v in rows.iloc[0][columns].items()}
    except Exception:  # an example is a convenience: never fail serving over it
        return None


def curl_example(url: str, record: dict, token_env: Optional[str]) -> str:
    body = json.dumps(record, separators=(",", ":"))
    auth = f' -H "Authorization: Bearer ${token_env}"' if token_env else ""
    return f"curl -s {url}/predict -H 'Content-Type: application/json'{auth} -d {shlex.quote(body)}"


def _print_ready(console: Console, url: str, target: ServeTarget, name: str) -> None:
    import httpx

    from orchestrator.preprocess import Preprocessor
    from orchestrator.serve import metrics_url
    from orchestrator.serve_app import example_record

    version = "?"
    try:
        version = httpx.get(f"{url}/healthz", timeout=10).json().get("model_version", "?")
    except Exception:
        pass
    pre = Preprocessor.load(target.checkpoint / "preprocessing.json")
    row = test_row(target.job, pre.feature_columns)
    record = row if row is not None else example_record(pre)
    spec = target.serve
    console.print(Text.assemble(("serving", "bold green"), f" {name} (model version {version}) at ", (url, "bold")), highlight=False, soft_wrap=True)
    console.print(f"  checkpoint: {target.checkpoint}", highlight=False, soft_wrap=True)
    console.print(f"  POST {url}/predict   GET {url}/metadata   GET {url}/healthz   docs: {url}/docs", highlight=False, soft_wrap=True)
    console.print(f"  batching: up to {spec.max_batch_size} records per forward pass, {spec.batch_wait_timeout_s * 1000:g} ms wait; "
                  f"replicas {spec.autoscaling.min_replicas}-{spec.autoscaling.max_replicas}; "
                  f"auth: {'bearer token from $' + spec.auth_token_env if spec.auth_token_env else 'off'}", highlight=False, soft_wrap=True)
    m = metrics_url()
    if m:
        console.print(f"  Prometheus metrics (ray_orchestrator_serve_*): {m}", highlight=False, soft_wrap=True)
    from orchestrator.runtime import serve_ingress

    if serve_ingress.get("haproxy"):
        console.print(f"  HTTP ingress: HAProxy (stats :{serve_ingress['stats_port']}/stats, Prometheus :{serve_ingress['metrics_port']}/metrics, "
                      "on all interfaces)", highlight=False, soft_wrap=True)
    elif serve_ingress:
        console.print("  HTTP ingress: Serve's Python proxy (RAY_SERVE_ENABLE_HA_PROXY=1 selects HAProxy: about 2-3x the "
                      "throughput, but its stats and metrics listeners bind all interfaces; see docs/serving.md)", highlight=False, soft_wrap=True)
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


def serve_target(target: ServeTarget, *, name: str, console: Console, address: Optional[str] = None, version: Optional[str] = None,
                 block: bool = True) -> str:
    from orchestrator.serve import deploy

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
    target = ServeTarget(checkpoint=Path(result.best_checkpoint), serve=spec.serve, run_dir=Path(result.run_dir),
                         decision=result.decision, job=spec)
    serve_target(target, name=spec.name, console=console)


# ------------------------------------------------------------------------------------ predict


def read_records(path: Path):
    """CSV, JSON (a list of records, {"records": [...]} or one record), JSON lines or Parquet -> DataFrame."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("records"), list):
                data = data["records"]
            if isinstance(data, dict):
                data = [data]
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise OrchestratorError(f"{path}: expected a JSON list of records (objects), {{\"records\": [...]}} or one record")
            return pd.DataFrame.from_records(data)
    except FileNotFoundError:
        raise OrchestratorError(f"{path}: file not found") from None
    except OrchestratorError:
        raise
    except Exception as e:
        raise OrchestratorError(f"{path}: cannot read: {type(e).__name__}: {e}") from None
    raise OrchestratorError(f"{path}: unsupported file type {suffix or '(none)'}; use .csv, .json, .jsonl or .parquet")


def _detail(resp) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


class PredictClient:
    def __init__(self, url: str, token: Optional[str], timeout: float = 60.0):
        import httpx

        base = url.rstrip("/")
        self.base = base[: -len("/predict")] if base.endswith("/predict") else base
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kw):
        import httpx

        url = f"{self.base}{path}"
        for attempt in range(RETRIES_ON_503 + 1):
            try:
                resp = self.http.request(method, url, **kw)
            except httpx.ConnectError as e:
                raise OrchestratorError(f"cannot reach {url}: {e} (is `orchestrator serve` running there?)") from None
            except httpx.TimeoutException:
                raise OrchestratorError(f"{url}: no answer within {self.http.timeout.read:g} s") from None
            except httpx.HTTPError as e:
                raise OrchestratorError(f"{url}: {type(e).__name__}: {e}") from None
            if resp.status_code != 503 or attempt == RETRIES_ON_503:
                return resp
            time.sleep(min(float(resp.headers.get("retry-after", 0) or 0) or 0.2 * 2 ** attempt, 5.0))
        return resp

    def metadata(self) -> Optional[dict]:
        resp = self._call("GET", "/metadata")
        if resp.status_code in (401, 403):
            raise OrchestratorError(f"{self.base}: {resp.status_code} {_detail(resp)} (pass the token with --token-env VAR)")
        return resp.json() if resp.status_code == 200 else None

    def predict(self, records: list[dict], first_row: int) -> dict:
        resp = self._call("POST", "/predict", json={"records": records})
        if resp.status_code == 200:
            return resp.json()
        detail = re.sub(r"records\[(\d+)\]", lambda m: f"row {first_row + int(m.group(1))}", _detail(resp))
        hint = " (pass the token with --token-env VAR)" if resp.status_code in (401, 403) else ""
        raise OrchestratorError(f"server answered {resp.status_code}: {detail}{hint}")


def predict_file(url: str, path: Path, *, token: Optional[str] = None, chunk: int = DEFAULT_CHUNK,
                 warn: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Predict every row of `path`; returns one {"row", "prediction", "probabilities"?} per row."""
    df = read_records(path)
    if df.empty:
        raise OrchestratorError(f"{path}: no records")
    client = PredictClient(url, token)
    meta = client.metadata()
    if meta is not None:
        columns = list(meta["input_schema"]["properties"])
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise OrchestratorError(f"{path}: missing input columns {', '.join(missing)} (the model needs {', '.join(columns)})")
        extra = [c for c in df.columns if c not in columns]
        if extra:
            warn(f"ignoring columns that are not model inputs: {', '.join(map(str, extra))}")
        df = df[columns]
        chunk = min(chunk, int(meta.get("limits", {}).get("max_records", chunk)))
    records = [{k: _py(v) for k, v in r.items()} for r in df.to_dict("records")]
    out: list[dict] = []
    for start in range(0, len(records), chunk):
        body = client.predict(records[start:start + chunk], start)
        probs = body.get("probabilities") or [None] * len(body["predictions"])
        for i, (pred, p) in enumerate(zip(body["predictions"], probs)):
            row = {"row": start + i, "prediction": pred}
            if p is not None:
                row["probabilities"] = p
            row["model_version"] = body.get("model_version")
            out.append(row)
    return out


def _predictions_table(rows: list[dict]) -> Table:
    table = Table(title=f"{len(rows)} predictions (model version {rows[0].get('model_version')})" if rows else "no predictions")
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
    target: Path = typer.Argument(..., metavar="RUN_DIR|CHECKPOINT", help="Run directory (serves its best_checkpoint) or checkpoint directory."),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (default: the spec's serve.host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port (default: the spec's serve.port, 8000)."),
    spec_path: Optional[Path] = typer.Option(None, "--spec", help="Job spec whose serve section to use (default: the run's own spec)."),
    force: bool = typer.Option(False, "--force", help="Serve a model that did not pass the promotion gate."),
    name: str = typer.Option("orchestrator", "--name", help="Serve application name (deploying again under it rolls over)."),
    version: Optional[str] = typer.Option(None, "--version", help="Model version to report (default: digest of the weights)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs."),
) -> None:
    """Serve a trained model over HTTP with Ray Serve until Ctrl-C (POST /predict, GET /metadata, /healthz, /docs)."""
    resolved = resolve_target(target, spec_path=spec_path, host=host, port=port, force=force)
    if resolved.decision is not None and not resolved.decision.get("promoted"):
        err_console.print(Text(f"serving a model that was not promoted (--force): {resolved.decision.get('reason')}", style="yellow"), highlight=False)
    _quiet_serve_logs(verbose)
    if verbose:
        from orchestrator.runtime import init_ray

        token_env = resolved.serve.auth_token_env
        init_ray(address, verbose=True, secret_env=[token_env] if token_env else ())
    serve_target(resolved, name=name, console=console, address=address, version=version)


def predict_command(
    url: str = typer.Argument(..., metavar="URL", help="Server URL (http://127.0.0.1:8000, with the route prefix if any)."),
    file: Path = typer.Argument(..., metavar="FILE", help="Records to predict: .csv, .json, .jsonl or .parquet."),
    token_env: Optional[str] = typer.Option(None, "--token-env", help="Environment variable holding the bearer token."),
    chunk: int = typer.Option(DEFAULT_CHUNK, "--chunk", min=1, help="Records per request."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
) -> None:
    """Send the records of a file to a model server and print the predictions."""
    import os

    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise OrchestratorError(f"--token-env {token_env}: that environment variable is not set")
    rows = predict_file(url, file, token=token, chunk=chunk, warn=lambda m: err_console.print(Text(m, style="yellow"), highlight=False))
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r))
    else:
        console.print(_predictions_table(rows))


def register(app: typer.Typer) -> None:
    """Add `serve` and `predict` to the orchestrator CLI."""
    app.command("serve")(friendly(serve_command))
    app.command("predict")(friendly(predict_command))
