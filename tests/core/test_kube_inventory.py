"""The namespace inventory: lists, watch events, workloads' pods and the --json shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from waylay.core.kube.inventory import ADDED, DELETED, MODIFIED, empty, pod_target, workload_target


def pod(name: str, *, uid: str | None = None, labels: dict[str, str] | None = None,
        phase: str = "Running", ready: bool = True, owner: tuple[str, str] | None = None,
        namespace: str = "shop", ip: str | None = "10.0.0.7") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if uid is not None:
        meta["uid"] = uid
    if owner is not None:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {
        "metadata": meta,
        "spec": {"nodeName": "node-1",
                 "containers": [{"name": "app", "image": "shop:1",
                                 "ports": [{"containerPort": 8080}]}]},
        "status": {"phase": phase, "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "containerStatuses": [{"name": "app", "ready": ready}]},
    }


def workload(name: str, *, uid: str | None = None, labels: dict[str, str] | None = None,
             replicas: int = 2, ready: int = 2, namespace: str = "shop") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if uid is not None:
        meta["uid"] = uid
    return {"metadata": meta,
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": labels or {"app": name}}},
            "status": {"readyReplicas": ready}}


def shop() -> Any:
    inv = empty("shop", context="fake", rollouts_available=True)
    inv = inv.replace("pod", [
        pod("web-6d4f8-a", uid="p1", labels={"app": "web"}, owner=("ReplicaSet", "web-6d4f8")),
        pod("web-6d4f8-b", uid="p2", labels={"app": "web"}, ready=False,
            owner=("ReplicaSet", "web-6d4f8")),
        pod("db-0", uid="p3", labels={"app": "db"}, owner=("StatefulSet", "db")),
        pod("debug", uid="p4", labels={"run": "debug"}),
    ])
    inv = inv.replace("deployment", [workload("web", uid="d1", ready=1)])
    inv = inv.replace("statefulset", [workload("db", uid="s1", replicas=1, ready=1)])
    return inv.replace("rollout", [workload("canary", uid="r1", replicas=0, ready=0)])


def test_workloads_get_the_pods_their_selector_matches() -> None:
    """A workload's pods are those its selector matches; the rest are "other pods"."""
    inv = shop()
    assert [workload_target(w) for w in inv.workloads] == [
        "deployment/web", "statefulset/db", "rollout/canary"]
    web = inv.workload("deployment", "web")
    assert web is not None
    assert [p.name for p in inv.pods_of(web)] == ["web-6d4f8-a", "web-6d4f8-b"]
    assert [p.name for p in inv.other_pods] == ["debug"]
    assert inv.pods_of(inv.workload("rollout", "canary")) == []  # type: ignore[arg-type]


def test_replace_of_one_kind_keeps_the_others() -> None:
    """A re-list of deployments leaves statefulsets and rollouts alone."""
    inv = shop().replace("deployment", [])
    assert [workload_target(w) for w in inv.workloads] == ["statefulset/db", "rollout/canary"]
    assert len(inv.pods) == 4


def test_added_modified_deleted_pod() -> None:
    """Watch events add, change and remove pods; earlier snapshots do not change."""
    before = shop()
    added = before.apply(ADDED, "pod", pod("web-6d4f8-c", uid="p5", labels={"app": "web"}))
    assert before.pod("web-6d4f8-c") is None
    assert added.pod("web-6d4f8-c") is not None
    ready = added.apply(MODIFIED, "pod", pod("web-6d4f8-b", uid="p2", labels={"app": "web"}))
    assert ready.pod("web-6d4f8-b").ready  # type: ignore[union-attr]
    gone = ready.apply(DELETED, "pod", pod("web-6d4f8-a", uid="p1"))
    assert gone.pod("web-6d4f8-a") is None
    assert len(gone.pods) == 4


def test_delete_without_uid_goes_by_name() -> None:
    """A DELETED event naming no uid removes the object of that name."""
    inv = shop().apply(DELETED, "pod", {"metadata": {"name": "debug"}})
    assert inv.pod("debug") is None
    inv = inv.apply(DELETED, "deployment", {"metadata": {"name": "web"}})
    assert inv.workload("deployment", "web") is None
    assert inv.workload("statefulset", "db") is not None


def test_delete_of_an_unseen_uid_keeps_the_newer_object_of_that_name() -> None:
    """A statefulset pod re-created under its name survives the old one's DELETED."""
    inv = shop().apply(DELETED, "pod", pod("db-0", uid="old-uid"))
    assert inv.pod("db-0") is not None


def test_same_name_in_two_kinds_are_two_workloads() -> None:
    """deployment/web and rollout/web are different targets."""
    inv = shop().apply(ADDED, "rollout", workload("web", uid="r2"))
    assert [workload_target(w) for w in inv.workloads] == [
        "deployment/web", "statefulset/db", "rollout/canary", "rollout/web"]
    inv = inv.apply(DELETED, "rollout", {"metadata": {"name": "web"}})
    assert inv.workload("deployment", "web") is not None


def test_scaled_workload() -> None:
    """A MODIFIED workload replaces the old one (ready/desired follow)."""
    inv = shop().apply(MODIFIED, "deployment", workload("web", uid="d1", replicas=5, ready=3))
    web = inv.workload("deployment", "web")
    assert web is not None and (web.ready_replicas, web.replicas) == (3, 5)
    assert len(inv.workloads) == 3


def test_other_namespace_and_bookmarks_are_ignored() -> None:
    """Events for another namespace, BOOKMARK and ERROR leave the snapshot unchanged."""
    inv = shop()
    assert inv.apply(ADDED, "pod", pod("x", uid="x", namespace="other")) is inv
    assert inv.apply("BOOKMARK", "pod", {"metadata": {"resourceVersion": "9"}}) is inv
    assert inv.apply("ERROR", "pod", {"kind": "Status", "code": 410}) is inv


def test_unknown_kind_is_a_programming_error() -> None:
    """Only pods and the three workload kinds are tracked."""
    with pytest.raises(ValueError, match="replicaset"):
        shop().apply(ADDED, "replicaset", {})


def test_to_json() -> None:
    """The --json document names targets, readiness, owner and containers."""
    doc = shop().to_json()
    json.dumps(doc)  # plain JSON types only
    assert doc["context"] == "fake" and doc["namespace"] == "shop"
    assert doc["rollouts_available"] is True
    web = doc["workloads"][0]
    assert web == {"target": "deployment/web", "kind": "deployment", "name": "web",
                   "ready": 1, "desired": 2, "selector": "app=web",
                   "pods": ["web-6d4f8-a", "web-6d4f8-b"]}
    pods = {p["name"]: p for p in doc["pods"]}
    assert pods["web-6d4f8-b"] == {
        "target": "pod/web-6d4f8-b", "name": "web-6d4f8-b", "phase": "Running",
        "ready": False, "status": "NotReady", "ip": "10.0.0.7", "node": "node-1",
        "owner": "ReplicaSet/web-6d4f8", "workloads": ["deployment/web"],
        "containers": [{"name": "app", "image": "shop:1", "ports": [8080], "ready": False}]}
    assert pods["debug"]["workloads"] == [] and pods["debug"]["owner"] is None


def test_pod_target() -> None:
    """The -t text of a pod."""
    assert pod_target(shop().pods[0]) == "pod/db-0"
