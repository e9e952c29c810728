"""Tests for waylay.core.system.agent_launch: entering local targets, starting and stopping the
agent."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import waylay.core.system.agent_launch as agent_launch
from waylay.core.engine.errors import PrivilegeError, TargetError, UsageError
from waylay.core.engine.target import parse_target
from waylay.core.system.agent_launch import (
    AgentProcess,
    enter_command,
    error_for_exit,
    launch_local_agent,
    uid_inside,
)

REPO = Path(__file__).resolve().parents[2]

# A stand-in for `python -m waylay.agent`, launched the same way. It reports where it runs (network
# namespace inode, uid, capabilities), its argv and token, on its ready line and to every
# client of its Unix socket. --mode picks a behaviour; --count how many lines follow ready.
FAKE_AGENT = r"""
import argparse, json, os, signal, socket, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--listen", required=True)
parser.add_argument("--ttl", required=True)
parser.add_argument("--mode", default="ready")
parser.add_argument("--count", type=int, default=0)
parser.add_argument("--pidfile")
args = parser.parse_args()
if args.pidfile:
    with open(args.pidfile, "w") as f:
        f.write(str(os.getpid()))

def say(**message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()

status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
info = {
    "netns_inode": os.stat("/proc/self/ns/net").st_ino,
    "uid": os.getuid(),
    "cap_eff": int(status["CapEff"], 16),
    "argv": sys.argv,
    "token": os.environ.get("WAYLAY_TOKEN"),
}
if args.mode == "error":
    print("details on stderr", file=sys.stderr)
    say(event="error", message="iptables is missing: install iptables", exit=args.count)
    sys.exit(args.count)
if args.mode == "crash":
    print("Traceback: boom, something broke", file=sys.stderr)
    sys.exit(1)
if args.mode == "silent":
    print("starting slowly", file=sys.stderr, flush=True)
    time.sleep(60)
    sys.exit(0)
print("not json at all", flush=True)
say(event="warning", message="leftover rules found")
server = socket.socket(socket.AF_UNIX)
server.bind(args.listen.removeprefix("unix:"))
server.listen()
if args.mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
public = {key: value for key, value in info.items() if key != "token"}
say(event="ready", listen=args.listen, chain="WAYLAY-test", proxy_port=0, **public)
for i in range(args.count):
    say(event="stats", i=i, pad="x" * 1000)
while True:
    connection, _ = server.accept()
    connection.sendall(json.dumps(info).encode())
    connection.close()
"""


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A short, world-readable directory holding the fake agent (user nobody runs it too)."""
    directory = Path(tempfile.mkdtemp(prefix="wlt-", dir="/tmp"))
    try:
        directory.chmod(0o755)
        fake = directory / "fake_agent.py"
        fake.write_text(FAKE_AGENT)
        fake.chmod(0o644)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fake_argv(shared_dir: Path) -> list[str]:
    """agent_argv running the fake agent with this interpreter."""
    return [sys.executable, str(shared_dir / "fake_agent.py")]


@pytest.fixture
def socket_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Make launches create their socket directory here, to check it is removed."""
    directory = Path(tempfile.mkdtemp(prefix="wls-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def no_enter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the agent in our own namespace: for tests of the process protocol only."""
    monkeypatch.setattr(agent_launch, "enter_command", lambda target: [])


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _connect(path: str) -> dict[str, object]:
    async def fetch() -> dict[str, object]:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            data = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        result: dict[str, object] = json.loads(data)
        return result

    return asyncio.run(fetch())


# --- pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid_map", "uid", "inside"),
    [
        ("         0      65534          1\n", 65534, 0),
        ("         0       1000          1\n", 65534, None),
        ("         0     100000      65536\n      1000      1000         1\n", 1000, 1000),
        ("         0     100000      65536\n", 100005, 5),
        ("", 0, None),
        ("garbage\n", 0, None),
        ("         0          0 4294967295\n", 0, 0),
    ],
)
def test_uid_inside(uid_map: str, uid: int, inside: int | None) -> None:
    """uid_inside finds which uid a uid becomes inside a user namespace."""
    assert uid_inside(uid_map, uid) == inside


@pytest.mark.parametrize(
    ("code", "kind"),
    [(2, UsageError), (3, TargetError), (4, PrivilegeError), (1, TargetError), (None, TargetError)],
)
def test_error_for_exit(code: object, kind: type[Exception]) -> None:
    """An agent's error line maps its exit code to waylay's error of that code."""
    error = error_for_exit(code, "message")
    assert type(error) is kind
    assert str(error) == "message"


# --- enter_command ------------------------------------------------------------------------


def test_kubernetes_target_is_not_local() -> None:
    """A Kubernetes target cannot be launched locally: UsageError."""
    with pytest.raises(UsageError, match="Kubernetes target"):
        enter_command(parse_target("deploy/web"))


def test_netns_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """netns targets without root are a PrivilegeError telling how to proceed."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError) as info:
        enter_command(parse_target("netns/shop"))
    assert str(info.value) == (
        "netns targets need root (CAP_NET_ADMIN): run with sudo, or use a pid/N target "
        "inside a user namespace you own"
    )
    assert info.value.exit_code == 4


def test_missing_netns_is_target_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A named namespace absent from /run/netns is a TargetError."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(TargetError, match="no network namespace 'waylay-absent-"):
        enter_command(parse_target(f"netns/waylay-absent-{secrets.token_hex(4)}"))


def test_missing_process_is_target_error() -> None:
    """A pid that does not exist is TargetError("no process N")."""
    with pytest.raises(TargetError, match=r"^no process 4194304$"):
        enter_command(parse_target("pid/4194304"))


def test_pid_as_root_uses_nsenter_net(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root a pid target is entered with nsenter --net=/proc/N/ns/net."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    prefix = enter_command(parse_target(f"pid/{os.getpid()}"))
    assert os.path.basename(prefix[0]) == "nsenter"
    assert prefix[1:] == [f"--net=/proc/{os.getpid()}/ns/net"]


def test_own_namespace_without_root_is_privilege_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain user cannot intercept in its own network namespace: PrivilegeError."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="your own network namespace"):
        enter_command(parse_target(f"pid/{os.getpid()}"))


@pytest.mark.parametrize(("tool", "package"), [("ip", "iproute2"), ("nsenter", "util-linux")])
def test_missing_tool_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tool: str, package: str
) -> None:
    """A missing ip / nsenter is a PrivilegeError naming the Debian package."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os.path, "exists", lambda path: True)
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
    target = parse_target("netns/shop" if tool == "ip" else f"pid/{os.getpid()}")
    with pytest.raises(PrivilegeError, match=f"`{tool}` is missing: .*{package}"):
        enter_command(target)


@pytest.fixture
def userns_sleeper() -> Iterator[int]:
    """A process in a fresh user + network namespace (unshare --map-root-user); killed after."""
    process = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "60"])
    try:
        _wait_for_own_netns(process)
        yield process.pid
    finally:
        process.kill()
        process.wait()


def _wait_for_own_netns(process: subprocess.Popen[bytes]) -> None:
    ours = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.skip(f"unshare failed (exit {process.returncode}): no user namespaces here")
        try:
            if os.stat(f"/proc/{process.pid}/ns/net").st_ino != ours:
                return
        except OSError:
            pass
        time.sleep(0.02)
    pytest.fail("unshare did not enter a new network namespace")


def test_userns_owned_by_someone_else_is_privilege_error(
    monkeypatch: pytest.MonkeyPatch, userns_sleeper: int
) -> None:
    """A plain user may not enter a user namespace another uid owns."""
    monkeypatch.setattr(os, "geteuid", lambda: 12345)
    with pytest.raises(PrivilegeError, match="not inside a user namespace you own"):
        enter_command(parse_target(f"pid/{userns_sleeper}"))


# --- the process protocol (in our own namespace) --------------------------------------------


@pytest.mark.usefixtures("no_enter")
def test_launch_ready_token_argv_and_stop(fake_argv: list[str], socket_parent: Path) -> None:
    """The agent gets --listen/--ttl on argv and the token only in its environment."""
    messages: list[dict[str, object]] = []

    async def scenario() -> tuple[AgentProcess, dict[str, object], int]:
        agent = await launch_local_agent(
            parse_target("pid/1"),
            ttl=7.5,
            extra_args=["--mode", "ready"],
            on_message=messages.append,
            agent_argv=fake_argv,
        )
        try:
            info = await asyncio.to_thread(_connect, agent.socket_path)
        finally:
            code = await agent.stop()
        return agent, info, code

    agent, info, code = asyncio.run(scenario())
    assert code == 0
    assert agent.ready["event"] == "ready"
    assert agent.ready["listen"] == f"unix:{agent.socket_path}"
    assert agent.ready["chain"] == "WAYLAY-test"
    assert agent.socket_path.startswith(str(socket_parent))
    assert os.path.basename(agent.socket_path) == "agent.sock"
    assert info["token"] == agent.token
    argv = info["argv"]
    assert isinstance(argv, list)
    assert agent.token not in " ".join(argv)
    assert argv[1:] == ["--listen", f"unix:{agent.socket_path}", "--ttl", "7.5", "--mode", "ready"]
    assert messages == [
        {"event": "warning", "message": "agent: not json at all"},
        {"event": "warning", "message": "leftover rules found"},
    ]
    assert agent.token not in repr(agent)
    assert list(socket_parent.iterdir()) == []  # the socket directory is gone


@pytest.mark.usefixtures("no_enter")
@pytest.mark.parametrize(("code", "kind"), [(2, UsageError), (3, TargetError), (4, PrivilegeError)])
def test_error_line_raises_mapped_error(
    fake_argv: list[str], socket_parent: Path, code: int, kind: type[Exception]
) -> None:
    """An error line raises its message as the error class of its exit code."""
    with pytest.raises(kind, match=r"^iptables is missing: install iptables$"):
        asyncio.run(
            launch_local_agent(
                parse_target("pid/1"),
                extra_args=["--mode", "error", "--count", str(code)],
                agent_argv=fake_argv,
            )
        )
    assert list(socket_parent.iterdir()) == []


@pytest.mark.usefixtures("no_enter")
def test_exit_before_ready_quotes_stderr(fake_argv: list[str], socket_parent: Path) -> None:
    """An agent exiting without a ready or error line is a TargetError quoting its stderr."""
    with pytest.raises(TargetError) as info:
        asyncio.run(
            launch_local_agent(
                parse_target("pid/1"), extra_args=["--mode", "crash"], agent_argv=fake_argv
            )
        )
    assert "exited with code 1 before it was ready" in str(info.value)
    assert "Traceback: boom, something broke" in str(info.value)
    assert list(socket_parent.iterdir()) == []


@pytest.mark.usefixtures("no_enter")
def test_startup_timeout_kills_the_agent(
    fake_argv: list[str], socket_parent: Path, shared_dir: Path
) -> None:
    """An agent silent past startup_timeout is killed; TargetError quotes its stderr."""
    pidfile = shared_dir / f"pid-{secrets.token_hex(4)}"
    started = time.monotonic()
    with pytest.raises(TargetError) as info:
        asyncio.run(
            launch_local_agent(
                parse_target("pid/1"),
                extra_args=["--mode", "silent", "--pidfile", str(pidfile)],
                startup_timeout=1.0,
                agent_argv=fake_argv,
            )
        )
    assert time.monotonic() - started < 10
    assert "not ready within 1 s" in str(info.value)
    assert "starting slowly" in str(info.value)
    assert _pid_gone(int(pidfile.read_text()))
    assert list(socket_parent.iterdir()) == []


@pytest.mark.usefixtures("no_enter")
def test_cancelled_launch_kills_the_agent(
    fake_argv: list[str], socket_parent: Path, shared_dir: Path
) -> None:
    """Cancelling a launch in progress kills the agent and removes its directory."""
    pidfile = shared_dir / f"pid-{secrets.token_hex(4)}"

    async def scenario() -> None:
        task = asyncio.create_task(
            launch_local_agent(
                parse_target("pid/1"),
                extra_args=["--mode", "silent", "--pidfile", str(pidfile)],
                agent_argv=fake_argv,
            )
        )
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert _pid_gone(int(pidfile.read_text()))
    assert list(socket_parent.iterdir()) == []


@pytest.mark.usefixtures("no_enter")
def test_missing_agent_program_is_target_error(socket_parent: Path) -> None:
    """An agent program that cannot be executed is a TargetError naming it."""
    with pytest.raises(TargetError, match=r"cannot start the agent .*/nonexistent/python"):
        asyncio.run(launch_local_agent(parse_target("pid/1"), agent_argv=["/nonexistent/python"]))
    assert list(socket_parent.iterdir()) == []


@pytest.mark.usefixtures("no_enter")
def test_output_after_ready_is_drained_to_the_callback(fake_argv: list[str]) -> None:
    """Lines after ready (megabytes, more than a pipe holds) all reach on_message."""
    count = 3000  # ~3 MB: far beyond the 64 KiB pipe buffer
    received: list[dict[str, object]] = []

    async def scenario() -> int:
        agent = await launch_local_agent(
            parse_target("pid/1"),
            extra_args=["--count", str(count)],
            on_message=received.append,
            agent_argv=fake_argv,
        )
        try:
            deadline = time.monotonic() + 30
            while len(received) < count + 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            exit_code = await agent.stop()
        return exit_code

    assert asyncio.run(scenario()) == 0
    stats = [m for m in received if m["event"] == "stats"]
    assert [m["i"] for m in stats] == list(range(count))


@pytest.mark.usefixtures("no_enter")
def test_failing_callback_does_not_stop_draining(fake_argv: list[str]) -> None:
    """A callback that raises is logged, and draining goes on."""
    calls: list[object] = []

    def broken(message: dict[str, object]) -> None:
        calls.append(message.get("i"))
        raise RuntimeError("callback bug")

    async def scenario() -> None:
        agent = await launch_local_agent(
            parse_target("pid/1"),
            extra_args=["--count", "200"],
            on_message=broken,
            agent_argv=fake_argv,
        )
        try:
            deadline = time.monotonic() + 30
            while 199 not in calls and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await agent.stop()

    asyncio.run(scenario())
    assert 199 in calls


@pytest.mark.usefixtures("no_enter")
def test_stop_escalates_to_sigkill_and_is_idempotent(
    fake_argv: list[str], socket_parent: Path
) -> None:
    """stop() kills an agent ignoring SIGTERM after the timeout; a second stop is harmless."""

    async def scenario() -> tuple[int, int, float]:
        agent = await launch_local_agent(
            parse_target("pid/1"), extra_args=["--mode", "ignore-term"], agent_argv=fake_argv
        )
        started = time.monotonic()
        first = await agent.stop(timeout=0.5)
        elapsed = time.monotonic() - started
        return first, await agent.stop(), elapsed

    first, second, elapsed = asyncio.run(scenario())
    assert first == second == -signal.SIGKILL
    assert 0.4 < elapsed < 5
    assert list(socket_parent.iterdir()) == []


# --- real namespaces ----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create namespaces")


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh named network namespace, deleted afterwards."""
    name = f"waylay-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _launch_and_query(target: str, fake_argv: list[str]) -> tuple[dict[str, object], int]:
    async def scenario() -> tuple[dict[str, object], int]:
        agent = await launch_local_agent(parse_target(target), agent_argv=fake_argv)
        try:
            info = await asyncio.to_thread(_connect, agent.socket_path)
            assert agent.ready["netns_inode"] == info["netns_inode"]
        finally:
            code = await agent.stop()
        return info, code

    return asyncio.run(scenario())


@pytest.mark.integration
@needs_root
def test_launch_into_named_netns(netns: str, fake_argv: list[str]) -> None:
    """netns/NAME runs the agent inside that namespace, reachable over its Unix socket."""
    info, code = _launch_and_query(f"netns/{netns}", fake_argv)
    assert info["netns_inode"] == os.stat(f"/run/netns/{netns}").st_ino
    assert code == 0


@pytest.mark.integration
@needs_root
def test_launch_into_pid_netns_as_root(fake_argv: list[str]) -> None:
    """pid/N as root runs the agent in process N's network namespace."""
    process = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        _wait_for_own_netns(process)
        info, code = _launch_and_query(f"pid/{process.pid}", fake_argv)
        assert info["netns_inode"] == os.stat(f"/proc/{process.pid}/ns/net").st_ino
        assert code == 0
    finally:
        process.kill()
        process.wait()


# --- unprivileged: a plain user and a user namespace it owns ----------------------------------

# Run as user nobody. Prints one JSON object describing what happened.
UNPRIVILEGED_DRIVER = r"""
import asyncio, json, os, subprocess, sys, time
from waylay.core.system.agent_launch import enter_command, launch_local_agent
from waylay.core.engine.errors import PrivilegeError
from waylay.core.engine.target import parse_target

fake = sys.argv[1]
ours = os.stat("/proc/self/ns/net").st_ino

def start(argv):
    process = subprocess.Popen(argv)
    deadline = time.monotonic() + 10
    while os.stat(f"/proc/{process.pid}/ns/net").st_ino == ours:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{argv} failed")
        time.sleep(0.02)
    return process

async def fetch(path):
    reader, writer = await asyncio.open_unix_connection(path)
    data = await reader.read()
    writer.close()
    return json.loads(data)

async def main():
    result = {"uid": os.getuid()}
    mapped = start(["unshare", "--user", "--map-root-user", "--net", "sleep", "60"])
    unmapped = start(["unshare", "--user", "--net", "sleep", "60"])
    try:
        result["expected_inode"] = os.stat(f"/proc/{mapped.pid}/ns/net").st_ino
        agent = await launch_local_agent(
            parse_target(f"pid/{mapped.pid}"), agent_argv=[sys.executable, fake]
        )
        try:
            result["ready"] = agent.ready
            result["via_socket"] = await fetch(agent.socket_path)
        finally:
            result["exit"] = await agent.stop()
        result["socket_dir_left"] = os.path.exists(os.path.dirname(agent.socket_path))
        for key, pid in (("unmapped", unmapped.pid), ("own_netns", os.getpid())):
            try:
                enter_command(parse_target(f"pid/{pid}"))
                result[key] = "no error"
            except PrivilegeError as error:
                result[key] = str(error)
    finally:
        for process in (mapped, unmapped):
            process.kill()
            process.wait()
    print(json.dumps(result))

asyncio.run(main())
"""

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
CAP_NET_ADMIN = 12


def _interpreter_for_nobody() -> tuple[str | None, str]:
    """An interpreter user nobody can run that imports waylay from the repo, or why not."""
    reasons = []
    for candidate in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        # Exec through a shell: setpriv's own exec may still pass directories that nobody's
        # later execs (nsenter's) cannot.
        done = subprocess.run(
            [
                *NOBODY,
                "/bin/sh",
                "-c",
                'exec "$0" -c "import sys, waylay.core.system.agent_launch;'
                ' assert sys.version_info >= (3, 11)"',
                candidate,
            ],
            capture_output=True,
            text=True,
            cwd="/",
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return candidate, ""
        reasons.append(f"{candidate}: {done.stderr.strip().splitlines()[-1:]}")
    return None, "; ".join(reasons)


@pytest.mark.integration
def test_unprivileged_pid_target_in_owned_user_namespace(shared_dir: Path) -> None:
    """As nobody, pid/N of an `unshare --user --map-root-user --net` process gets the agent
    into N's namespace as root there (CAP_NET_ADMIN); unmapped or own namespaces are refused."""
    if os.geteuid() != 0:
        pytest.skip("runs the scenario as user nobody through setpriv, which needs root")
    if shutil.which("setpriv") is None or shutil.which("unshare") is None:
        pytest.skip("setpriv / unshare (util-linux) are missing")
    interpreter, why = _interpreter_for_nobody()
    if interpreter is None:
        pytest.skip(f"user nobody cannot run a Python that imports waylay ({why})")
    driver = shared_dir / "driver.py"
    driver.write_text(UNPRIVILEGED_DRIVER)
    driver.chmod(0o644)
    process = subprocess.Popen(
        [*NOBODY, interpreter, str(driver), str(shared_dir / "fake_agent.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the driver and its unshare children
            process.communicate()
    assert process.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["uid"] == 65534
    ready = result["ready"]
    assert ready["event"] == "ready"
    assert ready["netns_inode"] == result["expected_inode"]
    assert result["via_socket"]["netns_inode"] == result["expected_inode"]
    assert ready["uid"] == 0  # root inside the user namespace
    assert ready["cap_eff"] & (1 << CAP_NET_ADMIN)
    assert result["exit"] == 0
    assert result["socket_dir_left"] is False
    assert "does not map your uid to root" in result["unmapped"]
    assert "your own network namespace" in result["own_netns"]
