"""The run directory: everything one `orchestrator train/run` leaves behind.

  <output.dir>/<name>-<YYYYmmdd-HHMMSS>/
    spec.yaml           the spec as given; spec.resolved.json with every default filled in
    metrics.json/.csv   one row per epoch
    best_checkpoint/    the best checkpoint by the spec's checkpoint metric
    test_metrics.json   held-out test metrics of the best checkpoint
    summary.json        outcome, wall time, failures
    train/              Ray Train's own storage (every kept checkpoint)
    tune/, trials/      a search's Tune state and trial folders; trials.json, winner.json

Paths recorded inside are relative to the run directory, so it can be moved or copied and a
search resumed there (`orchestrator resume COPY` never writes to the original; see
tune.prepare_restore). run.json keeps the spec's folder, where relative data paths start.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from orchestrator.errors import RunDirError  # noqa: F401  (raised by callers; importable from here too)
from orchestrator.spec import JobSpec


def new_run_dir(spec: JobSpec, spec_path: Path, root: Path | None = None, name: str | None = None, kind: str = "search") -> Path:
    """A new run directory under `root` (default: output.dir): `name` when given (a submitted job's,
    chosen by the submitter; it must not exist yet), else <spec name>-<timestamp>."""
    root = Path(root or spec.output.dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if name is not None:
        if name in ("", ".", "..") or Path(name).name != name:
            raise RunDirError(f"--run-name {name!r}: give a folder name, without '/'")
        run = root / name
        if run.exists():
            raise RunDirError(f"{run}: the run directory already exists; choose another --run-name")
    else:
        run = root / f"{spec.name}-{stamp}"
        n = 1
        while run.exists():  # two runs in the same second
            n += 1
            run = root / f"{spec.name}-{stamp}-{n}"
    run.mkdir(parents=True)
    shutil.copyfile(spec_path, run / "spec.yaml")
    write_json(run / "spec.resolved.json", spec.model_dump(mode="json"))
    # relative data paths resolve against the spec's folder, which `resume` needs to know
    # kind: "search" (orchestrator run of a spec with a tune section) or "train" (one training)
    write_json(
        run / "run.json", {"spec_path": str(Path(spec_path).resolve()), "base_dir": str(spec.base_dir), "created": stamp, "kind": kind}
    )
    return run.resolve()


def in_run(run: Path, path: str | Path) -> str:
    """A path as the run directory records it: relative to the run, so the folder can be moved or copied."""
    try:
        return Path(path).resolve().relative_to(Path(run).resolve()).as_posix()
    except ValueError:  # outside the run directory
        return str(path)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def write_metrics(run: Path, rows: Iterable[dict], stem: str = "metrics") -> None:
    rows = list(rows)
    write_json(run / f"{stem}.json", rows)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(run / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
