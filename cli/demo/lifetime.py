"""How long a demo child process lives: until SIGTERM / SIGINT, its owner's death, or a cap.

Every child the demo starts (the sample shop, the local app, the traffic generator) is
given ``--owner-pid``, the demo's pid. If the demo dies without cleaning up (SIGKILL, a
crash), its children notice within a second and exit, so no process of a dead demo keeps
serving, sending traffic or holding a namespace alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Final

# How often a child checks that its owner is alive.
OWNER_POLL_S: Final = 0.5
# No demo child lives longer than this, whatever happens (the generator has its own,
# shorter, deadline): a bound on every loop that waits for the end.
MAX_LIFETIME_S: Final = 24 * 3600.0


def owner_alive(pid: int) -> bool:
    """Is ``pid`` still running? (A process we may not signal counts as alive.)"""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def wait_for_end(owner_pid: int, stop: asyncio.Event | None = None,
                       max_seconds: float = MAX_LIFETIME_S) -> str:
    """Wait until a stop signal, the owner's death, ``stop`` being set, or ``max_seconds``.

    Returns why: "signal", "owner", "stopped" or "lifetime". SIGTERM and SIGINT set
    ``stop`` (made here if not given) for the caller's other tasks to see.
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    got_signal = False

    def on_signal() -> None:
        nonlocal got_signal
        got_signal = True
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    deadline = loop.time() + max_seconds
    try:
        while loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), OWNER_POLL_S)
            if stop.is_set():
                return "signal" if got_signal else "stopped"
            if not owner_alive(owner_pid):
                stop.set()
                return "owner"
        stop.set()
        return "lifetime"
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
