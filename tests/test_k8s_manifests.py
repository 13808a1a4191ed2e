"""The static manifests in k8s/ (kustomize base and overlays) and the Dockerfile they run.

Every resource file validates on its own, every overlay validates after a kustomize build, and
every pod template in them follows the hardening rules.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import tomllib
import yaml

from orchestrator.k8s import render as r
from orchestrator.spec import ScalingSpec
from tests.k8s_support import (
    CRD_DIR,
    K8S_DIR,
    ROOT,
    cluster_problems,
    crd_errors,
    hardening_problems,
    json_patch,
    kustomization_dirs,
    kustomize_build,
    load_docs,
    overlay_dirs,
    pod_templates,
    validation_errors,
)


def test_crds_are_read_from_the_shared_folder_not_copied():
    assert CRD_DIR == ROOT.parent / "shared" / "k8s" / "kuberay-crds"
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == ["ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml"]
    copies = []
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if x not in (".venv", ".git", "runs")]
        copies += [Path(d) / f for f in files if f.startswith("ray.io_") and f.endswith(".yaml")]
    assert copies == []


def _referenced_files() -> set:
    refs = set()
    for d in kustomization_dirs():
        refs.add(d / "kustomization.yaml")
        k = yaml.safe_load((d / "kustomization.yaml").read_text())
        for res in k.get("resources", []):
            p = (d / res).resolve()
            if p.is_file():
                refs.add(p)
        for patch in k.get("patches", []):
            if "path" in patch:
                refs.add((d / patch["path"]).resolve())
    return refs


def test_every_file_in_k8s_is_part_of_a_kustomization():
    files = {p.resolve() for p in K8S_DIR.rglob("*") if p.is_file()}
    assert files == _referenced_files()


def _resource_files() -> list:
    out = []
    for d in kustomization_dirs():
        k = yaml.safe_load((d / "kustomization.yaml").read_text())
        out += [(d / res).resolve() for res in k.get("resources", []) if (d / res).resolve().is_file()]
    return sorted(out)


@pytest.mark.parametrize("path", _resource_files(), ids=lambda p: str(p.relative_to(K8S_DIR)))
def test_each_resource_file_validates(path):
    for obj in load_docs(path):
        assert validation_errors(obj) == [], (path.name, obj["kind"])


@pytest.mark.parametrize("overlay", overlay_dirs(), ids=lambda p: p.name)
def test_each_overlay_builds_and_validates(overlay):
    objects = kustomize_build(overlay)
    assert sorted(o["kind"] for o in objects) == ["Namespace", "NetworkPolicy", "RayCluster"]
    for obj in objects:
        assert validation_errors(obj) == [], obj["kind"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "orchestrator"


def _cluster(overlay_name: str) -> dict:
    (cluster,) = [o for o in kustomize_build(K8S_DIR / "overlays" / overlay_name) if o["kind"] == "RayCluster"]
    return cluster


@pytest.mark.parametrize("overlay", overlay_dirs(), ids=lambda p: p.name)
def test_every_pod_template_in_k8s_is_hardened(overlay):
    cluster = _cluster(overlay.name)
    templates = list(pod_templates(cluster))
    assert len(templates) >= 2
    for where, template in templates:
        assert hardening_problems(template) == [], where
    assert cluster_problems(cluster) == []
    assert cluster["spec"]["enableInTreeAutoscaling"] is True


def test_cpu_overlay_is_cpu_only_and_gpu_overlay_adds_a_gpu_group():
    cpu = _cluster("cpu")
    assert [g["groupName"] for g in cpu["spec"]["workerGroupSpecs"]] == ["cpu-workers"]
    assert cpu["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 8
    gpu = _cluster("gpu")
    groups = {g["groupName"]: g for g in gpu["spec"]["workerGroupSpecs"]}
    assert list(groups) == ["cpu-workers", "gpu-workers"]
    spec = groups["gpu-workers"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert container["image"] == r.GPU_IMAGE
    for name, template in pod_templates(cpu):
        assert "nvidia.com/gpu" not in template["spec"]["containers"][0]["resources"]["limits"], name


def test_namespace_enforces_the_restricted_pod_security_standard():
    (ns,) = [o for o in kustomize_build(K8S_DIR / "base") if o["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_network_policy_admits_only_in_cluster_traffic_to_gcs_and_dashboard():
    objects = kustomize_build(K8S_DIR / "overlays" / "gpu")
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    (cluster,) = [o for o in objects if o["kind"] == "RayCluster"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    selector = spec["podSelector"]["matchLabels"]
    for where, template in pod_templates(cluster):
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{where} is not covered by the NetworkPolicy"
    peers = [peer for rule in spec["ingress"] for peer in rule["from"]]
    assert not any("ipBlock" in p for p in peers), "no traffic from outside the cluster"
    same_cluster, in_cluster = spec["ingress"]
    assert same_cluster["from"] == [{"podSelector": {"matchLabels": selector}}]
    assert in_cluster["from"] == [{"namespaceSelector": {}}]
    assert sorted(p["port"] for p in in_cluster["ports"]) == [6379, 8265]


def test_only_clusterip_services():
    for d in kustomization_dirs():
        for path in d.glob("*.yaml"):
            for obj in load_docs(path):
                if isinstance(obj, dict) and obj.get("kind") == "Service":
                    assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", path
    for overlay in overlay_dirs():
        assert _cluster(overlay.name)["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


def test_static_manifests_match_what_render_produces():
    """k8s/ and `orchestrator k8s render` describe the same pods: keep them in sync."""
    base = [o for o in kustomize_build(K8S_DIR / "base") if o["kind"] in ("RayCluster", "NetworkPolicy")]
    policy, cluster = r.render_raycluster("orchestrator", ScalingSpec(workers=2)).objects
    by_kind = {o["kind"]: o for o in base}
    assert by_kind["NetworkPolicy"]["spec"] == policy["spec"]
    static = by_kind["RayCluster"]["spec"]
    rendered = cluster["spec"]
    for key in ("rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec"):
        assert static[key] == rendered[key], key
    assert static["workerGroupSpecs"][0]["template"] == rendered["workerGroupSpecs"][0]["template"]
    gpu_group = [g for g in _cluster("gpu")["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-workers"][0]
    gpu_rendered = r.render_raycluster("orchestrator", ScalingSpec(workers=2, cpus_per_worker=3, gpus_per_worker=1)).main
    assert gpu_group["template"] == gpu_rendered["spec"]["workerGroupSpecs"][0]["template"]


def test_images_are_pinned_to_the_ray_version():
    assert r.RAY_VERSION == "2.60.0"
    assert r.IMAGE.endswith(f"-ray{r.RAY_VERSION}") and r.GPU_IMAGE == f"{r.IMAGE}-gpu"
    for overlay in overlay_dirs():
        cluster = _cluster(overlay.name)
        assert cluster["spec"]["rayVersion"] == r.RAY_VERSION
        for _, template in pod_templates(cluster):
            assert template["spec"]["containers"][0]["image"] in (r.IMAGE, r.GPU_IMAGE)


def test_dockerfile_base_image_and_project_agree_on_the_ray_version():
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M)
    assert bases == [f"rayproject/ray:{r.RAY_VERSION}-py311-cpu"]
    assert f"rayproject/ray:{r.RAY_VERSION}-py311-gpu" in dockerfile
    assert re.search(r"^USER 1000(:100)?$", dockerfile, re.M), "numeric non-root user, so runAsNonRoot can verify it"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if d.startswith("ray[")]
    major_minor = ".".join(r.RAY_VERSION.split(".")[:2])
    assert f">={major_minor}" in ray_dep and r.IMAGE.split(":")[1].startswith(__import__("orchestrator").__version__)


def test_kustomize_helper_applies_json_patches_faithfully():
    doc = {"spec": {"groups": [{"name": "a"}]}}
    assert json_patch(doc, [{"op": "add", "path": "/spec/groups/-", "value": {"name": "b"}}]) == {
        "spec": {"groups": [{"name": "a"}, {"name": "b"}]}
    }
    with pytest.raises(ValueError, match="test failed"):
        json_patch(doc, [{"op": "test", "path": "/spec/groups/0/name", "value": "z"}])
    with pytest.raises(ValueError, match="replace of missing"):
        json_patch(doc, [{"op": "replace", "path": "/spec/nope", "value": 1}])


def test_a_typo_in_an_overlay_patch_fails_validation():
    cluster = _cluster("gpu")
    bad = copy.deepcopy(cluster)
    bad["spec"]["workerGroupSpecs"][1]["template"]["spec"]["tolerations"][0]["efect"] = "NoSchedule"
    assert any("efect" in e for e in crd_errors(bad))
    bad = copy.deepcopy(cluster)
    bad["spec"]["workerGroupSpecs"][1]["maxReplicas"] = "2"
    assert crd_errors(bad)
