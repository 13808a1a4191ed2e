"""The house rules, run by the test command: ruff's lint and its format check over the code, and mypy
over the package (settings in pyproject.toml). Each failure prints the tool's own report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
CODE = ["orchestrator", "tests", "bench"]


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing_to_fix():
    r = _run("ruff", "check", "--no-cache", *CODE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_code_is_formatted_as_ruff_formats_it():
    r = _run("ruff", "format", "--check", "--no-cache", *CODE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_type_checker_finds_nothing_in_the_package():
    r = _run("mypy", "--no-incremental", "--cache-dir", "/dev/null")  # files, plugins and overrides: [tool.mypy]
    assert r.returncode == 0, r.stdout + r.stderr
