"""Which pods a target means, through the official client and the fake API server.

No agent here (no root needed): ``waylay.core.kube.attach.resolve_pods`` against the fake cluster,
and `waylay run` failing before any agent is deployed.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import CLEAN_ENV, WAYLAY
from tests.kube.fake_apiserver import FakeCluster
from tests.kube.shop_manifests import NS, pod, workload
from waylay.core.engine.errors import TargetError
from waylay.core.engine.target import parse_target
from waylay.core.kube.api import KubeApi
from waylay.core.kube.attach import resolve_pods


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    with FakeCluster(user="dev", rollouts=True) as cluster:
        cluster.add_namespace(NS)
        cluster.add_object(workload("Deployment", "web", replicas=2, ready=2))
        canary = workload("Rollout", "canary", replicas=1, ready=1,
                          api_version="argoproj.io/v1alpha1")
        cluster.add_object(canary)
        # A rollout that takes its pods' template (and selector) from a Deployment.
        cluster.add_object({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                            "metadata": {"name": "ref", "namespace": NS},
                            "spec": {"replicas": 2, "workloadRef": {
                                "apiVersion": "apps/v1", "kind": "Deployment",
                                "name": "web"}}})
        for name, app in (("web-1", "web"), ("web-2", "web"), ("canary-1", "canary")):
            cluster.add_object(pod(name, labels={"app": app}))
        cluster.add_object(pod("web-3", labels={"app": "web"}, ready=False))
        path = cluster.write_kubeconfig(tmp_path_factory.mktemp("kc") / "kubeconfig",
                                        contexts={"fake": NS})
        yield KubeApi(context="fake", config_file=str(path))


def names(api: KubeApi, target: str) -> list[str]:
    return [p.name for p in resolve_pods(api, parse_target(target), NS)]


def test_rollout_and_its_workload_ref(api: KubeApi) -> None:
    assert names(api, "rollout/canary") == ["canary-1"]
    assert names(api, "rollout/ref") == ["web-1", "web-2"]  # web-3 is not ready
    assert names(api, "deploy/web") == ["web-1", "web-2"]
    with pytest.raises(TargetError, match="rollout/nope not found in namespace shop"):
        names(api, "rollout/nope")


def test_a_pod_that_is_not_ready_is_still_a_pod_target(api: KubeApi) -> None:
    """pod/NAME asks for that pod: running is enough (a workload takes ready ones)."""
    assert names(api, "pod/web-3") == ["web-3"]


def test_an_unreachable_api_server_exits_3(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "kubeconfig"
    config.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: gone, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: dev, user: {{token: t}}}}]
contexts: [{{name: gone, context: {{cluster: gone, user: dev, namespace: shop}}}}]
current-context: gone
""")
    done = subprocess.run([str(WAYLAY), "run", "-t", "deploy/web", "-p", "80"],
                          capture_output=True, text=True, timeout=120,
                          env={**CLEAN_ENV, "KUBECONFIG": str(config)})
    assert done.returncode == 3, done.stderr
    assert f"cannot reach the Kubernetes API at http://127.0.0.1:{port}" in done.stderr


def test_no_kubeconfig_exits_3_saying_so(tmp_path: Path) -> None:
    done = subprocess.run([str(WAYLAY), "run", "-t", "pod/web-1", "-p", "80"],
                          capture_output=True, text=True, timeout=60,
                          env={**CLEAN_ENV, "KUBECONFIG": str(tmp_path / "none")})
    assert done.returncode == 3, done.stderr
    assert "no Kubernetes config found" in done.stderr
