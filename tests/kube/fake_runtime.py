"""The fake node's container runtime: processes run in network namespaces, logs, cgroups.

A "container" here is a command from THIS machine (the image is recorded, never pulled)
run as root with ``ip netns exec NS`` in a process group of its own, with a fresh
environment (the container's plain ``env`` values, ``HOSTNAME``, and a ``PATH`` that puts
the directory of ``sys.executable`` first). Its stdout and stderr go to one bounded log.
When its main process exits, what is left of its process group is killed, as a container
runtime does when a container's init dies. Pid isolation is not modeled: every process
lives in the test's own pid namespace (as with ``hostPID: true``).

``CgroupTree`` puts pids into cgroup v2 directories named after container IDs
(``<cgroup2 mount>/waylay-fake-<tag>/pod<uid>/<64 hex>``), so a program scanning
``/proc/*/cgroup`` for a container ID finds the process, as on a containerd node.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Bytes of log kept per container: enough for any agent's chatter in a test, bounded so a
# chatty command cannot eat the test's memory (the kubelet rotates logs at 10 MiB too).
LOG_LIMIT = 1 << 20
STOP_GRACE_S = 2.0
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_IP_TIMEOUT_S = 30


class LogBuffer:
    """The tail of one container's output, readable from any absolute offset."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._data = bytearray()
        self._dropped = 0  # bytes discarded from the front to honour LOG_LIMIT
        self.finished = False

    def append(self, chunk: bytes) -> None:
        with self._cond:
            self._data += chunk
            excess = len(self._data) - LOG_LIMIT
            if excess > 0:
                del self._data[:excess]
                self._dropped += excess
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def read(self, offset: int = 0, wait: float = 0.0) -> tuple[bytes, int]:
        """Bytes from absolute ``offset`` on (waiting up to ``wait`` for some); next offset."""
        with self._cond:
            end = self._dropped + len(self._data)
            if offset >= end and wait > 0 and not self.finished:
                self._cond.wait(wait)
                end = self._dropped + len(self._data)
            start = max(offset, self._dropped)
            return bytes(self._data[start - self._dropped:]), end


def container_env(env: Sequence[Mapping[str, object]], hostname: str) -> dict[str, str]:
    """The process environment of a container (``valueFrom`` entries are not modeled)."""
    path = f"{os.path.dirname(sys.executable)}:{_SYSTEM_PATH}"
    result = {"PATH": path, "HOSTNAME": hostname, "HOME": "/root"}
    for entry in env:
        value = entry.get("value")
        if isinstance(value, str):
            result[str(entry["name"])] = value
    return result


class ContainerProcess:
    """One running container command; ``on_exit(code)`` is called once its log is drained."""

    def __init__(self, argv: Sequence[str], *, netns: str, env: Mapping[str, str],
                 cwd: str, on_exit: Callable[[int], None]) -> None:
        self.log = LogBuffer()
        self.returncode: int | None = None
        self._on_exit = on_exit
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv], env=dict(env), cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pid = self._proc.pid  # ip execs the command: this is the command's own pid
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"fake-container-log-{self.pid}")
        self._waiter = threading.Thread(target=self._wait, daemon=True,
                                        name=f"fake-container-wait-{self.pid}")
        self._reader.start()
        self._waiter.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self.log.append(chunk)
        self._proc.stdout.close()

    def _wait(self) -> None:
        code = self._proc.wait()
        self._killpg(signal.SIGKILL)  # what is left of the container dies with its init
        self._reader.join(timeout=5)
        self.log.finish()
        # A signal death is reported like the kubelet does: 128 + signal number.
        self.returncode = 128 - code if code < 0 else code
        self._on_exit(self.returncode)

    def _killpg(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the container's process group, SIGKILL after ``grace``; wait for the end."""
        if self._proc.poll() is None:
            self._killpg(signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGKILL)
        self._waiter.join(timeout=grace + 10)

    @property
    def running(self) -> bool:
        return self._proc.poll() is None


# --- network namespaces ------------------------------------------------------------------


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True,
                          timeout=_IP_TIMEOUT_S, check=False)


def create_netns(prefix: str) -> str:
    """A new named network namespace with ``lo`` up (ip names: at most 15+ chars ok)."""
    name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
    done = _ip("netns", "add", name)
    if done.returncode != 0:
        raise OSError(f"ip netns add {name}: {done.stderr.strip()}")
    _ip("-n", name, "link", "set", "lo", "up")
    return name


def delete_netns(name: str) -> None:
    _ip("netns", "del", name)


# --- cgroups -----------------------------------------------------------------------------


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup[/unified]``), if it is."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


def _own_cgroup(pid: int) -> str:
    """The cgroup v2 path of ``pid`` (the ``0::`` line of /proc/PID/cgroup)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return "/"


class CgroupTree:
    """cgroup v2 directories named after container IDs, under one root of the fake's own.

    ``available`` is False (and ``add`` does nothing) when no writable cgroup2 mount
    exists. ``close`` moves every pid back where it came from and removes the directories.
    """

    def __init__(self, tag: str) -> None:
        mount = cgroup2_mount()
        self._mount = mount
        self._root = mount / f"waylay-fake-{tag}" if mount else None
        self._moved: dict[int, str] = {}  # pid -> its cgroup before we moved it
        self._dirs: list[Path] = []
        self._lock = threading.Lock()
        self.available = False
        if self._root is not None:
            with contextlib.suppress(OSError):
                self._root.mkdir()
                self._dirs.append(self._root)
                self.available = True

    def add(self, pod_uid: str, container_id: str, pid: int) -> None:
        """Move ``pid`` into ``<root>/pod<uid>/<container_id>``."""
        if not self.available or self._root is None:
            return
        with self._lock:
            directory = self._root / f"pod{pod_uid}" / container_id
            for d in (directory.parent, directory):
                if not d.exists():
                    d.mkdir()
                    self._dirs.append(d)
            origin = _own_cgroup(pid)
            with contextlib.suppress(ProcessLookupError):  # it exited already
                (directory / "cgroup.procs").write_text(str(pid))
                self._moved.setdefault(pid, origin)

    def _move(self, pid: int, cgroup: str) -> None:
        assert self._mount is not None
        for target in (self._mount / cgroup.lstrip("/"), self._mount):
            try:
                (target / "cgroup.procs").write_text(str(pid))
                return
            except OSError:  # gone already, or the origin cgroup was removed meanwhile
                continue

    def close(self) -> None:
        if self._mount is None:
            return
        with self._lock:
            # Children forked inside inherit the cgroup: move out whatever is listed now.
            for d in reversed(self._dirs):
                with contextlib.suppress(OSError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        self._move(int(pid), self._moved.get(int(pid), "/"))
                with contextlib.suppress(FileNotFoundError):
                    d.rmdir()
            self._moved.clear()
            self._dirs.clear()
