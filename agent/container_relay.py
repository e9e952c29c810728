"""The Job form of the Kubernetes agent: enter another container's network namespace.

Theory of operation. With ``agent.ephemeral: false`` the agent runs in a Job pod of its
own, on the target pod's node, with ``hostPID`` (core/kube/specs.py). It is started as
``python3 -I -u -m waylay.agent --listen tcp:127.0.0.1:PORT --enter-container containerd://ID``
(isolated, as is the agent it starts in turn: ``waylay.core.system.interpreter``):

1. Find a process of the target container: with the host's PID namespace visible, every
   container runtime (containerd, CRI-O, Docker) puts the container ID in the cgroup path
   of the container's processes, so the first ``/proc/P/cgroup`` naming the ID is one.
2. Start the ordinary agent inside that process's network namespace, exactly as for a
   local ``pid/P`` target (``waylay.core.system.agent_launch``: nsenter --net, a Unix socket; paths
   cross network namespaces), with the session token this container was given.
3. Listen on the Job pod's own loopback (where the API server's port-forward arrives) and
   relay each connection to the agent's Unix socket, byte for byte.

The relay leaves with the agent (when its last session ends or its TTL passes), so the Job
completes; the client deletes it anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path
from typing import Final

from waylay.agent.worker import emit
from waylay.core.engine.errors import EXIT_TARGET, WaylayError
from waylay.core.engine.target import Target
from waylay.core.system.agent_launch import AgentProcess, launch_local_agent

_CHUNK: Final = 256 * 1024
_ID: Final = re.compile(r"^(?:[a-z0-9.-]+://)?([0-9a-f]{12,128})$")


def container_pid(container_id: str, proc: Path = Path("/proc")) -> int | None:
    """The lowest pid whose cgroup path names the container (its init, usually)."""
    match = _ID.match(container_id.strip())
    if match is None:
        return None
    needle = match.group(1)
    found: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "cgroup").read_text()
        except OSError:  # gone, or not ours to read
            continue
        if needle in text:
            found.append(int(entry.name))
    return min(found) if found else None


def run_container_relay(*, container_id: str, listen: str, token_env: str, ttl: float) -> int:
    pid = container_pid(container_id)
    if pid is None:
        emit({"event": "error", "exit": EXIT_TARGET,
              "message": f"no process of container {container_id} is visible on this node "
              "(the agent's pod needs hostPID and must run on the target pod's node)"})
        return EXIT_TARGET
    try:
        return asyncio.run(_serve(pid, listen, os.environ[token_env], ttl))
    except WaylayError as exc:
        emit({"event": "error", "message": str(exc), "exit": exc.exit_code})
        return exc.exit_code


async def _serve(pid: int, listen: str, token: str, ttl: float) -> int:
    agent = await launch_local_agent(Target(kind="pid", name=str(pid)), ttl=ttl,
                                     token=token, on_message=emit)
    host, _, port = listen[len("tcp:"):].rpartition(":")

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _relay(agent, reader, writer)

    server = await asyncio.start_server(relay, host=host.strip("[]"), port=int(port))
    emit({"event": "ready", "listen": listen, "entered_pid": pid, **{
        k: v for k, v in agent.ready.items() if k in ("chain", "proxy_port")}})
    async with server:
        code = await agent.process.wait()
    await agent.stop()
    return code


async def _relay(agent: AgentProcess, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_unix_connection(agent.socket_path)
    except OSError:
        writer.close()
        return
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_copy(reader, up_writer))
            group.create_task(_copy(up_reader, writer))
    except* OSError:
        pass
    finally:
        for w in (writer, up_writer):
            w.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()
