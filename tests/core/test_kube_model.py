"""waylay.core.kube.model: pods and workloads from the API's JSON, container choice, selectors."""

from __future__ import annotations

from typing import Any

import pytest

from waylay.core.engine.errors import TargetError
from waylay.core.kube.model import (
    LabelSelector,
    choose_container,
    pod_from_api,
    pods_to_intercept,
    probe_ports,
    selector_from_api,
    selector_matches,
    workload_from_api,
)


def pod(name: str = "web-1", *, containers: list[dict[str, Any]] | None = None,
        labels: dict[str, str] | None = None, phase: str = "Running", ready: bool = True,
        ip: str | None = "10.0.0.5", annotations: dict[str, str] | None = None,
        deleting: bool = False) -> dict[str, Any]:
    containers = containers or [{"name": "app", "image": "shop:1"}]
    meta: dict[str, Any] = {
        "name": name, "namespace": "shop", "uid": f"uid-{name}",
        "labels": labels or {"app": "web"}, "annotations": annotations or {},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-6d4f", "controller": True}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T10:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": "node-1", "containers": containers},
        "status": {
            "phase": phase, "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": c["name"], "ready": ready,
                                   "containerID": f"containerd://{i:064x}"}
                                  for i, c in enumerate(containers)],
        },
    }


def test_pod_fields() -> None:
    info = pod_from_api(pod())
    assert (info.name, info.namespace, info.phase, info.ready, info.ip, info.node) == (
        "web-1", "shop", "Running", True, "10.0.0.5", "node-1")
    assert info.owner == "ReplicaSet/web-6d4f"
    assert info.containers[0].container_id == "containerd://" + "0" * 64
    assert info.status_text == "Ready"
    assert pod_from_api(pod(deleting=True)).status_text == "Terminating"
    assert pod_from_api({}).phase == "Unknown"  # never a KeyError on odd objects


def test_probe_ports_resolve_named_ports() -> None:
    app = {"name": "app", "ports": [{"name": "http", "containerPort": 8080},
                                    {"containerPort": 9090}],
           "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
           "readinessProbe": {"tcpSocket": {"port": 9090}},
           "startupProbe": {"grpc": {"port": 7000}}}
    info = pod_from_api(pod(containers=[app]))
    assert info.containers[0].ports == (8080, 9090)
    assert probe_ports(info) == {8080: ["liveness probe of container app"],
                                 9090: ["readiness probe of container app"],
                                 7000: ["startup probe of container app"]}


def test_container_choice_follows_mirrord() -> None:
    sidecar_first = [{"name": "istio-proxy"}, {"name": "app"}, {"name": "log"}]
    choice = choose_container(pod_from_api(pod(containers=sidecar_first)), None)
    assert choice.name == "app"
    assert choice.note is not None and "istio-proxy" in choice.note
    annotated = pod(containers=sidecar_first,
                    annotations={"kubectl.kubernetes.io/default-container": "log"})
    assert choose_container(pod_from_api(annotated), None).name == "log"
    assert choose_container(pod_from_api(annotated), "istio-proxy").name == "istio-proxy"
    single = choose_container(pod_from_api(pod()), None)
    assert (single.name, single.note) == ("app", None)  # no choice, nothing to say
    with pytest.raises(TargetError, match=r"no container 'db'.*app"):
        choose_container(pod_from_api(pod()), "db")


def test_selectors() -> None:
    selector = selector_from_api({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "track", "operator": "In", "values": ["stable", "canary"]},
        {"key": "legacy", "operator": "DoesNotExist"}]})
    assert selector_matches(selector, {"app": "web", "track": "canary"})
    assert not selector_matches(selector, {"app": "web", "track": "dev"})
    assert not selector_matches(selector, {"app": "web", "track": "stable", "legacy": "1"})
    assert not selector_matches(LabelSelector(), {"app": "web"})  # empty selects nothing
    assert selector.to_query() == "app=web,track in (stable,canary),!legacy"


def test_every_ready_replica_is_intercepted() -> None:
    web = workload_from_api("deployment", {
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}},
        "status": {"readyReplicas": 2}})
    pods = [pod_from_api(p) for p in (
        pod("web-b"), pod("web-a"), pod("web-c", ready=False),
        pod("web-d", deleting=True), pod("other", labels={"app": "db"}))]
    chosen = pods_to_intercept("deployment", "web", pods, web)
    assert [p.name for p in chosen] == ["web-a", "web-b"]
    with pytest.raises(TargetError, match=r"no ready pod.*web-c NotReady"):
        pods_to_intercept("deployment", "web", pods[2:], web)


def test_single_pod_errors_say_what_is_wrong() -> None:
    with pytest.raises(TargetError, match="pod/nope not found"):
        pods_to_intercept("pod", "nope", [])
    with pytest.raises(TargetError, match=r"not running.*Pending"):
        pods_to_intercept("pod", "web-1", [pod_from_api(pod(phase="Pending"))])
