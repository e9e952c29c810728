"""The demo's child processes: start, wait until they listen, stop; and the run's record.

Every child runs in a session of its own, so the terminal's Ctrl-C reaches only the demo,
which then stops them in order (generator, session, apps, namespace). Each child's stderr
goes to a log file in the run's private directory and is quoted when it fails to start.

The run's record (``RunRecord``) is a small JSON file in a directory only this user can
read: the demo's pid and start time, its namespace and its children (pid and start time).
A demo killed before it could clean up leaves its record behind, and the next demo uses it
to remove what is left (``waylay.cli.demo.sandbox.clean_leftovers``). Start times guard against
pid reuse: a pid is only ever signalled while it still names the process recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from waylay.core.engine.errors import TargetError
from waylay.core.system import agent_directory
from waylay.core.system.interpreter import clean_environment

# Bounds on waiting; none of them is a performance expectation.
START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 5.0
# How much of a failed child's log is quoted.
LOG_TAIL_LINES: Final = 12
# Children never see the user's proxy settings: the demo's traffic stays on this machine.
CHILD_ENV: Final = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Field 22 of stat(5); after the ")" that ends the command name, it is the 20th.
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def same_process(pid: int, started: int | None) -> bool:
    """Is ``pid`` alive and still the process that started at ``started``?"""
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def demo_directory() -> Path:
    """Where run records live (next to the agents' directory; only this user can read it)."""
    path = agent_directory.directory().parent / "demo"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@dataclass
class RunRecord:
    """What a running demo owns, kept on disk for the demo that comes after a crash."""

    owner: int
    owner_start: int | None
    netns: str | None = None
    children: list[list[int | None]] = field(default_factory=list)  # [pid, start time]

    @property
    def path(self) -> Path:
        return demo_directory() / f"run-{self.owner}.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        tmp.replace(self.path)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def owner_alive(self) -> bool:
        return same_process(self.owner, self.owner_start)

    @classmethod
    def load(cls, path: Path) -> RunRecord | None:
        try:
            doc = json.loads(path.read_text())
            return cls(owner=int(doc["owner"]), owner_start=doc.get("owner_start"),
                       netns=doc.get("netns"), children=list(doc.get("children", [])))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class Children:
    """The child processes of one demo run, recorded, and stopped in reverse order."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        self.logs = Path(tempfile.mkdtemp(prefix="waylay-demo-"))
        self._procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, argv: Sequence[str], what: str) -> subprocess.Popen[bytes]:
        """Start ``argv`` (stdout piped, stderr to its log file) and record it."""
        log = self.logs / f"{len(self._procs)}-{what.replace(' ', '-')}.log"
        with open(log, "wb") as err:
            try:
                proc = subprocess.Popen(
                    list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                    cwd="/", env=clean_environment(CHILD_ENV),
                    start_new_session=True)
            except OSError as exc:
                raise TargetError(f"cannot start {what} ({argv[0]}): {exc}") from exc
        self._procs.append((what, proc, log))
        self.record.children.append([proc.pid, start_time(proc.pid)])
        self.record.save()
        return proc

    def wait_listening(self, proc: subprocess.Popen[bytes], what: str,
                       timeout: float = START_TIMEOUT_S) -> int:
        """The port from the child's ``LISTENING <port>`` line; raises with its log if none."""
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in line and len(line) < 4096:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(timeout=left):
                    break
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        first = line.split(b"\n", 1)[0].decode(errors="replace")
        if first.startswith("LISTENING ") and first.split()[1].isdigit():
            return int(first.split()[1])
        self.stop(proc)
        raise TargetError(f"{what} did not start (exit {proc.returncode})"
                          + self.log_tail(proc))

    def log_tail(self, proc: subprocess.Popen[bytes]) -> str:
        log = next((log for _, p, log in self._procs if p is proc), None)
        try:
            text = log.read_text(errors="replace").strip() if log is not None else ""
        except OSError:
            text = ""
        if not text:
            return ""
        return ":\n" + "\n".join(f"    {line}" for line in text.splitlines()[-LOG_TAIL_LINES:])

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait, SIGKILL (its whole process group) if it lingers; its exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=timeout)
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every child still running, the last started first; remove the logs."""
        for _, proc, _ in reversed(self._procs):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop(proc)
        shutil.rmtree(self.logs, ignore_errors=True)
