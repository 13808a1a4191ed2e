"""Test helpers for the Kubernetes manifests: strict KubeRay CRD validation, a minimal `kustomize
build`, the hardening rules every pod template must follow, and a fake Kubernetes API server.

No cluster, no network beyond 127.0.0.1, no kustomize binary.
"""

from __future__ import annotations

import ast
import copy
import itertools
import json
import re
import threading
import urllib.parse
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT.parent / "shared" / "k8s" / "kuberay-crds"
K8S_DIR = ROOT / "k8s"
K8S_VERSION = "1.30.0"  # kubernetes-validate schema version for core objects

CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


# ------------------------------------------------------------------------ CRD validation


def strict_schema(node: Any) -> Any:
    """The CRD's OpenAPI v3 schema made strict and JSON-Schema ready:
    - every object schema that lists `properties` and neither sets `additionalProperties` nor
      `x-kubernetes-preserve-unknown-fields` rejects unknown keys (like `kubectl` with its default
      strict field validation), so a misspelled field is an error;
    - `nullable: true` also admits null;
    - `format: int32/int64` become range checks."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("format") == "int32":
        out["minimum"] = max(out.get("minimum", -(2**31)), -(2**31))
        out["maximum"] = min(out.get("maximum", 2**31 - 1), 2**31 - 1)
    return out


def _cel(validator, rules, instance, schema):
    """x-kubernetes-validations: evaluate the rule shapes these CRDs use on a create; refuse any
    other rule rather than pretend it holds."""
    for rule in rules:
        expr = rule["rule"].strip()
        if expr == "self == oldSelf":  # immutability: always true on create
            continue
        m = re.fullmatch(r"self in (\[.*\])", expr)
        if m:
            if instance not in ast.literal_eval(m.group(1)):
                yield jsonschema.ValidationError(rule.get("message", expr))
            continue
        yield jsonschema.ValidationError(f"CEL rule not checked by the tests, avoid this field: {expr}")


StrictValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-kubernetes-validations": _cel})


@lru_cache(maxsize=None)
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    path = CRD_DIR / CRD_FILES[kind]
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    schema["properties"]["kind"] = {"const": kind}
    return StrictValidator(schema)


def crd_errors(obj: dict) -> list[str]:
    kind = obj.get("kind")
    if kind not in CRD_FILES:
        return [f"not a KubeRay kind: {kind!r}"]
    errors = sorted(crd_validator(kind).iter_errors(obj), key=lambda e: list(e.absolute_path))
    out = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors]
    return out + metadata_errors(obj)


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# KubeRay's own name checks (ray-operator/controllers/ray/utils/validation.go)
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}


def metadata_errors(obj: dict) -> list[str]:
    """What the API server and KubeRay check in metadata that the CRD schema does not."""
    meta = obj.get("metadata") or {}
    errs = []
    name = meta.get("name", "")
    kind = obj.get("kind")
    if kind in MAX_NAME and (len(name) > MAX_NAME[kind] or not _DNS1035.match(name)):
        errs.append(f"metadata/name: {name!r} is not a DNS-1035 label of at most {MAX_NAME[kind]} characters")
    ns = meta.get("namespace")
    if ns is not None and (len(ns) > 63 or not _DNS1123.match(ns)):
        errs.append(f"metadata/namespace: {ns!r} is not a DNS-1123 label")
    for key, value in (meta.get("labels") or {}).items():
        if len(str(value)) > 63 or not _LABEL_VALUE.match(str(value)):
            errs.append(f"metadata/labels/{key}: invalid label value {value!r}")
    return errs


def core_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"]
    return []


def validation_errors(obj: dict) -> list[str]:
    """Schema errors of one object: KubeRay kinds against the CRDs (and their pod templates against
    the core PodTemplate schema), everything else with kubernetes-validate."""
    if obj.get("kind") in CRD_FILES:
        errs = crd_errors(obj)
        for where, template in pod_templates(obj):
            errs += [
                f"{where}: {e}"
                for e in core_errors({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})
            ]
        return errs
    return core_errors(obj)


# ------------------------------------------------------------------------ pod templates


def cluster_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    spec = obj.get("spec") or {}
    if obj["kind"] == "RayCluster":
        yield "spec", spec
    elif obj["kind"] == "RayJob" and "rayClusterSpec" in spec:
        yield "spec.rayClusterSpec", spec["rayClusterSpec"]
    elif obj["kind"] == "RayService":
        yield "spec.rayClusterConfig", spec["rayClusterConfig"]


def pod_templates(obj: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) for every pod template in a KubeRay object."""
    for where, cs in cluster_specs(obj):
        yield f"{where}.headGroupSpec.template", cs["headGroupSpec"]["template"]
        for i, g in enumerate(cs.get("workerGroupSpecs") or []):
            yield f"{where}.workerGroupSpecs[{i}] ({g.get('groupName')}).template", g["template"]
    if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
        yield "spec.submitterPodTemplate", obj["spec"]["submitterPodTemplate"]


def hardening_problems(template: dict) -> list[str]:
    """The hardening rules every pod must follow (they also satisfy the `restricted` Pod Security
    Standard): non-root, seccomp RuntimeDefault, no privilege escalation, ALL capabilities dropped,
    requests == limits for CPU and memory (and GPUs), an emptyDir at /tmp/ray, no host access."""
    p: list[str] = []
    spec = template.get("spec") or {}
    psc = spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        p.append("pod securityContext.runAsNonRoot is not true")
    if psc.get("runAsUser") == 0:
        p.append("pod runs as uid 0")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        p.append("pod seccompProfile is not RuntimeDefault")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            p.append(f"pod sets {key}")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for v in volumes.values():
        if not set(v) - {"name"} <= {
            "emptyDir",
            "configMap",
            "secret",
            "persistentVolumeClaim",
            "projected",
            "downwardAPI",
            "ephemeral",
            "csi",
        }:
            p.append(f"volume {v['name']} is of a type the restricted profile forbids")
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    if not containers:
        p.append("no containers")
    for c in containers:
        n = c.get("name")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            p.append(f"{n}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            p.append(f"{n}: privileged")
        caps = sc.get("capabilities") or {}
        if caps.get("drop") != ["ALL"] or caps.get("add"):
            p.append(f"{n}: capabilities are not drop [ALL]")
        if sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
            p.append(f"{n}: may run as root")
        if (sc.get("seccompProfile") or {"type": "RuntimeDefault"}).get("type") != "RuntimeDefault":
            p.append(f"{n}: seccompProfile is not RuntimeDefault")
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if not {"cpu", "memory"} <= set(lim):
            p.append(f"{n}: no cpu and memory limits")
        if req != lim:
            p.append(f"{n}: requests {req} != limits {lim}")
        if any(port.get("hostPort") for port in c.get("ports") or []):
            p.append(f"{n}: uses a hostPort")
        tmp = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/tmp/ray"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            p.append(f"{n}: /tmp/ray is not an emptyDir")
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            p.append(f"{n}: image {image!r} is not pinned to a tag")
        if "nvidia.com/gpu" in lim:
            tolerations = spec.get("tolerations") or []
            if not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
                p.append(f"{n}: requests GPUs but does not tolerate the nvidia.com/gpu taint")
    return p


def cluster_problems(obj: dict) -> list[str]:
    """Cluster-level hardening: token auth, ClusterIP only, no ingress, pinned Ray version, and a
    hardened autoscaler sidecar."""
    p = []
    for where, cs in cluster_specs(obj):
        if (cs.get("authOptions") or {}).get("mode") != "token":
            p.append(f"{where}: Ray token authentication is not enabled")
        if cs["headGroupSpec"].get("serviceType", "ClusterIP") != "ClusterIP":
            p.append(f"{where}: head service is not ClusterIP")
        if cs["headGroupSpec"].get("enableIngress"):
            p.append(f"{where}: ingress enabled")
        if not re.fullmatch(r"\d+\.\d+\.\d+", cs.get("rayVersion", "")):
            p.append(f"{where}: rayVersion not pinned")
        if cs.get("enableInTreeAutoscaling"):
            opts = cs.get("autoscalerOptions") or {}
            fake = {
                "spec": {
                    "securityContext": cs["headGroupSpec"]["template"]["spec"]["securityContext"],
                    "containers": [
                        {
                            "name": "autoscaler",
                            "image": cs["headGroupSpec"]["template"]["spec"]["containers"][0]["image"],
                            "securityContext": opts.get("securityContext"),
                            "resources": opts.get("resources"),
                            # the sidecar shares the head's /tmp/ray (KubeRay mounts the head's log volume)
                            "volumeMounts": [{"name": "ray-tmp", "mountPath": "/tmp/ray"}],
                        }
                    ],
                    "volumes": [{"name": "ray-tmp", "emptyDir": {}}],
                }
            }
            p += [f"{where}.autoscalerOptions: {x}" for x in hardening_problems(fake) if not x.startswith("pod ")]
    return p


# ----------------------------------------------------------------------------- kustomize


def json_pointer(path: str) -> list[str]:
    if path == "":
        return []
    assert path.startswith("/"), path
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def json_patch(doc: Any, ops: list[dict]) -> Any:
    """RFC 6902 add / remove / replace / test."""
    doc = copy.deepcopy(doc)
    for op in ops:
        tokens = json_pointer(op["path"])
        parent = doc
        for t in tokens[:-1]:
            parent = parent[int(t)] if isinstance(parent, list) else parent[t]
        last = tokens[-1]
        kind = op["op"]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if kind == "add":
                if not 0 <= idx <= len(parent):
                    raise ValueError(f"{op['path']}: index out of range")
                parent.insert(idx, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[idx]
            elif kind == "replace":
                parent[idx]  # must exist
                parent[idx] = copy.deepcopy(op["value"])
            elif kind == "test":
                if parent[idx] != op["value"]:
                    raise ValueError(f"test failed at {op['path']}: {parent[idx]!r} != {op['value']!r}")
            else:
                raise ValueError(f"unsupported op {kind}")
        else:
            if kind == "add":
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            elif kind == "replace":
                if last not in parent:
                    raise ValueError(f"replace of missing {op['path']}")
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "test":
                if parent.get(last) != op["value"]:
                    raise ValueError(f"test failed at {op['path']}: {parent.get(last)!r} != {op['value']!r}")
            else:
                raise ValueError(f"unsupported op {kind}")
    return doc


KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches"}


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomize_build(directory: Path) -> list[dict]:
    """`kustomize build` for the subset of kustomize these overlays use: resources (files and
    directories), namespace, and JSON6902 patches (inline or from a file) with a target. Anything
    else is an error, so the manifests cannot silently use a feature this helper does not model."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise ValueError(f"{directory}: kustomization fields not modelled by the test helper: {sorted(unknown)}")
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    objects: list[dict] = []
    for res in k.get("resources", []):
        p = (directory / res).resolve()
        objects += kustomize_build(p) if p.is_dir() else load_docs(p)
    for patch in k.get("patches", []):
        if set(patch) - {"path", "patch", "target"}:
            raise ValueError(f"{directory}: unsupported patch fields {sorted(set(patch))}")
        ops = yaml.safe_load(patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text())
        if not isinstance(ops, list):
            raise ValueError(f"{directory}: only JSON6902 patches are modelled")
        target = patch["target"]
        hits = 0
        for i, obj in enumerate(objects):
            group, _, version = obj["apiVersion"].rpartition("/")
            if (
                target.get("kind") == obj["kind"]
                and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
                and target.get("group", group) == group
                and target.get("version", version) == version
            ):
                objects[i] = json_patch(obj, ops)
                hits += 1
        if hits != 1:
            raise ValueError(f"{directory}: patch target {target} matched {hits} objects")
    if k.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S_DIR.rglob("kustomization.yaml"))


def overlay_dirs() -> list[Path]:
    return sorted(p.parent for p in (K8S_DIR / "overlays").glob("*/kustomization.yaml"))


# ------------------------------------------------------------------------ fake API server


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


ROUTES = [
    (re.compile(r"^/apis/ray\.io/v1/namespaces/([^/]+)/(rayclusters|rayjobs|rayservices)(?:/([^/]+))?$"), "ray"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/(configmaps)(?:/([^/]+))?$"), "core"),
    (re.compile(r"^/apis/networking\.k8s\.io/v1/namespaces/([^/]+)/(networkpolicies)(?:/([^/]+))?$"), "net"),
]


class FakeKubeAPI:
    """A tiny Kubernetes API server on 127.0.0.1 for the resources the orchestrator uses.

    `requests` records (method, path, query, content type, JSON body); `objects` holds what was
    created; `watch_statuses[(plural, ns, name)]` is a list of status dicts a watch streams one by
    one (each applied to the object); `crds_installed=False` answers ray.io paths with a plain 404.
    `status_on_create[plural]` is the status the "operator" sets right after a create."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.watch_statuses: dict[tuple[str, str, str], list[dict]] = {}
        self.status_on_create: dict[str, dict] = {}
        self.crds_installed = True
        self._uids = itertools.count(1)
        self._rv = itertools.count(100)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: Any, ctype: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.requests.append(
                    {"method": method, "path": url.path, "query": query, "content_type": self.headers.get("Content-Type"), "body": body}
                )
                for rx, api in ROUTES:  # noqa: B007  (api is read after the loop breaks)
                    m = rx.match(url.path)
                    if m:
                        break
                else:
                    return self._send(404, b"404 page not found", "text/plain")
                if api == "ray" and not fake.crds_installed:
                    return self._send(404, b"404 page not found", "text/plain")
                ns, plural, name = m.groups()
                code, out = fake.dispatch(method, ns, plural, name, query, body, self.headers.get("Content-Type"))
                if code == "watch":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    for event in out:
                        self.wfile.write((json.dumps(event) + "\n").encode())
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(code, out)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PATCH(self):
                self._handle("PATCH")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeKubeAPI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "me", "user": {"token": "test-token"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": namespace}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    @staticmethod
    def _status(code: int, reason: str, message: str, name: Optional[str] = None, plural: str = "") -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": {"name": name, "kind": plural},
            "code": code,
        }

    def sent(self, method: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method]

    def dispatch(self, method, ns, plural, name, query, body, ctype):
        key = (plural, ns, name)
        if method == "POST" and name is None:
            name = body["metadata"]["name"]
            key = (plural, ns, name)
            if key in self.objects:
                return 409, self._status(409, "AlreadyExists", f'{plural} "{name}" already exists', name, plural)
            obj = copy.deepcopy(body)
            obj["metadata"]["uid"] = f"uid-{next(self._uids)}"
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            if plural in self.status_on_create:
                obj["status"] = copy.deepcopy(self.status_on_create[plural])
            self.objects[key] = obj
            return 201, obj
        if method == "GET" and name is None:
            items = [o for (p, n, _), o in self.objects.items() if p == plural and n == ns]
            if query.get("watch") == "true":
                target = query.get("fieldSelector", "").removeprefix("metadata.name=")
                wkey = (plural, ns, target)
                events = []
                for status in self.watch_statuses.pop(wkey, []):
                    obj = self.objects[wkey]
                    obj["status"] = status
                    obj["metadata"]["resourceVersion"] = str(next(self._rv))
                    events.append({"type": "MODIFIED", "object": copy.deepcopy(obj)})
                return "watch", events
            return 200, {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": "1"}}
        if key not in self.objects:
            return 404, self._status(404, "NotFound", f'{plural} "{name}" not found', name, plural)
        if method == "GET":
            return 200, self.objects[key]
        if method == "DELETE":
            del self.objects[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
        if method == "PATCH":
            obj = self.objects[key]
            try:
                new = json_patch(obj, body) if ctype == "application/json-patch+json" else merge_patch(obj, body)
            except (ValueError, KeyError, IndexError) as e:
                return 422, self._status(422, "Invalid", f"the patch failed: {e}", name, plural)
            self.objects[key] = new
            return 200, new
        return 405, self._status(405, "MethodNotAllowed", method, name, plural)
