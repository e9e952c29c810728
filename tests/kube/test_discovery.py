"""Kubernetes discovery end to end: `waylay targets` and the namespace watcher, through the
official client, against the fake API server on loopback (no root needed: no pod here
runs anything, they are only listed and watched)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kube.fake_apiserver import FakeCluster
from tests.kube.shop_manifests import NS, fill, pod, workload
from waylay.core.kube.api import KubeApi
from waylay.core.kube.discovery import NamespaceWatcher, namespaces, snapshot
from waylay.core.kube.inventory import Inventory

WAYLAY = str(Path(sys.executable).with_name("waylay"))
WAIT_S = 15.0


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster(user="dev") as c:
        fill(c)
        yield c


@pytest.fixture
def kubeconfig(cluster: FakeCluster, tmp_path: Path) -> Path:
    return cluster.write_kubeconfig(tmp_path / "kubeconfig", contexts={"fake": "default"})


def waylay(*args: str, kubeconfig: Path | str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([WAYLAY, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def until(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- waylay targets ------------------------------------------------------------------


def test_targets_json_lists_workloads_and_pods(kubeconfig: Path) -> None:
    """--json: workloads with ready/desired and their pods; pods with owner, readiness,
    IP, node and containers; no rollouts where the cluster has no Rollout CRD."""
    done = waylay("targets", "--context", "fake", "-n", NS, "--json", kubeconfig=kubeconfig)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert isinstance(doc["local"], list)
    kube = doc["kubernetes"]
    assert (kube["context"], kube["namespace"]) == ("fake", NS)
    assert kube["rollouts_available"] is False
    workloads = {w["target"]: w for w in kube["workloads"]}
    assert set(workloads) == {"deployment/web", "statefulset/db"}
    assert (workloads["deployment/web"]["ready"], workloads["deployment/web"]["desired"]) \
        == (1, 2)
    assert workloads["deployment/web"]["pods"] == ["web-6d4f8-aaaaa", "web-6d4f8-bbbbb"]
    pods = {p["target"]: p for p in kube["pods"]}
    assert set(pods) == {"pod/web-6d4f8-aaaaa", "pod/web-6d4f8-bbbbb", "pod/db-0",
                         "pod/debug"}
    web_a, web_b = pods["pod/web-6d4f8-aaaaa"], pods["pod/web-6d4f8-bbbbb"]
    assert web_a["owner"] == "ReplicaSet/web-6d4f8"
    assert web_a["workloads"] == ["deployment/web"]
    assert [c["name"] for c in web_a["containers"]] == ["app", "istio-proxy"]
    assert (web_a["ready"], web_a["status"], web_a["ip"], web_a["node"]) == \
        (True, "Ready", "10.1.0.7", "node-1")
    assert (web_b["ready"], web_b["status"]) == (False, "NotReady")
    assert pods["pod/db-0"]["owner"] == "StatefulSet/db"
    assert pods["pod/debug"]["owner"] is None and pods["pod/debug"]["workloads"] == []
    assert "kubernetes_error" not in doc


def test_targets_text_lines_start_with_the_target(cluster: FakeCluster,
                                                  tmp_path: Path) -> None:
    """Without flags: the current context and its namespace; each line starts with -t."""
    config = cluster.write_kubeconfig(tmp_path / "kc", contexts={"other": "default",
                                                                  "fake": NS},
                                      current="fake")
    done = waylay("targets", kubeconfig=config)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("context fake, namespace shop" in line for line in lines)
    web = next(line for line in lines if line.startswith("deployment/web "))
    assert "1/2" in web and "web-6d4f8-aaaaa" in web
    pod_line = next(line for line in lines if line.startswith("pod/web-6d4f8-bbbbb "))
    assert "NotReady" in pod_line and "10.1.0.8" in pod_line and "ReplicaSet/web-6d4f8" \
        in pod_line
    assert any(line.startswith("statefulset/db ") for line in lines)
    assert any(line.startswith("pod/debug ") for line in lines)


def test_rollouts_are_listed_when_the_crd_exists(tmp_path: Path) -> None:
    """An Argo rollout is a workload, where the cluster serves argoproj.io."""
    with FakeCluster(user="dev", rollouts=True) as cluster:
        fill(cluster)
        cluster.add_object(workload("Rollout", "canary", replicas=1, ready=1,
                                    api_version="argoproj.io/v1alpha1"))
        cluster.add_object(pod("canary-7f9c-zzzzz", labels={"app": "canary"},
                               owner=("ReplicaSet", "canary-7f9c"), ip="10.1.0.11"))
        config = cluster.write_kubeconfig(tmp_path / "kc")
        done = waylay("targets", "-n", NS, "--json", kubeconfig=config)
    assert done.returncode == 0, done.stderr
    kube = json.loads(done.stdout)["kubernetes"]
    assert kube["rollouts_available"] is True
    rollout = next(w for w in kube["workloads"] if w["kind"] == "rollout")
    assert rollout["target"] == "rollout/canary" and rollout["pods"] == ["canary-7f9c-zzzzz"]


def test_a_refused_list_exits_4_naming_verb_and_resource(cluster: FakeCluster,
                                                         kubeconfig: Path) -> None:
    """403 on list pods: exit 4, and the message says what to ask for."""
    cluster.deny("list", "pods", namespace=NS)
    done = waylay("targets", "--context", "fake", "-n", NS, kubeconfig=kubeconfig)
    assert done.returncode == 4, done.stderr
    assert "list" in done.stderr and "pods" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_cluster_does_not_hide_local_targets(tmp_path: Path) -> None:
    """No flags: a note and exit 0 with kubernetes null; with -n: the error's exit code."""
    with FakeCluster(user="dev") as cluster:
        config = cluster.write_kubeconfig(tmp_path / "kc")
    # The cluster is gone: its port on 127.0.0.1 refuses connections.
    done = waylay("targets", "--json", kubeconfig=config)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["kubernetes"] is None and isinstance(doc["local"], list)
    assert "cannot reach the Kubernetes API" in doc["kubernetes_error"]
    done = waylay("targets", "-n", NS, kubeconfig=config)
    assert done.returncode == 3
    assert "cannot reach the Kubernetes API" in done.stderr


def test_without_a_kubeconfig_local_targets_only(tmp_path: Path) -> None:
    """No kubeconfig: one short note on stderr, kubernetes null, exit 0."""
    done = waylay("targets", "--json", kubeconfig=tmp_path / "missing")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kubernetes"] is None
    assert "no Kubernetes config" in done.stderr and len(done.stderr.splitlines()) == 1


# --- the library side ----------------------------------------------------------------


def test_snapshot_and_namespaces(kubeconfig: Path) -> None:
    """One list of each kind; the context's namespaces."""
    api = KubeApi(context="fake", config_file=str(kubeconfig))
    assert {"default", "kube-system", NS} <= set(namespaces(api))
    inv = snapshot(api, NS)
    assert [p.name for p in inv.other_pods] == ["debug"]


class Seen:
    def __init__(self) -> None:
        self.inventories: list[Inventory] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def change(self, inventory: Inventory) -> None:
        with self.lock:
            self.inventories.append(inventory)

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    @property
    def last(self) -> Inventory | None:
        with self.lock:
            return self.inventories[-1] if self.inventories else None


def test_watcher_follows_pods_and_scaling(cluster: FakeCluster, kubeconfig: Path) -> None:
    """A pod added and deleted, and a deployment scaled, reach on_change; stop is prompt."""
    api = KubeApi(context="fake", config_file=str(kubeconfig))
    seen = Seen()
    watcher = NamespaceWatcher(api, NS, on_change=seen.change, on_error=seen.error)
    watcher.start()
    try:
        until(lambda: seen.last is not None, "the first inventory")
        first = seen.last
        assert first is not None and len(first.pods) == 4 and len(first.workloads) == 2
        # Watches are open once the first inventory is out; the events follow them.
        cluster.add_object(pod("web-6d4f8-ccccc", labels={"app": "web"},
                               owner=("ReplicaSet", "web-6d4f8"), ip="10.1.0.12"))
        until(lambda: seen.last.pod("web-6d4f8-ccccc") is not None,  # type: ignore[union-attr]
              "the added pod")
        web = seen.last.workload("deployment", "web")  # type: ignore[union-attr]
        assert web is not None
        assert "web-6d4f8-ccccc" in [p.name for p in seen.last.pods_of(web)]  # type: ignore[union-attr]
        cluster.delete_object("v1", "pods", NS, "debug")
        until(lambda: seen.last.pod("debug") is None, "the deleted pod")  # type: ignore[union-attr]
        scaled = copy.deepcopy(workload("Deployment", "web", replicas=3, ready=3))
        cluster.update_object(scaled)

        def scaled_to_3() -> bool:
            inv = seen.last
            web = inv.workload("deployment", "web") if inv else None
            return web is not None and (web.replicas, web.ready_replicas) == (3, 3)

        until(scaled_to_3, "the scaled deployment")
        assert seen.errors == []
    finally:
        started = time.monotonic()
        watcher.stop()
        stopped_in = time.monotonic() - started
    assert stopped_in < 1.5


def test_watcher_reports_a_refusal(cluster: FakeCluster, kubeconfig: Path) -> None:
    """A 403 on list pods reaches on_error naming the verb and resource."""
    cluster.deny("list", "pods", namespace=NS)
    api = KubeApi(context="fake", config_file=str(kubeconfig))
    seen = Seen()
    watcher = NamespaceWatcher(api, NS, on_change=seen.change, on_error=seen.error)
    watcher.start()
    try:
        until(lambda: seen.errors, "the error")
        assert "list" in seen.errors[0] and "pods" in seen.errors[0]
        # The other kinds still arrive.
        until(lambda: seen.last is not None, "an inventory without pods")
        assert seen.last is not None and len(seen.last.workloads) == 2
    finally:
        watcher.stop()
