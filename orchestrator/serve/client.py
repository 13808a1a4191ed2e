"""What to serve and how to call a model server: `resolve_target` (a run directory or a checkpoint ->
the checkpoint and its serve section), an example request, and `PredictClient` / `predict_file`
behind `orchestrator predict`. No Ray here; the commands live in orchestrator/cli/serve.py."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from orchestrator.errors import NotPromotedError, OrchestratorError

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


def resolve_target(
    path: Path, *, spec_path: Optional[Path] = None, host: Optional[str] = None, port: Optional[int] = None, force: bool = False
) -> ServeTarget:
    """RUN_DIR -> its best_checkpoint and its spec's serve section; CHECKPOINT -> itself.

    A run whose promotion.json says not promoted (or that has no decision) is refused unless `force`.
    """
    from pydantic import ValidationError

    from orchestrator.spec import ServeSpec, load_spec
    from orchestrator.train.checkpoint import STATE_FILE

    p = Path(path).expanduser().resolve()
    run_dir: Optional[Path]
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
                f"{run_dir}: the model was not promoted ({decision.get('reason', 'no reason recorded')}); pass --force to serve it anyway"
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


def test_row(job, columns: list[str]) -> Optional[dict]:
    """The first row of the held-out test split among the source's first rows (local files only)."""
    import pandas as pd

    from orchestrator.data.preprocess import assign_splits
    from orchestrator.data.values import plain_value
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
        return {c: plain_value(v, nan_as_none=True) for c, v in rows.iloc[0][columns].items()}
    except Exception:  # an example is a convenience: never fail serving over it
        return None


def curl_example(url: str, record: dict, token_env: Optional[str]) -> str:
    body = json.dumps(record, separators=(",", ":"))
    auth = f' -H "Authorization: Bearer ${token_env}"' if token_env else ""
    return f"curl -s {url}/predict -H 'Content-Type: application/json'{auth} -d {shlex.quote(body)}"


# ------------------------------------------------------------------------------------ predict


def read_records(path: Path, text_columns: tuple[str, ...] = ()):
    """CSV, JSON (a list of records, {"records": [...]} or one record), JSON lines or Parquet -> DataFrame.

    `text_columns` are read as the text they hold: a CSV cell "007" or "NA" stays that string."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            if text_columns:
                return pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False)
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True, dtype=False if text_columns else True)
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("records"), list):
                data = data["records"]
            if isinstance(data, dict):
                data = [data]
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise OrchestratorError(f'{path}: expected a JSON list of records (objects), {{"records": [...]}} or one record')
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


def _retry_after(otherwise, longest: float):
    """A tenacity wait: the seconds of the last response's Retry-After header, else `otherwise`; at most `longest`."""

    def wait(state) -> float:
        try:
            seconds = float(state.outcome.result().headers.get("retry-after") or 0)
        except ValueError:  # an HTTP date: not worth parsing for a pause of seconds
            seconds = 0.0
        return min(seconds if seconds > 0 else otherwise(state), longest)

    return wait


class PredictClient:
    def __init__(self, url: str, token: Optional[str], timeout: float = 60.0):
        import httpx

        base = url.rstrip("/")
        self.base = base[: -len("/predict")] if base.endswith("/predict") else base
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kw):
        """One request; a 503 (replicas starting or overloaded) is retried, after the server's
        Retry-After or a growing pause (0.2 s, 0.4 s, ... at most 5 s), and returned after the last try."""
        import httpx
        import tenacity

        url = f"{self.base}{path}"

        def once():
            try:
                return self.http.request(method, url, **kw)
            except httpx.ConnectError as e:
                raise OrchestratorError(f"cannot reach {url}: {e} (is `orchestrator serve` running there?)") from None
            except httpx.TimeoutException:
                raise OrchestratorError(f"{url}: no answer within {self.http.timeout.read:g} s") from None
            except httpx.HTTPError as e:
                raise OrchestratorError(f"{url}: {type(e).__name__}: {e}") from None

        return tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda resp: resp.status_code == 503),
            stop=tenacity.stop_after_attempt(RETRIES_ON_503 + 1),
            wait=_retry_after(tenacity.wait_exponential(multiplier=0.2, max=5.0), longest=5.0),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            reraise=True,
        )(once)

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


def request_records(df, info: dict, path: Path) -> Iterator[dict]:
    """The rows of `df` as request records for a model whose GET /metadata "input" is `info`:
    text as strings, sequences and windows as lists, image files read and base64-encoded."""
    for i, r in enumerate(df.to_dict("records")):
        yield request_record(r, info, path, i)


def request_record(r: dict, info: dict, path: Path, row: int) -> dict:
    """One row (column -> value, as pandas gives it) of the file `path` as a request record; an
    OrchestratorError names the file, the row and the column of a cell that cannot be one."""
    from orchestrator.data import kinds
    from orchestrator.data.values import plain_value

    kind, column = info.get("kind"), info.get("column")
    rec = {k: plain_value(v, nan_as_none=True) for k, v in r.items()}
    if column in rec and rec[column] is not None and kind in kinds.names():  # a kind unknown here: its cells go as they are
        rec[column] = kinds.get(kind).request_value(info, rec[column], path, row)
    return rec


def _image_pixels(cell: Any) -> int:
    """Pixels of a base64-encoded image file, from its header (0 when it is not one: the server says why)."""
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(cell))) as img:
            return img.size[0] * img.size[1]
    except Exception:
        return 0


def _chunks(
    records: Iterator[dict],
    count: int,
    max_bytes: Optional[int],
    path: Path,
    *,
    image_column: Optional[str] = None,
    max_pixels: Optional[int] = None,
) -> Iterator[tuple[int, list[dict]]]:
    """(first row, records) of at most `count` records whose {"records": [...]} body fits `max_bytes`
    and, with `image_column`, whose images hold at most `max_pixels` pixels together."""
    budget = (max_bytes - 64) if max_bytes else None  # room for {"records": []}
    batch: list[dict] = []
    start, size, pixels = 0, 0, 0
    for i, rec in enumerate(records):
        n = len(json.dumps(rec)) + 2 if budget is not None else 0
        if budget is not None and n > budget:
            raise OrchestratorError(
                f"{path}: row {i} is {n} bytes as JSON; the server takes bodies of at most {max_bytes} bytes (serve.max_body_bytes)"
            )
        px = _image_pixels(rec.get(image_column)) if image_column and max_pixels and isinstance(rec.get(image_column), str) else 0
        if batch and (len(batch) >= count or (budget is not None and size + n > budget) or (max_pixels and pixels + px > max_pixels)):
            yield start, batch
            start, batch, size, pixels = i, [], 0, 0
        batch.append(rec)
        size += n
        pixels += px
    if batch:
        yield start, batch


def predict_file(
    url: str, path: Path, *, token: Optional[str] = None, chunk: int = DEFAULT_CHUNK, warn: Callable[[str], None] = lambda m: None
) -> list[dict]:
    """Predict every row of `path`; returns one {"row", "prediction", "probabilities"?} per row.

    The columns are read as the model's input kind needs them (GET /metadata "input"): text as
    strings, sequence and window cells from JSON or Parquet lists (a CSV cell holds a JSON list),
    image-file paths read (relative to `path`'s folder) and sent base64-encoded, like bytes cells.
    Requests hold at most `chunk` records and stay under the server's body limit."""
    df = read_records(path)
    if df.empty:
        raise OrchestratorError(f"{path}: no records")
    client = PredictClient(url, token)
    meta = client.metadata()
    max_bytes = max_pixels = None
    info: dict = {}
    if meta is not None:
        info = meta.get("input") or {}
        if info.get("kind") == "text" and info.get("column") in df.columns:
            df = read_records(path, text_columns=(info["column"],))
        columns = list(meta["input_schema"]["properties"])
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise OrchestratorError(f"{path}: missing input columns {', '.join(missing)} (the model needs {', '.join(columns)})")
        extra = [c for c in df.columns if c not in columns]
        if extra:
            warn(f"ignoring columns that are not model inputs: {', '.join(map(str, extra))}")
        df = df[columns]
        limits = meta.get("limits", {})
        chunk = min(chunk, int(limits.get("max_records", chunk)))
        max_bytes = limits.get("max_body_bytes")
        max_pixels = limits.get("max_request_pixels")

    out: list[dict] = []
    image_column = info.get("column") if info.get("kind") == "image" and info.get("source") != "array" else None
    for start, batch in _chunks(request_records(df, info, path), chunk, max_bytes, path, image_column=image_column, max_pixels=max_pixels):
        body = client.predict(batch, start)
        probs = body.get("probabilities") or [None] * len(body["predictions"])
        for i, (pred, p) in enumerate(zip(body["predictions"], probs)):
            row = {"row": start + i, "prediction": pred}
            if p is not None:
                row["probabilities"] = p
            row["model_version"] = body.get("model_version")
            out.append(row)
    return out
