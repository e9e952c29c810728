"""The Kubernetes objects that carry waylay's agent into a pod (sans-I/O).

Two ways, as in mirrord (``agent.ephemeral``):

- **Ephemeral container** (default): added to the target pod, so it shares the pod's
  network namespace. It needs only CAP_NET_ADMIN (iptables, SO_MARK), never privileged
  mode. Ephemeral containers cannot be removed from a pod; the agent exits by itself with
  its last session or after ``agent.ttl`` without one, and its container stays "terminated".
- **Job** (``ephemeral: false``): one pod pinned to the target pod's node with ``hostPID``,
  whose agent finds the target container's process by its container ID and enters that
  process's network namespace (CAP_SYS_ADMIN for setns, CAP_SYS_PTRACE to open another
  process's namespace, CAP_NET_ADMIN for the rules). The client deletes the Job on exit.

Either way the agent listens on the loopback of the pod it runs in (never on the pod IP),
and the client reaches it through the API server's port-forward, so only users allowed to
port-forward to that pod can reach it. The session token travels in the container's
environment (the agent reads it from there, never from argv).

The container runs ``python3 -I -u -m waylay.agent`` (``AGENT_COMMAND``), not the ``waylay``
script: isolated mode (``waylay.core.system.interpreter``), so neither the image's working directory
nor ``PYTHON*`` variables in the image or the pod can put code into the root agent.
``python3`` is the image's own (its PATH), as any container command is.
"""

from __future__ import annotations

import itertools
from typing import Any, Final

from waylay.core.engine.config import AgentConfig
from waylay.core.system.interpreter import python_command

AGENT_PORT: Final = 47_010  # the agent's control port on the pod's loopback
TOKEN_ENV: Final = "WAYLAY_TOKEN"
APP_LABEL: Final = "waylay-agent"
SESSION_LABEL: Final = "waylay.dev/session"
AGENT_COMMAND: Final = tuple(python_command("waylay.agent", interpreter="python3"))

Json = dict[str, Any]


def agent_args(agent: AgentConfig, *, port: int = AGENT_PORT,
               container_id: str | None = None) -> list[str]:
    """``AGENT_COMMAND`` arguments: listen on the pod's loopback, leave after the TTL."""
    args = ["--listen", f"tcp:127.0.0.1:{port}", "--ttl", str(agent.ttl)]
    if container_id is not None:
        args += ["--enter-container", container_id]
    return args


def listen_port(args: list[Any]) -> int | None:
    """The control port in ``agent_args`` output (for joining a running agent)."""
    for flag, value in itertools.pairwise(args):
        if flag == "--listen" and str(value).startswith("tcp:"):
            port = str(value).rpartition(":")[2]
            return int(port) if port.isdigit() else None
    return None


def ephemeral_container(*, name: str, agent: AgentConfig, token: str, target_container: str,
                        port: int = AGENT_PORT) -> Json:
    """A ``V1EphemeralContainer`` as the API's JSON."""
    return {
        "name": name,
        "image": agent.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(AGENT_COMMAND),
        "args": agent_args(agent, port=port),
        "env": [{"name": TOKEN_ENV, "value": token}],
        # The target container's process namespace (as `kubectl debug --target`): the
        # agent appears beside the app in `ps`, which is what someone debugging expects.
        "targetContainerName": target_container,
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "runAsUser": 0,  # iptables wants uid 0 besides the capability
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def agent_job(*, name: str, namespace: str, session: str, agent: AgentConfig, token: str,
              node: str, container_id: str, target_pod: str,
              port: int = AGENT_PORT) -> Json:
    """A ``V1Job`` running the agent on ``node``, entering ``container_id``'s namespace."""
    labels = {"app.kubernetes.io/name": APP_LABEL, SESSION_LABEL: session}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {"waylay.dev/target": target_pod},
        },
        "spec": {
            "backoffLimit": 0,  # a failed agent is reported, never restarted behind our back
            # Removed by the API server even if the client dies before deleting it.
            "ttlSecondsAfterFinished": max(agent.ttl, 30),
            "activeDeadlineSeconds": 24 * 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeName": node,  # bypasses the scheduler: the target's node or nothing
                    "hostPID": True,
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "tolerations": [{"operator": "Exists"}],  # tainted nodes too
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": APP_LABEL,
                        "image": agent.image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": list(AGENT_COMMAND),
                        "args": agent_args(agent, port=port, container_id=container_id),
                        "env": [{"name": TOKEN_ENV, "value": token}],
                        "securityContext": {
                            "privileged": False,
                            "runAsUser": 0,
                            "capabilities": {"add": ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"],
                                             "drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    }
