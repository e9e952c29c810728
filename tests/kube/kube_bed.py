"""The Kubernetes test bed: two network namespaces standing in for two pods of ``web``.

Each namespace runs the real test HTTP app on port 80, answering as ``remote-web-a`` /
``remote-web-b``; ``FakeCluster`` (fake_apiserver.py) is the API server the official
client talks to: it lists and watches the pods, runs the ephemeral container or Job that
waylay asks for (the real ``waylay agent`` command from the spec, with the spec's
environment, inside the pod's namespace), and relays port-forward connections into the
pod's namespace as the kubelet would. Traffic goes only to loopback and into these
namespaces.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.conftest import (
    CLEAN_ENV,
    HTTP_APP,
    PYTHON,
    WAYLAY,
    WaylayRun,
    curl,
    launch_waylay,
    pids_in_netns,
    start_server,
    stop_process,
)
from tests.kube.fake_apiserver import FakeCluster
from tests.netns import nat_rules, netns, veth_pair

NAMESPACE = "shop"
ALICE = ('{"feature": {"network": {"incoming": {"mode": "steal", '
         '"http_filter": {"header_filter": "^x-user: alice$"}}}}}')


@dataclass
class FakePod:
    name: str
    ns: str  # the network namespace standing in for the pod
    ip: str
    app_pid: int


@dataclass
class KubeBed:
    cluster: FakeCluster
    kubeconfig: Path
    pods: list[FakePod]
    local_http: int
    tmp: Path

    def env(self) -> dict[str, str]:
        return {**CLEAN_ENV, "KUBECONFIG": str(self.kubeconfig)}

    def config(self, text: str, name: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def run(self, target: str, config: Path | None, *, ports: int, wait: bool = True,
            extra: tuple[str, ...] = ()) -> WaylayRun:
        argv = [str(WAYLAY), "run", "-t", target, "-n", NAMESPACE, "--context", "fake",
                "-p", f"80:{self.local_http}", "--events", "-", *extra]
        if config is not None:
            argv += ["-f", str(config)]
        return launch_waylay(argv, ports, wait=wait, env=self.env())

    def run_to_end(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(WAYLAY), *args], capture_output=True, text=True,
                              env=self.env(), timeout=60, stdin=subprocess.DEVNULL)


def pod_manifest(name: str, ip: str, *, labels: dict[str, str],
                 containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    app = {"name": "app", "image": "shop:1",
           "ports": [{"name": "http", "containerPort": 80}],
           "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": "web-6d4f", "uid": "rs-uid",
                                          "controller": True}]},
        "spec": {"nodeName": "node-1", "containers": containers or [app]},
        "status": {"phase": "Running", "podIP": ip},
    }


@contextlib.contextmanager
def pod_netns(name: str) -> Iterator[FakePod]:
    with netns("wlk") as ns, veth_pair(ns) as (_host_ip, ns_ip):
        proc, _ = start_server([str(PYTHON), str(HTTP_APP), f"remote-{name}", "80"],
                               f"{name} http", ns=ns)
        try:
            yield FakePod(name=name, ns=ns, ip=ns_ip, app_pid=proc.pid)
        finally:
            stop_process(proc)
            for pid in pids_in_netns(ns):  # an agent a failed test left behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)


def served_by(pod: FakePod, user: str) -> str | None:
    return curl(f"http://{pod.ip}/orders", "-H", f"x-user: {user}").served_by


def agents_gone(bed: KubeBed) -> bool:
    return all("WAYLAY" not in nat_rules(p.ns) for p in bed.pods)


@contextlib.contextmanager
def kube_bed(tmp: Path) -> Iterator[KubeBed]:
    local, local_port = start_server(
        [str(PYTHON), str(HTTP_APP), "local", "0", "--host", "127.0.0.1"], "local http")
    try:
        with pod_netns("web-a") as a, pod_netns("web-b") as b, \
                FakeCluster(user="dev") as cluster:
            cluster.add_namespace(NAMESPACE)
            cluster.add_object({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": NAMESPACE},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "app",
                                                               "image": "shop:1"}]}}},
                "status": {"replicas": 2, "readyReplicas": 2},
            })
            cluster.add_object({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "cache", "namespace": NAMESPACE},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"slot": "b"}}},
                "status": {"replicas": 1, "readyReplicas": 1},
            })
            cluster.add_object({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "idle", "namespace": NAMESPACE},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "idle"}}},
            })
            for pod, labels in ((a, {"app": "web"}), (b, {"app": "web", "slot": "b"})):
                cluster.add_pod(pod_manifest(pod.name, pod.ip, labels=labels),
                                netns=pod.ns, container_pids={"app": pod.app_pid})
            # A pod with a sidecar listed first, backed by web-b's namespace.
            cluster.add_pod(pod_manifest("multi", b.ip, labels={"app": "multi"}, containers=[
                {"name": "istio-proxy", "image": "istio/proxyv2"},
                {"name": "app", "image": "shop:1"}]), netns=b.ns)
            kubeconfig = cluster.write_kubeconfig(tmp / "kubeconfig",
                                                  contexts={"fake": NAMESPACE})
            yield KubeBed(cluster=cluster, kubeconfig=Path(kubeconfig), pods=[a, b],
                          local_http=local_port, tmp=tmp)
    finally:
        stop_process(local)


