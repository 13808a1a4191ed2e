"""Kubernetes API calls for the orchestrator's objects, with the official `kubernetes` client.

Objects are the plain dicts that orchestrator.k8s.render builds; they are sent as they are (what
`--dry-run` prints is what goes over the wire). ray.io/v1 kinds go through CustomObjectsApi,
ConfigMaps through CoreV1Api and NetworkPolicies through NetworkingV1Api.

Every call has short connect/read timeouts and at most one connection retry, so an unreachable API
server fails in a few seconds; every failure becomes a one-line K8sError, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from orchestrator.errors import AlreadyExists, K8sError, NotFound, OrchestratorError, one_line  # noqa: F401  (kc.NotFound, kc.K8sError)

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 8.0
REQUEST_TIMEOUT = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
WATCH_TIMEOUT_S = 60
FIELD_MANAGER = "orchestrator"

RAY_GROUP = "ray.io"
RAY_API_VERSION = "v1"
RAY_PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
CORE_KINDS = ("ConfigMap", "NetworkPolicy")

# RayJob .status.jobDeploymentStatus values after which nothing more happens.
RAYJOB_FINAL = {"Complete", "Failed", "ValidationFailed"}


# ------------------------------------------------------------------------------ connection


@dataclass
class Connection:
    api_client: Any
    host: str

    def custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def networking(self):
        from kubernetes import client

        return client.NetworkingV1Api(self.api_client)


def _default_kubeconfigs() -> list[Path]:
    env = os.environ.get("KUBECONFIG")
    paths = env.split(os.pathsep) if env else ["~/.kube/config"]
    return [Path(p).expanduser() for p in paths if p]


def connect(kubeconfig: Optional[str] = None, context: Optional[str] = None) -> Connection:
    """Load a kubeconfig (the given file, else $KUBECONFIG or ~/.kube/config), falling back to the
    in-cluster ServiceAccount when there is no kubeconfig at all. Contacts nothing yet."""
    import urllib3
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        raise K8sError(f"kubeconfig {kubeconfig}: file not found")
    have_kubeconfig = bool(kubeconfig) or any(p.is_file() for p in _default_kubeconfigs())
    if have_kubeconfig or context:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False)
        except Exception as e:  # ConfigException, YAML errors, exec-plugin failures
            raise K8sError(f"cannot load kubeconfig {where}: {one_line(e)}") from None
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except Exception:
            raise K8sError(
                "no Kubernetes configuration: no kubeconfig ($KUBECONFIG or ~/.kube/config) and not running in a pod; pass --kubeconfig"
            ) from None
    if not cfg.verify_ssl:  # the kubeconfig asked for it (insecure-skip-tls-verify); don't warn on every call
        import warnings

        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    # One retry on connection errors only: a dead or unreachable server fails in ~2 x 3 s. The
    # retry is silent: the failure, if any, is reported once as a K8sError.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    cfg.retries = urllib3.util.Retry(total=1, connect=1, read=0, redirect=0, status=0, other=0)
    return Connection(client.ApiClient(cfg), cfg.host)


# ------------------------------------------------------------------------------------ calls


def _reason(e: BaseException) -> str:
    import urllib3

    if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        e = e.reason
    # NewConnectionError subclasses ConnectTimeoutError, so it goes first.
    if isinstance(e, urllib3.exceptions.NewConnectionError):
        text = str(e)
        return one_line(text.split("Failed to establish a new connection:")[-1].strip() or text)
    if isinstance(e, urllib3.exceptions.ConnectTimeoutError):
        return "timed out connecting"
    if isinstance(e, urllib3.exceptions.ReadTimeoutError):
        return "timed out waiting for a reply"
    if isinstance(e, urllib3.exceptions.SSLError):
        return f"TLS error: {one_line(e)}"
    return one_line(f"{type(e).__name__}: {e}")


def _status_body(e: Any) -> dict:
    body = getattr(e, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return {"message": one_line(body or e.reason or "")}
    return data if isinstance(data, dict) else {}


def _api_error(e: Any, what: str) -> K8sError:
    status = getattr(e, "status", None)
    st = _status_body(e)
    message = one_line(st.get("message") or getattr(e, "reason", "") or "")
    reason = st.get("reason")
    if status == 404:
        if reason == "NotFound" and (st.get("details") or {}).get("name"):
            return NotFound(f"{what}: not found ({message})" if message else f"{what}: not found")
        return K8sError(
            f"{what}: the API server does not know this resource type ({message or '404 page not found'}); "
            "is the KubeRay operator (with its ray.io/v1 CRDs) installed? See docs/kubernetes.md"
        )
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(f"{what}: already exists")
    if status in (401, 403):
        return K8sError(f"{what}: not allowed by the API server ({status}): {message}")
    if status == 422:
        return K8sError(f"{what}: rejected as invalid: {message}")
    return K8sError(f"{what}: Kubernetes API error {status}: {message}")


@contextmanager
def translated(conn: Connection, what: str) -> Iterator[None]:
    """Turn client and connection exceptions into one-line K8sErrors."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as e:
        raise _api_error(e, what) from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise K8sError(f"cannot reach the Kubernetes API server at {conn.host}: {_reason(e)}") from None


def call(conn: Connection, what: str, fn: Callable, *args, **kwargs) -> Any:
    """Run one API call with the short timeouts; every failure becomes a K8sError."""
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    with translated(conn, what):
        return fn(*args, **kwargs)


def _plain(conn: Connection, obj: Any) -> dict:
    return obj if isinstance(obj, dict) else conn.api_client.sanitize_for_serialization(obj)


def describe(kind: str, name: str, namespace: str) -> str:
    return f"{kind} {name} (namespace {namespace})"


def get(conn: Connection, kind: str, namespace: str, name: str) -> dict:
    what = describe(kind, name, namespace)
    if kind in RAY_PLURALS:
        return call(conn, what, conn.custom().get_namespaced_custom_object, RAY_GROUP, RAY_API_VERSION, namespace, RAY_PLURALS[kind], name)
    if kind == "ConfigMap":
        return _plain(conn, call(conn, what, conn.core().read_namespaced_config_map, name, namespace))
    if kind == "NetworkPolicy":
        return _plain(conn, call(conn, what, conn.networking().read_namespaced_network_policy, name, namespace))
    raise K8sError(f"unsupported kind {kind}")


def list_objects(conn: Connection, kind: str, namespace: str) -> list[dict]:
    what = f"{RAY_PLURALS[kind]} in namespace {namespace}"
    res = call(conn, what, conn.custom().list_namespaced_custom_object, RAY_GROUP, RAY_API_VERSION, namespace, RAY_PLURALS[kind])
    return list(res.get("items", []))


def create(conn: Connection, obj: dict) -> dict:
    kind, meta = obj["kind"], obj["metadata"]
    ns = meta["namespace"]
    what = describe(kind, meta["name"], ns)
    if kind in RAY_PLURALS:
        return call(
            conn,
            what,
            conn.custom().create_namespaced_custom_object,
            RAY_GROUP,
            RAY_API_VERSION,
            ns,
            RAY_PLURALS[kind],
            obj,
            field_manager=FIELD_MANAGER,
        )
    if kind == "ConfigMap":
        return _plain(conn, call(conn, what, conn.core().create_namespaced_config_map, ns, obj, field_manager=FIELD_MANAGER))
    if kind == "NetworkPolicy":
        return _plain(conn, call(conn, what, conn.networking().create_namespaced_network_policy, ns, obj, field_manager=FIELD_MANAGER))
    raise K8sError(f"unsupported kind {kind}")


def patch(conn: Connection, kind: str, namespace: str, name: str, body: Any, *, json_patch: bool = False) -> dict:
    """JSON merge patch (a dict) or, with json_patch, an RFC 6902 list of operations."""
    what = describe(kind, name, namespace)
    ctype = "application/json-patch+json" if json_patch else "application/merge-patch+json"
    if kind in RAY_PLURALS:
        return call(
            conn,
            what,
            conn.custom().patch_namespaced_custom_object,
            RAY_GROUP,
            RAY_API_VERSION,
            namespace,
            RAY_PLURALS[kind],
            name,
            body,
            field_manager=FIELD_MANAGER,
            _content_type=ctype,
        )
    if kind == "ConfigMap":
        return _plain(
            conn,
            call(
                conn, what, conn.core().patch_namespaced_config_map, name, namespace, body, field_manager=FIELD_MANAGER, _content_type=ctype
            ),
        )
    if kind == "NetworkPolicy":
        return _plain(
            conn,
            call(
                conn,
                what,
                conn.networking().patch_namespaced_network_policy,
                name,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
                _content_type=ctype,
            ),
        )
    raise K8sError(f"unsupported kind {kind}")


def delete(conn: Connection, kind: str, namespace: str, name: str) -> bool:
    """Delete one object; False when it was not there."""
    what = describe(kind, name, namespace)
    try:
        if kind in RAY_PLURALS:
            call(conn, what, conn.custom().delete_namespaced_custom_object, RAY_GROUP, RAY_API_VERSION, namespace, RAY_PLURALS[kind], name)
        elif kind == "ConfigMap":
            call(conn, what, conn.core().delete_namespaced_config_map, name, namespace)
        elif kind == "NetworkPolicy":
            call(conn, what, conn.networking().delete_namespaced_network_policy, name, namespace)
        else:
            raise K8sError(f"unsupported kind {kind}")
    except NotFound:
        return False
    return True


# ------------------------------------------------------------------------------- operations


def owner_reference(owner: dict) -> dict:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }


def apply_new(conn: Connection, objects: list[dict]) -> dict:
    """Create `objects` in order. The last one is the main object (RayCluster, RayJob or
    RayService): it must not exist yet. Helpers before it (NetworkPolicy, ConfigMap) are updated
    in place if they already exist. Once the main object exists, the helpers get it as owner, so
    deleting it deletes them. If a create fails, the objects created so far are deleted again.

    Returns the main object as the API server stored it."""
    *helpers, main = objects
    created: list[dict] = []
    try:
        for obj in helpers:
            meta = obj["metadata"]
            try:
                create(conn, obj)
                created.append(obj)
            except AlreadyExists:
                patch(conn, obj["kind"], meta["namespace"], meta["name"], obj)
        stored = create(conn, main)
    except K8sError:
        for obj in reversed(created):
            try:
                delete(conn, obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
            except K8sError:
                pass
        raise
    if stored.get("metadata", {}).get("uid"):
        ref = {"metadata": {"ownerReferences": [owner_reference(stored)]}}
        for obj in helpers:
            patch(conn, obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"], ref)
    return stored


def rayjob_final(status: dict) -> bool:
    return status.get("jobDeploymentStatus") in RAYJOB_FINAL


def follow_rayjob(
    conn: Connection,
    namespace: str,
    name: str,
    on_status: Callable[[dict], None],
    *,
    watch_timeout_s: int = WATCH_TIMEOUT_S,
) -> dict:
    """Wait for the RayJob to finish: read it, then watch it for changes (re-reading whenever a
    watch ends); call on_status whenever its status changes. Returns the final status."""
    from kubernetes import watch

    last: Optional[tuple] = None

    def seen(obj: dict) -> Optional[dict]:
        nonlocal last
        status = obj.get("status") or {}
        key = (status.get("jobDeploymentStatus"), status.get("jobStatus"), status.get("reason"), status.get("message"))
        if key != last:
            last = key
            on_status(status)
        return status if rayjob_final(status) else None

    what = describe("RayJob", name, namespace)
    while True:
        obj = get(conn, "RayJob", namespace, name)
        if (final := seen(obj)) is not None:
            return final
        w = watch.Watch()
        try:
            with translated(conn, what):
                for event in w.stream(
                    conn.custom().list_namespaced_custom_object,
                    RAY_GROUP,
                    RAY_API_VERSION,
                    namespace,
                    RAY_PLURALS["RayJob"],
                    field_selector=f"metadata.name={name}",
                    resource_version=obj.get("metadata", {}).get("resourceVersion"),
                    timeout_seconds=watch_timeout_s,
                    _request_timeout=(CONNECT_TIMEOUT_S, watch_timeout_s + 10),
                ):
                    if event.get("type") == "DELETED":
                        raise K8sError(f"{what}: deleted while being followed")
                    if isinstance(event.get("object"), dict) and (final := seen(event["object"])) is not None:
                        return final
        except K8sError as e:
            if "error 410" not in str(e):  # an expired watch: read the object again and go on
                raise
        finally:
            w.stop()
