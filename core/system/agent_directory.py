"""Where the running local agents are: one record per target network namespace.

A second session on the same target attaches to the agent already there instead of
starting another (two agents would fight over the same ports: the first REDIRECT wins).
A record names the agent's control socket, its token and its pid; it lives in a directory
only its user can read (``/run/waylay/agents`` for root, else ``$XDG_RUNTIME_DIR`` or
``/tmp/waylay-<uid>``), so only that user's sessions can find and join the agent.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from waylay.core.engine.target import Target


@dataclass(frozen=True, kw_only=True)
class AgentRecord:
    socket_path: str
    token: str
    pid: int
    target: str


def directory() -> Path:
    if os.geteuid() == 0:
        base = Path("/run/waylay")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "waylay"
    else:
        base = Path(f"/tmp/waylay-{os.getuid()}")
    path = base / "agents"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(base, 0o700)
    return path


def namespace_key(target: Target) -> str | None:
    """The target's network namespace identity (device:inode), or None if unreadable."""
    where = (f"/run/netns/{target.name}" if target.kind == "netns"
             else f"/proc/{target.name}/ns/net" if target.kind == "pid" else None)
    if where is None:
        return None
    try:
        st = os.stat(where)
    except OSError:
        return None
    return f"{st.st_dev}-{st.st_ino}"


def find(key: str) -> AgentRecord | None:
    """The live agent recorded for ``key``, if any (stale records are removed)."""
    path = directory() / f"{key}.json"
    try:
        record = AgentRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        forget(key)
        return None
    except PermissionError:
        pass
    return record if os.path.exists(record.socket_path) else None


def remember(key: str, record: AgentRecord) -> None:
    path = directory() / f"{key}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
    tmp.replace(path)


def forget(key: str) -> None:
    with contextlib.suppress(OSError):
        (directory() / f"{key}.json").unlink()
