"""The Kubernetes CLI pieces through typer's CliRunner: `k8s render`, `cluster k8s up/down/status/scale`
and `submit_k8s`, against no cluster, an unreachable one, and a fake API server on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli.cluster import cluster_k8s_app
from orchestrator.cli.k8s import k8s_app, submit_k8s
from orchestrator.k8s import client as kc
from orchestrator.k8s.render import RenderOptions, render, render_rayjob, to_yaml
from orchestrator.ports import free_port
from orchestrator.spec import load_spec
from tests.k8s_support import FakeKubeAPI, validation_errors

HERE = Path(__file__).resolve().parent
CPU_SPEC = HERE / "k8s_specs" / "tabular-cpu.yaml"
GPU_SPEC = HERE / "k8s_specs" / "image-gpu.yaml"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def _no_ambient_kube(monkeypatch, tmp_path):
    """No test may pick up a real kubeconfig or in-cluster credentials from the machine."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in (
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "ORCHESTRATOR_K8S_IMAGE",
        "ORCHESTRATOR_K8S_GPU_IMAGE",
        "ORCHESTRATOR_K8S_STORAGE_PVC",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def closed_port_kubeconfig(tmp_path) -> Path:
    """A kubeconfig whose API server is https://127.0.0.1:<a port nobody listens on>."""
    port = free_port()
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "dead",
                "clusters": [{"name": "dead", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "me"}}],
            }
        )
    )
    return path


@pytest.fixture
def api(tmp_path):
    with FakeKubeAPI() as fake:
        fake.kubeconfig_path = fake.kubeconfig(tmp_path / "fake-kubeconfig")
        yield fake


def _one_error_line(output: str) -> str:
    """The output holds exactly one error line (warnings about the spec may come before it)."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and "Traceback" not in output
    return lines[0]


# ------------------------------------------------------------------------------- render


def test_render_prints_the_rendered_objects_as_yaml(runner):
    res = runner.invoke(k8s_app, ["render", str(GPU_SPEC), "--kind", "raycluster", "--namespace", "ml"])
    assert res.exit_code == 0, res.output
    docs = list(yaml.safe_load_all(res.stdout))
    assert docs == render("raycluster", load_spec(GPU_SPEC), RenderOptions(namespace="ml")).objects
    for obj in docs:
        assert validation_errors(obj) == []


def test_render_rayjob_warns_about_local_paths_on_stderr(runner):
    res = runner.invoke(k8s_app, ["render", str(CPU_SPEC), "--kind", "rayjob"])
    assert res.exit_code == 0
    assert [d["kind"] for d in yaml.safe_load_all(res.stdout)] == ["NetworkPolicy", "ConfigMap", "RayJob"]
    assert "warning:" in res.stderr and "--storage-pvc" in res.stderr and "warning" not in res.stdout


def test_render_options_and_environment(runner, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_K8S_IMAGE", "registry.example/orch:7")
    res = runner.invoke(
        k8s_app,
        ["render", str(CPU_SPEC), "--kind", "rayservice", "--checkpoint", "s3://b/ckpt", "--storage-pvc", "shared", "--name", "bc-serve"],
    )
    assert res.exit_code == 0, res.output
    service = list(yaml.safe_load_all(res.stdout))[-1]
    assert service["metadata"]["name"] == "bc-serve"
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == "registry.example/orch:7"
    assert {"name": "storage", "persistentVolumeClaim": {"claimName": "shared"}} in head["volumes"]


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["render", str(CPU_SPEC), "--kind", "rayservice"], 1, "--checkpoint"),
        (["render", str(CPU_SPEC), "--kind", "rayjob", "--checkpoint", "x"], 1, "rayservice only"),
        (["render", str(CPU_SPEC), "--namespace", "Bad_NS"], 1, "namespace"),
        (["render", "no/such/spec.yaml"], 2, "file not found"),
    ],
)
def test_render_user_errors_are_short_and_have_no_traceback(runner, args, code, needle):
    res = runner.invoke(k8s_app, args)
    assert res.exit_code == code
    assert needle in res.stderr and "Traceback" not in res.output
    assert res.stdout == ""


def test_render_invalid_spec_lists_its_problems(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CPU_SPEC.read_text().replace("workers: 2", "workrs: 2"))
    res = runner.invoke(k8s_app, ["render", str(bad)])
    assert res.exit_code == 2 and "scaling.workrs" in res.stderr and "Traceback" not in res.output


def test_render_kind_must_be_known(runner):
    res = runner.invoke(k8s_app, ["render", str(CPU_SPEC), "--kind", "deployment"])
    assert res.exit_code != 0 and "Traceback" not in res.output


# ------------------------------------------------------------------------ no cluster at all


def test_status_with_no_reachable_cluster_fails_fast_with_one_line(runner, closed_port_kubeconfig):
    start = time.monotonic()
    res = runner.invoke(cluster_k8s_app, ["status", "--kubeconfig", str(closed_port_kubeconfig)])
    elapsed = time.monotonic() - start
    assert res.exit_code == 1
    assert elapsed < 10
    line = _one_error_line(res.output)
    assert "cannot reach the Kubernetes API server at https://127.0.0.1:" in line
    assert "Connection refused" in line


@pytest.mark.parametrize(
    "args",
    [
        ["status", "mycluster"],
        ["up"],
        ["down", "mycluster"],
        ["scale", "mycluster", "--workers", "3"],
    ],
)
def test_every_cluster_command_fails_fast_when_unreachable(runner, closed_port_kubeconfig, args):
    start = time.monotonic()
    res = runner.invoke(cluster_k8s_app, [*args, "--kubeconfig", str(closed_port_kubeconfig)])
    assert res.exit_code == 1 and time.monotonic() - start < 10
    assert "cannot reach the Kubernetes API server" in _one_error_line(res.output)


def test_submit_fails_fast_when_unreachable(closed_port_kubeconfig, capsys):
    start = time.monotonic()
    code = submit_k8s(
        str(CPU_SPEC),
        namespace="default",
        kubeconfig=str(closed_port_kubeconfig),
        context=None,
        dry_run=False,
        follow=True,
        storage_pvc="shared",
    )
    assert code == 1 and time.monotonic() - start < 10
    assert "cannot reach the Kubernetes API server" in _one_error_line(capsys.readouterr().err)


def test_no_kubeconfig_and_not_in_a_pod(runner):
    res = runner.invoke(cluster_k8s_app, ["status"])
    assert res.exit_code == 1
    line = _one_error_line(res.output)
    assert "no Kubernetes configuration" in line and "--kubeconfig" in line


def test_missing_kubeconfig_file_and_unknown_context(runner, closed_port_kubeconfig, tmp_path):
    res = runner.invoke(cluster_k8s_app, ["status", "--kubeconfig", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "file not found" in _one_error_line(res.output)
    res = runner.invoke(cluster_k8s_app, ["status", "--kubeconfig", str(closed_port_kubeconfig), "--context", "other"])
    assert res.exit_code == 1 and "cannot load kubeconfig" in _one_error_line(res.output)


# --------------------------------------------------------------------------------- dry runs


def test_dry_runs_contact_nothing(runner, api):
    kubeconfig = str(api.kubeconfig_path)
    for args in (["up", "--dry-run"], ["down", "x", "--dry-run"], ["status", "x", "--dry-run"]):
        res = runner.invoke(cluster_k8s_app, [*args, "--kubeconfig", kubeconfig])
        assert res.exit_code == 0, res.output
    assert submit_k8s(str(CPU_SPEC), namespace="ml", kubeconfig=kubeconfig, context=None, dry_run=True, follow=True) == 0
    assert api.requests == []


def test_up_dry_run_prints_the_objects_up_sends(runner, api):
    dry = runner.invoke(cluster_k8s_app, ["up", str(GPU_SPEC), "-n", "ml", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    printed = list(yaml.safe_load_all(dry.stdout))
    res = runner.invoke(cluster_k8s_app, ["up", str(GPU_SPEC), "-n", "ml", "--kubeconfig", str(api.kubeconfig_path)])
    assert res.exit_code == 0, res.output
    assert [r["body"] for r in api.sent("POST")] == printed
    for obj in printed:
        assert validation_errors(obj) == []
    assert "created RayCluster digits-cnn-gpu in namespace ml" in res.stdout


def test_submit_dry_run_prints_exactly_what_submit_sends(api, capsys):
    kubeconfig = str(api.kubeconfig_path)
    assert (
        submit_k8s(
            str(CPU_SPEC),
            namespace="ml",
            kubeconfig=kubeconfig,
            context=None,
            dry_run=True,
            follow=False,
            suffix="abcde",
            storage_pvc="shared",
        )
        == 0
    )
    out = capsys.readouterr()
    printed = list(yaml.safe_load_all(out.out))
    assert [o["kind"] for o in printed] == ["NetworkPolicy", "ConfigMap", "RayJob"]
    assert printed[-1]["metadata"]["name"] == "breast-cancer-abcde"
    assert "serve section" in out.err  # the spec's serve section is not part of a RayJob

    assert (
        submit_k8s(
            str(CPU_SPEC),
            namespace="ml",
            kubeconfig=kubeconfig,
            context=None,
            dry_run=False,
            follow=False,
            suffix="abcde",
            storage_pvc="shared",
        )
        == 0
    )
    posts = api.sent("POST")
    assert [p["body"] for p in posts] == printed
    assert [p["path"] for p in posts] == [
        "/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies",
        "/api/v1/namespaces/ml/configmaps",
        "/apis/ray.io/v1/namespaces/ml/rayjobs",
    ]
    # then the helpers get the RayJob as owner, so deleting the RayJob deletes them
    uid = api.objects[("rayjobs", "ml", "breast-cancer-abcde")]["metadata"]["uid"]
    for plural, name in (("networkpolicies", "breast-cancer-abcde-ray-ingress"), ("configmaps", "breast-cancer-abcde-spec")):
        refs = api.objects[(plural, "ml", name)]["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "ray.io/v1", "kind": "RayJob", "name": "breast-cancer-abcde", "uid": uid}]


def test_each_submit_is_a_new_rayjob(capsys):
    names = set()
    for _ in range(3):
        assert submit_k8s(str(CPU_SPEC), namespace="ml", kubeconfig=None, context=None, dry_run=True, follow=False) == 0
        names.add(list(yaml.safe_load_all(capsys.readouterr().out))[-1]["metadata"]["name"])
    assert len(names) == 3 and all(n.startswith("breast-cancer-") for n in names)


# ------------------------------------------------------------------------ submit and follow


def _submit(api, **kw) -> int:
    return submit_k8s(
        str(CPU_SPEC),
        namespace="ml",
        kubeconfig=str(api.kubeconfig_path),
        context=None,
        dry_run=False,
        suffix="run01",
        storage_pvc="shared",
        **kw,
    )


@pytest.mark.parametrize("final,code", [("SUCCEEDED", 0), ("FAILED", 1)])
def test_submit_follows_the_rayjob_to_its_end(api, capsys, final, code):
    api.status_on_create["rayjobs"] = {"jobDeploymentStatus": "Initializing"}
    deploy = "Complete" if final == "SUCCEEDED" else "Failed"
    api.watch_statuses[("rayjobs", "ml", "breast-cancer-run01")] = [
        {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": deploy, "jobStatus": final, "message": "done"},
    ]
    assert _submit(api, follow=True) == code
    out = capsys.readouterr().out
    assert "created RayJob breast-cancer-run01 in namespace ml" in out
    assert "RayJob breast-cancer-run01: Initializing" in out
    assert "RayJob breast-cancer-run01: Running (job RUNNING)" in out
    assert f"RayJob breast-cancer-run01: {deploy} (job {final}): done" in out
    watches = [r for r in api.sent("GET") if r["query"].get("watch") == "true"]
    assert watches and watches[0]["query"]["fieldSelector"] == "metadata.name=breast-cancer-run01"


def test_submit_without_follow_returns_after_create(api, capsys):
    assert _submit(api, follow=False) == 0
    assert not [r for r in api.sent("GET") if r["query"].get("watch")]
    assert "kubectl -n ml logs -f job/breast-cancer-run01" in capsys.readouterr().out


def test_submit_when_kuberay_is_not_installed_rolls_back(api, capsys):
    api.crds_installed = False
    assert _submit(api, follow=True) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "KubeRay operator" in line
    assert api.objects == {}, "the NetworkPolicy and ConfigMap created first were deleted again"


def test_submit_invalid_spec_exit_code_2(api, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad Name\n")
    code = submit_k8s(str(bad), namespace="ml", kubeconfig=str(api.kubeconfig_path), context=None, dry_run=False, follow=False)
    assert code == 2 and "invalid job spec" in capsys.readouterr().err and api.requests == []


# -------------------------------------------------------------------- up / status / scale / down


def _cli(runner, api, *args):
    return runner.invoke(cluster_k8s_app, [*args, "-n", "ml", "--kubeconfig", str(api.kubeconfig_path)])


def test_cluster_lifecycle(runner, api):
    res = _cli(runner, api, "up", "--name", "dev")
    assert res.exit_code == 0, res.output
    assert ("rayclusters", "ml", "dev") in api.objects
    assert api.objects[("networkpolicies", "ml", "dev-ray-ingress")]["metadata"]["ownerReferences"][0]["kind"] == "RayCluster"

    again = _cli(runner, api, "up", "--name", "dev")
    assert again.exit_code == 1 and "already exists" in _one_error_line(again.output)

    api.objects[("rayclusters", "ml", "dev")]["status"] = {
        "state": "ready",
        "readyWorkerReplicas": 2,
        "availableWorkerReplicas": 2,
        "desiredWorkerReplicas": 2,
        "desiredCPU": "6",
        "desiredGPU": "0",
        "desiredMemory": "12Gi",
        "head": {"podName": "dev-head-x", "podIP": "10.0.0.5", "serviceName": "dev-head-svc", "serviceIP": "10.96.0.9"},
    }
    res = _cli(runner, api, "status", "dev")
    assert res.exit_code == 0, res.output
    assert "RayCluster dev (namespace ml): ready" in res.stdout
    assert "2 ready" in res.stdout and "6 CPU" in res.stdout and "group cpu-workers: replicas 2 (min 0, max 2)" in res.stdout
    assert "Ray auth: token" in res.stdout and "port-forward svc/dev-head-svc 8265:8265" in res.stdout

    listing = _cli(runner, api, "status")
    assert listing.exit_code == 0 and listing.stdout.splitlines()[1].split()[:3] == ["dev", "ready", "2/2"]

    dry = _cli(runner, api, "scale", "dev", "--workers", "4", "--dry-run")
    assert dry.exit_code == 0, dry.output
    ops = list(yaml.safe_load_all(dry.stdout))[0]
    assert ops[0] == {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "cpu-workers"}
    assert api.sent("PATCH")[-1]["path"].endswith("networkpolicies/dev-ray-ingress"), "dry run sent nothing"

    res = _cli(runner, api, "scale", "dev", "--workers", "4")
    assert res.exit_code == 0, res.output
    patch = api.sent("PATCH")[-1]
    assert patch["content_type"] == "application/json-patch+json" and patch["body"] == ops
    group = api.objects[("rayclusters", "ml", "dev")]["spec"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["maxReplicas"]) == (4, 4)

    bad = _cli(runner, api, "scale", "dev", "--workers", "1", "--group", "gpu-workers")
    assert bad.exit_code == 1 and "no worker group" in _one_error_line(bad.output)

    res = _cli(runner, api, "down", "dev")
    assert res.exit_code == 0 and "deleted RayCluster dev, NetworkPolicy dev-ray-ingress" in res.stdout
    assert not api.objects
    res = _cli(runner, api, "down", "dev")
    assert res.exit_code == 0 and "nothing to delete" in res.stdout


def test_status_of_a_missing_cluster(runner, api):
    res = _cli(runner, api, "status", "ghost")
    assert res.exit_code == 1 and "no RayCluster ghost in namespace ml" in _one_error_line(res.output)
    res = _cli(runner, api, "status")
    assert res.exit_code == 0 and "no RayClusters in namespace ml" in res.stdout


def test_status_without_kuberay(runner, api):
    api.crds_installed = False
    res = _cli(runner, api, "status")
    assert res.exit_code == 1 and "KubeRay operator" in _one_error_line(res.output)


def test_up_dry_run_yaml_is_what_render_gives(runner):
    res = runner.invoke(cluster_k8s_app, ["up", "--dry-run", "-n", "team"])
    assert res.exit_code == 0
    objects = [d for d in yaml.safe_load_all(res.stdout)]
    assert objects[-1]["kind"] == "RayCluster" and objects[-1]["metadata"] == {
        "name": "orchestrator",
        "namespace": "team",
        "labels": objects[-1]["metadata"]["labels"],
    }
    assert res.stdout.startswith(to_yaml(objects))


def test_api_errors_become_one_line_messages():
    class Err(Exception):
        status = 422
        reason = "Unprocessable Entity"
        body = '{"kind":"Status","reason":"Invalid","message":"RayJob.ray.io \\"x\\" is invalid:\\n spec.foo: bad"}'

    e = kc._api_error(Err(), "RayJob x (namespace ml)")
    assert str(e) == 'RayJob x (namespace ml): rejected as invalid: RayJob.ray.io "x" is invalid: spec.foo: bad'
    Err.status, Err.body = 403, '{"message":"forbidden: user cannot create rayjobs"}'
    assert "not allowed" in str(kc._api_error(Err(), "w"))


def test_render_rayjob_is_what_submit_renders():
    spec = load_spec(CPU_SPEC)
    a = render_rayjob(spec, RenderOptions(namespace="ml", storage_pvc="s"), suffix="zz9zz")
    b = render_rayjob(spec, RenderOptions(namespace="ml", storage_pvc="s"), suffix="zz9zz")
    assert a.objects == b.objects
