"""The fake node: runs pods' containers, reports their status, and the Job controller.

Theory of operation. A pod is "backed" when the kubelet knows its network namespace: one
the test made (``FakeCluster.add_pod``) or one made here for a Job's pod. Containers the
fake starts (ephemeral containers; the first container of a Job's pod) run as
``fake_runtime.ContainerProcess`` in that namespace, and every state change is a write to
the pod's status, hence a MODIFIED watch event: waiting (ContainerCreating) → running
(startedAt, containerID) → terminated (exitCode, reason Completed or Error). A container
that cannot run stays waiting with a reason saying why (CreateContainerError).

Jobs: creating one stores it and at once creates its single pod ``<job>-<5 chars>``
(labels, ownerReference, the template's spec), in a new namespace ``wlfake-job-...``.
The pod goes Pending → Running → Succeeded or Failed with its first container; the Job's
status follows (active, ready, succeeded/failed, a Complete or Failed condition). Not
modeled: retries (backoffLimit), parallelism, completions > 1, restarting containers,
replacing a deleted pod, scheduling (a pod without ``spec.nodeName`` gets "fake-node").
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.kube.fake_ephemeral import patched_ephemeral_containers
from tests.kube.fake_runtime import (
    STOP_GRACE_S,
    CgroupTree,
    ContainerProcess,
    LogBuffer,
    container_env,
    create_netns,
    delete_netns,
)
from tests.kube.fake_store import (
    JSON,
    ApiError,
    Store,
    bad_request,
    invalid,
    not_found,
    now,
    resource_for,
)

PODS = resource_for(kind="Pod")
JOBS = resource_for(kind="Job")
NAMESPACES = resource_for(kind="Namespace")
NODE_NAME = "fake-node"
EPHEMERAL = "ephemeralContainerStatuses"
REGULAR = "containerStatuses"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generated-name alphabet
_START_WAIT_S = 10.0


def name_suffix() -> str:
    return "".join(secrets.choice(_NAME_CHARS) for _ in range(5))


def image_id(image: str) -> str:
    repo = image.split("@")[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def container_status(container: JSON, state: JSON) -> JSON:
    return {"name": container["name"], "state": state, "lastState": {}, "ready": False,
            "restartCount": 0, "image": container.get("image", ""), "imageID": "",
            "started": False}


def waiting(reason: str, message: str | None = None) -> JSON:
    state: JSON = {"reason": reason}
    if message:
        state["message"] = message
    return {"waiting": state}


def _condition(kind: str, status: bool) -> JSON:
    return {"type": kind, "status": "True" if status else "False", "lastProbeTime": None,
            "lastTransitionTime": now()}


@dataclass
class PodRuntime:
    netns: str | None
    owns_netns: bool  # made for a Job's pod: deleted with the pod
    processes: dict[str, ContainerProcess] = field(default_factory=dict)
    terminating: bool = False


class Kubelet:
    """Pods' network namespaces and container processes, and the Job controller."""

    def __init__(self, store: Store, cgroups: CgroupTree) -> None:
        self._store = store
        self._cgroups = cgroups
        self._pods: dict[tuple[str, str], PodRuntime] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=f"fake-kubelet-{target.__name__}")
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def register(self, namespace: str, name: str, netns: str | None, *,
                 owns_netns: bool = False) -> None:
        with self._lock:
            if self._closed:
                raise ApiError(503, "ServiceUnavailable", "the fake cluster is closing")
            self._pods[(namespace, name)] = PodRuntime(netns, owns_netns)

    def netns_of(self, namespace: str, name: str) -> str | None:
        with self._lock:
            runtime = self._pods.get((namespace, name))
            return runtime.netns if runtime else None

    def process(self, namespace: str, pod: str, container: str) -> ContainerProcess | None:
        with self._lock:
            runtime = self._pods.get((namespace, pod))
            return runtime.processes.get(container) if runtime else None

    def log(self, namespace: str, pod: str, container: str) -> LogBuffer | None:
        proc = self.process(namespace, pod, container)
        return proc.log if proc else None

    # --- container status ----------------------------------------------------------------

    def _set_state(self, namespace: str, pod: str, kind: str, container: JSON, state: JSON,
                   container_id: str | None = None) -> None:
        """Record one container's state in the pod (and the pod's phase, for Job pods)."""

        def change(obj: JSON) -> None:
            status = obj.setdefault("status", {})
            entries = status.setdefault(kind, [])
            entry = next((e for e in entries if e["name"] == container["name"]), None)
            if entry is None:
                entry = container_status(container, state)
                entries.append(entry)
            entry["state"] = state
            entry["started"] = "running" in state
            entry["ready"] = kind == REGULAR and "running" in state
            if container_id:
                entry["containerID"] = f"containerd://{container_id}"
                entry["imageID"] = image_id(entry["image"])
            if kind == REGULAR:
                _derive_phase(status)

        with contextlib.suppress(ApiError):  # the pod was deleted meanwhile
            self._store.mutate(PODS, namespace, pod, change)

    def _start(self, namespace: str, pod: str, container: JSON, kind: str) -> None:
        with self._lock:
            runtime = self._pods.get((namespace, pod))
        if runtime is None or runtime.netns is None:
            self._set_state(namespace, pod, kind, container, waiting(
                "CreateContainerError", "the fake API server runs containers only in pods "
                "backed by a network namespace (FakeCluster.add_pod)"))
            return
        if not container.get("command"):
            self._set_state(namespace, pod, kind, container, waiting(
                "CreateContainerError", "the fake API server cannot run image entrypoints: "
                "give the container a command"))
            return
        cid = secrets.token_hex(32)
        started = threading.Event()

        def exited(code: int) -> None:
            started.wait(_START_WAIT_S)  # "running" is reported before "terminated"
            self._exited(namespace, pod, kind, container, cid, code)

        try:
            uid = self._store.get(PODS, namespace, pod)["metadata"]["uid"]
            proc = ContainerProcess(
                [*container["command"], *(container.get("args") or [])], netns=runtime.netns,
                env=container_env(container.get("env") or [], pod),
                cwd=container.get("workingDir") or "/", on_exit=exited)
        except (OSError, ApiError) as exc:
            self._set_state(namespace, pod, kind, container,
                            waiting("RunContainerError", str(exc)))
            return
        with self._lock:  # a pod deleted or a cluster closed meanwhile must not leak it
            registered = not self._closed and self._pods.get((namespace, pod)) is runtime
            if registered:
                runtime.processes[container["name"]] = proc
        if not registered:
            proc.stop(0)
            return
        try:
            self._cgroups.add(uid, cid, proc.pid)
        finally:
            self._set_state(namespace, pod, kind, container,
                            {"running": {"startedAt": now()}}, cid)
            started.set()
        if kind == REGULAR:
            self._update_owner_job(namespace, pod, {"ready": 1})

    def _exited(self, namespace: str, pod: str, kind: str, container: JSON, cid: str,
                code: int) -> None:
        obj = None
        with contextlib.suppress(ApiError):
            obj = self._store.get(PODS, namespace, pod)
        started_at = now()
        for entry in (obj or {}).get("status", {}).get(kind, []):
            if entry["name"] == container["name"] and "running" in entry["state"]:
                started_at = entry["state"]["running"]["startedAt"]
        self._set_state(namespace, pod, kind, container, {"terminated": {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "startedAt": started_at, "finishedAt": now(),
            "containerID": f"containerd://{cid}"}}, cid)
        if kind == REGULAR:
            self._update_owner_job(namespace, pod, {"active": 0, "ready": 0}, code)

    # --- ephemeral containers ------------------------------------------------------------

    def patch_ephemeral(self, namespace: str, name: str, content_type: str,
                        body: Any) -> JSON:
        """Apply a PATCH of pods/ephemeralcontainers; start the new containers; the pod."""
        new: list[JSON] = []

        def change(pod: JSON) -> None:
            proposed = patched_ephemeral_containers(pod, content_type, body)
            known = {c["name"] for c in pod["spec"].get("ephemeralContainers") or []}
            pod["spec"]["ephemeralContainers"] = proposed
            statuses = pod.setdefault("status", {}).setdefault(EPHEMERAL, [])
            for container in proposed:
                if container["name"] not in known:
                    new.append(container)
                    statuses.append(container_status(container, waiting("ContainerCreating")))

        pod = self._store.mutate(PODS, namespace, name, change)
        for container in new:
            self._spawn(self._start, namespace, name, container, EPHEMERAL)
        return pod

    # --- deleting pods -------------------------------------------------------------------

    def delete_pod(self, namespace: str, name: str, grace: float | None) -> JSON:
        """Graceful delete as the API does it: mark the pod, stop it in the background."""

        def mark(pod: JSON) -> None:
            pod["metadata"].setdefault("deletionTimestamp", now())
            pod["metadata"].setdefault("deletionGracePeriodSeconds",
                                       30 if grace is None else int(grace))

        pod = self._store.mutate(PODS, namespace, name, mark)
        limit = STOP_GRACE_S if grace is None else min(grace, STOP_GRACE_S)
        with self._lock:
            runtime = self._pods.get((namespace, name))
            first = runtime is None or not runtime.terminating
            if runtime is not None:
                runtime.terminating = True
        if first:
            self._spawn(self.terminate_pod, namespace, name, limit)
        return pod

    def terminate_pod(self, namespace: str, name: str, grace: float = STOP_GRACE_S) -> None:
        """Stop the containers the fake runs in the pod, drop its namespace, delete it."""
        with self._lock:
            runtime = self._pods.pop((namespace, name), None)
        if runtime is not None:
            with self._lock:
                processes = list(runtime.processes.values())
            _stop_all(processes, grace)
            if runtime.owns_netns and runtime.netns:
                delete_netns(runtime.netns)
        with contextlib.suppress(ApiError):
            self._store.delete(PODS, namespace, name)

    # --- the Job controller --------------------------------------------------------------

    def create_job(self, namespace: str, body: Any) -> JSON:
        """POST of a batch/v1 Job: store it, create and start its pod; the stored Job."""
        if not isinstance(body, dict):
            raise bad_request("the request body must be a Job object")
        if not self._store.exists(NAMESPACES, None, namespace):
            raise not_found(NAMESPACES, namespace)
        job = copy.deepcopy(body)
        meta = job.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + name_suffix()
        name = meta.get("name") or ""
        template = job.get("spec", {}).get("template", {})
        pod_spec = template.get("spec", {})
        causes = _job_problems(meta, pod_spec)
        if causes:
            raise invalid("Job.batch", name, causes)
        uid = meta["uid"] = str(uuid.uuid4())
        labels = {"batch.kubernetes.io/controller-uid": uid,
                  "batch.kubernetes.io/job-name": name, "controller-uid": uid,
                  "job-name": name}
        template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
        spec = job["spec"]
        spec.setdefault("selector", {"matchLabels": {
            "batch.kubernetes.io/controller-uid": uid}})
        for key, value in (("parallelism", 1), ("completions", 1), ("backoffLimit", 6),
                           ("completionMode", "NonIndexed"), ("suspend", False)):
            spec.setdefault(key, value)
        job["status"] = {}
        created = self._store.create(JOBS, job)
        self._start_job_pod(created)
        return created

    def _start_job_pod(self, job: JSON) -> None:
        meta, template = job["metadata"], job["spec"]["template"]
        namespace, pod_name = meta["namespace"], f"{meta['name']}-{name_suffix()}"
        spec = copy.deepcopy(template["spec"])
        spec.setdefault("nodeName", NODE_NAME)
        containers = spec["containers"]
        pod = {"metadata": {
            "name": pod_name, "namespace": namespace,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": dict(template["metadata"].get("annotations") or {}),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                 "name": meta["name"], "uid": meta["uid"],
                                 "controller": True, "blockOwnerDeletion": True}]},
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": "BestEffort", "startTime": now(),
                       "conditions": [_condition("PodScheduled", True)],
                       REGULAR: [container_status(c, waiting("ContainerCreating"))
                                 for c in containers]}}
        netns = create_netns("wlfake-job")
        try:
            self.register(namespace, pod_name, netns, owns_netns=True)
        except ApiError:
            delete_netns(netns)
            raise
        self._store.create(PODS, pod)
        self._store.mutate(JOBS, namespace, meta["name"], lambda j: j["status"].update(
            {"active": 1, "ready": 0, "startTime": now()}))
        self._spawn(self._start, namespace, pod_name, containers[0], REGULAR)
        for extra in containers[1:]:
            self._set_state(namespace, pod_name, REGULAR, extra, waiting(
                "CreateContainerError", "the fake API server runs only the first container "
                "of a Job's pod"))

    def _update_owner_job(self, namespace: str, pod_name: str, update: JSON,
                          exit_code: int | None = None) -> None:
        """Reflect the Job pod's progress in its Job (``exit_code`` once it finished)."""
        with contextlib.suppress(ApiError):
            pod = self._store.get(PODS, namespace, pod_name)
            owner = next((r for r in pod["metadata"].get("ownerReferences") or []
                          if r.get("kind") == "Job" and r.get("controller")), None)
            if owner is None:
                return

            def change(job: JSON) -> None:
                if job["metadata"]["uid"] != owner["uid"]:
                    return
                job["status"].update(update)
                if exit_code is None:
                    return
                job["status"]["succeeded" if exit_code == 0 else "failed"] = 1
                condition = _condition("Complete" if exit_code == 0 else "Failed", True)
                if exit_code == 0:
                    job["status"]["completionTime"] = now()
                else:
                    condition.update(reason="BackoffLimitExceeded",
                                     message="Job has reached the specified backoff limit")
                job["status"]["conditions"] = [condition]

            self._store.mutate(JOBS, namespace, owner["name"], change)

    def delete_job(self, namespace: str, name: str, policy: str | None) -> JSON:
        """DELETE of a Job; Background/Foreground also delete its pods, Orphan leaves them."""
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise bad_request(f'propagationPolicy: Unsupported value: "{policy}": supported '
                              f'values: "Foreground", "Background", "Orphan"')
        job = self._store.get(JOBS, namespace, name)
        uid = job["metadata"]["uid"]
        _, pods = self._store.list_objects(PODS, namespace)
        owned = [p["metadata"]["name"] for p in pods
                 if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]
        self._store.delete(JOBS, namespace, name)
        for pod in owned:
            if policy in ("Background", "Foreground"):
                with contextlib.suppress(ApiError):
                    self.delete_pod(namespace, pod, None)
            else:  # the garbage collector drops the orphans' owner reference
                with contextlib.suppress(ApiError):
                    self._store.mutate(PODS, namespace, pod, lambda p: p["metadata"].update(
                        ownerReferences=[r for r in p["metadata"]["ownerReferences"]
                                         if r.get("uid") != uid]))
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": "batch", "kind": "jobs", "uid": uid}}

    def close(self) -> None:
        """Stop every container process, wait for background work, drop made namespaces."""
        with self._lock:
            self._closed = True
            runtimes = list(self._pods.values())
            self._pods.clear()
        _stop_all([p for r in runtimes for p in r.processes.values()], STOP_GRACE_S)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=STOP_GRACE_S + 15)
        for runtime in runtimes:
            if runtime.owns_netns and runtime.netns:
                delete_netns(runtime.netns)


def _stop_all(processes: list[ContainerProcess], grace: float) -> None:
    """Stop processes in parallel, so N containers take one grace period, not N."""
    threads = [threading.Thread(target=p.stop, args=(grace,), daemon=True) for p in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=grace + 15)


def _derive_phase(status: JSON) -> None:
    states = [e["state"] for e in status.get(REGULAR, [])]
    if states and all("terminated" in s for s in states):
        ok = all(s["terminated"]["exitCode"] == 0 for s in states)
        status["phase"] = "Succeeded" if ok else "Failed"
    elif any("running" in s for s in states):
        status["phase"] = "Running"
    ready = bool(states) and all("running" in s for s in states)
    status["conditions"] = [_condition("PodScheduled", True),
                            _condition("Initialized", True),
                            _condition("ContainersReady", ready), _condition("Ready", ready)]


def _job_problems(meta: JSON, pod_spec: JSON) -> list[tuple[str, str]]:
    causes = []
    if not meta.get("name"):
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    containers = pod_spec.get("containers") or []
    if not containers:
        causes.append(("spec.template.spec.containers", "Required value"))
    for i, container in enumerate(containers):
        for key in ("name", "image"):
            if not container.get(key):
                causes.append((f"spec.template.spec.containers[{i}].{key}", "Required value"))
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(("spec.template.spec.restartPolicy",
                       'Required value: valid values: "OnFailure", "Never"'))
    return causes
