"""Shared fixtures. Ray tests share one real local Ray instance per session (starting one costs ~5 s)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from orchestrator.runtime import init_ray

    init_ray(num_cpus=2)  # as the CLI starts it: dashboard on 127.0.0.1, the repo on the workers' path
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Bundled datasets written once per session by the same prepare step the jobs use."""
    from orchestrator.data.bundled import write_bundled

    d = tmp_path_factory.mktemp("data")
    write_bundled("sklearn:digits", d / "digits.parquet")
    write_bundled("sklearn:breast_cancer", d / "breast_cancer.parquet")
    write_bundled("sklearn:breast_cancer", d / "breast_cancer.csv")
    write_bundled("sklearn:diabetes", d / "diabetes.parquet")
    return d


def spec_dict(name: str, **overrides) -> dict:
    """A job from jobs/ as a dict, with top-level sections updated by `overrides`."""
    import yaml

    d = yaml.safe_load((JOBS / name).read_text())
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return d


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    import subprocess

    exe = Path(sys.executable).parent / "orchestrator"
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def run_here(command: str, spec_path: Path, output: Path):
    """`orchestrator train|run SPEC -o OUTPUT` in this process, on the test session's Ray (start
    `ray_session` first): what the command does after its own Ray start, which the CLI tests
    cover. Returns the pipeline's RunResult; its console output is kept in `.console_text`."""
    import io

    from orchestrator.pipeline import run_job, train_job
    from orchestrator.spec import load_spec
    from orchestrator.ui import make_console

    text = io.StringIO()
    job = {"train": train_job, "run": run_job}[command]
    result = job(load_spec(spec_path), spec_path, output=output, console=make_console(file=text, width=200))
    result.console_text = text.getvalue()
    return result


def error_here(command: str, spec_path: Path, output: Path) -> str:
    """run_here for a run that must fail with an OrchestratorError (what the CLI prints as its one
    `error:` line, exit 2): returns the message, checked to be one line. For errors found after Ray
    has started, which the CLI would otherwise meet only after its own Ray start."""
    from orchestrator.errors import OrchestratorError

    with pytest.raises(OrchestratorError) as e:
        run_here(command, spec_path, output)
    message = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in message and "Traceback" not in message, message
    return message


# What Ray, Tune, Optuna and Ray Data print themselves: kept out of the console (in RUN/logs/ray.log)
RAY_NOISE = (
    "View detailed results",
    "Configuration for experiment",
    "A new study created",
    "Progress bars disabled",
    "TensorBoard",
    "tensorboard",
    "Tuner.restore",
    "graceful_shutdown",
    "(raylet)",
    "StreamingExecutor",
    "Execution plan",
    "Running Dataset",
    " INFO ",
    " WARNING ",
    "RAY_AUTH",
)


def noise_in(output: str) -> list[str]:
    """The lines of `output` that Ray, Tune, Optuna or Ray Data printed."""
    return [line for line in output.splitlines() if any(n in line for n in RAY_NOISE)]


def run_in_pty(args: list[str], *, cwd: Path | None = None, timeout: float = 300, columns: int = 200) -> tuple[int, str]:
    """A command with a pseudo-terminal (of `columns` columns) as its stdin, stdout and stderr, as a
    user's shell runs it: (exit code, everything it wrote)."""
    import fcntl
    import pty
    import select
    import struct
    import subprocess
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR", "CI")}
    proc = subprocess.Popen(
        args,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd or ROOT,
        env={**env, "TERM": "xterm-256color"},
        close_fds=True,
        start_new_session=True,
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal's other side has closed it
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None and not select.select([master], [], [], 0.2)[0]:
                break
        else:
            proc.kill()
            raise AssertionError(
                f"{' '.join(args)} did not finish within {timeout:.0f} s:\n{b''.join(chunks).decode(errors='replace')[-3000:]}"
            )
        rc = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return rc, b"".join(chunks).decode(errors="replace")


def plain(text: str) -> str:
    """Terminal output without its colour and cursor escape sequences."""
    import re

    return re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\r", "", text)
