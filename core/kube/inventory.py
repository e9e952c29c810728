"""What one Kubernetes namespace holds, as waylay shows it (sans-I/O).

Theory of operation. An :class:`Inventory` is a snapshot of one namespace: its pods and
its workloads (deployments, statefulsets, Argo rollouts), already parsed by
``waylay.core.kube.model``. It never changes; :meth:`Inventory.apply` folds one watch event
(ADDED / MODIFIED / DELETED, the API's own object as a dict) into a *new* inventory, and
:meth:`Inventory.replace` swaps every object of one kind after a (re-)list. So a snapshot
handed to another thread (the dashboard, ``waylay targets``) can be read without a lock
while the watcher goes on folding events into the next one.

A workload's pods are the pods its label selector matches: exactly what
``kube_model.pods_to_intercept`` would intercept, so what the tree shows under
``deployment/web`` is what ``-t deployment/web`` takes (a stray pod that happens to carry
the same labels included, as Kubernetes itself would count it). Pods that no listed
workload selects are the "other pods" (bare pods, Jobs, DaemonSets, ...).

Each event copies the mapping of its kind: O(n) per event, cheap for the few thousand
objects of a namespace, and it keeps every snapshot immutable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from waylay.core.kube.model import (
    JsonObject,
    PodInfo,
    WorkloadInfo,
    pod_from_api,
    selector_matches,
    workload_from_api,
)

K = TypeVar("K", str, tuple[str, str])
V = TypeVar("V", PodInfo, WorkloadInfo)

POD: Final = "pod"
WORKLOAD_KINDS: Final = ("deployment", "statefulset", "rollout")
KINDS: Final = (POD, *WORKLOAD_KINDS)
# Watch event types (the API's ``type`` field); BOOKMARK and ERROR are the watcher's.
ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"


@dataclass(frozen=True, kw_only=True)
class Inventory:
    """One namespace at one moment. Build with :func:`empty` or :meth:`replace`."""

    namespace: str
    context: str | None = None
    # Keyed by uid (the name when an object has none): a pod deleted and re-created
    # under the same name (a statefulset's) is a new object.
    pods_by_key: Mapping[str, PodInfo] = field(default_factory=dict)
    workloads_by_key: Mapping[tuple[str, str], WorkloadInfo] = field(default_factory=dict)
    rollouts_available: bool = False

    # -- reading ---------------------------------------------------------------------

    @property
    def pods(self) -> list[PodInfo]:
        """Every pod, by name."""
        return sorted(self.pods_by_key.values(), key=lambda p: p.name)

    @property
    def workloads(self) -> list[WorkloadInfo]:
        """Every workload, by kind (deployments, statefulsets, rollouts), then name."""
        return sorted(self.workloads_by_key.values(),
                      key=lambda w: (WORKLOAD_KINDS.index(w.kind), w.name))

    def pods_of(self, workload: WorkloadInfo) -> list[PodInfo]:
        """The pods the workload's selector matches, by name."""
        return [p for p in self.pods if selector_matches(workload.selector, p.labels)]

    def workloads_of(self, pod: PodInfo) -> list[WorkloadInfo]:
        """The listed workloads whose selector matches the pod (usually one or none)."""
        return [w for w in self.workloads if selector_matches(w.selector, pod.labels)]

    @property
    def other_pods(self) -> list[PodInfo]:
        """Pods no listed workload selects: bare pods, Jobs' and DaemonSets' pods, ..."""
        workloads = self.workloads
        return [p for p in self.pods
                if not any(selector_matches(w.selector, p.labels) for w in workloads)]

    def workload(self, kind: str, name: str) -> WorkloadInfo | None:
        return next((w for w in self.workloads_by_key.values()
                     if w.kind == kind and w.name == name), None)

    def pod(self, name: str) -> PodInfo | None:
        return next((p for p in self.pods_by_key.values() if p.name == name), None)

    # -- changing (each returns a new inventory) ---------------------------------------

    def replace(self, kind: str, objects: Iterable[JsonObject]) -> Inventory:
        """Every object of ``kind`` replaced by ``objects`` (the items of a list call)."""
        _check_kind(kind)
        if kind == POD:
            pods = {_key(obj): pod_from_api(obj) for obj in objects}
            return dataclasses.replace(self, pods_by_key=pods)
        kept = {k: w for k, w in self.workloads_by_key.items() if k[0] != kind}
        for obj in objects:
            kept[(kind, _key(obj))] = workload_from_api(kind, obj)
        return dataclasses.replace(self, workloads_by_key=kept)

    def apply(self, event_type: str, kind: str, obj: JsonObject) -> Inventory:
        """Fold one watch event in. Objects of another namespace and unknown event types
        (BOOKMARK, ERROR: the watcher's business) leave the inventory as it is."""
        _check_kind(kind)
        if event_type not in (ADDED, MODIFIED, DELETED):
            return self
        namespace = _meta(obj).get("namespace")
        if namespace is not None and namespace != self.namespace:
            return self
        name = str(_meta(obj).get("name", ""))
        if kind == POD:
            pods = dict(self.pods_by_key)
            if event_type == DELETED:
                _drop(pods, _key(obj), lambda key, pod: pod.name == name)
            else:
                pods[_key(obj)] = pod_from_api(obj)
            return dataclasses.replace(self, pods_by_key=pods)
        workloads = dict(self.workloads_by_key)
        if event_type == DELETED:
            _drop(workloads, (kind, _key(obj)),
                  lambda key, w: key[0] == kind and w.name == name)
        else:
            workloads[(kind, _key(obj))] = workload_from_api(kind, obj)
        return dataclasses.replace(self, workloads_by_key=workloads)

    # -- output --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The ``"kubernetes"`` part of ``waylay targets --json`` (stable keys)."""
        workloads = self.workloads
        return {
            "context": self.context,
            "namespace": self.namespace,
            "rollouts_available": self.rollouts_available,
            "workloads": [_workload_json(w, self.pods_of(w)) for w in workloads],
            "pods": [_pod_json(p, [w for w in workloads
                                   if selector_matches(w.selector, p.labels)])
                     for p in self.pods],
        }


def empty(namespace: str, *, context: str | None = None,
          rollouts_available: bool = False) -> Inventory:
    return Inventory(namespace=namespace, context=context,
                     rollouts_available=rollouts_available)


def workload_target(workload: WorkloadInfo) -> str:
    """The ``-t`` text for a workload: ``deployment/web``."""
    return f"{workload.kind}/{workload.name}"


def pod_target(pod: PodInfo) -> str:
    return f"pod/{pod.name}"


def _workload_json(workload: WorkloadInfo, pods: list[PodInfo]) -> dict[str, Any]:
    return {
        "target": workload_target(workload),
        "kind": workload.kind,
        "name": workload.name,
        "ready": workload.ready_replicas,
        "desired": workload.replicas,
        "selector": workload.selector.to_query(),
        "pods": [p.name for p in pods],
    }


def _pod_json(pod: PodInfo, workloads: list[WorkloadInfo]) -> dict[str, Any]:
    return {
        "target": pod_target(pod),
        "name": pod.name,
        "phase": pod.phase,
        "ready": pod.ready,
        "status": pod.status_text,
        "ip": pod.ip,
        "node": pod.node,
        "owner": pod.owner,
        "workloads": [workload_target(w) for w in workloads],
        "containers": [{"name": c.name, "image": c.image, "ports": list(c.ports),
                        "ready": c.ready} for c in pod.containers],
    }


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def _meta(obj: JsonObject) -> JsonObject:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _key(obj: JsonObject) -> str:
    uid = _meta(obj).get("uid")
    return str(uid) if uid else f"name:{_meta(obj).get('name', '')}"


def _drop(found: dict[K, V], key: K, same_name: Callable[[K, V], bool]) -> None:
    """Remove the object with ``key``. An event naming no uid removes by name; one whose
    uid we never saw removes nothing (an object of the same name is a newer one)."""
    if found.pop(key, None) is not None:
        return
    if (key[1] if isinstance(key, tuple) else key).startswith("name:"):
        for other in [k for k, v in found.items() if same_name(k, v)]:
            del found[other]
