"""Starting the agent inside a local target's network namespace, and stopping it (asyncio).

Theory of operation. ``enter_command`` checks that the target can be entered and returns
the command prefix that enters its network namespace:

- ``netns/NAME``: root only; ``ip netns exec NAME``.
- ``pid/N`` as root: ``nsenter --net=/proc/N/ns/net``.
- ``pid/N`` as anyone else: N's network namespace must belong to a user namespace we own
  that maps our uid to root (what ``unshare --user --map-root-user --net`` makes). Then
  ``nsenter --preserve-credentials --user --net --target N``: our uid *is* root in there,
  so the agent gets CAP_NET_ADMIN over that namespace. (Without --preserve-credentials,
  nsenter calls setgroups(), which such a namespace denies: "setgroups failed".)

``launch_local_agent`` runs ``PREFIX python -I -u -m waylay.agent --listen unix:SOCK --ttl TTL ...``
(isolated: nothing from the caller's directory or ``PYTHON*`` variables is imported by a
root process; ``waylay.core.system.interpreter``) from ``/``, with the session token in an
environment without ``PYTHON*`` variables (never on argv, which every user can read). The
socket lives in a fresh 0700 directory: filesystem paths cross network namespaces, so the
client reaches the agent there. The agent reports on stdout, one JSON object per line:
``warning`` lines (forwarded), then ``ready`` or ``error`` (and a non-zero exit). After
``ready``, stdout keeps being drained to the callback so the pipe never fills; stderr is
drained throughout into a bounded tail quoted when the agent fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from waylay.core.engine.errors import PrivilegeError, TargetError, UsageError, WaylayError
from waylay.core.engine.target import Target
from waylay.core.system.interpreter import clean_environment, python_command

TOKEN_ENV: Final = "WAYLAY_TOKEN"
SOCKET_NAME: Final = "agent.sock"

# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_SUN_PATH_MAX: Final = 107
# One agent message is a small JSON object; a longer line is a bug, dropped with a warning.
_LINE_LIMIT: Final = 64 * 1024
# How much of the agent's stderr is kept to quote when it fails.
_STDERR_TAIL_BYTES: Final = 4096
# After the agent exits, how long its output pipes may take to reach EOF (a grandchild
# holding them open must not hang the client).
_PIPE_DRAIN_TIMEOUT: Final = 1.0
# Grace between SIGTERM and SIGKILL when startup fails (the guard removes its rules).
_STARTUP_KILL_GRACE: Final = 2.0

# linux/nsfs.h: _IO(0xb7, 0x1) and _IO(0xb7, 0x4).
_NS_GET_USERNS: Final = 0xB701
_NS_GET_OWNER_UID: Final = 0xB704

_log = logging.getLogger(__name__)

MessageCallback = Callable[[dict[str, object]], None]


@dataclass
class AgentProcess:
    """A running agent: where to reach it, its token, and its ready line."""

    socket_path: str
    token: str = field(repr=False)
    ready: dict[str, object]  # the agent's ready line
    process: asyncio.subprocess.Process
    _socket_dir: str = field(default="", repr=False)
    _stderr: _StderrTail | None = field(default=None, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    async def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; remove the socket directory.

        Returns the exit code (negative: killed by that signal, asyncio's convention).
        Safe to call again, and when the agent already exited.
        """
        try:
            return await _terminate(self.process, timeout)
        finally:
            await _finish_tasks(self._tasks)
            if self._socket_dir:
                shutil.rmtree(self._socket_dir, ignore_errors=True)

    @property
    def stderr_tail(self) -> str:
        """The last few KiB the agent wrote to stderr."""
        return self._stderr.text() if self._stderr is not None else ""


def enter_command(target: Target) -> list[str]:
    """The command prefix that runs a program in ``target``'s network namespace.

    Raises ``PrivilegeError`` when we may not enter it (or a tool is missing) and
    ``TargetError`` when it does not exist.
    """
    if target.kind == "netns":
        if os.geteuid() != 0:
            raise PrivilegeError(
                "netns targets need root (CAP_NET_ADMIN): run with sudo, or use a pid/N "
                "target inside a user namespace you own"
            )
        if not os.path.exists(f"/run/netns/{target.name}"):
            raise TargetError(
                f"no network namespace {target.name!r} (not in /run/netns; see `ip netns list`)"
            )
        return [_tool("ip", "iproute2"), "netns", "exec", target.name]
    if target.kind == "pid":
        pid = int(target.name)
        if not os.path.exists(f"/proc/{pid}"):
            raise TargetError(f"no process {pid}")
        if os.geteuid() == 0:
            return [_tool("nsenter", "util-linux"), f"--net=/proc/{pid}/ns/net"]
        _check_user_namespace(pid)
        return [
            _tool("nsenter", "util-linux"),
            "--preserve-credentials",
            "--user",
            "--net",
            "--target",
            str(pid),
        ]
    raise UsageError(
        f"{target} is a Kubernetes target; only netns/NAME and pid/N are started locally"
    )


async def launch_local_agent(
    target: Target,
    *,
    ttl: float = 30.0,
    extra_args: Sequence[str] = (),
    on_message: MessageCallback | None = None,
    startup_timeout: float = 20.0,
    agent_argv: Sequence[str] | None = None,
    token: str | None = None,
) -> AgentProcess:
    """Start the agent inside ``target`` and wait for its ready line.

    ``agent_argv`` replaces ``python_command("waylay.agent")`` (tests use a fake agent);
    ``--listen unix:PATH --ttl TTL`` and ``extra_args`` follow it. ``on_message`` receives
    every other line the agent prints (warnings before ready, everything after), from the
    event loop. Raises the agent's own error (its ``exit`` code picks UsageError,
    TargetError or PrivilegeError), or TargetError quoting its stderr when it exits or
    stays silent past ``startup_timeout``. ``token`` is the session token to use (default:
    a fresh one).
    """
    prefix = enter_command(target)
    socket_dir = _make_socket_dir()
    socket_path = os.path.join(socket_dir, SOCKET_NAME)
    token = token or secrets.token_urlsafe(32)
    argv = [
        *prefix,
        *(agent_argv if agent_argv is not None else python_command("waylay.agent")),
        "--listen",
        f"unix:{socket_path}",
        "--ttl",
        str(ttl),
        *extra_args,
    ]
    env = {**clean_environment(os.environ), TOKEN_ENV: token}
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            # Not the caller's directory: a root process has no business holding it.
            cwd="/",
            limit=_LINE_LIMIT,
            # Its own session: the terminal's Ctrl-C reaches the client, which stops the
            # agent with SIGTERM so the guard can remove its rules.
            start_new_session=True,
        )
    except OSError as exc:
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise TargetError(f"cannot start the agent ({argv[0]}): {exc}") from exc

    stderr = _StderrTail()
    tasks = [
        asyncio.create_task(
            stderr.drain(_stream(process.stderr)), name=f"waylay-agent-{process.pid}-stderr"
        )
    ]
    agent = AgentProcess(
        socket_path=socket_path,
        token=token,
        ready={},
        process=process,
        _socket_dir=socket_dir,
        _stderr=stderr,
        _tasks=tasks,
    )
    stdout = _stream(process.stdout)
    try:
        async with asyncio.timeout(startup_timeout):
            agent.ready = await _wait_ready(process, stdout, stderr, tasks, on_message)
    except BaseException as exc:
        await _terminate(process, _STARTUP_KILL_GRACE)
        await _finish_tasks(tasks)
        shutil.rmtree(socket_dir, ignore_errors=True)
        if isinstance(exc, TimeoutError):
            raise TargetError(
                f"the agent in {target} was not ready within {startup_timeout:g} s"
                + _quote(stderr.text())
            ) from None
        raise
    tasks.append(
        asyncio.create_task(
            _forward_lines(stdout, on_message), name=f"waylay-agent-{process.pid}-stdout"
        )
    )
    return agent


def error_for_exit(exit_code: object, message: str) -> WaylayError:
    """The error for an agent's ``{"event": "error", "exit": N}`` line."""
    match exit_code:
        case 2:
            return UsageError(message)
        case 4:
            return PrivilegeError(message)
        case _:
            return TargetError(message)


def uid_inside(uid_map: str, uid: int) -> int | None:
    """Which uid ``uid`` (of the reader's user namespace) is inside, per /proc/N/uid_map.

    Each line is ``INSIDE OUTSIDE COUNT``; None when ``uid`` is not mapped.
    """
    for line in uid_map.splitlines():
        fields = line.split()
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            continue
        inside, outside, count = (int(f) for f in fields)
        if outside <= uid < outside + count:
            return inside + (uid - outside)
    return None


# --- entering ---------------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    # Plain users often lack /usr/sbin (where `ip` lives) in PATH.
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        raise PrivilegeError(
            f"`{name}` is missing: install the Debian package {package} "
            f"(sudo apt-get install {package})"
        )
    return path


def _check_user_namespace(pid: int) -> None:
    """As a plain user: may we enter pid's network namespace, as root of its user ns?"""
    try:
        ours = os.stat("/proc/self/ns/net").st_ino
        theirs = os.stat(f"/proc/{pid}/ns/net").st_ino
    except PermissionError as exc:
        raise PrivilegeError(
            f"process {pid} belongs to another user: run with sudo to intercept it"
        ) from exc
    except FileNotFoundError as exc:
        raise TargetError(f"no process {pid}") from exc
    if theirs == ours:
        raise PrivilegeError(
            f"process {pid} is in your own network namespace, and intercepting there needs "
            "root (CAP_NET_ADMIN): run with sudo, or start the service inside a user "
            "namespace (`unshare --user --map-root-user --net ...`) and target its pid"
        )
    owner = _netns_owner(pid)
    if owner is not None:
        owner_userns, owner_uid = owner
        if owner_userns == os.stat("/proc/self/ns/user").st_ino or owner_uid != os.geteuid():
            raise PrivilegeError(
                f"the network namespace of process {pid} is not inside a user namespace you "
                "own: run with sudo"
            )
    try:
        with open(f"/proc/{pid}/uid_map", encoding="ascii") as file:
            uid_map = file.read()
    except OSError as exc:
        raise TargetError(f"cannot read the uid map of process {pid}: {exc}") from exc
    if uid_inside(uid_map, os.geteuid()) != 0:
        raise PrivilegeError(
            f"the user namespace of process {pid} does not map your uid to root, so the agent "
            "would get no CAP_NET_ADMIN there: create it with `unshare --user "
            "--map-root-user --net`, or run with sudo"
        )


def _netns_owner(pid: int) -> tuple[int, int] | None:
    """(inode, owner uid) of the user namespace owning pid's network namespace.

    None when the kernel lacks the ioctls (before 4.11); nsenter then has the last word.
    """
    try:
        netns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise TargetError(f"no process {pid}") from exc
    except PermissionError as exc:
        raise PrivilegeError(f"process {pid} belongs to another user: run with sudo") from exc
    try:
        userns_fd = fcntl.ioctl(netns_fd, _NS_GET_USERNS)
    except OSError:
        return None
    finally:
        os.close(netns_fd)
    try:
        uid = bytearray(4)
        fcntl.ioctl(userns_fd, _NS_GET_OWNER_UID, uid, True)
        return os.fstat(userns_fd).st_ino, int.from_bytes(uid, sys.byteorder)
    except OSError:
        return None
    finally:
        os.close(userns_fd)


def _make_socket_dir() -> str:
    directory = tempfile.mkdtemp(prefix="waylay-")  # mode 0700: only we reach the socket
    if len(os.path.join(directory, SOCKET_NAME)) > _SUN_PATH_MAX:
        # A long $TMPDIR (macOS-style, or a nested test dir) would not fit in sun_path.
        os.rmdir(directory)
        directory = tempfile.mkdtemp(prefix="waylay-", dir="/tmp")
    return directory


# --- talking to the process -------------------------------------------------------------


class _StderrTail:
    """The last _STDERR_TAIL_BYTES of the agent's stderr."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_STDERR_TAIL_BYTES):
            self._buffer += chunk
            del self._buffer[:-_STDERR_TAIL_BYTES]

    def text(self) -> str:
        return self._buffer.decode("utf-8", "replace").strip()


def _stream(stream: asyncio.StreamReader | None) -> asyncio.StreamReader:
    assert stream is not None, "the agent's pipes are opened with PIPE"
    return stream


async def _wait_ready(
    process: asyncio.subprocess.Process,
    stdout: asyncio.StreamReader,
    stderr: _StderrTail,
    tasks: list[asyncio.Task[None]],
    on_message: MessageCallback | None,
) -> dict[str, object]:
    """Read the agent's lines until ready; raise its error if it fails first."""
    while True:
        message = await _read_message(stdout)
        if message is None:  # EOF: the agent exited (or closed stdout) without a word
            code = await process.wait()
            await _finish_tasks(tasks)
            raise TargetError(
                f"the agent exited with code {code} before it was ready" + _quote(stderr.text())
            )
        match message.get("event"):
            case "ready":
                return message
            case "error":
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_STARTUP_KILL_GRACE):
                        await process.wait()
                await _finish_tasks(tasks)
                raise error_for_exit(message.get("exit"), str(message.get("message", "failed")))
            case _:
                _deliver(on_message, message)


async def _read_message(stdout: asyncio.StreamReader) -> dict[str, object] | None:
    """The next JSON line as a dict (other output becomes a warning); None at EOF."""
    try:
        line = await stdout.readline()
    except ValueError:  # longer than _LINE_LIMIT: the rest of the line was discarded
        return {"event": "warning", "message": "agent printed an overlong line (dropped)"}
    if not line:
        return None
    text = line.decode("utf-8", "replace").strip()
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        return {"event": "warning", "message": f"agent: {text}"}
    return message


async def _forward_lines(stdout: asyncio.StreamReader, on_message: MessageCallback | None) -> None:
    while (message := await _read_message(stdout)) is not None:
        _deliver(on_message, message)


def _deliver(on_message: MessageCallback | None, message: dict[str, object]) -> None:
    if on_message is None:
        return
    try:
        on_message(message)
    except Exception:
        # A broken callback must not stop the draining, or the agent blocks on a full pipe.
        _log.exception("agent message callback failed on %r", message)


async def _terminate(process: asyncio.subprocess.Process, timeout: float) -> int:
    # os.kill, not process.send_signal(): Popen.send_signal() polls first, and a poll that
    # reaps the child races asyncio's child watcher, which then reports exit code 255. The
    # pid cannot be reused before it is reaped, and only the watcher reaps it.
    if process.returncode is None:
        _signal(process, signal.SIGTERM, group=False)
        try:
            async with asyncio.timeout(timeout):
                return await process.wait()
        except TimeoutError:
            # The agent runs in its own session: kill its whole process group, so no
            # worker outlives it.
            _signal(process, signal.SIGKILL, group=True)
    return await process.wait()


def _signal(process: asyncio.subprocess.Process, signum: int, *, group: bool) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            try:
                os.killpg(process.pid, signum)
                return
            except PermissionError:  # a member we may not signal; the agent itself we may
                pass
        os.kill(process.pid, signum)


async def _finish_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Let the drain tasks reach EOF briefly, then cancel what is left."""
    pending = [task for task in tasks if not task.done()]
    if pending:
        await asyncio.wait(pending, timeout=_PIPE_DRAIN_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _quote(stderr: str) -> str:
    if not stderr:
        return " (it wrote nothing on stderr)"
    return ":\n" + "\n".join(f"    {line}" for line in stderr.splitlines()[-15:])
