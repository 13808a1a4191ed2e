"""Neither the serve bearer token nor the Ray token ends up where others can read it: run
directories, Ray's session logs, command output, rendered manifests, job metadata, and the
environment or command line of any Ray process (every task can read /proc/<pid>/environ of the
processes of its node). A submitted job's side is checked in tests/test_submit_ray.py, on the
cluster those tests share."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.conftest import ROOT, spec_dict
from tests.jobs_support import AMBIENT, cli_command
from tests.leaks import SERVE_TOKEN_ENV, files_holding, processes_holding
from tests.serve_support import free_port, serving_until_ctrl_c
from tests.waiting import wait_for


def token_spec(folder: Path, data_dir: Path, **sections) -> Path:
    d = spec_dict("breast-cancer-mlp.yaml", **{"model": {"hidden": [16]}, "train": {"epochs": 2}, "scaling": {"workers": 1}, **sections})
    d["data"]["source"] = str(data_dir / "breast_cancer.parquet")
    d["data"].pop("prepare", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    env.update(COLUMNS="200", **extra)
    return env


def option(args: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(name + "="))


@pytest.mark.ray
@pytest.mark.slow
def test_run_with_serve_leaks_neither_token(data_dir, tmp_path):
    """`orchestrator run` with a `serve:` section (train, evaluate, promote, then serve the winner with
    auth at the spec's port until Ctrl-C) on embedded Ray, given the Ray token in RAY_AUTH_TOKEN and
    the serve token in serve.auth_token_env."""
    tokens = {"serve token": "serve-" + secrets.token_hex(24), "Ray token": secrets.token_hex(32)}
    port = free_port()
    spec = token_spec(tmp_path / "spec", data_dir, promote="accuracy >= 0.5", serve={"port": port, "auth_token_env": SERVE_TOKEN_ENV})
    env = clean_env(**{SERVE_TOKEN_ENV: tokens["serve token"], "RAY_AUTH_TOKEN": tokens["Ray token"]})
    exe = Path(sys.executable).parent / "orchestrator"
    with serving_until_ctrl_c([str(exe), "run", str(spec), "-o", str(tmp_path / "runs")], port, 300, env=env, cwd=tmp_path) as (
        proc,
        lines,
    ):
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {tokens['serve token']}"}
        meta = httpx.get(f"{url}/metadata", headers=auth, timeout=30)
        assert meta.status_code == 200, meta.text
        assert httpx.get(f"{url}/metadata", timeout=30).status_code == 401

        # trained, promoted, then served: the winner, with a curl line that works as printed
        (run_dir,) = (tmp_path / "runs").iterdir()
        out = "".join(lines)
        assert "serving breast-cancer-mlp" in out and str(run_dir / "best_checkpoint") in out, out
        assert "HTTP ingress: Serve's Python proxy" in out, out  # as the node the run started recorded it
        curl = shlex.split(next(x for x in lines if x.startswith("curl -s")))
        assert (
            curl[curl.index("-H", curl.index("-H") + 1) + 1] == f"Authorization: Bearer ${SERVE_TOKEN_ENV}"
        )  # the variable, never the token
        answer = httpx.post(f"{url}/predict", json=json.loads(curl[-1]), headers=auth, timeout=60)
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["predictions"][0] in ("benign", "malignant") and set(got["probabilities"][0]) == {"benign", "malignant"}

        tree = psutil.Process(proc.pid).children(recursive=True)
        leaks = processes_holding(tokens, [p.pid for p in tree])
        gcs = next(p.cmdline() for p in tree if "gcs_server" in p.name())
        session = Path(option(gcs, "--log_dir")).parent
        # the dashboard moves off --port when another Ray on the machine holds it: ask its log
        log = session / "logs" / "dashboard.log"
        found = wait_for(
            lambda: log.is_file() and re.findall(r"Dashboard head http address: (\S+)", log.read_text()),
            60,
            "the dashboard's address in its log",
        )
        api = "http://" + found[-1]
        ray_auth = {"Authorization": f"Bearer {tokens['Ray token']}"}
        for path in ("/api/jobs/", "/api/serve/applications/", "/api/v0/actors?detail=1&limit=1000", "/api/v0/tasks?detail=1&limit=1000"):
            resp = httpx.get(api + path, headers=ray_auth, timeout=30)
            assert resp.status_code == 200, (path, resp.status_code)
            leaks += [f"{name} in {path}" for name, tok in tokens.items() if tok in resp.text]
    out = tmp_path / "output.txt"
    out.write_text("".join(lines))
    assert session.is_dir()
    leaks += files_holding(tokens, tmp_path / "runs", tmp_path / "spec", out, session)
    assert not leaks, "\n".join(leaks)


def test_rendered_manifests_hold_no_token(data_dir, tmp_path):
    """KubeRay manifests name the Secret that holds the serve token, never its value."""
    token = "serve-" + secrets.token_hex(24)
    spec = token_spec(tmp_path, data_dir, serve={"port": 8000, "auth_token_env": SERVE_TOKEN_ENV})
    env = clean_env(**{SERVE_TOKEN_ENV: token, "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    for kind in ("raycluster", "rayjob", "rayservice"):
        extra = ["--checkpoint", "/storage/runs/x/best_checkpoint"] if kind == "rayservice" else []
        r = subprocess.run(
            [*cli_command(), "k8s", "render", str(spec), "--kind", kind, *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert "kind:" in r.stdout
        assert token not in r.stdout + r.stderr and env["RAY_AUTH_TOKEN"] not in r.stdout + r.stderr, kind
