"""A small fake Kubernetes API server for end-to-end tests with the official client.

``with FakeCluster(user="dev") as cluster:`` serves plain HTTP on 127.0.0.1 (no TLS) and
speaks the real REST API well enough for ``kubernetes`` (the official Python client):
``cluster.write_kubeconfig(path)`` writes a kubeconfig with a bearer token for it.
Pods can be "backed" by network namespaces the test made; the containers the fake runs
and the port-forwards it serves are real processes and real connections in there.

Modeled (and nothing else):

- Discovery: /version, /api, /apis (apps/v1, batch/v1; argoproj.io/v1alpha1 only with
  ``rollouts=True``), /api/v1, /apis/GROUP, /apis/GROUP/VERSION (404 for a group that is
  off). The verbs listed are the ones the fake serves.
- Authentication: a bearer token on every request, else 401. Authorization: everything is
  allowed except ``deny(verb, resource, namespace=)`` rules, which answer 403 with the real
  message. A rule for one namespace also refuses the all-namespaces form of the request
  (RBAC would, since the user lacks the right somewhere). Port-forward is authorized as
  ``create`` on ``pods/portforward`` (what kubectl needs; newer clusters may check ``get``
  for the WebSocket form).
- Objects: namespaces (get/list/watch), pods (get/list/watch/delete, also across all
  namespaces), deployments, statefulsets, replicasets (get/list/watch), jobs
  (get/list/watch/create/delete), rollouts (get/list/watch, with ``rollouts=True``).
  Writes get ``resourceVersion`` from one counter and ``uid``/``creationTimestamp`` when
  missing. List items of built-in kinds carry no kind/apiVersion (rollouts do), as in the
  real API. ``labelSelector``: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (..)``,
  ``a notin (..)``. ``fieldSelector``: ``=``/``!=`` on metadata.name, metadata.namespace
  (pods also spec.nodeName, status.phase; namespaces status.phase); others answer 400
  "field label not supported". ``limit``/``continue`` are ignored (one page, no token);
  a list always reads the latest state (its ``resourceVersion`` option is ignored).
- Watch (``watch=true|1``): chunked newline-delimited events. Without resourceVersion
  (or "0"): ADDED for every current match first. With one: the events after it, or one
  ERROR event with a 410 Expired Status when the bounded history (4096 events) has
  forgotten them (also mid-stream, for a watcher that fell that far behind); one from
  the future just waits. An object entering/leaving a selector arrives as ADDED/DELETED.
  Ends after timeoutSeconds (default 30, cap 600) or when the cluster closes. No
  BOOKMARK events are ever sent; ``sendInitialEvents``/``resourceVersionMatch`` ignored.
- pods/NAME/log: ``container``, ``tailLines``, ``follow`` (chunked until the container
  ends); ``previous`` answers the real 400; other options are ignored. Only containers the
  fake runs have output; other containers' logs are empty.
- pods/NAME/ephemeralcontainers: GET, and PATCH as strategic merge, JSON merge or JSON
  patch (``add`` only); see ``fake_ephemeral``. ``securityContext`` and every other field
  are stored as given. Each new container runs (see ``fake_kubelet``) and its status goes
  waiting (ContainerCreating) → running → terminated, each a MODIFIED event.
- Pods from ``add_pod``: missing status fields are filled (Running, Ready, podIP only if
  the manifest's status gives one, a running containerStatus with a containerd ID per
  container); the fake runs none of their containers (the test runs what it wants in
  the namespace).
- jobs: POST creates the Job and one pod ``<job>-<5 chars>`` whose first container runs
  in a new network namespace ``wlfake-job-...`` (only ``lo``: the pod has no podIP).
  DELETE with propagationPolicy Background/Foreground (query or body) stops and deletes
  its pods; Orphan or none (the API's default for jobs) leaves them running. Foreground
  is not delayed until the pods are gone: the Job disappears at once, as with Background.
- pods DELETE: deletionTimestamp (MODIFIED), the fake's own processes in the pod get
  SIGTERM then SIGKILL after 2 s, then DELETED. Processes the test started and passed as
  ``container_pids`` are never signalled.
- pods/NAME/portforward: WebSocket, ``v4.channel.k8s.io`` only; connects to localhost:P
  inside the pod's network namespace; see ``fake_portforward``. SPDY (kubectl's POST form)
  is not modeled.
- Containers: commands of this machine run as root with ``ip netns exec``; the image is
  recorded, never pulled; a container without ``command`` cannot run (its status says so).
  Env: plain ``value`` entries (``valueFrom`` is not modeled), HOSTNAME, HOME, and PATH
  with the directory of ``sys.executable`` first; cwd is ``workingDir`` or /. No pid,
  mount or user isolation, resources or probes: ``hostPID: false`` still shares the
  test's pid namespace. ContainerIDs are ``containerd://<64 hex>`` (imageIDs are made up
  from the image name); with cgroup v2, processes sit in a cgroup named after their
  container ID (see ``fake_runtime``).

``cluster.requests`` records (method, path, query) of every request, authenticated or
not (query: the last value of each key). Test-side helpers write straight to the store:
``add_object``/``update_object`` store what they are given (no controller acts on it: a
Job added this way gets no pod), and ``delete_object`` deletes at once (for a pod, after
stopping the fake's processes in it).

Not modeled: TLS, other kinds and verbs (405/404 with a message saying so), PUT/update,
server-side apply (415), dryRun (400), admission, quotas, scheduling (pods get
nodeName "fake-node" when they have none), controllers other than the single-pod Job,
exec/attach, events, pagination.
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import secrets
import threading
from pathlib import Path

import yaml

from tests.kube.fake_http import FakeHTTPServer
from tests.kube.fake_kubelet import NODE_NAME, Kubelet, container_status, image_id
from tests.kube.fake_runtime import CgroupTree, ContainerProcess
from tests.kube.fake_store import (
    JSON,
    RESOURCES,
    SUBRESOURCES,
    VERBS,
    ApiError,
    Resource,
    Store,
    now,
    resource_for,
)

__all__ = ["FakeCluster"]

_PODS = resource_for(kind="Pod")
_NAMESPACES = resource_for(kind="Namespace")


class FakeCluster:
    """The fake API server and its node; a context manager that cleans up everything."""

    def __init__(self, *, user: str = "dev", rollouts: bool = False) -> None:
        self.user = user
        self.rollouts = rollouts
        self.token = secrets.token_urlsafe(24)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.closing = threading.Event()
        self.store = Store()
        self._denied: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server: FakeHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cgroups: CgroupTree | None = None
        self._kubelet: Kubelet | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> FakeCluster:
        try:
            self._server = FakeHTTPServer(self)
            self._cgroups = CgroupTree(f"{self.port}-{secrets.token_hex(3)}")
            self._kubelet = Kubelet(self.store, self._cgroups)
            for name in ("default", "kube-system"):
                self.add_namespace(name)
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                            name=f"fake-apiserver-{self.port}")
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop processes, streams, the server; delete made namespaces and cgroups.

        Every step runs even if an earlier one fails (the first error is raised after).
        """
        if self.closing.is_set():
            return
        self.closing.set()
        self.store.close()
        with contextlib.ExitStack() as steps:  # callbacks run last-registered first
            if self._cgroups is not None:
                steps.callback(self._cgroups.close)
            if self._server is not None:
                steps.callback(self._stop_server, self._server)
            if self._kubelet is not None:
                steps.callback(self._kubelet.close)

    def _stop_server(self, server: FakeHTTPServer) -> None:
        if self._thread is not None:  # shutdown() waits for a running serve_forever
            server.shutdown()
        server.close_connections(timeout=10)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def port(self) -> int:
        assert self._server is not None, "use FakeCluster as a context manager"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubelet(self) -> Kubelet:
        assert self._kubelet is not None, "use FakeCluster as a context manager"
        return self._kubelet

    def write_kubeconfig(self, path: str | Path, *, contexts: dict[str, str] | None = None,
                         current: str | None = None) -> Path:
        """A kubeconfig for this cluster; ``contexts`` maps context name -> namespace."""
        contexts = contexts or {"fake": "default"}
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": self.user, "user": {"token": self.token}}],
            "contexts": [{"name": name, "context": {"cluster": "fake", "user": self.user,
                                                    "namespace": namespace}}
                         for name, namespace in contexts.items()],
            "current-context": current or next(iter(contexts)),
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # --- used by the HTTP layer ----------------------------------------------------------

    def resources(self) -> list[Resource]:
        return [r for r in RESOURCES if self.rollouts or r.group != "argoproj.io"]

    def record(self, method: str, path: str, query: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, path, query))

    def authenticated(self, authorization: str) -> bool:
        return hmac.compare_digest(authorization.encode(), f"Bearer {self.token}".encode())

    def authorize(self, verb: str, resource: str, res: Resource, namespace: str | None,
                  name: str | None) -> None:
        """ApiError 403, worded like the real API, when a deny rule matches."""
        with self._lock:
            denied = any(v == verb and r == resource and (ns is None or namespace in (None, ns))
                         for v, r, ns in self._denied)
        if not denied:
            return
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        subject = f'{res.qualified} "{name}"' if name else res.qualified
        details: JSON = {"name": name} if name else {}
        if res.group:
            details["group"] = res.group
        details["kind"] = res.plural
        raise ApiError(403, "Forbidden", f'{subject} is forbidden: User "{self.user}" cannot '
                       f'{verb} resource "{resource}" in API group "{res.group}" {scope}',
                       details)

    # --- the test's side -----------------------------------------------------------------

    def deny(self, verb: str, resource: str, *, namespace: str | None = None) -> None:
        """Refuse ``verb`` on ``resource`` ("pods", "pods/portforward"...) with 403."""
        if verb not in VERBS:
            raise ValueError(f"verb {verb!r} is not one of {VERBS}")
        known = {r.plural for r in RESOURCES} | set(SUBRESOURCES)
        if resource not in known:
            raise ValueError(f"resource {resource!r} is not one of {sorted(known)}")
        with self._lock:
            self._denied.append((verb, resource, namespace))

    def allow(self, verb: str, resource: str, *, namespace: str | None = None) -> None:
        """Remove the deny rules given with exactly these arguments."""
        with self._lock:
            self._denied = [r for r in self._denied if r != (verb, resource, namespace)]

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> JSON:
        return self.store.create(_NAMESPACES, {
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name,
                                                  **(labels or {})}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})

    def add_object(self, manifest: JSON) -> JSON:
        """Store any modeled kind as given (its namespace is created when missing)."""
        res = self._resource(manifest)
        namespace = manifest.get("metadata", {}).get("namespace") or "default"
        if res.namespaced and not self.store.exists(_NAMESPACES, None, namespace):
            self.add_namespace(namespace)
        return self.store.create(res, manifest)

    def add_pod(self, manifest: JSON, *, netns: str,
                container_pids: dict[str, int] | None = None) -> JSON:
        """A running pod backed by the network namespace ``netns`` (one the test made).

        Missing status fields are filled (Running, Ready, a containerd ID per container);
        ``container_pids`` puts those pids into cgroups named after the container IDs.
        """
        if not Path(f"/run/netns/{netns}").exists():
            raise ValueError(f"no network namespace {netns!r} in /run/netns")
        pod = copy.deepcopy(manifest)
        pod.setdefault("spec", {}).setdefault("nodeName", NODE_NAME)
        containers = pod["spec"].get("containers") or []
        unknown = set(container_pids or {}) - {c.get("name") for c in containers}
        if unknown:
            raise ValueError(f"container_pids names unknown containers {sorted(unknown)}")
        status = pod.setdefault("status", {})
        status.setdefault("phase", "Running")
        status.setdefault("qosClass", "BestEffort")
        status.setdefault("startTime", now())
        status.setdefault("conditions", [
            {"type": kind, "status": "True", "lastProbeTime": None,
             "lastTransitionTime": now()}
            for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")])
        started = {"running": {"startedAt": now()}}
        status.setdefault("containerStatuses", [
            {**container_status(c, started), "ready": True, "started": True,
             "containerID": f"containerd://{secrets.token_hex(32)}",
             "imageID": image_id(c.get("image", ""))} for c in containers])
        if container_pids:
            assert self._cgroups is not None
            if not self._cgroups.available:
                raise OSError("container_pids needs a writable cgroup v2 mount")
        created = self.add_object(pod)
        meta = created["metadata"]
        self.kubelet.register(meta["namespace"], meta["name"], netns)
        ids = {s["name"]: s.get("containerID", "").rpartition("//")[2]
               for s in created["status"]["containerStatuses"]}
        for container, pid in (container_pids or {}).items():
            assert self._cgroups is not None
            if not ids.get(container):
                raise ValueError(f"container {container!r} has no containerID in its status")
            self._cgroups.add(meta["uid"], ids[container], pid)
        return created

    def get_object(self, api_version: str, plural: str, namespace: str | None,
                   name: str) -> JSON:
        """One stored object, e.g. ``get_object("v1", "pods", "shop", "web-1")``; ApiError 404."""
        res = self._lookup(api_version, plural)
        return self.store.get(res, namespace if res.namespaced else None, name)

    def list_objects(self, api_version: str, plural: str,
                     namespace: str | None = None) -> list[JSON]:
        """Stored objects of a resource (in ``namespace``, or everywhere), with their kind."""
        res = self._lookup(api_version, plural)
        return self.store.list_objects(res, namespace if res.namespaced else None)[1]

    def update_object(self, manifest: JSON) -> JSON:
        """Replace an object with ``manifest`` (uid and creationTimestamp kept): MODIFIED."""
        res = self._resource(manifest)
        meta = manifest.get("metadata", {})
        namespace = (meta.get("namespace") or "default") if res.namespaced else None

        def replace(obj: JSON) -> None:
            obj.clear()
            obj.update(copy.deepcopy(manifest))
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind

        return self.store.mutate(res, namespace, meta["name"], replace)

    def delete_object(self, api_version: str, plural: str, namespace: str | None,
                      name: str) -> JSON:
        """Delete at once (DELETED); a pod's processes the fake runs are stopped first."""
        res = self._lookup(api_version, plural)
        namespace = namespace if res.namespaced else None
        obj = self.store.get(res, namespace, name)
        if res is _PODS and namespace is not None:
            self.kubelet.terminate_pod(namespace, name)
        else:
            self.store.delete(res, namespace, name)
        return obj

    def pod_netns(self, namespace: str, name: str) -> str | None:
        """The network namespace backing a pod (for a Job's pod, the one the fake made)."""
        return self.kubelet.netns_of(namespace, name)

    def container_process(self, namespace: str, pod: str,
                          container: str) -> ContainerProcess | None:
        """The process the fake runs for a container (ephemeral, or a Job pod's), if any."""
        return self.kubelet.process(namespace, pod, container)

    def _lookup(self, api_version: str, plural: str) -> Resource:
        try:
            return resource_for(api_version=api_version, plural=plural)
        except KeyError as exc:
            raise ValueError(str(exc)) from None

    def _resource(self, manifest: JSON) -> Resource:
        if not manifest.get("kind") or not manifest.get("apiVersion"):
            raise ValueError("the manifest needs kind and apiVersion")
        try:
            return resource_for(kind=manifest.get("kind"),
                                api_version=manifest.get("apiVersion"))
        except KeyError as exc:
            raise ValueError(str(exc)) from None

