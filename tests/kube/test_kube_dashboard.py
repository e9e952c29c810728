"""The dashboard on a Kubernetes workload: every replica's traffic in one table (root).

The app is started as `waylay ui -t deployment/web --context fake -n shop` would start it,
with the real ``waylay.core.client.attach`` (agents deployed through the fake API server into the
pod namespaces of ``kube_bed.py``). Requests go to the pod addresses with curl; the table
must show each one with the pod that saw it, and quitting must leave no rule behind.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import ROOT_REASON
from tests.kube.kube_bed import ALICE, NAMESPACE, KubeBed, agents_gone, served_by
from tests.tui.conftest import SIZE, wait_for
from waylay.core.engine.config import parse_config
from waylay.tui.app import WaylayApp
from waylay.tui.cells import cell_text

pytestmark = pytest.mark.skipif(ROOT_REASON is not None, reason=ROOT_REASON or "")


def test_dashboard_intercepts_every_replica(kube: KubeBed,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    asyncio.run(_drive(kube))


async def _drive(kube: KubeBed) -> None:
    config = parse_config(ALICE, fmt="json").with_kube_flags(context="fake",
                                                            namespace=NAMESPACE)
    app = WaylayApp(target="deployment/web", config=config,
                    cli_ports={80: kube.local_http}, targets_source=list)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.bar.link == "attached" and app.bar.plans,
                       "the agents", timeout=60)
        served = {}
        for pod in kube.pods:
            for user in ("alice", "bob"):
                served[(pod.name, user)] = await asyncio.to_thread(served_by, pod, user)
        assert served == {(p.name, u): "local" if u == "alice" else f"remote-{p.name}"
                          for p in kube.pods for u in ("alice", "bob")}
        wanted = {("web-a", "stolen"), ("web-a", "passed"), ("web-b", "stolen"),
                  ("web-b", "passed")}
        await wait_for(pilot, lambda: {(r.event.pod, r.verdict) for r in app.store}
                       >= wanted, "a row of each pod and verdict", timeout=20)
        assert cell_text("host", app.store[-1].event).startswith(
            f"{app.store[-1].event.pod} · ")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.client.busy, "the session to end", timeout=30)
    deadline = asyncio.get_running_loop().time() + 15
    while not agents_gone(kube) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    assert agents_gone(kube)
