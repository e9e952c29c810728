"""The shop namespace the discovery tests list: manifests for the fake API server."""

from __future__ import annotations

from typing import Any

from tests.kube.fake_apiserver import FakeCluster

NS = "shop"


def pod(name: str, *, labels: dict[str, str], owner: tuple[str, str] | None = None,
        ready: bool = True, ip: str = "10.1.0.7", containers: tuple[str, ...] = ("app",),
        phase: str = "Running") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0],
                                    "name": owner[1], "uid": f"uid-{owner[1]}",
                                    "controller": True}]
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": "node-1",
                 "containers": [{"name": c, "image": f"shop/{c}:1",
                                 "ports": [{"containerPort": 8080}]} for c in containers]},
        "status": {"phase": phase, "podIP": ip,
                   "conditions": [{"type": "Ready", "status": str(ready)}],
                   "containerStatuses": [{"name": c, "ready": ready} for c in containers]},
    }


def workload(kind: str, name: str, *, replicas: int, ready: int,
             api_version: str = "apps/v1") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
            "status": {"replicas": replicas, "readyReplicas": ready}}


def fill(cluster: FakeCluster) -> None:
    """deployment/web (1 of 2 ready), statefulset/db, and a bare pod."""
    cluster.add_namespace(NS)
    cluster.add_object(workload("Deployment", "web", replicas=2, ready=1))
    cluster.add_object(workload("StatefulSet", "db", replicas=1, ready=1))
    cluster.add_object(pod("web-6d4f8-aaaaa", labels={"app": "web"},
                           owner=("ReplicaSet", "web-6d4f8"), containers=("app", "istio-proxy")))
    cluster.add_object(pod("web-6d4f8-bbbbb", labels={"app": "web"},
                           owner=("ReplicaSet", "web-6d4f8"), ready=False, ip="10.1.0.8"))
    cluster.add_object(pod("db-0", labels={"app": "db"}, owner=("StatefulSet", "db"),
                           ip="10.1.0.9"))
    cluster.add_object(pod("debug", labels={"run": "debug"}, ip="10.1.0.10"))
