"""Kubernetes targets end to end: `waylay run -t deployment/...`, `pod/...`, errors.

Theory of operation. Two network namespaces stand in for two pods of deployment ``web``;
each runs the real test HTTP app on port 80, answering as ``remote-web-a`` /
``remote-web-b``. ``FakeCluster`` (tests/kube/fake_apiserver.py) is the API server the
official client talks to: it lists and watches the pods, runs the ephemeral container or
Job that waylay asks for (the real ``waylay agent`` command from the spec, with the spec's
environment, inside the pod's namespace), and relays port-forward connections into the
pod's namespace as the kubelet would. Everything else is real: iptables in the pod
namespaces, the agents, the sessions, curl to the pod addresses.

What only the fake makes true is never asserted: scheduling, image pulls, RBAC beyond the
explicit deny rules, and the kubelet are not modeled (see the fake's docstring). What is
asserted is waylay's side: which API calls it made, the specs it sent, and the traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.kube_agent import PodAgent, open_link
from core.kube_api import PODS, KubeApi
from core.kube_model import pod_from_api
from tests.integration.conftest import (
    CLEAN_ENV,
    HTTP_APP,
    PYTHON,
    ROOT_REASON,
    WAYLAY,
    WaylayRun,
    curl,
    finish_waylay,
    launch_waylay,
    pids_in_netns,
    poll,
    start_server,
    stop_process,
)
from tests.kube.fake_apiserver import FakeCluster
from tests.netns import nat_rules, netns, veth_pair

pytestmark = pytest.mark.skipif(ROOT_REASON is not None, reason=ROOT_REASON or "")

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


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeBed]:
    tmp = tmp_path_factory.mktemp("kube")
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


def served_by(pod: FakePod, user: str) -> str | None:
    return curl(f"http://{pod.ip}/orders", "-H", f"x-user: {user}").served_by


def agents_gone(bed: KubeBed) -> bool:
    return all("WAYLAY" not in nat_rules(p.ns) for p in bed.pods)


def test_deployment_every_replica_filtered_steal(kube: KubeBed) -> None:
    config = kube.config(ALICE, "alice.json")
    run = kube.run("deployment/web", config, ports=2)  # one subscription per pod
    try:
        subscribed = run.of_type("subscribed")
        assert sorted(e["pod"] for e in subscribed) == ["web-a", "web-b"]
        for pod in kube.pods:
            assert served_by(pod, "alice") == "local"
            assert served_by(pod, "bob") == f"remote-{pod.name}"
        events = run.wait_requests(4)
        by_pod = {(e["pod"], e["verdict"]) for e in events}
        assert by_pod == {("web-a", "stolen"), ("web-a", "passed"),
                          ("web-b", "stolen"), ("web-b", "passed")}
        assert "intercepting all 2 ready pods: web-a, web-b" in run.stderr
        assert not run.of_type("warning"), run.of_type("warning")  # every pod at once
    finally:
        code = run.stop()
    assert code == 0, run.stderr
    # The agents leave with their session, and their guards remove every rule.
    assert poll(lambda: agents_gone(kube), 15), [nat_rules(p.ns) for p in kube.pods]
    # What waylay asked of the API: one ephemeral container per pod, least privilege.
    for pod in kube.pods:
        obj = kube.cluster.get_object("v1", "pods", NAMESPACE, pod.name)
        agents = obj["spec"]["ephemeralContainers"]
        assert agents, f"no ephemeral container in {pod.name}"
        security = agents[-1]["securityContext"]
        assert security["capabilities"]["add"] == ["NET_ADMIN"]
        assert not security.get("privileged")


def test_a_new_replica_is_taken_in_while_the_session_runs(kube: KubeBed) -> None:
    run = kube.run("deployment/web", kube.config(ALICE, "scale.json"), ports=2)
    try:
        with pod_netns("web-c") as c:
            kube.cluster.add_pod(pod_manifest("web-c", c.ip, labels={"app": "web"}),
                                 netns=c.ns, container_pids={"app": c.app_pid})
            try:
                assert run.wait_for(lambda evs: any(
                    e.get("type") == "subscribed" and e.get("pod") == "web-c" for e in evs),
                    30), run.stderr
                assert "pod/web-c is ready: intercepting it too" in run.stderr
                assert served_by(c, "alice") == "local"
                assert served_by(c, "bob") == "remote-web-c"
            finally:
                assert run.stop() == 0, run.stderr
                kube.cluster.delete_object("v1", "pods", NAMESPACE, "web-c")
            assert poll(lambda: "WAYLAY" not in nat_rules(c.ns), 15)
    finally:
        finish_waylay(run)


def test_unfiltered_steal_of_a_probe_port_warns(kube: KubeBed) -> None:
    config = kube.config('{"feature": {"network": {"incoming": "steal"}}}', "steal.json")
    run = kube.run("pod/web-a", config, ports=1)
    try:
        warnings = [e["message"] for e in run.of_type("warning")]
        assert any("pod/web-a: port 80 is the readiness probe of container app" in w
                   and "kube-probe" in w for w in warnings), warnings
        assert served_by(kube.pods[0], "anyone") == "local"  # whole port, as asked
    finally:
        assert run.stop() == 0, run.stderr
    assert poll(lambda: agents_gone(kube), 15)


def test_filtered_steal_does_not_warn_about_probes(kube: KubeBed) -> None:
    run = kube.run("pod/web-b", kube.config(ALICE, "alice2.json"), ports=1)
    try:
        assert not [e for e in run.of_type("warning") if "probe" in e["message"]]
    finally:
        assert run.stop() == 0, run.stderr


def test_job_agent_enters_the_pod_and_is_deleted(kube: KubeBed) -> None:
    config = kube.config(
        '{"agent": {"ephemeral": false, "ttl": 20},' + ALICE[1:], "job.json")
    run = kube.run("pod/web-a", config, ports=1)
    try:
        jobs = kube.cluster.list_objects("batch/v1", "jobs", NAMESPACE)
        assert len(jobs) == 1
        spec = jobs[0]["spec"]["template"]["spec"]
        assert spec["hostPID"] is True and spec["nodeName"] == "node-1"
        assert served_by(kube.pods[0], "alice") == "local"
        assert served_by(kube.pods[0], "bob") == "remote-web-a"
        assert "WAYLAY" in nat_rules(kube.pods[0].ns)  # the rules are in the pod's namespace
    finally:
        assert run.stop() == 0, run.stderr
    assert poll(lambda: not kube.cluster.list_objects("batch/v1", "jobs", NAMESPACE), 15)
    assert poll(lambda: agents_gone(kube), 15)


def test_statefulset_takes_the_pods_its_selector_matches(kube: KubeBed) -> None:
    run = kube.run("statefulset/cache", kube.config(ALICE, "sts.json"), ports=1)
    try:
        assert [e["pod"] for e in run.of_type("subscribed")] == ["web-b"]
        assert served_by(kube.pods[1], "alice") == "local"
        assert served_by(kube.pods[0], "alice") == "remote-web-a"  # not part of it
    finally:
        assert run.stop() == 0, run.stderr


def test_sidecar_is_skipped_and_the_choice_is_said(kube: KubeBed) -> None:
    run = kube.run("pod/multi", kube.config(ALICE, "multi.json"), ports=1)
    try:
        assert "picked container 'app' of pod/multi (skipping sidecars istio-proxy)" \
            in run.stderr
        spec = kube.cluster.get_object("v1", "pods", NAMESPACE, "multi")
        assert spec["spec"]["ephemeralContainers"][-1]["targetContainerName"] == "app"
    finally:
        assert run.stop() == 0, run.stderr


def test_second_developer_joins_the_pods_agent(kube: KubeBed, tmp_path: Path) -> None:
    """Two sessions with different filters share one agent in the pod: each gets only
    the requests its filter matches."""
    bob_app, bob_port = start_server(
        [str(PYTHON), str(HTTP_APP), "bobs-local", "0", "--host", "127.0.0.1"], "bob app")
    before = len(kube.cluster.get_object("v1", "pods", NAMESPACE, "web-a")["spec"]
                 .get("ephemeralContainers") or [])
    alice = kube.run("pod/web-a", kube.config(ALICE, "j-alice.json"), ports=1)
    bob = None
    try:
        bob = launch_waylay(
            [str(WAYLAY), "run", "-t", "pod/web-a", "-n", NAMESPACE, "--context", "fake",
             "-p", f"80:{bob_port}", "--events", "-", "-f",
             str(kube.config(ALICE.replace("alice", "bob"), "j-bob.json"))], 1,
            env=kube.env())
        assert "joined the agent already serving it" in bob.stderr
        after = kube.cluster.get_object("v1", "pods", NAMESPACE, "web-a")["spec"][
            "ephemeralContainers"]
        assert len(after) == before + 1  # one agent for both
        assert served_by(kube.pods[0], "alice") == "local"
        assert served_by(kube.pods[0], "bob") == "bobs-local"
        assert served_by(kube.pods[0], "carol") == "remote-web-a"
        # Each session hears of its own stolen requests only (passed ones reach both).
        alice.wait_requests(2)
        bob.wait_requests(2)
        assert [e["matched"] for e in alice.requests if e["verdict"] == "stolen"] == [
            "header_filter: ^x-user: alice$"]
        assert [e["matched"] for e in bob.requests if e["verdict"] == "stolen"] == [
            "header_filter: ^x-user: bob$"]
    finally:
        if bob is not None:
            assert bob.stop() == 0, bob.stderr
        assert alice.stop() == 0, alice.stderr
        stop_process(bob_app)
    assert poll(lambda: agents_gone(kube), 15)


def test_missing_targets_exit_3(kube: KubeBed) -> None:
    for target, message in (("pod/nope", "pod/nope not found"),
                            ("deployment/nope", "deployment/nope not found"),
                            ("statefulset/db", "statefulset/db not found"),
                            ("deployment/idle", "deployment/idle has no ready pod")):
        done = kube.run_to_end("run", "-t", target, "-n", NAMESPACE, "--context", "fake",
                               "-p", "80")
        assert done.returncode == 3, done.stderr
        assert message in done.stderr


def test_refused_permission_exit_4_names_it(kube: KubeBed) -> None:
    kube.cluster.deny("patch", "pods/ephemeralcontainers", namespace=NAMESPACE)
    try:
        done = kube.run_to_end("run", "-t", "pod/web-a", "-n", NAMESPACE, "--context",
                               "fake", "-p", "80", "--mode", "steal")
    finally:
        kube.cluster.allow("patch", "pods/ephemeralcontainers", namespace=NAMESPACE)
    assert done.returncode == 4, done.stderr
    assert "refused to patch pods/ephemeralcontainers in namespace shop" in done.stderr
    assert "forbidden" in done.stderr


def test_refused_port_forward_exit_4(kube: KubeBed) -> None:
    kube.cluster.deny("create", "pods/portforward", namespace=NAMESPACE)
    try:
        done = kube.run_to_end("run", "-t", "pod/web-b", "-n", NAMESPACE, "--context",
                               "fake", "-p", "80", "-f", str(kube.config(ALICE, "a3.json")))
    finally:
        kube.cluster.allow("create", "pods/portforward", namespace=NAMESPACE)
    assert done.returncode == 4, done.stderr
    assert "pods/portforward" in done.stderr


def test_events_stream_is_json_lines(kube: KubeBed) -> None:
    """Every stdout line of a Kubernetes run is one JSON event (progress goes to stderr)."""
    run = kube.run("pod/web-b", kube.config(ALICE, "a4.json"), ports=1)
    try:
        served_by(kube.pods[1], "alice")
        run.wait_requests(1)
    finally:
        run.stop()
        finish_waylay(run)
    assert not run.other_stdout
    assert all(isinstance(json.dumps(e), str) and "type" in e for e in run.events)


def test_port_forwards_in_parallel_with_other_calls(kube: KubeBed) -> None:
    """The client's portforward swaps its ApiClient's transport while connecting; waylay
    gives each port-forward a client of its own, so many at once, with list calls in
    between (one agent per replica, set up concurrently), all work."""
    api = KubeApi(context="fake", config_file=str(kube.kubeconfig))
    pod = pod_from_api(kube.cluster.get_object("v1", "pods", NAMESPACE, "web-a"))
    placed = PodAgent(pod=pod, container="app", namespace=NAMESPACE, agent_pod="web-a",
                      agent_container="app", token="", port=80)  # straight to the app

    async def fetch() -> bytes:
        link = await open_link(api, placed)
        link.writer.write(b"GET /pf HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(link.reader.read(), 20)
        link.writer.close()
        return data

    async def main() -> list[object]:
        lists = [asyncio.to_thread(api.list, PODS, NAMESPACE) for _ in range(8)]
        return await asyncio.gather(*(fetch() for _ in range(8)), *lists)

    results = asyncio.run(main())
    answers = [r for r in results if isinstance(r, bytes)]
    assert len(answers) == 8
    assert all(b"x-served-by: remote-web-a" in a.lower() for a in answers), answers
