"""`orchestrator submit` without a cluster: what travels with a job, where its run directory goes,
which token is sent, what is refused, and how fast a dead address fails."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import DataError, OrchestratorError
from orchestrator.submit import client as sbc
from orchestrator.submit import plan as sb
from tests.conftest import JOBS, spec_dict
from tests.jobs_support import free_port, invoker, orch, small_digits_spec

LOCAL = "http://127.0.0.1:8265"
REMOTE = "http://10.1.2.3:8265"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # no ~/.ray/auth_token
    for var in (
        "RAY_ADDRESS",
        "RAY_API_SERVER_ADDRESS",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
        "ORCHESTRATOR_K8S_IMAGE",
        "ORCHESTRATOR_K8S_GPU_IMAGE",
        "ORCHESTRATOR_K8S_STORAGE_PVC",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def invoke():
    return invoker()


def _spec(folder: Path, name="job.yaml", model=None, **sections) -> Path:
    d = spec_dict("breast-cancer-mlp.yaml", **sections)
    d.pop("tune", None)
    if model:
        d["model"] = model  # replaced, not merged: a custom model has none of the mlp fields
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(d))
    return folder / name


# ------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "given, expected",
    [
        ("127.0.0.1:8265", "http://127.0.0.1:8265"),
        ("http://head:8265/", "http://head:8265"),
        ("https://ray.example.com", "https://ray.example.com"),
    ],
)
def test_normalize_address(given, expected):
    assert sb.normalize_address(given) == expected


@pytest.mark.parametrize("bad", ["ray://head:10001", "ftp://x:1", "http://"])
def test_addresses_that_are_not_a_jobs_api(bad):
    with pytest.raises(OrchestratorError):
        sb.normalize_address(bad)


def test_address_from_environment_or_refused(monkeypatch):
    with pytest.raises(OrchestratorError, match="no --address given and no local cluster is up"):
        sb.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not a Jobs API: ignored
    with pytest.raises(OrchestratorError, match="no --address"):
        sb.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert sb.resolve_address(None) == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert sb.resolve_address(None) == "http://api:8265"
    assert sb.resolve_address("http://given:1") == "http://given:1"


# ---------------------------------------------------------------------------------- tokens


def test_token_sources_in_order(monkeypatch, tmp_path):
    assert sbc.find_token(LOCAL) == sbc.Token(None, "none")
    ray_default = tmp_path / "user" / ".ray" / "auth_token"
    ray_default.parent.mkdir(parents=True)
    ray_default.write_text("from-home\n")
    assert sbc.find_token(LOCAL).value == "from-home"
    path = tmp_path / "tok"
    path.write_text("from-path\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert sbc.find_token(LOCAL) == sbc.Token("from-path", str(path))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert sbc.find_token(LOCAL) == sbc.Token("from-env", "$RAY_AUTH_TOKEN")
    monkeypatch.setenv("MY_TOKEN", "from-option")
    assert sbc.find_token(LOCAL, "MY_TOKEN") == sbc.Token("from-option", "$MY_TOKEN")
    with pytest.raises(OrchestratorError, match="--token-env NOPE: the environment variable NOPE is not set"):
        sbc.find_token(LOCAL, "NOPE")


def test_local_cluster_token_comes_before_the_users_default(tmp_path):
    from orchestrator.submit import local_cluster as cl

    ray_default = tmp_path / "user" / ".ray" / "auth_token"
    ray_default.parent.mkdir(parents=True)
    ray_default.write_text("someone-elses\n")
    token_file = cl.ensure_token(cl.state_dir("mine"))
    cl.ClusterState(
        name="mine",
        state_dir=str(cl.state_dir("mine")),
        temp_dir="/tmp/x",
        marker="m",
        dashboard_url="http://127.0.0.1:8399",
        gcs_address="",
        token_file=str(token_file),
        num_cpus=1,
        storage=None,
        ports={"dashboard": 8399},
    ).save()
    assert sbc.find_token("http://127.0.0.1:8399") == sbc.Token(token_file.read_text().strip(), str(token_file))
    assert sbc.find_token("http://127.0.0.1:8400").value == "someone-elses"


def test_plain_http_to_another_machine_needs_a_token_or_insecure():
    with pytest.raises(OrchestratorError, match="refusing to send a job to http://10.1.2.3:8265 without a token over plain http"):
        sbc.check_transport(REMOTE, sbc.Token(None, "none"), insecure=False)
    assert "--insecure" in sbc.check_transport(REMOTE, sbc.Token(None, "none"), insecure=True)[0]
    assert "unencrypted" in sbc.check_transport(REMOTE, sbc.Token("t", "x"), insecure=False)[0]
    assert sbc.check_transport(LOCAL, sbc.Token(None, "none"), insecure=False) == []
    assert sbc.check_transport("http://[::1]:8265", sbc.Token(None, "none"), insecure=False) == []
    assert sbc.check_transport("https://ray.example.com", sbc.Token(None, "none"), insecure=False) == []


# ------------------------------------------------------------------------------ what travels


def test_spec_and_user_code_travel_data_files_and_caches_do_not(tmp_path):
    folder = tmp_path / "proj"
    spec = _spec(folder, data={"source": "data/bc.parquet", "prepare": "sklearn:breast_cancer", "label": "label"})
    (folder / "mymodels.py").write_text("def build(**kw): ...\n")
    (folder / "pkg" / "sub").mkdir(parents=True)
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "sub" / "layers.py").write_text("X = 1\n")
    (folder / "pkg" / "weights.bin").write_bytes(b"\0" * 100)
    (folder / "pkg" / "__pycache__").mkdir()
    (folder / "pkg" / "__pycache__" / "x.py").write_text("")
    (folder / "notes").mkdir()  # not a package
    (folder / "notes" / "a.py").write_text("")
    (folder / ".venv").mkdir()
    (folder / "data").mkdir()
    (folder / "data" / "bc.parquet").write_bytes(b"PAR1")
    plan = sb.plan_submission(spec, address=LOCAL, cwd=tmp_path)
    assert sorted(plan.files) == ["job.yaml", "mymodels.py", "pkg/__init__.py", "pkg/sub/layers.py"]
    assert any("generated on the cluster by the prepare step" in n for n in plan.notes)
    assert plan.entrypoint == f"orchestrator run job.yaml -o {tmp_path / 'runs'} --run-name {plan.run_name}"
    assert "PYTHONPATH" not in plan.runtime_env("/w")["env_vars"]  # it would conflict with the driver's own
    assert plan.metadata["orchestrator.output_dir"] == str(tmp_path / "runs")
    assert plan.submission_id.startswith("breast-cancer-")


def test_a_submitted_job_with_a_serve_section_ends_with_its_run(tmp_path):
    """As a RayJob does: the job trains and gates, and says how to serve the result (it never serves)."""
    spec = _spec(tmp_path / "proj", serve={"port": 8000})
    plan = sb.plan_submission(spec, address=LOCAL, cwd=tmp_path)
    assert plan.entrypoint.endswith(" --no-serve")
    assert any(
        n.startswith("the spec's serve section is not served by a submitted job") and f"orchestrator serve {plan.run_dir}" in n
        for n in plan.notes
    ), plan.notes
    assert not sb.plan_submission(_spec(tmp_path / "plain"), address=LOCAL, cwd=tmp_path).entrypoint.endswith("--no-serve")


def test_relative_data_without_prepare_travels_with_the_job(tmp_path, monkeypatch):
    folder = tmp_path / "proj"
    spec = _spec(folder, data={"source": "data/bc.parquet", "prepare": None})
    (folder / "data").mkdir()
    (folder / "data" / "bc.parquet").write_bytes(b"PAR1" * 10)
    plan = sb.plan_submission(spec, address=LOCAL, cwd=tmp_path)
    assert plan.files["data/bc.parquet"] == folder / "data" / "bc.parquet"
    with sb.materialized(plan) as wd:
        assert (wd / "data" / "bc.parquet").read_bytes() == b"PAR1" * 10 and (wd / "job.yaml").is_file()
    monkeypatch.setattr(sb, "MAX_SHIPPED_DATA", 10)
    with pytest.raises(OrchestratorError, match="too large to travel with the job"):
        sb.plan_submission(spec, address=LOCAL, cwd=tmp_path)


def test_data_that_cannot_travel_is_refused(tmp_path):
    outside = _spec(tmp_path / "a", data={"source": "../bc.parquet", "prepare": None})
    with pytest.raises(OrchestratorError, match="outside the spec's folder cannot travel"):
        sb.plan_submission(outside, address=LOCAL, cwd=tmp_path)
    missing = _spec(tmp_path / "b", data={"source": "nope.parquet", "prepare": None})
    with pytest.raises(DataError, match="data file not found"):
        sb.plan_submission(missing, address=LOCAL, cwd=tmp_path)
    absolute = _spec(tmp_path / "c", data={"source": "/shared/bc.parquet", "prepare": None})
    plan = sb.plan_submission(absolute, address=REMOTE, storage="/shared/runs", cwd=tmp_path)
    assert list(plan.files) == ["job.yaml"] and any("must exist at that path on the cluster" in n for n in plan.notes)


def test_custom_model_module_from_the_working_directory_travels(tmp_path):
    (tmp_path / "usermodels.py").write_text("def build(**kw): ...\n")
    spec = _spec(tmp_path / "specs", model={"arch": "custom", "factory": "usermodels:build"})
    assert "usermodels.py" in sb.plan_submission(spec, address=LOCAL, cwd=tmp_path).files
    spec = _spec(tmp_path / "specs", model={"arch": "custom", "factory": "installed.models:build"})
    plan = sb.plan_submission(spec, address=LOCAL, cwd=tmp_path)
    assert any("must be installed on the cluster" in n for n in plan.notes)


# ----------------------------------------------------------------------------- run directory


def test_where_the_run_directory_goes(tmp_path):
    notes: list[str] = []
    rd = lambda out, storage=None, address=LOCAL, local=None: sb.resolve_output_dir(out, storage, address, tmp_path, local, notes)  # noqa: E731
    assert rd("runs") == str(tmp_path / "runs")  # a cluster on this machine: like `orchestrator run`
    assert rd("/abs/runs", address=REMOTE) == "/abs/runs"
    assert rd("runs", storage="/nfs/runs", address=REMOTE) == "/nfs/runs"
    assert rd("runs", storage="store") == str(tmp_path / "store")
    with pytest.raises(OrchestratorError, match="is relative: on a remote cluster .* --storage"):
        rd("runs", address=REMOTE)
    with pytest.raises(OrchestratorError, match="give an absolute path"):
        rd("runs", storage="store", address=REMOTE)
    with pytest.raises(OrchestratorError, match="object-store URIs are not supported"):
        rd("s3://bucket/runs")
    with pytest.raises(OrchestratorError, match="object-store URIs are not supported"):
        rd("runs", storage="gs://bucket/runs")

    class Local:
        name, storage = "local", "/srv/runs"

    assert rd("runs", local=Local) == "/srv/runs" and "storage of local cluster" in notes[-1]
    assert rd("/abs", local=Local) == "/abs"


def test_entrypoint_quotes_paths_and_names_the_run_directory(tmp_path):
    spec = _spec(tmp_path / "my jobs", name="a b.yaml")
    plan = sb.plan_submission(spec, address=LOCAL, storage=str(tmp_path / "out dir"), cwd=tmp_path)
    assert plan.entrypoint == f"orchestrator run 'a b.yaml' -o '{tmp_path / 'out dir'}' --run-name {plan.run_name}"
    assert plan.run_name == plan.submission_id and plan.run_name.startswith("breast-cancer-mlp-")
    assert plan.run_dir == f"{tmp_path / 'out dir'}/{plan.run_name}"
    assert sb.plan_submission(spec, address=LOCAL, storage="/runs", cwd=tmp_path, submission_id="mine").run_name != "mine"


def test_the_run_directory_travels_in_the_jobs_metadata_not_its_output(tmp_path):
    """What `jobs status` and `submit --follow` report comes from the metadata the submitter wrote,
    whatever the job prints (console text is no protocol between the two)."""
    plan = sb.plan_submission(_spec(tmp_path / "specs"), address=REMOTE, storage="/shared/runs", cwd=tmp_path)
    assert plan.metadata["orchestrator.run_dir"] == plan.run_dir == f"/shared/runs/{plan.run_name}"
    view = sbc.JobView(plan.submission_id, "SUCCEEDED", plan.entrypoint, "", None, None, dict(plan.metadata), 0)
    assert view.run_dir == plan.run_dir
    assert sbc.JobView("raysubmit_1", "RUNNING", "python x.py", "", None, None, {}, None).run_dir == ""


def test_the_job_creates_exactly_the_run_directory_it_is_named(tmp_path):
    """`orchestrator run --run-name NAME` (what a submitted job runs): that folder, never another one."""
    from orchestrator.errors import RunDirError
    from orchestrator.rundir import new_run_dir
    from orchestrator.spec import load_spec

    path = _spec(tmp_path / "specs")
    spec = load_spec(path)
    run = new_run_dir(spec, path, tmp_path / "runs", "bc-20260101-000000-abcd")
    assert run == (tmp_path / "runs" / "bc-20260101-000000-abcd").resolve() and (run / "spec.yaml").is_file()
    with pytest.raises(RunDirError, match="already exists"):
        new_run_dir(spec, path, tmp_path / "runs", "bc-20260101-000000-abcd")
    for bad in ("../elsewhere", "a/b", ".."):
        with pytest.raises(RunDirError, match="give a folder name"):
            new_run_dir(spec, path, tmp_path / "runs", bad)
    assert new_run_dir(spec, path, tmp_path / "runs").name.startswith(f"{spec.name}-")  # no name: <name>-<timestamp>


# --------------------------------------------------------------------------------- outcome


def test_exit_codes():
    view = lambda status, code=None: sbc.JobView("id", status, "", "", None, None, {}, code)  # noqa: E731
    assert [
        sbc.exit_code(view(s, c)) for s, c in [("SUCCEEDED", 0), ("FAILED", 3), ("FAILED", 2), ("FAILED", None), ("STOPPED", None)]
    ] == [0, 3, 2, 1, 1]


# ------------------------------------------------------------------------------------- CLI


def test_dry_run_prints_the_request_and_contacts_nothing(invoke, tmp_path):
    spec = small_digits_spec(tmp_path)
    res = invoke("submit", str(spec), "--address", f"http://127.0.0.1:{free_port()}", "--storage", str(tmp_path / "runs"), "--dry-run")
    assert res.exit_code == 0, res.output
    assert f"entrypoint:    orchestrator run digits-small.yaml -o {tmp_path / 'runs'} --run-name digits-cnn-" in res.output
    sid = res.output.split("submission id: ")[1].split()[0]
    assert f"run directory: {tmp_path / 'runs' / sid}/" in res.output
    assert "generated on the cluster by the prepare step" in res.output


def test_invalid_spec_fails_before_any_request(invoke, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    res = invoke("submit", str(bad), "--address", f"http://127.0.0.1:{free_port()}")
    assert res.exit_code == 2 and "data: required field is missing" in res.output


def test_nothing_listening_fails_within_10_s_with_a_clear_message(tmp_path):
    """Through the real entry point, in a fresh process, start-up included."""
    spec = small_digits_spec(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = orch("submit", str(spec), "--address", url, home=tmp_path / "home", timeout=30)
    took = time.monotonic() - t0
    assert r.returncode == 1 and took < 10, (took, r.stderr)
    assert r.stderr.strip() == (
        f"error: nothing answers at {url} (connection refused) (is the cluster up? `orchestrator cluster local status`)"
    )


def test_remote_http_without_token_is_refused_before_sending(invoke, tmp_path):
    spec = small_digits_spec(tmp_path)
    res = invoke("submit", str(spec), "--address", "http://192.0.2.1:8265", "--storage", "/shared/runs")
    assert res.exit_code == 1 and "refusing to send a job to http://192.0.2.1:8265 without a token" in res.output


def test_k8s_delegates_to_submit_k8s(invoke, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    res = invoke("submit", str(JOBS / "breast-cancer-mlp.yaml"), "--k8s", "-n", "ml", "--dry-run", "--storage-pvc", "shared")
    assert res.exit_code == 0, res.output
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert [d["kind"] for d in docs] == ["NetworkPolicy", "ConfigMap", "RayJob"] and docs[-1]["metadata"]["namespace"] == "ml"
    res = invoke("submit", str(JOBS / "breast-cancer-mlp.yaml"), "--k8s", "--address", LOCAL)
    assert res.exit_code == 1 and "apply to Ray Jobs API submission, not to --k8s" in res.output
