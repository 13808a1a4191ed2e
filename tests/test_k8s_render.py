"""Rendering job specs into KubeRay objects: golden files, schema validation, hardening, sizing.

Pure tests: no cluster, no Ray. Regenerate the golden files with
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_k8s_render.py
and review the diff.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import OrchestratorError
from orchestrator.k8s import render as r
from orchestrator.k8s.render import RenderOptions, render, to_yaml
from orchestrator.spec import ScalingSpec, load_spec, parse_spec
from tests.k8s_support import (
    cluster_problems,
    crd_errors,
    hardening_problems,
    pod_templates,
    validation_errors,
)

HERE = Path(__file__).resolve().parent
SPECS = HERE / "k8s_specs"
GOLDEN = HERE / "golden"

CPU_SPEC = SPECS / "tabular-cpu.yaml"
GPU_SPEC = SPECS / "image-gpu.yaml"

# (golden file, spec, kind, options, suffix)
GOLDEN_CASES = [
    ("raycluster-cpu", CPU_SPEC, "raycluster", RenderOptions(namespace="ml"), None),
    ("raycluster-gpu", GPU_SPEC, "raycluster", RenderOptions(namespace="ml", storage_pvc="shared-storage"), None),
    ("rayjob-cpu", CPU_SPEC, "rayjob", RenderOptions(namespace="ml"), "abc12"),
    ("rayjob-gpu", GPU_SPEC, "rayjob", RenderOptions(namespace="ml", storage_pvc="shared-storage"), None),
    (
        "rayservice-cpu",
        CPU_SPEC,
        "rayservice",
        RenderOptions(
            namespace="ml",
            storage_pvc="shared-storage",
            checkpoint="runs/breast-cancer-20260101-120000/best_checkpoint",
        ),
        None,
    ),
    (
        "rayservice-gpu",
        GPU_SPEC,
        "rayservice",
        RenderOptions(checkpoint="s3://example-bucket/models/digits/best_checkpoint", image="registry.example/orch:1"),
        None,
    ),
]


def _render(spec_path: Path, kind: str, opts: RenderOptions, suffix=None):
    return render(kind, load_spec(spec_path), opts, suffix=suffix)


@pytest.mark.parametrize("golden,spec_path,kind,opts,suffix", GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_golden(golden, spec_path, kind, opts, suffix):
    text = _render(spec_path, kind, opts, suffix).yaml()
    path = GOLDEN / f"{golden}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path.name} differs from the rendered objects; review, then UPDATE_GOLDEN=1"


def test_golden_files_parse_back_to_the_rendered_objects():
    for golden, spec_path, kind, opts, suffix in GOLDEN_CASES:
        docs = list(yaml.safe_load_all((GOLDEN / f"{golden}.yaml").read_text()))
        assert docs == _render(spec_path, kind, opts, suffix).objects


def test_rendering_is_deterministic():
    for _, spec_path, kind, opts, suffix in GOLDEN_CASES:
        assert _render(spec_path, kind, opts, suffix).yaml() == _render(spec_path, kind, opts, suffix).yaml()


def test_yaml_has_no_anchors_or_aliases():
    text = _render(CPU_SPEC, "rayjob", RenderOptions()).yaml()
    assert "&id" not in text and "*id" not in text


# ------------------------------------------------------------------------ schema validation

ALL_CASES = [
    (spec, kind, opts)
    for spec in (CPU_SPEC, GPU_SPEC)
    for kind in r.KINDS
    for opts in (
        RenderOptions(checkpoint="runs/x/best_checkpoint"),
        RenderOptions(namespace="team-a", storage_pvc="data", checkpoint="s3://b/ckpt"),
    )
]


@pytest.mark.parametrize("spec_path,kind,opts", ALL_CASES)
def test_every_rendered_object_validates(spec_path, kind, opts):
    rendered = _render(spec_path, kind, opts)
    kinds = [o["kind"] for o in rendered.objects]
    assert kinds[0] == "NetworkPolicy" and kinds[-1] == {"raycluster": "RayCluster", "rayjob": "RayJob", "rayservice": "RayService"}[kind]
    for obj in rendered.objects:
        assert validation_errors(obj) == [], (obj["kind"], validation_errors(obj))


@pytest.mark.parametrize("spec_path,kind,opts", ALL_CASES)
def test_every_rendered_pod_template_is_hardened(spec_path, kind, opts):
    main = _render(spec_path, kind, opts).main
    templates = list(pod_templates(main))
    assert len(templates) >= 2 + (kind == "rayjob")  # head, a worker group (and the submitter)
    for where, template in templates:
        assert hardening_problems(template) == [], where
    assert cluster_problems(main) == []


def _rayjob():
    return _render(CPU_SPEC, "rayjob", RenderOptions(namespace="ml")).main


def test_validator_accepts_the_valid_object():
    assert crd_errors(_rayjob()) == []


@pytest.mark.parametrize(
    "mutate,expect",
    [
        # misspelled fields, at several depths
        (lambda o: o["spec"].__setitem__("shutdownAfterJobFinish", True), "shutdownAfterJobFinish"),
        (lambda o: o["spec"]["rayClusterSpec"].__setitem__("enableInTreeAutoScaling", True), "enableInTreeAutoScaling"),
        (lambda o: o["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("maxReplica", 3), "maxReplica"),
        (
            lambda o: o["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].__setitem__(
                "imagePullPolice", "Always"
            ),
            "imagePullPolice",
        ),
        (lambda o: o["spec"]["rayClusterSpec"]["authOptions"].__setitem__("mod", "token"), "mod"),
        # mistyped values
        (lambda o: o["spec"].__setitem__("ttlSecondsAfterFinished", "600"), "'600' is not of type 'integer'"),
        (lambda o: o["spec"].__setitem__("backoffLimit", 2**40), "maximum"),
        (lambda o: o["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].__setitem__("replicas", "2"), "is not of type 'integer'"),
        (lambda o: o["spec"]["rayClusterSpec"]["authOptions"].__setitem__("mode", "tokens"), "is not one of"),
        (
            lambda o: o["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].__setitem__(
                "cpu", "two"
            ),
            "does not match",
        ),
        (lambda o: o["spec"]["rayClusterSpec"]["headGroupSpec"].__setitem__("rayStartParams", {"num-cpus": 0}), "is not of type 'string'"),
        # structural
        (lambda o: o["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required property"),
        (lambda o: o.__setitem__("apiVersion", "ray.io/v1alpha2"), "ray.io/v1"),
        (lambda o: o["metadata"].__setitem__("name", "x" * 48), "DNS-1035"),
        (lambda o: o["metadata"].__setitem__("name", "1job"), "DNS-1035"),
    ],
)
def test_a_misspelled_or_mistyped_field_fails_validation(mutate, expect):
    obj = copy.deepcopy(_rayjob())
    mutate(obj)
    errors = crd_errors(obj)
    assert errors, "the mutated object still validates"
    assert any(expect in e for e in errors), errors


def test_core_objects_are_validated_strictly():
    policy, configmap, _ = _render(CPU_SPEC, "rayjob", RenderOptions(namespace="ml")).objects
    bad = copy.deepcopy(policy)
    bad["spec"]["ingres"] = bad["spec"].pop("ingress")
    assert any("ingres" in e for e in validation_errors(bad))
    bad = copy.deepcopy(configmap)
    bad["data"]["job.yaml"] = 3
    assert validation_errors(bad)
    bad = copy.deepcopy(policy)
    bad["spec"]["ingress"][1]["ports"][0]["port"] = [8265]
    assert validation_errors(bad)


def test_pod_template_typos_are_caught_by_the_core_schema_too():
    obj = copy.deepcopy(_rayjob())
    obj["spec"]["submitterPodTemplate"]["spec"]["securityContext"]["runAsNonroot"] = True
    errors = validation_errors(obj)
    assert any("runAsNonroot" in e for e in errors) and any("submitterPodTemplate" in e for e in errors)


def test_hardening_check_catches_a_weakened_pod():
    _, template = next(pod_templates(_rayjob()))
    for mutate, expect in [
        (lambda t: t["spec"]["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
        (lambda t: t["spec"]["containers"][0]["securityContext"]["capabilities"].__setitem__("add", ["NET_ADMIN"]), "capabilities"),
        (lambda t: t["spec"]["securityContext"].__setitem__("runAsNonRoot", False), "runAsNonRoot"),
        (lambda t: t["spec"]["securityContext"].pop("seccompProfile"), "seccomp"),
        (lambda t: t["spec"]["containers"][0]["resources"]["requests"].__setitem__("cpu", "1"), "requests"),
        (lambda t: t["spec"]["volumes"].__setitem__(0, {"name": "ray-tmp", "hostPath": {"path": "/tmp"}}), "/tmp/ray"),
        (lambda t: t["spec"]["containers"][0].__setitem__("image", "rayproject/ray:latest"), "pinned"),
        (lambda t: t["spec"].__setitem__("hostNetwork", True), "hostNetwork"),
    ]:
        weak = copy.deepcopy(template)
        mutate(weak)
        assert any(expect in p for p in hardening_problems(weak)), expect


# ------------------------------------------------------------------------------- behaviour


def _spec(**overrides) -> "object":
    doc = yaml.safe_load(CPU_SPEC.read_text())
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_spec(doc, base_dir=SPECS)


def _workers(obj: dict) -> list[dict]:
    cs = obj["spec"].get("rayClusterSpec") or obj["spec"].get("rayClusterConfig") or obj["spec"]
    return cs["workerGroupSpecs"]


def _limits(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize(
    "scaling,cpus,gpus,memory",
    [
        ({"workers": 2}, "2", None, "4Gi"),  # auto: 2 CPUs per pod
        ({"workers": 3, "cpus_per_worker": 1}, "2", None, "4Gi"),  # 1 + 1 for Ray Data
        ({"workers": 2, "cpus_per_worker": 0.5}, "2", None, "4Gi"),
        ({"workers": 2, "cpus_per_worker": 4}, "5", None, "10Gi"),
        ({"workers": 4, "cpus_per_worker": 3, "gpus_per_worker": 1}, "4", "1", "16Gi"),
        ({"workers": 1, "gpus_per_worker": 2}, "2", "2", "20Gi"),
    ],
)
def test_worker_pods_are_sized_from_the_scaling_section(scaling, cpus, gpus, memory):
    job = render("rayjob", _spec(scaling=scaling), RenderOptions()).main
    (group,) = _workers(job)
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == scaling["workers"]
    lim = _limits(group)
    assert lim["cpu"] == cpus and lim["memory"] == memory and lim.get("nvidia.com/gpu") == gpus
    tmpl = group["template"]["spec"]
    if gpus:
        assert group["groupName"] == "gpu-workers"
        assert tmpl["containers"][0]["image"] == r.GPU_IMAGE
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tmpl["tolerations"]
    else:
        assert group["groupName"] == "cpu-workers"
        assert tmpl["containers"][0]["image"] == r.IMAGE and "tolerations" not in tmpl


def test_worker_pods_leave_room_for_ray_data_as_the_planner_requires():
    """orchestrator.train.plan refuses a plan unless workers x cpus_per_worker + 1 CPU fits."""
    from orchestrator.train.plan import ClusterResources, plan_workers

    for scaling in (ScalingSpec(workers=2), ScalingSpec(workers=1, cpus_per_worker=2), ScalingSpec(workers=8, cpus_per_worker=1.5)):
        size = r.worker_pod_size(scaling)
        cluster = ClusterResources(cpus=size.cpus * scaling.workers, gpus=0, node_cpus=(float(size.cpus),) * scaling.workers)
        plan = plan_workers(scaling, cluster)  # raises ResourceError if it does not fit
        assert plan.cpus_per_worker >= (1 if scaling.cpus_per_worker == "auto" else float(scaling.cpus_per_worker))


def test_raycluster_autoscales_between_zero_and_the_spec_workers():
    cluster = render("raycluster", _spec(scaling={"workers": 3}), RenderOptions()).main
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert cluster["spec"]["autoscalerOptions"]["version"] == "v2"
    (group,) = _workers(cluster)
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (0, 3, 3)


def test_rayjob_runs_the_spec_from_its_configmap_and_cleans_up():
    policy, configmap, job = render("rayjob", _spec(), RenderOptions(namespace="ml"), suffix="x1y2z").objects
    name = job["metadata"]["name"]
    assert name == "breast-cancer-x1y2z"
    spec = job["spec"]
    assert spec["entrypoint"] == "orchestrator run /etc/orchestrator/job.yaml"
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is False
    assert configmap["metadata"]["name"] == f"{name}-spec"
    for where, template in pod_templates(job):
        if "submitter" in where:
            continue
        vols = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert vols[mounts["/etc/orchestrator"]["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
        assert mounts["/etc/orchestrator"]["readOnly"] is True
    # The ConfigMap holds a valid spec: relative paths moved onto the storage volume, no serve section.
    doc = yaml.safe_load(configmap["data"]["job.yaml"])
    rendered_spec = parse_spec(doc)
    assert rendered_spec.name == "breast-cancer"
    assert doc["data"]["source"] == "/mnt/storage/data/breast_cancer.parquet"
    assert doc["output"]["dir"] == "/mnt/storage/runs"
    assert "serve" not in doc
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == name


def test_uris_are_kept_and_relative_paths_go_to_the_storage_volume():
    spec = _spec(**{"data.source": "s3://bucket/x.parquet", "output.dir": "s3://bucket/runs"})
    rendered = render("rayjob", spec, RenderOptions())
    doc = yaml.safe_load(rendered.objects[1]["data"]["job.yaml"])
    assert doc["data"]["source"] == "s3://bucket/x.parquet" and doc["output"]["dir"] == "s3://bucket/runs"
    assert not any("storage PVC" in w for w in rendered.warnings)
    with pytest.raises(OrchestratorError, match="leaves the storage volume"):
        render("rayjob", _spec(**{"output.dir": "../../etc"}), RenderOptions())


def test_local_paths_without_a_pvc_warn_and_use_an_emptydir():
    rendered = render("rayjob", _spec(), RenderOptions())
    assert any("data.source" in w and "output.dir" in w and "--storage-pvc" in w for w in rendered.warnings)
    head = rendered.main["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "storage", "emptyDir": {}} in head["volumes"]
    with_pvc = render("rayjob", _spec(), RenderOptions(storage_pvc="shared"))
    assert not any("storage PVC" in w for w in with_pvc.warnings)
    for _, template in pod_templates(with_pvc.main):
        vols = {v["name"]: v for v in template["spec"]["volumes"]}
        if "storage" in vols:
            assert vols["storage"] == {"name": "storage", "persistentVolumeClaim": {"claimName": "shared"}}


@pytest.mark.parametrize(
    "base,max_len,suffix,expect",
    [
        ("breast-cancer", 47, None, "breast-cancer"),
        ("breast-cancer", 47, "abc12", "breast-cancer-abc12"),
        ("3d-unet", 47, None, "job-3d-unet"),
    ],
)
def test_object_names(base, max_len, suffix, expect):
    assert r.object_name(base, max_len=max_len, suffix=suffix) == expect


def test_long_names_are_shortened_uniquely_within_kuberay_limits():
    a = "a" * 37 + "-first-variant"  # 51 characters: a valid spec name, too long for a RayJob
    b = "a" * 37 + "-other-variant"
    na, nb = (r.object_name(x, max_len=r.MAX_RAYJOB_NAME, suffix="abcde") for x in (a, b))
    assert na != nb and len(na) <= 47 and len(nb) <= 47
    obj = render("rayjob", _spec(name=a), RenderOptions(), suffix="abcde").main
    assert crd_errors(obj) == []
    with pytest.raises(OrchestratorError, match="at most 47"):
        render("rayjob", _spec(), RenderOptions(name="x" * 48))


def test_rayservice_serves_the_checkpoint_with_the_spec_serve_settings():
    spec = _spec()
    service = render("rayservice", spec, RenderOptions(checkpoint="runs/r1/best_checkpoint", storage_pvc="s")).main
    cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = cfg["applications"]
    assert app["import_path"] == "orchestrator.serve.deployment:app_builder"
    assert app["args"]["checkpoint_path"] == "/mnt/storage/runs/r1/best_checkpoint"
    assert app["args"]["max_batch_size"] == spec.serve.max_batch_size == 64
    assert app["args"]["auth_token_env"] == "SERVE_TOKEN"
    (dep,) = app["deployments"]
    assert dep["name"] == r.SERVE_DEPLOYMENT
    assert dep["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}
    # Serve admits the spec's 32 working slots plus 256 requests whose bodies are still arriving;
    # the replica itself holds work to 32 at once and 128 waiting (serve/app.py, Intake)
    assert (dep["max_ongoing_requests"], dep["max_queued_requests"]) == (32 + 256, 128)
    assert (app["args"]["max_working_requests"], app["args"]["max_waiting_requests"], app["args"]["body_timeout_s"]) == (32, 128, 10.0)
    assert dep["ray_actor_options"] == {"num_cpus": 1.0}
    assert cfg["http_options"] == {"host": "0.0.0.0", "port": 8000}
    # replicas of 1 CPU, 2 CPUs per pod -> 2 replicas per pod: 1..4 replicas need 1..2 pods
    (group,) = _workers(service)
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 2)
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    # the bearer token comes from a Secret, never from the spec
    for _, template in pod_templates(service):
        env = template["spec"]["containers"][0]["env"]
        assert env == [{"name": "SERVE_TOKEN", "valueFrom": {"secretKeyRef": {"name": "breast-cancer-serve-token", "key": "token"}}}]


def test_rayservice_gpu_replicas_and_ports():
    spec = load_spec(GPU_SPEC)
    policy, service = render("rayservice", spec, RenderOptions(checkpoint="s3://b/c")).objects
    (group,) = _workers(service)
    # 0.5 GPU per replica, 1 GPU per pod -> 2 replicas per pod; 0..6 replicas -> 0..3 pods
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (0, 0, 3)
    assert _limits(group)["nvidia.com/gpu"] == "1"
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": 8100, "protocol": "TCP"} in head["ports"]
    assert {"protocol": "TCP", "port": 8100} in policy["spec"]["ingress"][1]["ports"]


def test_rayservice_needs_a_checkpoint_and_a_free_port():
    with pytest.raises(OrchestratorError, match="--checkpoint"):
        render("rayservice", _spec(), RenderOptions())
    with pytest.raises(OrchestratorError, match="Ray's own ports"):
        render("rayservice", _spec(**{"serve.port": 8265}), RenderOptions(checkpoint="s3://b/c"))


def test_serve_config_matches_ray_serve_schema():
    """serveConfigV2 is what KubeRay hands to Serve: check it with Ray Serve's own pydantic schemas
    (imported only, no Ray started), and that every key is a field Serve knows (its schemas ignore
    unknown keys, which would hide a typo)."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    for spec_path in (CPU_SPEC, GPU_SPEC):
        service = render("rayservice", load_spec(spec_path), RenderOptions(checkpoint="s3://b/c")).main
        cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
        ServeDeploySchema.model_validate(cfg)
        assert set(cfg) <= set(ServeDeploySchema.model_fields)
        assert set(cfg["http_options"]) <= set(HTTPOptionsSchema.model_fields)
        for app in cfg["applications"]:
            assert set(app) <= set(ServeApplicationSchema.model_fields)
            for dep in app["deployments"]:
                assert set(dep) <= set(DeploymentSchema.model_fields)
                assert set(dep["ray_actor_options"]) <= set(RayActorOptionsSchema.model_fields)
                assert set(dep["autoscaling_config"]) <= set(AutoscalingConfig.model_fields)
                AutoscalingConfig(**dep["autoscaling_config"])


def test_scale_patch():
    cluster = render("raycluster", _spec(scaling={"workers": 2}), RenderOptions()).main
    ops = r.scale_patch(cluster, 5)
    assert ops == [
        {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "cpu-workers"},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/minReplicas", "value": 0},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 5},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 5},
    ]
    assert r.scale_patch(cluster, 1, min_replicas=1, max_replicas=4)[1:] == [
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/minReplicas", "value": 1},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 4},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 1},
    ]
    with pytest.raises(OrchestratorError, match="no worker group"):
        r.scale_patch(cluster, 1, group="gpu-workers")
    with pytest.raises(OrchestratorError, match="min"):
        r.scale_patch(cluster, 1, min_replicas=3)


def test_render_module_imports_neither_ray_nor_kubernetes():
    import subprocess
    import sys

    code = (
        "import sys, orchestrator.k8s.render as r\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'kubernetes', 'torch'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=HERE.parent)


def test_yaml_round_trip_of_multiline_strings():
    objs = [{"a": "line 1\nline 2\n", "b": "x"}]
    assert list(yaml.safe_load_all(to_yaml(objs))) == objs


def test_a_search_with_fixed_concurrency_gets_workers_for_every_trial():
    space = {"train.lr": {"loguniform": [1e-4, 1e-1]}}
    assert r.concurrent_trials(_spec()) == 1
    assert r.concurrent_trials(_spec(tune={"space": space, "max_concurrent": "auto"})) == 1
    assert r.concurrent_trials(_spec(tune={"space": space, "max_concurrent": 3})) == 3
    assert r.concurrent_trials(_spec(tune={"space": space, "max_concurrent": 3, "num_samples": 2})) == 2  # no more than the trials
    cluster = r.render_raycluster("search", ScalingSpec(workers=2), RenderOptions(), trials=3).main
    assert _workers(cluster)[0]["maxReplicas"] == 6
