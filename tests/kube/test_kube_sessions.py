"""Kubernetes targets end to end: `waylay run -t deployment/...`, `pod/...`, errors.

The cluster is ``kube_bed.py``'s: real namespaces standing in for pods, the fake API
server in front. Everything but the API server is real: iptables in the pod namespaces,
the agents, port-forward into the namespaces, the sessions, curl to the pod addresses.

What only the fake makes true is never asserted: scheduling, image pulls, RBAC beyond the
explicit deny rules, and the kubelet are not modeled (see the fake's docstring). What is
asserted is waylay's side: which API calls it made, the specs it sent, and the traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from tests.integration.conftest import (
    HTTP_APP,
    PYTHON,
    ROOT_REASON,
    WAYLAY,
    curl,
    finish_waylay,
    launch_waylay,
    poll,
    start_server,
    stop_process,
)
from tests.kube.kube_bed import (
    ALICE,
    NAMESPACE,
    KubeBed,
    agents_gone,
    pod_manifest,
    pod_netns,
    served_by,
)
from tests.netns import nat_rules, ns_run
from waylay.core.kube.agent import PodAgent, open_link
from waylay.core.kube.api import PODS, KubeApi
from waylay.core.kube.model import pod_from_api

pytestmark = pytest.mark.skipif(ROOT_REASON is not None, reason=ROOT_REASON or "")


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
        for pod in kube.pods:  # the control port is on the pod's loopback, nowhere else
            listening = ns_run(pod.ns, ["ss", "-Hltn"]).stdout.split("\n")
            control = [line.split()[3] for line in listening
                       if line and 47010 <= int(line.split()[3].rpartition(":")[2]) < 48010]
            assert control and all(a.startswith("127.0.0.1:") for a in control), listening
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
    """agent.ephemeral false: a Job in agent.namespace, on the pod's node, with hostPID,
    whose agent finds the app's process by container ID and enters its namespace."""
    kube.cluster.add_namespace("tools")
    config = kube.config(
        '{"agent": {"ephemeral": false, "ttl": 20, "namespace": "tools"},' + ALICE[1:],
        "job.json")
    run = kube.run("pod/web-a", config, ports=1)
    try:
        assert not kube.cluster.list_objects("batch/v1", "jobs", NAMESPACE)
        jobs = kube.cluster.list_objects("batch/v1", "jobs", "tools")
        assert len(jobs) == 1
        spec = jobs[0]["spec"]["template"]["spec"]
        assert spec["hostPID"] is True and spec["nodeName"] == "node-1"
        assert served_by(kube.pods[0], "alice") == "local"
        assert served_by(kube.pods[0], "bob") == "remote-web-a"
        assert "WAYLAY" in nat_rules(kube.pods[0].ns)  # the rules are in the pod's namespace
    finally:
        assert run.stop() == 0, run.stderr
    assert poll(lambda: not kube.cluster.list_objects("batch/v1", "jobs", "tools"), 15)
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
    assert all("type" in e for e in run.events)
    assert all(e["pod"] == "web-b" for e in run.requests)


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


def test_big_bodies_cross_port_forward_intact(kube: KubeBed) -> None:
    """A stolen 8 MB upload and 8 MB download travel the wire through port-forward."""
    run = kube.run("pod/web-b", kube.config(ALICE, "big.json"), ports=1)
    try:
        body = os.urandom(8 * 1024 * 1024)
        upload = kube.tmp / "upload.bin"
        upload.write_bytes(body)
        pod = kube.pods[1]
        sent = curl(f"http://{pod.ip}/upload", "-H", "x-user: alice",
                    "--data-binary", f"@{upload}")
        assert sent.served_by == "local"
        assert sent.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
        got = curl(f"http://{pod.ip}/bytes/{8 * 1024 * 1024}", "-H", "x-user: alice")
        assert got.served_by == "local" and len(got.body) == 8 * 1024 * 1024
        assert got.headers["x-body-sha256"] == hashlib.sha256(got.body).hexdigest()
    finally:
        assert run.stop() == 0, run.stderr
