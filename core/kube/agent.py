"""Putting the agent into one pod and reaching it through port-forward (asyncio + threads).

Theory of operation, for one target pod:

1. ``deploy_agent`` adds the agent: an ephemeral container in the pod (default), or a Job
   on the pod's node that enters the target container's network namespace
   (``agent.ephemeral: false``); the specs come from ``waylay.core.kube.specs``. The session token
   goes into the container's environment.
2. It waits, reporting progress, until the agent says it is ready: the agent prints a
   ``{"event": "ready"}`` line on stdout, and the container log is where the API shows it.
   Image pull failures, a crashed agent (its log tail is quoted) and ``startup_timeout``
   end the wait with a ``TargetError``.
3. ``open_link`` connects through the API server's port-forward
   (``kubernetes.stream.portforward``) to the agent's port on the pod's loopback and
   returns asyncio streams for ``waylay.core.client.session.Session``. The client library pumps the
   WebSocket in a thread of its own, between the API server and one end of a socket pair;
   the session reads the other end.
4. ``remove_agent`` deletes the Job. An ephemeral container cannot be removed: its agent
   leaves by itself with its last session (or after its TTL without one).

The client is synchronous: every API call runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from waylay.core.engine.config import AgentConfig
from waylay.core.engine.errors import PrivilegeError, TargetError
from waylay.core.kube.api import PODS, KubeApi, Resource
from waylay.core.kube.model import PodInfo, pod_from_api
from waylay.core.kube.specs import (
    AGENT_PORT,
    APP_LABEL,
    TOKEN_ENV,
    agent_job,
    ephemeral_container,
    listen_port,
)

ProgressSink = Callable[[str], None]

POLL_S: Final = 0.5
AGENT_NAME_PREFIX: Final = "waylay-agent-"
_PORT_SPREAD: Final = 1000  # agent ports are AGENT_PORT .. AGENT_PORT + 999
# Waiting reasons that will not fix themselves before the startup timeout.
_HOPELESS: Final = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                              "CreateContainerConfigError", "CreateContainerError",
                              "RunContainerError"})
_PORTFORWARD: Final = Resource("pods/portforward", "")


@dataclass
class PodAgent:
    """An agent serving one target pod, and where to reach it."""

    pod: PodInfo
    container: str  # the target container
    namespace: str  # where the agent's pod is (the target's, or agent.namespace for a Job)
    agent_pod: str  # the pod to port-forward to: the target itself, or the Job's pod
    agent_container: str
    token: str = field(repr=False)
    port: int = AGENT_PORT
    job: str | None = None  # the Job to delete on exit (Job form only)
    joined: bool = False  # another session's agent, found running in the pod


def running_agents(pod: PodInfo, container: str) -> list[PodAgent]:
    """waylay agents already running in the pod as ephemeral containers, newest first.

    Joining one instead of adding another lets several developers' filtered steals share
    the pod's one agent (two agents would each redirect the same ports, and only the
    first chain would ever see the traffic). Its port and token are in its spec: anyone
    who can read the pod spec can read them, and still needs port-forward to use them.
    """
    spec = pod.source.get("spec") or {}
    status = pod.source.get("status") or {}
    running = {s.get("name") for s in status.get("ephemeralContainerStatuses") or []
               if "running" in (s.get("state") or {})}
    found = []
    for entry in reversed(spec.get("ephemeralContainers") or []):
        name = str(entry.get("name", ""))
        if not name.startswith(AGENT_NAME_PREFIX) or name not in running:
            continue
        token = next((e.get("value") for e in entry.get("env") or []
                      if e.get("name") == TOKEN_ENV), None)
        port = listen_port(entry.get("args") or [])
        if token and port:
            found.append(PodAgent(pod=pod, container=container, namespace=pod.namespace,
                                  agent_pod=pod.name, agent_container=name, token=str(token),
                                  port=port, joined=True))
    return found


async def deploy_agent(api: KubeApi, pod: PodInfo, container: str, agent: AgentConfig,
                       progress: ProgressSink) -> PodAgent:
    """Start an agent for ``pod`` and wait until it is ready (see the module docstring)."""
    session = secrets.token_hex(4)
    token = secrets.token_urlsafe(32)
    # A port of its own: an earlier agent may still be leaving the pod's loopback.
    port = AGENT_PORT + secrets.randbelow(_PORT_SPREAD)
    deadline = time.monotonic() + agent.startup_timeout
    if agent.ephemeral:
        name = f"{AGENT_NAME_PREFIX}{session}"
        progress(f"pod/{pod.name}: adding the agent as ephemeral container {name} "
                 f"(image {agent.image})")
        spec = ephemeral_container(name=name, agent=agent, token=token,
                                   target_container=container, port=port)
        await asyncio.to_thread(api.add_ephemeral_container, pod.namespace, pod.name, spec)
        placed = PodAgent(pod=pod, container=container, namespace=pod.namespace,
                          agent_pod=pod.name, agent_container=name, token=token, port=port)
        await _wait_ready(api, placed, deadline, agent, progress, ephemeral=True)
        return placed
    target = pod.container(container)
    if target is None or not target.container_id:
        raise TargetError(f"pod/{pod.name}: container {container} has no container ID yet "
                          "(is it running?); the Job agent needs it to find the process")
    if not pod.node:
        raise TargetError(f"pod/{pod.name} is not scheduled on a node yet")
    namespace = agent.namespace or pod.namespace
    name = f"waylay-agent-{session}"
    progress(f"pod/{pod.name}: creating Job {namespace}/{name} on node {pod.node} "
             f"(image {agent.image})")
    job = agent_job(name=name, namespace=namespace, session=session, agent=agent,
                    token=token, node=pod.node, container_id=target.container_id,
                    target_pod=f"{pod.namespace}/{pod.name}", port=port)
    await asyncio.to_thread(api.create_job, namespace, job)
    placed = PodAgent(pod=pod, container=container, namespace=namespace, agent_pod="",
                      agent_container=APP_LABEL, token=token, port=port, job=name)
    try:
        placed.agent_pod = await _job_pod(api, namespace, name, deadline, agent)
        progress(f"pod/{pod.name}: Job pod {placed.agent_pod} created")
        await _wait_ready(api, placed, deadline, agent, progress, ephemeral=False)
    except BaseException:
        await remove_agent(api, placed)
        raise
    return placed


async def remove_agent(api: KubeApi, placed: PodAgent) -> None:
    """Delete the Job (a no-op for an ephemeral agent, which leaves by itself)."""
    if placed.job is not None:
        await asyncio.to_thread(api.delete_job, placed.namespace, placed.job)


@dataclass
class Link:
    """A port-forwarded connection to an agent, as asyncio streams."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    forward: Any  # kubernetes.stream.ws_client.PortForward: .error(port) explains a close

    def forward_error(self, port: int) -> str | None:
        error = self.forward.error(port)
        return str(error) if error else None


async def open_link(api: KubeApi, placed: PodAgent) -> Link:
    """Connect to the agent through the API server's port-forward."""
    forward, sock = await asyncio.to_thread(_port_forward, api, placed)
    reader, writer = await asyncio.open_connection(sock=sock, limit=256 * 1024)
    return Link(reader=reader, writer=writer, forward=forward)


def _port_forward(api: KubeApi, placed: PodAgent) -> tuple[Any, socket.socket]:
    try:
        core = api.fresh_core()  # see KubeApi.fresh_core: portforward is not thread-safe
        forward = portforward(core.connect_get_namespaced_pod_portforward,
                              placed.agent_pod, placed.namespace, ports=str(placed.port))
    except ApiException as exc:
        # The WebSocket handshake's failure arrives as status 0 with the HTTP status in
        # the reason text ("Handshake status 403 Forbidden ...").
        reason = str(exc.reason or exc)
        if "403" in reason:
            raise PrivilegeError(
                f"the Kubernetes API refused to port-forward to pod/{placed.agent_pod} in "
                f"namespace {placed.namespace} (context {api.context.name}). Ask for a Role "
                f"that allows 'create' on '{_PORTFORWARD.rbac}'") from exc
        raise TargetError(f"cannot port-forward to pod/{placed.agent_pod} through "
                          f"{api.server}: {reason}") from exc
    wrapped = forward.socket(placed.port)
    # The client hands out a wrapper around one end of a socket pair; asyncio wants a
    # real socket object, so it gets its own descriptor for the same socket.
    sock = socket.socket(fileno=os.dup(wrapped.fileno()))
    wrapped.close()
    sock.setblocking(False)
    return forward, sock


async def _job_pod(api: KubeApi, namespace: str, job: str, deadline: float,
                   agent: AgentConfig) -> str:
    while time.monotonic() < deadline:
        items, _ = await asyncio.to_thread(api.list, PODS, namespace,
                                           label_selector=f"job-name={job}")
        if items:
            return pod_from_api(items[0]).name
        await asyncio.sleep(POLL_S)
    raise TargetError(f"Job {namespace}/{job} made no pod within {agent.startup_timeout} s "
                      "(agent.startup_timeout)")


async def _wait_ready(api: KubeApi, placed: PodAgent, deadline: float, agent: AgentConfig,
                      progress: ProgressSink, *, ephemeral: bool) -> None:
    """Until the agent's log has its ready line; progress on every state change."""
    where = f"pod/{placed.pod.name}"
    last_state = ""
    while True:
        obj = await asyncio.to_thread(api.get, PODS, placed.namespace, placed.agent_pod)
        if obj is None:
            raise TargetError(f"{where}: pod {placed.agent_pod} disappeared while the agent "
                              "was starting")
        state, detail = _container_state(obj, placed.agent_container, ephemeral=ephemeral)
        if state != last_state:
            progress(f"{where}: agent {state}{f' ({detail})' if detail else ''}")
            last_state = state
        if state == "terminated" or (state == "waiting" and detail in _HOPELESS):
            raise await _failure(api, placed, agent, state, detail)
        if state == "running":
            log = await asyncio.to_thread(api.pod_log, placed.namespace, placed.agent_pod,
                                          placed.agent_container)
            failure = _log_failure(log)
            if failure is not None:
                raise TargetError(f"{where}: the agent failed: {failure}")
            if _log_ready(log):
                progress(f"{where}: agent ready")
                return
        if time.monotonic() >= deadline:
            raise TargetError(f"{where}: the agent was not ready within "
                              f"{agent.startup_timeout} s (agent.startup_timeout); last state "
                              f"{state}{f' ({detail})' if detail else ''}")
        await asyncio.sleep(POLL_S)


def _container_state(pod: dict[str, Any], name: str, *, ephemeral: bool) -> tuple[str, str]:
    """("waiting" | "running" | "terminated" | "pending", reason) of one container."""
    status = pod.get("status") or {}
    key = "ephemeralContainerStatuses" if ephemeral else "containerStatuses"
    for entry in status.get(key) or []:
        if entry.get("name") != name:
            continue
        state = entry.get("state") or {}
        for kind in ("terminated", "running", "waiting"):
            if kind in state:
                info = state[kind] or {}
                detail = str(info.get("reason") or "")
                if kind == "terminated" and info.get("exitCode") is not None:
                    detail = f"{detail}, exit code {info['exitCode']}".lstrip(", ")
                return kind, detail
    if status.get("phase") in ("Failed", "Succeeded") and not ephemeral:
        return "terminated", str(status.get("reason") or status.get("phase"))
    return "pending", ""


async def _failure(api: KubeApi, placed: PodAgent, agent: AgentConfig, state: str,
                   detail: str) -> TargetError:
    where = f"pod/{placed.pod.name}"
    if "Image" in detail or detail == "ErrImagePull":
        return TargetError(f"{where}: the cluster cannot pull the agent image {agent.image} "
                           f"({detail}); build it with agent/Dockerfile, push it where the "
                           "cluster can pull it and set agent.image")
    log = await asyncio.to_thread(api.pod_log, placed.namespace, placed.agent_pod,
                                  placed.agent_container)
    said = _log_failure(log) or log.strip()[-600:] or "no output"
    return TargetError(f"{where}: the agent {state} ({detail}): {said}")


def _agent_lines(log: str) -> list[dict[str, Any]]:
    lines = []
    for line in log.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            lines.append(doc)
    return lines


def _log_ready(log: str) -> bool:
    return any(doc.get("event") == "ready" for doc in _agent_lines(log))


def _log_failure(log: str) -> str | None:
    for doc in _agent_lines(log):
        if doc.get("event") == "error":
            return str(doc.get("message"))
    return None
