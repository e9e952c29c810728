"""The agent's ephemeral container and Job, checked against the official client's models.

The client's models are pydantic classes generated from the API's OpenAPI schema with
``extra="forbid"``: a misspelt field or a wrong type fails ``from_dict``. Serializing the
model back must give our JSON unchanged, so nothing was silently dropped.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.models import V1EphemeralContainer, V1Job

from waylay.core.engine.config import AgentConfig
from waylay.core.kube.specs import AGENT_PORT, agent_job, ephemeral_container


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


AGENT = AgentConfig(image="registry.example/waylay-agent:0.1", ttl=45)


def test_ephemeral_container_is_a_valid_model_and_round_trips() -> None:
    spec = ephemeral_container(name="waylay-agent-1a2b", agent=AGENT, token="s3cret",
                               target_container="app")
    model = V1EphemeralContainer.from_dict(spec)
    assert model is not None
    assert _without_none(model.to_dict(serialize=True)) == spec


def test_ephemeral_container_least_privilege_and_loopback() -> None:
    spec = ephemeral_container(name="a", agent=AGENT, token="s3cret", target_container="app")
    security = spec["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"] == {"add": ["NET_ADMIN"], "drop": ["ALL"]}
    assert f"tcp:127.0.0.1:{AGENT_PORT}" in spec["args"]
    assert spec["args"][spec["args"].index("--ttl") + 1] == "45"
    # The token is in the environment, never on the command line (visible in ps).
    assert {"name": "WAYLAY_TOKEN", "value": "s3cret"} in spec["env"]
    assert "s3cret" not in " ".join(spec["command"] + spec["args"])


def test_job_is_a_valid_model_and_round_trips() -> None:
    job = agent_job(name="waylay-agent-1a2b", namespace="shop", session="1a2b", agent=AGENT,
                    token="s3cret", node="node-7", container_id="containerd://" + "ab" * 32,
                    target_pod="shop/web-1")
    model = V1Job.from_dict(job)
    assert model is not None
    assert _without_none(model.to_dict(serialize=True)) == job
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeName"] == "node-7" and pod["hostPID"] is True
    container = pod["containers"][0]
    assert "--enter-container" in container["args"]
    assert container["securityContext"].get("privileged") is False


def test_the_check_can_fail() -> None:
    """A misspelt field is dropped by the model (the round trip differs); a wrong type is
    refused outright."""
    spec = ephemeral_container(name="a", agent=AGENT, token="t", target_container="app")
    spec["securityContex"] = spec.pop("securityContext")
    model = V1EphemeralContainer.from_dict(spec)
    assert model is not None
    assert _without_none(model.to_dict(serialize=True)) != spec
    spec = ephemeral_container(name="a", agent=AGENT, token="t", target_container="app")
    spec["securityContext"]["privileged"] = "no"
    with pytest.raises(ValueError):
        V1EphemeralContainer.from_dict(spec)


def test_agent_containers_run_python_isolated() -> None:
    """Both forms start `python3 -I -u -m waylay.agent`: neither the image's working directory nor
    a PYTHON* variable can put code into the root agent; the spec sets none."""
    spec = ephemeral_container(name="a", agent=AGENT, token="t", target_container="app")
    job = agent_job(name="j", namespace="shop", session="1a2b", agent=AGENT, token="t",
                    node="node-7", container_id="containerd://" + "ab" * 32,
                    target_pod="shop/web-1")
    for container in (spec, job["spec"]["template"]["spec"]["containers"][0]):
        assert container["command"] == ["python3", "-I", "-u", "-m", "waylay.agent"]
        assert container["args"][:2] == ["--listen", f"tcp:127.0.0.1:{AGENT_PORT}"]
        assert not [e for e in container["env"] if e["name"].startswith("PYTHON")]
