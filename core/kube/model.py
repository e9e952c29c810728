"""Kubernetes objects as waylay reads them (sans-I/O): pods, workloads, container choice.

Everything here takes the API's own JSON (camelCase dicts, as ``kubectl get -o json``
prints them) and returns small frozen dataclasses, so the rules can be tested with plain
dicts and the code that talks to the API stays thin. Nothing here does I/O.

- ``pod_from_api`` / ``workload_from_api``: the fields waylay shows and decides on.
- ``choose_container``: mirrord's rule for which container of a pod is the target.
- ``selector_matches``: a workload's label selector applied to a pod's labels.
- ``pods_to_intercept``: which pods a target means (one pod, or every ready replica).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from waylay.core.engine.errors import TargetError

# Containers that are never the "main" container when the choice is waylay's (mirrord's
# list, plus the agents of other traffic tools).
KNOWN_SIDECARS: Final = frozenset({
    "istio-proxy", "istio-init", "linkerd-proxy", "linkerd-init", "kuma-sidecar",
    "kuma-init", "vault-agent", "vault-agent-init", "queue-proxy", "traffic-agent",
})
DEFAULT_CONTAINER_ANNOTATION: Final = "kubectl.kubernetes.io/default-container"
PROBE_KINDS: Final = ("liveness", "readiness", "startup")

JsonObject = Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class ContainerInfo:
    name: str
    image: str
    ports: tuple[int, ...]  # declared containerPorts (TCP)
    # Probe kind ("liveness", ...) -> the port the kubelet probes (named ports resolved).
    probe_ports: Mapping[str, int] = field(default_factory=dict)
    ready: bool = False
    container_id: str | None = None  # "containerd://<hex>" once started


@dataclass(frozen=True, kw_only=True)
class PodInfo:
    name: str
    namespace: str
    uid: str
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    ready: bool  # the Ready condition
    ip: str | None
    node: str | None
    owner: str | None  # "ReplicaSet/web-6d4f8", the controlling owner, if any
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    containers: tuple[ContainerInfo, ...]
    deleting: bool  # a deletionTimestamp is set: the pod is going away
    # The API object it was read from (the agent deployment reads the ephemeral
    # containers already in it, rather than asking the API again).
    source: JsonObject = field(default_factory=dict, repr=False, compare=False)

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.deleting

    @property
    def status_text(self) -> str:
        """One word for tables: Running, Ready, Pending, Terminating, ..."""
        if self.deleting:
            return "Terminating"
        if self.phase == "Running":
            return "Ready" if self.ready else "NotReady"
        return self.phase

    def container(self, name: str) -> ContainerInfo | None:
        return next((c for c in self.containers if c.name == name), None)


@dataclass(frozen=True, kw_only=True)
class LabelSelector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    # (key, operator, values): operator In | NotIn | Exists | DoesNotExist
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def to_query(self) -> str:
        """The ``labelSelector`` query text the API understands."""
        parts = [f"{key}={value}" for key, value in sorted(self.match_labels.items())]
        for key, operator, values in self.match_expressions:
            if operator == "In":
                parts.append(f"{key} in ({','.join(values)})")
            elif operator == "NotIn":
                parts.append(f"{key} notin ({','.join(values)})")
            elif operator == "Exists":
                parts.append(key)
            elif operator == "DoesNotExist":
                parts.append(f"!{key}")
        return ",".join(parts)


@dataclass(frozen=True, kw_only=True)
class WorkloadInfo:
    kind: str  # "deployment" | "statefulset" | "rollout"
    name: str
    namespace: str
    selector: LabelSelector
    replicas: int  # desired
    ready_replicas: int
    # An Argo rollout may take its pod template from a Deployment (spec.workloadRef).
    workload_ref: str | None = None


@dataclass(frozen=True)
class ContainerChoice:
    name: str
    note: str | None  # says how it was picked when the pod had several to choose from


def pod_from_api(obj: JsonObject) -> PodInfo:
    meta = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    status = _mapping(obj.get("status"))
    statuses = {s.get("name"): s for s in _list(status.get("containerStatuses"))
                if isinstance(s, Mapping)}
    containers = tuple(_container(c, _mapping(statuses.get(c.get("name"))))
                       for c in _list(spec.get("containers")) if isinstance(c, Mapping))
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in _list(status.get("conditions")) if isinstance(c, Mapping))
    return PodInfo(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        phase=str(status.get("phase") or "Unknown"),
        ready=ready,
        ip=_text(status.get("podIP")),
        node=_text(spec.get("nodeName")),
        owner=_owner(meta),
        labels=_strings(meta.get("labels")),
        annotations=_strings(meta.get("annotations")),
        containers=containers,
        deleting=meta.get("deletionTimestamp") is not None,
        source=obj,
    )


def workload_from_api(kind: str, obj: JsonObject) -> WorkloadInfo:
    """A deployment, statefulset or Argo rollout (``kind`` is waylay's lower-case kind)."""
    meta = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    status = _mapping(obj.get("status"))
    ref = _mapping(spec.get("workloadRef"))
    return WorkloadInfo(
        kind=kind,
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        selector=selector_from_api(spec.get("selector")),
        replicas=_int(spec.get("replicas"), default=1),
        ready_replicas=_int(status.get("readyReplicas"), default=0),
        workload_ref=(f"{str(ref.get('kind', '')).lower()}/{ref.get('name')}"
                      if ref.get("name") else None),
    )


def selector_from_api(value: object) -> LabelSelector:
    selector = _mapping(value)
    expressions = tuple(
        (str(e.get("key")), str(e.get("operator")),
         tuple(str(v) for v in _list(e.get("values"))))
        for e in _list(selector.get("matchExpressions")) if isinstance(e, Mapping))
    return LabelSelector(match_labels=_strings(selector.get("matchLabels")),
                         match_expressions=expressions)


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes semantics; an empty selector matches nothing here (an empty selector on
    a workload is invalid, and matching every pod of a namespace would surprise)."""
    if selector.empty:
        return False
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for key, operator, values in selector.match_expressions:
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def choose_container(pod: PodInfo, explicit: str | None) -> ContainerChoice:
    """mirrord's rule: ``/container/C``, else the default-container annotation, else the
    first container that is not a known sidecar (else the first one)."""
    names = [c.name for c in pod.containers]
    if not names:
        raise TargetError(f"pod/{pod.name} has no containers")
    if explicit is not None:
        if explicit not in names:
            raise TargetError(f"pod/{pod.name} has no container {explicit!r} "
                              f"(it has: {', '.join(names)})")
        return ContainerChoice(explicit, None)
    if len(names) == 1:
        return ContainerChoice(names[0], None)
    hint = f"; use pod/{pod.name}/container/C to pick another"
    annotated = pod.annotations.get(DEFAULT_CONTAINER_ANNOTATION)
    if annotated in names:
        return ContainerChoice(annotated, f"picked container {annotated!r} of pod/{pod.name} "
                               f"from its {DEFAULT_CONTAINER_ANNOTATION} annotation{hint}")
    for name in names:
        if name not in KNOWN_SIDECARS:
            skipped = [n for n in names if n in KNOWN_SIDECARS]
            why = f"skipping sidecars {', '.join(skipped)}" if skipped else \
                f"the first of {', '.join(names)}"
            return ContainerChoice(name, f"picked container {name!r} of pod/{pod.name} "
                                   f"({why}){hint}")
    return ContainerChoice(names[0], f"every container of pod/{pod.name} looks like a "
                           f"sidecar; picked the first, {names[0]!r}{hint}")


def pods_to_intercept(kind: str, name: str, pods: Iterable[PodInfo],
                      workload: WorkloadInfo | None = None) -> list[PodInfo]:
    """The pods a target means: ``pod/NAME`` that pod if it runs; a workload every ready
    pod its selector matches. Raises ``TargetError`` saying what is wrong otherwise."""
    if kind == "pod":
        pod = next((p for p in pods if p.name == name), None)
        if pod is None:
            raise TargetError(f"pod/{name} not found")
        if not pod.running:
            raise TargetError(f"pod/{name} is not running (it is {pod.status_text})")
        if not pod.ip:
            raise TargetError(f"pod/{name} has no IP address yet")
        return [pod]
    if workload is None:
        raise TargetError(f"{kind}/{name} not found")
    matching = [p for p in pods if selector_matches(workload.selector, p.labels)]
    ready = sorted((p for p in matching if p.running and p.ready and p.ip),
                   key=lambda p: p.name)
    if not ready:
        seen = ", ".join(f"{p.name} {p.status_text}" for p in matching) or "none"
        raise TargetError(f"{kind}/{name} has no ready pod (its pods: {seen})")
    return ready


def probe_ports(pod: PodInfo) -> dict[int, list[str]]:
    """Port -> what probes it ("readiness probe of container app", ...)."""
    found: dict[int, list[str]] = {}
    for container in pod.containers:
        for kind, port in container.probe_ports.items():
            found.setdefault(port, []).append(f"{kind} probe of container {container.name}")
    return found


def _container(spec: JsonObject, status: JsonObject) -> ContainerInfo:
    named: dict[str, int] = {}
    ports: list[int] = []
    for port in _list(spec.get("ports")):
        if not isinstance(port, Mapping) or port.get("protocol", "TCP") != "TCP":
            continue
        number = _int(port.get("containerPort"), default=0)
        if number:
            ports.append(number)
            if isinstance(port.get("name"), str):
                named[port["name"]] = number
    probes: dict[str, int] = {}
    for kind in PROBE_KINDS:
        probe = _mapping(spec.get(f"{kind}Probe"))
        for action in ("httpGet", "tcpSocket", "grpc"):
            target = _mapping(probe.get(action)).get("port")
            number = named.get(target, 0) if isinstance(target, str) and not target.isdigit() \
                else _int(target, default=0)
            if number:
                probes[kind] = number
    return ContainerInfo(
        name=str(spec.get("name", "")),
        image=str(spec.get("image", "")),
        ports=tuple(sorted(set(ports))),
        probe_ports=probes,
        ready=bool(status.get("ready")),
        container_id=_text(status.get("containerID")),
    )


def _owner(meta: JsonObject) -> str | None:
    refs = [r for r in _list(meta.get("ownerReferences")) if isinstance(r, Mapping)]
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    return f"{ref.get('kind')}/{ref.get('name')}" if ref else None


def _mapping(value: object) -> JsonObject:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value).items()}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object, *, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return default
