"""The fake Kubernetes API server, driven only through the official ``kubernetes`` client.

Each test starts a ``FakeCluster``, writes a kubeconfig, and talks to it exactly as waylay
would (``new_client_from_config``, ``CoreV1Api``, ``Watch``, ``stream.portforward``).
Pods are backed by network namespaces the test creates; traffic goes only to loopback and
to those namespaces; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, stream, watch
from kubernetes.client.rest import ApiException

from tests.integration.conftest import (
    PYTHON,
    TCP_APP,
    pid_alive,
    poll,
    start_server,
    stop_process,
)
from tests.kube.fake_apiserver import FakeCluster
from tests.netns import have_root_netns, netns, ns_popen, veth_pair

ROOT_REASON = have_root_netns()
pytestmark = pytest.mark.skipif(ROOT_REASON is not None, reason=ROOT_REASON or "")

WAIT_S = 20.0
NS = "shop"


def pod_manifest(name: str, labels: dict[str, str] | None = None, ip: str | None = None,
                 node: str = "node-1") -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "shop/web:1.2"}]}}
    if ip:
        pod["status"] = {"podIP": ip}
    return pod


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster(user="dev") as c:
        c.add_namespace(NS)
        yield c


def api_client(cluster: FakeCluster, tmp_path: Path, context: str | None = None
               ) -> client.ApiClient:
    path = cluster.write_kubeconfig(tmp_path / "kubeconfig",
                                    contexts={"fake": "default", "shop": NS}, current="fake")
    return config.new_client_from_config(config_file=str(path), context=context)


@pytest.fixture
def core(cluster: FakeCluster, tmp_path: Path) -> client.CoreV1Api:
    return client.CoreV1Api(api_client(cluster, tmp_path))


@pytest.fixture
def pod_ns() -> Iterator[tuple[str, str, str]]:
    """A network namespace with a veth link: (netns name, pod IP, host IP)."""
    with netns("wlkube") as ns, veth_pair(ns) as (host_ip, ns_ip):
        yield ns, ns_ip, host_ip


def status_body(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert isinstance(body, dict)
    return body


# --- discovery, auth, config -------------------------------------------------------------


def test_kubeconfig_contexts_select_namespace(cluster: FakeCluster, tmp_path: Path) -> None:
    """The kubeconfig lists the contexts with their namespaces and the current one."""
    path = cluster.write_kubeconfig(tmp_path / "kc", contexts={"a": NS, "b": "default"},
                                    current="b")
    contexts, current = config.list_kube_config_contexts(config_file=str(path))
    assert {c["name"]: c["context"]["namespace"] for c in contexts} == {"a": NS,
                                                                        "b": "default"}
    assert current["name"] == "b"
    version = client.VersionApi(config.new_client_from_config(str(path))).get_code()
    assert version.major == "1"


def test_wrong_token_is_401(cluster: FakeCluster) -> None:
    """A request without the cluster's bearer token gets a 401 Status."""
    conf = client.Configuration(host=cluster.url)
    conf.api_key = {"BearerToken": "not-the-token"}
    conf.api_key_prefix = {"BearerToken": "Bearer"}
    with pytest.raises(ApiException) as info:
        client.CoreV1Api(client.ApiClient(conf)).list_namespace()
    assert info.value.status == 401
    assert status_body(info.value)["reason"] == "Unauthorized"


def test_discovery_lists_groups(cluster: FakeCluster, tmp_path: Path) -> None:
    """/apis lists apps and batch; /api/v1 lists pods and their subresources."""
    api = api_client(cluster, tmp_path)
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert groups == {"apps", "batch"}
    names = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"pods", "pods/ephemeralcontainers", "pods/portforward", "namespaces"} <= names


def test_rollouts_only_when_enabled(tmp_path: Path) -> None:
    """argoproj.io/v1alpha1 is 404 unless the cluster was made with rollouts=True."""
    with FakeCluster() as off:
        custom = client.CustomObjectsApi(api_client(off, tmp_path))
        with pytest.raises(ApiException) as info:
            custom.get_api_resources("argoproj.io", "v1alpha1")
        assert info.value.status == 404
    with FakeCluster(rollouts=True) as on:
        on.add_object({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                       "metadata": {"name": "web", "namespace": NS},
                       "spec": {"selector": {"matchLabels": {"app": "web"}}}})
        custom = client.CustomObjectsApi(api_client(on, tmp_path))
        listed = custom.list_namespaced_custom_object("argoproj.io", "v1alpha1", NS,
                                                      "rollouts")
        assert [r["metadata"]["name"] for r in listed["items"]] == ["web"]
        assert listed["items"][0]["kind"] == "Rollout"  # custom resources keep their kind


# --- reading ---------------------------------------------------------------------------


def test_list_pods_with_selectors(cluster: FakeCluster, core: client.CoreV1Api) -> None:
    """Label and field selectors filter lists; unsupported field labels are a 400."""
    cluster.add_object(pod_manifest("web-1", {"app": "web", "tier": "front"}))
    cluster.add_object(pod_manifest("web-2", {"app": "web"}, node="node-2"))
    cluster.add_object(pod_manifest("db-1", {"app": "db"}))

    def names(**kw: Any) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod(NS, **kw).items]

    assert names(label_selector="app=web") == ["web-1", "web-2"]
    assert ("GET", f"/api/v1/namespaces/{NS}/pods", {"labelSelector": "app=web"}) \
        in cluster.requests
    assert names(label_selector="app=web,!tier") == ["web-2"]
    assert names(label_selector="app in (db,cache)") == ["db-1"]
    assert names(label_selector="app!=web") == ["db-1"]
    assert names(field_selector="spec.nodeName=node-2") == ["web-2"]
    everywhere = core.list_pod_for_all_namespaces(label_selector="app=web")
    assert len(everywhere.items) == 2 and int(everywhere.metadata.resource_version) > 0
    with pytest.raises(ApiException) as info:
        core.list_namespaced_pod(NS, field_selector="spec.restartPolicy=Never")
    assert info.value.status == 400
    assert "field label not supported" in status_body(info.value)["message"]


def test_missing_pod_is_404(core: client.CoreV1Api) -> None:
    """Reading a pod that does not exist gives the real NotFound Status."""
    with pytest.raises(ApiException) as info:
        core.read_namespaced_pod("nope", NS)
    assert info.value.status == 404
    assert status_body(info.value)["message"] == 'pods "nope" not found'


def test_deny_rule_is_403_with_real_message(cluster: FakeCluster,
                                            core: client.CoreV1Api) -> None:
    """A deny rule refuses the call with the API server's Forbidden Status."""
    cluster.add_object(pod_manifest("web-1"))
    cluster.deny("patch", "pods/ephemeralcontainers", namespace=NS)
    body = {"spec": {"ephemeralContainers": [{"name": "dbg", "image": "busybox"}]}}
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_pod_ephemeralcontainers("web-1", NS, body)
    assert info.value.status == 403
    assert status_body(info.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "web-1" is forbidden: User "dev" cannot patch resource '
                   '"pods/ephemeralcontainers" in API group "" in the namespace "shop"',
        "reason": "Forbidden", "details": {"name": "web-1", "kind": "pods"}, "code": 403}
    core.read_namespaced_pod("web-1", NS)  # other verbs still work
    cluster.allow("patch", "pods/ephemeralcontainers", namespace=NS)
    core.patch_namespaced_pod_ephemeralcontainers("web-1", NS, body)


# --- watch -----------------------------------------------------------------------------


def test_watch_sees_added_then_modified(cluster: FakeCluster, core: client.CoreV1Api) -> None:
    """A watch starts with ADDED for existing pods, then streams MODIFIED and DELETED."""
    cluster.add_object(pod_manifest("web-1", {"app": "web"}))
    seen: list[tuple[str, str, str | None]] = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, NS, label_selector="app=web",
                          timeout_seconds=int(WAIT_S)):
        pod = event["object"]
        seen.append((event["type"], pod.metadata.name, (pod.metadata.labels or {}).get("v")))
        if len(seen) == 1:
            changed = cluster.get_object("v1", "pods", NS, "web-1")
            changed["metadata"]["labels"]["v"] = "2"
            cluster.update_object(changed)
        elif len(seen) == 2:
            cluster.delete_object("v1", "pods", NS, "web-1")
        else:
            w.stop()
    assert seen == [("ADDED", "web-1", None), ("MODIFIED", "web-1", "2"),
                    ("DELETED", "web-1", "2")]


def test_watch_selector_exit_is_deleted(cluster: FakeCluster, core: client.CoreV1Api) -> None:
    """A pod whose labels stop matching a watch's selector arrives as DELETED."""
    cluster.add_object(pod_manifest("web-1", {"app": "web"}))
    rv = core.list_namespaced_pod(NS).metadata.resource_version
    changed = cluster.get_object("v1", "pods", NS, "web-1")
    changed["metadata"]["labels"] = {"app": "other"}
    cluster.update_object(changed)
    events = [(e["type"], e["object"].metadata.labels)
              for e in watch.Watch().stream(core.list_namespaced_pod, NS,
                                            label_selector="app=web", resource_version=rv,
                                            timeout_seconds=1)]
    assert events == [("DELETED", {"app": "other"})]


def test_watch_resumes_and_expires(cluster: FakeCluster, core: client.CoreV1Api) -> None:
    """A watch from a resourceVersion replays what followed; a forgotten one is 410."""
    cluster.add_object(pod_manifest("web-1"))
    rv = core.list_namespaced_pod(NS).metadata.resource_version
    changed = cluster.get_object("v1", "pods", NS, "web-1")
    changed["metadata"]["labels"] = {"v": "2"}
    cluster.update_object(changed)
    w = watch.Watch()
    events = [(e["type"], e["object"].metadata.labels)
              for e in w.stream(core.list_namespaced_pod, NS, resource_version=rv,
                                timeout_seconds=1)]
    assert events == [("MODIFIED", {"v": "2"})]
    for i in range(4100):  # more writes than the fake's watch history keeps
        changed["metadata"]["labels"] = {"v": str(i)}
        cluster.update_object(changed)
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_namespaced_pod, NS, resource_version=rv,
                                  timeout_seconds=1))
    assert info.value.status == 410


# --- ephemeral containers --------------------------------------------------------------

PROBE = """
import os, sys
print("ENV", os.environ["PROBE_VALUE"])
print("IFACES", " ".join(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
print("PATH0", os.environ["PATH"].split(":")[0])
sys.stdout.flush()
"""


def test_ephemeral_container_runs_in_pod_netns(cluster: FakeCluster, core: client.CoreV1Api,
                                               pod_ns: tuple[str, str, str]) -> None:
    """A patched-in ephemeral container runs in the pod's namespace, goes to terminated."""
    ns, pod_ip, _ = pod_ns
    cluster.add_pod(pod_manifest("web-1", ip=pod_ip), netns=ns)
    pod = core.read_namespaced_pod("web-1", NS)
    assert pod.status.phase == "Running" and pod.status.pod_ip == pod_ip
    assert pod.status.container_statuses[0].container_id.startswith("containerd://")
    rv = pod.metadata.resource_version
    container = {"name": "dbg", "image": "waylay/agent:1", "command": [str(PYTHON), "-c"],
                 "args": [PROBE], "env": [{"name": "PROBE_VALUE", "value": "42"}],
                 "securityContext": {"privileged": True,
                                     "capabilities": {"add": ["NET_ADMIN"]}}}
    patched = core.patch_namespaced_pod_ephemeralcontainers(
        "web-1", NS, {"spec": {"ephemeralContainers": [container]}})
    assert patched.spec.ephemeral_containers[0].security_context.privileged is True
    states = []
    for event in watch.Watch().stream(core.list_namespaced_pod, NS, resource_version=rv,
                                      timeout_seconds=int(WAIT_S)):
        statuses = event["object"].status.ephemeral_container_statuses or []
        state = statuses[0].state if statuses else None
        if state is not None:
            states.append("waiting" if state.waiting else "running" if state.running
                          else "terminated")
        if state is not None and state.terminated:
            assert state.terminated.exit_code == 0, core.read_namespaced_pod_log(
                "web-1", NS, container="dbg")
            assert state.terminated.reason == "Completed"
            break
    assert states == ["waiting", "running", "terminated"]
    log = core.read_namespaced_pod_log("web-1", NS, container="dbg")
    lines = dict(line.split(" ", 1) for line in log.splitlines())
    assert lines["ENV"] == "42"
    veth_in_pod = [i for i in lines["IFACES"].split() if i.startswith("wl")]
    assert veth_in_pod and veth_in_pod[0].endswith("n")  # the pod end of our veth pair
    assert lines["PATH0"] == os.path.dirname(str(PYTHON))


def test_ephemeral_container_may_not_change(cluster: FakeCluster, core: client.CoreV1Api,
                                            pod_ns: tuple[str, str, str]) -> None:
    """Re-sending an ephemeral container is a no-op; changing it is 422 Invalid."""
    cluster.add_pod(pod_manifest("web-1"), netns=pod_ns[0])
    spec = {"name": "dbg", "image": "busybox:1", "command": ["true"]}
    core.patch_namespaced_pod_ephemeralcontainers(
        "web-1", NS, {"spec": {"ephemeralContainers": [spec]}})
    again = core.patch_namespaced_pod_ephemeralcontainers(
        "web-1", NS, {"spec": {"ephemeralContainers": [spec]}})
    assert [c.name for c in again.spec.ephemeral_containers] == ["dbg"]
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_pod_ephemeralcontainers(
            "web-1", NS, {"spec": {"ephemeralContainers": [{**spec, "image": "busybox:2"}]}})
    assert info.value.status == 422
    assert status_body(info.value)["message"] == (
        'Pod "web-1" is invalid: spec.ephemeralContainers: Forbidden: existing ephemeral '
        'containers "dbg" may not be changed')
    json_patch = [{"op": "add", "path": "/spec/ephemeralContainers/-",
                   "value": {"name": "dbg2", "image": "busybox:1", "command": ["true"]}}]
    added = core.patch_namespaced_pod_ephemeralcontainers("web-1", NS, json_patch)
    assert [c.name for c in added.spec.ephemeral_containers] == ["dbg", "dbg2"]
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_pod_ephemeralcontainers(
            "web-1", NS, {"spec": {"ephemeralContainers": []}},
            _content_type="application/apply-patch+yaml")
    assert info.value.status == 415


# --- port-forward ----------------------------------------------------------------------


def _recv_exactly(sock: Any, n: int) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + WAIT_S
    while len(data) < n and time.monotonic() < deadline:
        chunk = sock.recv(min(65536, n - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_portforward_relays_a_megabyte(cluster: FakeCluster, core: client.CoreV1Api,
                                       pod_ns: tuple[str, str, str]) -> None:
    """Port-forward reaches a server on the pod's loopback; 1 MB goes both ways intact."""
    ns = pod_ns[0]
    echo, port = start_server([str(PYTHON), str(TCP_APP), "echo", "remote", "7000",
                               "--host", "127.0.0.1"], "echo in pod", ns=ns)
    try:
        cluster.add_pod(pod_manifest("web-1"), netns=ns)
        pf = stream.portforward(core.connect_get_namespaced_pod_portforward, "web-1", NS,
                                ports=str(port))
        sock = pf.socket(port)
        sock.settimeout(WAIT_S)
        payload = os.urandom(1 << 20)
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        expected = b"remote:" + payload
        assert _recv_exactly(sock, len(expected)) == expected
        sender.join(WAIT_S)
        assert pf.error(port) is None
        sock.close()
    finally:
        stop_process(echo)


def test_portforward_refused_port_reports_error(cluster: FakeCluster,
                                                core: client.CoreV1Api,
                                                pod_ns: tuple[str, str, str]) -> None:
    """Nothing listening: the error channel says so as the kubelet does, and EOF follows."""
    cluster.add_pod(pod_manifest("web-1"), netns=pod_ns[0])
    pf = stream.portforward(core.connect_get_namespaced_pod_portforward, "web-1", NS,
                            ports="7999")
    sock = pf.socket(7999)
    sock.settimeout(WAIT_S)
    assert sock.recv(10) == b""
    error = poll(lambda: pf.error(7999), WAIT_S)
    assert error.startswith("error forwarding port 7999 to pod web-1, uid ")
    assert "connect: connection refused" in error


def test_portforward_denied_is_403(cluster: FakeCluster, core: client.CoreV1Api,
                                   pod_ns: tuple[str, str, str]) -> None:
    """Without create on pods/portforward the upgrade is refused with an HTTP 403."""
    cluster.add_pod(pod_manifest("web-1"), netns=pod_ns[0])
    cluster.deny("create", "pods/portforward", namespace=NS)
    with pytest.raises(ApiException) as info:
        stream.portforward(core.connect_get_namespaced_pod_portforward, "web-1", NS,
                           ports="80")
    # The client turns a failed WebSocket handshake into status 0 with the HTTP status
    # and body in the reason.
    assert "403" in str(info.value.reason) and "cannot create resource" in str(
        info.value.reason)


# --- cgroups ---------------------------------------------------------------------------


def test_container_pid_sits_in_cgroup_named_after_container(
        pod_ns: tuple[str, str, str], tmp_path: Path) -> None:
    """A pid given for a container is found by its container ID in /proc/PID/cgroup."""
    sleeper = ns_popen(pod_ns[0], ["sleep", "60"])
    try:
        with FakeCluster() as cluster:
            cluster.add_namespace(NS)
            cluster.add_pod(pod_manifest("web-1"), netns=pod_ns[0],
                            container_pids={"app": sleeper.pid})
            pod = client.CoreV1Api(api_client(cluster, tmp_path)).read_namespaced_pod(
                "web-1", NS)
            cid = pod.status.container_statuses[0].container_id.removeprefix(
                "containerd://")
            assert cid in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        assert cid not in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        assert pid_alive(sleeper.pid)  # the test's own process is never signalled
    finally:
        stop_process(sleeper)


# --- jobs ------------------------------------------------------------------------------


def job_manifest(name: str, script: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "hostPID": True, "nodeName": "node-1",
                "containers": [{"name": "agent", "image": "waylay/agent:1",
                                "command": [str(PYTHON), "-c", script]}]}}}}


def test_job_runs_its_pod_and_delete_stops_it(cluster: FakeCluster, tmp_path: Path) -> None:
    """A created Job gets a running pod in a fresh namespace; deleting the Job stops it."""
    api = api_client(cluster, tmp_path)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    script = ("import socket\ns = socket.create_server(('127.0.0.1', 7300))\n"
              "print('agent up', flush=True)\n"
              "while True:\n c, _ = s.accept(); c.sendall(b'pong:' + c.recv(100)); c.close()")
    batch.create_namespaced_job(NS, job_manifest("agent", script))
    with pytest.raises(ApiException) as info:
        batch.create_namespaced_job(NS, job_manifest("agent", script))
    assert info.value.status == 409

    def running_pod() -> Any:
        pods = core.list_namespaced_pod(NS, label_selector="job-name=agent").items
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    pod = poll(running_pod, WAIT_S)
    assert pod is not None
    name = pod.metadata.name
    assert name.startswith("agent-") and len(name) == len("agent-") + 5
    assert pod.metadata.owner_references[0].kind == "Job"
    assert pod.spec.host_pid is True and pod.spec.node_name == "node-1"
    job_ns = cluster.pod_netns(NS, name)
    assert job_ns is not None and job_ns.startswith("wlfake-job-")
    assert poll(lambda: "agent up" in core.read_namespaced_pod_log(name, NS), WAIT_S)
    proc = cluster.container_process(NS, name, "agent")
    assert proc is not None
    assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == os.stat(f"/run/netns/{job_ns}").st_ino
    pf = stream.portforward(core.connect_get_namespaced_pod_portforward, name, NS,
                            ports="7300")
    sock = pf.socket(7300)
    sock.settimeout(WAIT_S)
    sock.sendall(b"ping")
    assert _recv_exactly(sock, 100) == b"pong:ping"  # then EOF: the server closed
    sock.close()

    batch.delete_namespaced_job("agent", NS, propagation_policy="Background")
    assert poll(lambda: not core.list_namespaced_pod(NS).items, WAIT_S)
    assert not pid_alive(proc.pid)
    assert not Path(f"/run/netns/{job_ns}").exists()


def test_job_that_exits_succeeds(cluster: FakeCluster, tmp_path: Path) -> None:
    """A Job whose command exits 0 ends with its pod Succeeded and the Job complete."""
    batch = client.BatchV1Api(api_client(cluster, tmp_path))
    batch.create_namespaced_job(NS, job_manifest("once", "print('done')"))
    job = poll(lambda: (j := batch.read_namespaced_job("once", NS)).status.succeeded and j,
               WAIT_S)
    assert job and job.status.conditions[0].type == "Complete"
    core = client.CoreV1Api(batch.api_client)
    pod = core.list_namespaced_pod(NS, label_selector="job-name=once").items[0]
    assert pod.status.phase == "Succeeded"
    assert core.read_namespaced_pod_log(pod.metadata.name, NS) == "done\n"


def test_close_cleans_up(tmp_path: Path) -> None:
    """Leaving the context stops the fake's processes and deletes what it created."""
    with FakeCluster() as cluster:
        cluster.add_namespace(NS)
        api = api_client(cluster, tmp_path)
        client.BatchV1Api(api).create_namespaced_job(
            NS, job_manifest("sleepy", "import time; time.sleep(120)"))
        pods = poll(lambda: client.CoreV1Api(api).list_namespaced_pod(NS).items, WAIT_S)
        name = pods[0].metadata.name
        proc = poll(lambda: cluster.container_process(NS, name, "agent"), WAIT_S)
        job_ns = cluster.pod_netns(NS, name)
        port = cluster.port
    assert not pid_alive(proc.pid)
    assert job_ns is not None and not Path(f"/run/netns/{job_ns}").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout.count(job_ns) == 0
