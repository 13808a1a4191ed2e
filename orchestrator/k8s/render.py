"""Job spec -> KubeRay objects (RayCluster, RayJob, RayService) as plain dicts.

Pure: no Ray, no kubernetes client, no clock, no randomness, no I/O. The same spec and options
always give the same objects, so rendered manifests are compared with golden files, and
`--dry-run` prints exactly what the client sends.

Sizing (documented in docs/kubernetes.md). The workers and what each reserves come from the
training plan (orchestrator.train.plan.requested_workers) and the trials at once from the search
plan (orchestrator.tune.plan.fixed_concurrency); this module only turns them into pods:
- One worker pod per training worker: `scaling.workers` pods, times `tune.max_concurrent` (at most
  the trials the search runs) when the spec searches with a fixed number of concurrent trials.
- CPUs per worker pod: the worker's CPUs rounded up, plus the CPU the planner keeps free for Ray
  Data's read and preprocessing tasks (DATA_RESERVE_CPUS): `ceil(cpus_per_worker) + 1`;
  `cpus_per_worker: auto` is one CPU per worker (AUTO_WORKER_CPUS), so 2 CPUs per pod.
- GPUs per worker pod: `ceil(gpus_per_worker)`; such pods use the GPU image, request
  `nvidia.com/gpu` and tolerate the `nvidia.com/gpu` taint.
- Memory per pod: 2 GiB per CPU (at least 4 GiB) plus 8 GiB per GPU.
- The head runs no training or data tasks (`num-cpus: 0`): it runs the GCS, the dashboard, the
  job's driver and, for a RayService, the Serve controller and a proxy.

Paths: relative local paths in the spec (data.source, output.dir, a RayService checkpoint) are
rebased onto STORAGE_MOUNT, which is a PersistentVolumeClaim when `storage_pvc` is given (use a
ReadWriteMany claim: every Ray pod mounts it) and a per-pod emptyDir otherwise (with a warning).
URIs (s3://, gs://, ...) are left alone.
"""

from __future__ import annotations

import copy
import hashlib
import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import yaml

from orchestrator import __version__
from orchestrator.errors import OrchestratorError
from orchestrator.serve import plan as serve_plan
from orchestrator.spec import JobSpec, ScalingSpec, ServeSpec, is_uri, parse_spec
from orchestrator.train.plan import DATA_RESERVE_CPUS, requested_workers
from orchestrator.tune.plan import fixed_concurrency

# ------------------------------------------------------------------------------- constants

RAY_VERSION = "2.60.0"
IMAGE_REPOSITORY = "ghcr.io/orchestrator-ml/orchestrator"
IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-ray{RAY_VERSION}"
GPU_IMAGE = f"{IMAGE}-gpu"

RAY_API_VERSION = "ray.io/v1"
KINDS = ("raycluster", "rayjob", "rayservice")

# KubeRay name limits (ray-operator/controllers/ray/utils/constant.go): a RayCluster name is at most
# 53 characters; RayJob and RayService names at most 47 because KubeRay appends 6 characters to
# make their cluster's name. Names must be DNS-1035 labels (start with a letter).
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = 47
MAX_RAYSERVICE_NAME = 47

SPEC_MOUNT = "/etc/orchestrator"
SPEC_FILE = "job.yaml"
STORAGE_MOUNT = "/mnt/storage"
ENTRYPOINT = f"orchestrator run {SPEC_MOUNT}/{SPEC_FILE}"

SERVE_IMPORT_PATH = serve_plan.IMPORT_PATH
SERVE_DEPLOYMENT = serve_plan.DEPLOYMENT  # serveConfigV2 sets its replicas, queueing and actor resources by this name
SERVE_TOKEN_SECRET_KEY = "token"

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
# Ports Ray itself listens on in every pod (GCS, dashboard, client, metrics export, dashboard
# agent, runtime-env agent): Serve cannot use them.
RAY_PORTS = (GCS_PORT, DASHBOARD_PORT, CLIENT_PORT, 8080, 52365, 52366)

# Ray image user (rayproject/ray images: user `ray`, uid 1000, group `users`, gid 100).
RUN_AS_USER = 1000
RUN_AS_GROUP = 100

HEAD_CPUS = 2
HEAD_MEMORY_GI = 4
MIN_SERVE_POD_CPUS = 2
MEMORY_GI_PER_CPU = 2
MIN_POD_MEMORY_GI = 4
MEMORY_GI_PER_GPU = 8
SMALL_CONTAINER = {"cpu": "500m", "memory": "512Mi"}  # job submitter, autoscaler sidecar

RAYJOB_TTL_SECONDS = 600  # keep a finished job's cluster 10 minutes for logs, then delete it
RAYJOB_ACTIVE_DEADLINE_SECONDS = 24 * 3600
RAYJOB_BACKOFF_LIMIT = 1  # one whole-job retry (new cluster) after an infrastructure failure
AUTOSCALER_IDLE_TIMEOUT_SECONDS = 300

GPU_RESOURCE = "nvidia.com/gpu"
CPU_GROUP = "cpu-workers"
GPU_GROUP = "gpu-workers"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
APP_NAME = "orchestrator"


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class RenderOptions:
    """Where and how to run; everything about the job itself comes from the spec."""

    namespace: Optional[str] = None  # None: leave metadata.namespace out (kubectl -n decides)
    name: Optional[str] = None  # object name; default: derived from the spec's name
    image: str = IMAGE
    gpu_image: str = GPU_IMAGE
    storage_pvc: Optional[str] = None  # claim mounted at STORAGE_MOUNT in every Ray pod
    checkpoint: Optional[str] = None  # RayService: the promoted checkpoint (path or URI)


@dataclass
class Rendered:
    """Objects in the order to create them: helpers (NetworkPolicy first, so no Ray pod ever runs
    unprotected; then the spec ConfigMap) and the main RayCluster/RayJob/RayService last."""

    objects: list[dict]
    warnings: list[str] = field(default_factory=list)

    @property
    def main(self) -> dict:
        return self.objects[-1]

    def yaml(self) -> str:
        return to_yaml(self.objects)


@dataclass(frozen=True)
class PodSize:
    cpus: int
    gpus: int
    memory_gi: int

    def resources(self) -> dict:
        res = {"cpu": str(self.cpus), "memory": f"{self.memory_gi}Gi"}
        if self.gpus:
            res[GPU_RESOURCE] = str(self.gpus)
        return {"requests": dict(res), "limits": dict(res)}


def _memory_gi(cpus: int, gpus: int) -> int:
    return max(MIN_POD_MEMORY_GI, MEMORY_GI_PER_CPU * cpus) + MEMORY_GI_PER_GPU * gpus


def worker_pod_size(scaling: ScalingSpec) -> PodSize:
    """Size of one training worker pod: one worker and room for Ray Data (see the module docstring)."""
    plan = requested_workers(scaling)
    cpus = math.ceil(plan.cpus_per_worker) + math.ceil(DATA_RESERVE_CPUS)
    gpus = math.ceil(plan.gpus_per_worker)
    return PodSize(cpus=cpus, gpus=gpus, memory_gi=_memory_gi(cpus, gpus))


HEAD_SIZE = PodSize(cpus=HEAD_CPUS, gpus=0, memory_gi=HEAD_MEMORY_GI)


# ------------------------------------------------------------------------------------ names

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def object_name(base: str, *, max_len: int, suffix: Optional[str] = None) -> str:
    """A DNS-1035 name of at most max_len characters from a spec name (plus an optional suffix).

    Spec names may start with a digit and be 52 characters long; KubeRay wants a leading letter
    and at most 47/53 characters. Shortened names keep a hash of the full name so two long spec
    names that share a prefix still get different objects.
    """
    name = base.lower()
    if not name[:1].isalpha():
        name = f"job-{name}"
    room = max_len - (len(suffix) + 1 if suffix else 0)
    if len(name) > room:
        digest = hashlib.sha256(name.encode()).hexdigest()[:5]
        name = f"{name[: room - 6].rstrip('-')}-{digest}"
    if suffix:
        name = f"{name}-{suffix}"
    if not _DNS1035.match(name) or len(name) > max_len:
        raise OrchestratorError(f"cannot make a Kubernetes name from {base!r} (got {name!r})")
    return name


def _check_name(name: str, kind: str, max_len: int) -> str:
    if len(name) > max_len or not _DNS1035.match(name):
        raise OrchestratorError(
            f"{kind} name {name!r} must be at most {max_len} characters of lower-case letters, digits and '-', starting with a letter"
        )
    return name


# -------------------------------------------------------------------------------- pod parts


def labels(instance: str, component: Optional[str] = None) -> dict:
    out = {LABEL_NAME: APP_NAME, LABEL_INSTANCE: instance}
    if component:
        out[LABEL_COMPONENT] = component
    out[LABEL_MANAGED_BY] = APP_NAME
    return out


def selector_labels(instance: str) -> dict:
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: instance}


def pod_security_context() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "fsGroup": RUN_AS_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict:
    # Also set per container: KubeRay copies the Ray container's securityContext into the init
    # container it injects (wait-gcs-ready), so every container is covered on its own.
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _ray_volumes(size: PodSize, *, storage_pvc: Optional[str], spec_configmap: Optional[str]) -> tuple[list, list]:
    volumes: list[dict] = [
        {"name": "ray-tmp", "emptyDir": {}},
        # Ray's object store lives in /dev/shm; the container default (64 MiB) is far too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{max(1, size.memory_gi // 2)}Gi"}},
        ({"name": "storage", "persistentVolumeClaim": {"claimName": storage_pvc}} if storage_pvc else {"name": "storage", "emptyDir": {}}),
    ]
    mounts: list[dict] = [
        {"name": "ray-tmp", "mountPath": "/tmp/ray"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "storage", "mountPath": STORAGE_MOUNT},
    ]
    if spec_configmap:
        volumes.append({"name": "job-spec", "configMap": {"name": spec_configmap}})
        mounts.append({"name": "job-spec", "mountPath": SPEC_MOUNT, "readOnly": True})
    return volumes, mounts


def _ray_pod_template(
    *,
    instance: str,
    component: str,
    container_name: str,
    image: str,
    size: PodSize,
    ports: list[dict],
    storage_pvc: Optional[str],
    spec_configmap: Optional[str],
    env: list[dict],
    service_account_token: bool,
) -> dict:
    volumes, mounts = _ray_volumes(size, storage_pvc=storage_pvc, spec_configmap=spec_configmap)
    container: dict[str, Any] = {
        "name": container_name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
    }
    if ports:
        container["ports"] = copy.deepcopy(ports)
    if env:
        container["env"] = copy.deepcopy(env)
    container["resources"] = size.resources()
    container["securityContext"] = container_security_context()
    container["volumeMounts"] = mounts
    spec: dict[str, Any] = {}
    if not service_account_token:
        spec["automountServiceAccountToken"] = False
    spec["securityContext"] = pod_security_context()
    spec["containers"] = [container]
    if size.gpus:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    spec["volumes"] = volumes
    return {"metadata": {"labels": labels(instance, component)}, "spec": spec}


# -------------------------------------------------------------------------------- clusters


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    size: PodSize
    replicas: int
    min_replicas: int
    max_replicas: int


def concurrent_trials(spec: JobSpec) -> int:
    """Trials that run at once when the spec fixes it (tune.plan.fixed_concurrency), else 1 (with
    `auto`, the search derives its concurrency from the cluster, sized here for one)."""
    return (fixed_concurrency(spec.tune) if spec.tune is not None else None) or 1


def _training_group(scaling: ScalingSpec, *, autoscaling: bool, trials: int = 1) -> WorkerGroup:
    size = worker_pod_size(scaling)
    n = requested_workers(scaling).workers * trials
    return WorkerGroup(
        name=GPU_GROUP if size.gpus else CPU_GROUP,
        size=size,
        replicas=n,
        # With autoscaling, idle workers go away and come back on demand (up to n).
        min_replicas=0 if autoscaling else n,
        max_replicas=n,
    )


def _serve_group(serve: ServeSpec) -> WorkerGroup:
    """Pods for the Serve replicas: as many replicas per pod as its GPUs (or, CPU-only, its CPUs)
    hold; the autoscaler adds pods between what min_replicas and max_replicas need."""
    if serve.gpus_per_replica:
        gpus = math.ceil(serve.gpus_per_replica)
        per_pod = max(1, math.floor(gpus / serve.gpus_per_replica + 1e-9))
        cpus = max(MIN_SERVE_POD_CPUS, math.ceil(per_pod * serve.cpus_per_replica - 1e-9))
    else:
        gpus = 0
        cpus = max(MIN_SERVE_POD_CPUS, math.ceil(serve.cpus_per_replica))
        per_pod = max(1, math.floor(cpus / serve.cpus_per_replica + 1e-9))
    size = PodSize(cpus=cpus, gpus=gpus, memory_gi=_memory_gi(cpus, gpus))
    lo = math.ceil(serve.autoscaling.min_replicas / per_pod)
    hi = max(1, math.ceil(serve.autoscaling.max_replicas / per_pod))
    return WorkerGroup(name=GPU_GROUP if gpus else CPU_GROUP, size=size, replicas=lo, min_replicas=lo, max_replicas=hi)


def autoscaler_options() -> dict:
    return {
        "version": "v2",
        "upscalingMode": "Default",
        "idleTimeoutSeconds": AUTOSCALER_IDLE_TIMEOUT_SECONDS,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": dict(SMALL_CONTAINER), "limits": dict(SMALL_CONTAINER)},
        "securityContext": container_security_context(),
    }


def ray_cluster_spec(
    *,
    instance: str,
    groups: list[WorkerGroup],
    opts: RenderOptions,
    autoscaling: bool,
    spec_configmap: Optional[str] = None,
    serve_port: Optional[int] = None,
    env: Optional[list[dict]] = None,
) -> dict:
    """The RayClusterSpec shared by RayCluster, RayJob.rayClusterSpec and RayService.rayClusterConfig."""
    env = env or []
    head_ports = [
        {"name": "gcs-server", "containerPort": GCS_PORT, "protocol": "TCP"},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
        {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
    ]
    worker_ports: list[dict] = []
    if serve_port is not None:
        serve = {"name": "serve", "containerPort": serve_port, "protocol": "TCP"}
        head_ports.append(serve)
        worker_ports.append(serve)
    spec: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        # KubeRay creates a Secret with a random token (named after the cluster, key auth_token) and
        # sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in every Ray container and the job submitter.
        "authOptions": {"mode": "token"},
        "enableInTreeAutoscaling": autoscaling,
    }
    if autoscaling:
        spec["autoscalerOptions"] = autoscaler_options()
    spec["headGroupSpec"] = {
        "serviceType": "ClusterIP",
        "enableIngress": False,
        "rayStartParams": {"num-cpus": "0"},
        "template": _ray_pod_template(
            instance=instance,
            component="ray-head",
            container_name="ray-head",
            image=opts.image,
            size=HEAD_SIZE,
            ports=head_ports,
            storage_pvc=opts.storage_pvc,
            spec_configmap=spec_configmap,
            env=env,
            # The autoscaler sidecar in the head pod talks to the Kubernetes API with the
            # ServiceAccount KubeRay creates for it; worker pods get no token.
            service_account_token=True,
        ),
    }
    spec["workerGroupSpecs"] = [
        {
            "groupName": g.name,
            "replicas": g.replicas,
            "minReplicas": g.min_replicas,
            "maxReplicas": g.max_replicas,
            "rayStartParams": {},
            "template": _ray_pod_template(
                instance=instance,
                component="ray-worker",
                container_name="ray-worker",
                image=opts.gpu_image if g.size.gpus else opts.image,
                size=g.size,
                ports=worker_ports,
                storage_pvc=opts.storage_pvc,
                spec_configmap=spec_configmap,
                env=env,
                service_account_token=False,
            ),
        }
        for g in groups
    ]
    return spec


def _metadata(name: str, opts: RenderOptions, instance: str, component: Optional[str] = None) -> dict:
    meta: dict[str, Any] = {"name": name}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    meta["labels"] = labels(instance, component)
    return meta


def network_policy(instance: str, opts: RenderOptions, *, extra_ports: tuple[int, ...] = ()) -> dict:
    """Ingress to the Ray pods: anything from the same Ray cluster's pods; from other pods of the
    Kubernetes cluster only the GCS and dashboard ports (and Serve's, for a RayService); nothing
    from outside the Kubernetes cluster."""
    ports = [GCS_PORT, DASHBOARD_PORT, *extra_ports]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(f"{instance}-ray-ingress", opts, instance),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(instance)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": selector_labels(instance)}}]},
                {
                    "from": [{"namespaceSelector": {}}],
                    "ports": [{"protocol": "TCP", "port": p} for p in ports],
                },
            ],
        },
    }


# ------------------------------------------------------------------------------------ paths


def _in_storage(path: str, what: str) -> str:
    if is_uri(path) or posixpath.isabs(path):
        return path
    rebased = posixpath.normpath(posixpath.join(STORAGE_MOUNT, path))
    if not rebased.startswith(STORAGE_MOUNT + "/") and rebased != STORAGE_MOUNT:
        raise OrchestratorError(f"{what} {path!r} leaves the storage volume ({STORAGE_MOUNT}); use a path inside it or a URI")
    return rebased


def _storage_warning(opts: RenderOptions, local: list[str]) -> list[str]:
    if opts.storage_pvc or not local:
        return []
    return [
        f"{', '.join(local)}: local paths, but no storage PVC is given, so {STORAGE_MOUNT} is an emptyDir "
        "private to each pod: files are not shared between head and workers and are lost with the cluster. "
        "Pass --storage-pvc with a ReadWriteMany PersistentVolumeClaim (see docs/kubernetes.md)."
    ]


def job_spec_document(spec: JobSpec) -> tuple[dict, list[str], list[str]]:
    """The spec as the pods see it: relative local paths rebased onto the storage volume and no
    `serve` section (a RayJob trains; serving on Kubernetes is a RayService).

    Returns (document, local paths for the storage warning, other warnings)."""
    doc = spec.model_dump(mode="json", exclude_unset=True)
    local: list[str] = []
    notes: list[str] = []
    source = spec.data.source
    if not is_uri(source):
        local.append(f"data.source {source!r}")
        doc["data"]["source"] = _in_storage(source, "data.source")
    out_dir = spec.output.dir
    if not is_uri(out_dir):
        local.append(f"output.dir {out_dir!r}")
    doc.setdefault("output", {})["dir"] = _in_storage(out_dir, "output.dir")
    if doc.pop("serve", None) is not None:
        notes.append("the spec's serve section is not part of the RayJob; serve the promoted model with --kind rayservice")
    parse_spec(doc, source=f"{spec.name} (as rendered for Kubernetes)")  # still a valid spec
    return doc, local, notes


# ---------------------------------------------------------------------------------- objects


def render_raycluster(name: str, scaling: ScalingSpec, opts: RenderOptions = RenderOptions(), *, trials: int = 1) -> Rendered:
    """NetworkPolicy + a long-lived autoscaling RayCluster sized for `scaling`."""
    name = _check_name(opts.name or object_name(name, max_len=MAX_RAYCLUSTER_NAME), "RayCluster", MAX_RAYCLUSTER_NAME)
    cluster = {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayCluster",
        "metadata": _metadata(name, opts, name),
        "spec": ray_cluster_spec(
            instance=name, groups=[_training_group(scaling, autoscaling=True, trials=trials)], opts=opts, autoscaling=True
        ),
    }
    return Rendered([network_policy(name, opts), cluster])


def render_rayjob(spec: JobSpec, opts: RenderOptions = RenderOptions(), *, suffix: Optional[str] = None) -> Rendered:
    """NetworkPolicy + ConfigMap (the spec) + RayJob (runs `orchestrator run` on its own cluster)."""
    name = _check_name(opts.name or object_name(spec.name, max_len=MAX_RAYJOB_NAME, suffix=suffix), "RayJob", MAX_RAYJOB_NAME)
    doc, local, notes = job_spec_document(spec)
    configmap_name = f"{name}-spec"
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(configmap_name, opts, name, "job-spec"),
        "data": {SPEC_FILE: yaml.safe_dump(doc, sort_keys=False)},
    }
    submitter = {
        "metadata": {"labels": labels(name, "ray-job-submitter")},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": pod_security_context(),
            "containers": [
                {
                    # KubeRay fills in the `ray job submit` command and the dashboard address.
                    "name": "ray-job-submitter",
                    "image": opts.image,
                    "imagePullPolicy": "IfNotPresent",
                    "resources": {"requests": dict(SMALL_CONTAINER), "limits": dict(SMALL_CONTAINER)},
                    "securityContext": container_security_context(),
                    "volumeMounts": [{"name": "ray-tmp", "mountPath": "/tmp/ray"}],
                }
            ],
            "volumes": [{"name": "ray-tmp", "emptyDir": {}}],
        },
    }
    job = {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(name, opts, name),
        "spec": {
            "entrypoint": ENTRYPOINT,
            # A Kubernetes Job (the pod template below) runs `ray job submit` against the dashboard
            # once the cluster is ready and follows the logs: the default mode, retried on failure.
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": RAYJOB_TTL_SECONDS,
            "activeDeadlineSeconds": RAYJOB_ACTIVE_DEADLINE_SECONDS,
            "backoffLimit": RAYJOB_BACKOFF_LIMIT,
            # A training job is sized by the spec, so no autoscaler: the cluster is exactly
            # scaling.workers worker pods for the job's lifetime.
            "rayClusterSpec": ray_cluster_spec(
                instance=name,
                groups=[_training_group(spec.scaling, autoscaling=False, trials=concurrent_trials(spec))],
                opts=opts,
                autoscaling=False,
                spec_configmap=configmap_name,
            ),
            "submitterPodTemplate": submitter,
        },
    }
    return Rendered([network_policy(name, opts), configmap, job], _storage_warning(opts, local) + notes)


def serve_config(spec: JobSpec, checkpoint_path: str) -> dict:
    """Ray Serve's config (ServeDeploySchema) for the promoted model, from spec.serve."""
    serve = spec.serve or ServeSpec()
    args = serve_plan.replica_args(checkpoint_path, serve)
    actor_options: dict[str, Any] = {"num_cpus": serve.cpus_per_replica}
    if serve.gpus_per_replica:
        actor_options["num_gpus"] = serve.gpus_per_replica
    return {
        "proxy_location": "EveryNode",
        # Inside the pod Serve listens on every interface; the ClusterIP Service and the
        # NetworkPolicy decide who can reach it (serve.host applies to `orchestrator run` only).
        "http_options": {"host": "0.0.0.0", "port": serve.port},
        "applications": [
            {
                "name": spec.name,
                "route_prefix": serve.route_prefix,
                "import_path": SERVE_IMPORT_PATH,
                "args": args,
                "deployments": [
                    {
                        "name": SERVE_DEPLOYMENT,
                        "max_ongoing_requests": serve_plan.replica_capacity(serve),
                        "max_queued_requests": serve.max_queued_requests,
                        "autoscaling_config": {
                            "min_replicas": serve.autoscaling.min_replicas,
                            "max_replicas": serve.autoscaling.max_replicas,
                            "target_ongoing_requests": serve.autoscaling.target_ongoing_requests,
                        },
                        "ray_actor_options": actor_options,
                    }
                ],
            }
        ],
    }


def render_rayservice(spec: JobSpec, opts: RenderOptions = RenderOptions()) -> Rendered:
    """NetworkPolicy + RayService serving the promoted checkpoint `opts.checkpoint` with the spec's serve settings."""
    if not opts.checkpoint:
        raise OrchestratorError("a RayService needs the promoted model: pass --checkpoint with its path on the storage volume or its URI")
    name = _check_name(opts.name or object_name(spec.name, max_len=MAX_RAYSERVICE_NAME), "RayService", MAX_RAYSERVICE_NAME)
    serve = spec.serve or ServeSpec()
    if serve.port in RAY_PORTS:
        raise OrchestratorError(
            f"serve.port {serve.port} is one of Ray's own ports in the pod ({', '.join(map(str, RAY_PORTS))}); pick another"
        )
    checkpoint = _in_storage(opts.checkpoint, "--checkpoint")
    local = [] if is_uri(checkpoint) else [f"checkpoint {opts.checkpoint!r}"]
    warnings = _storage_warning(opts, local)
    if spec.serve is None:
        warnings.append("the spec has no serve section; using the default serve settings")
    env: list[dict] = []
    if serve.auth_token_env:
        # The bearer token lives in a Secret the user creates (docs/kubernetes.md); never in the spec.
        env.append(
            {
                "name": serve.auth_token_env,
                "valueFrom": {"secretKeyRef": {"name": f"{name}-serve-token", "key": SERVE_TOKEN_SECRET_KEY}},
            }
        )
    service = {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayService",
        "metadata": _metadata(name, opts, name),
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(spec, checkpoint), sort_keys=False),
            "rayClusterConfig": ray_cluster_spec(
                instance=name,
                groups=[_serve_group(serve)],
                opts=opts,
                autoscaling=True,
                serve_port=serve.port,
                env=env,
            ),
        },
    }
    return Rendered([network_policy(name, opts, extra_ports=(serve.port,)), service], warnings)


def render(kind: str, spec: JobSpec, opts: RenderOptions = RenderOptions(), *, suffix: Optional[str] = None) -> Rendered:
    if kind == "raycluster":
        return render_raycluster(spec.name, spec.scaling, opts, trials=concurrent_trials(spec))
    if kind == "rayjob":
        return render_rayjob(spec, opts, suffix=suffix)
    if kind == "rayservice":
        return render_rayservice(spec, opts)
    raise OrchestratorError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


# ------------------------------------------------------------------------------------- yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # never emit &anchors / *aliases
        return True


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def to_yaml(objects: Sequence[Any]) -> str:
    """Multi-document YAML, one document per object, in order."""
    return "".join("---\n" + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100) for obj in objects)


# ------------------------------------------------------------------------------------ scale


def scale_patch(
    cluster: dict,
    replicas: int,
    *,
    group: Optional[str] = None,
    min_replicas: Optional[int] = None,
    max_replicas: Optional[int] = None,
) -> list[dict]:
    """JSON patch (RFC 6902) that sets one worker group's replicas, widening [min, max] to include
    them unless given. It starts with a `test` of the group's name, so the API server refuses the
    patch if the group list changed since `cluster` was read."""
    groups = cluster.get("spec", {}).get("workerGroupSpecs") or []
    names = [g.get("groupName") for g in groups]
    if group is None:
        if len(names) != 1:
            raise OrchestratorError(f"the cluster has worker groups {names}; choose one with --group")
        group = names[0]
    if group not in names:
        raise OrchestratorError(f"no worker group {group!r}; the cluster has {names}")
    i = names.index(group)
    current = groups[i]
    lo = min_replicas if min_replicas is not None else min(int(current.get("minReplicas", 0)), replicas)
    hi = max_replicas if max_replicas is not None else max(int(current.get("maxReplicas", replicas)), replicas)
    if not (0 <= lo <= replicas <= hi):
        raise OrchestratorError(f"need 0 <= min ({lo}) <= workers ({replicas}) <= max ({hi})")
    base = f"/spec/workerGroupSpecs/{i}"
    ops = [{"op": "test", "path": f"{base}/groupName", "value": group}]
    for key, value in (("minReplicas", lo), ("maxReplicas", hi), ("replicas", replicas)):
        ops.append({"op": "add" if key not in current else "replace", "path": f"{base}/{key}", "value": value})
    return ops
