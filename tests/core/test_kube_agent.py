"""waylay.core.kube.agent's readings of pod status and agent logs, and finding a running agent."""

from __future__ import annotations

import json
from typing import Any

from waylay.core.kube.agent import (
    _container_state,
    _log_failure,
    _log_ready,
    running_agents,
)
from waylay.core.kube.model import pod_from_api


def _pod(ephemeral: list[dict[str, Any]], statuses: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"containers": [{"name": "app"}], "ephemeralContainers": ephemeral},
            "status": {"phase": "Running", "ephemeralContainerStatuses": statuses}}


def test_container_state() -> None:
    pod = _pod([], [
        {"name": "a", "state": {"waiting": {"reason": "ImagePullBackOff"}}},
        {"name": "b", "state": {"running": {"startedAt": "x"}}},
        {"name": "c", "state": {"terminated": {"reason": "Error", "exitCode": 3}}}])
    assert _container_state(pod, "a", ephemeral=True) == ("waiting", "ImagePullBackOff")
    assert _container_state(pod, "b", ephemeral=True) == ("running", "")
    assert _container_state(pod, "c", ephemeral=True) == ("terminated", "Error, exit code 3")
    assert _container_state(pod, "d", ephemeral=True) == ("pending", "")


def test_agent_log_lines() -> None:
    ready = json.dumps({"event": "ready", "listen": "tcp:127.0.0.1:47010"})
    error = json.dumps({"event": "error", "message": "iptables: Permission denied"})
    assert _log_ready(f"Traceback? no\n{ready}\n")
    assert not _log_ready("starting\n")
    assert _log_failure(f"noise\n{error}\n") == "iptables: Permission denied"
    assert _log_failure(ready) is None


def test_running_agents_are_found_newest_first() -> None:
    def agent(name: str, port: int) -> dict[str, Any]:
        return {"name": name, "args": ["agent", "--listen", f"tcp:127.0.0.1:{port}"],
                "env": [{"name": "WAYLAY_TOKEN", "value": f"t-{name}"}]}

    obj = _pod([agent("waylay-agent-old", 47001), agent("debugger", 1),
                agent("waylay-agent-new", 47002), agent("waylay-agent-gone", 47003)],
               [{"name": "waylay-agent-old", "state": {"running": {}}},
                {"name": "debugger", "state": {"running": {}}},
                {"name": "waylay-agent-new", "state": {"running": {}}},
                {"name": "waylay-agent-gone", "state": {"terminated": {"exitCode": 0}}}])
    found = running_agents(pod_from_api(obj), "app")
    assert [(a.agent_container, a.port, a.token, a.joined) for a in found] == [
        ("waylay-agent-new", 47002, "t-waylay-agent-new", True),
        ("waylay-agent-old", 47001, "t-waylay-agent-old", True)]
