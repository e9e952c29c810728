"""The dashboard driving a real agent in a real network namespace (needs root).

A namespace gets an HTTP server on port 80 answering ``X-Served-By: remote``; a local one
on host loopback answers ``local``. The app attaches with the real ``waylay.core.client.attach``;
requests are sent with curl inside the namespace to 127.0.0.1:80 (the agent's OUTPUT
``-o lo`` rule catches them, as for a sidecar). Only loopback and this test's namespace
see traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from tests.netns import have_root_netns, nat_rules, netns, ns_popen, ns_run
from tests.tui.conftest import SIZE, wait_for
from waylay.core.engine.config import parse_config
from waylay.tui.app import WaylayApp

REASON = have_root_netns()
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(REASON is not None, reason=REASON or "")]

HTTP_APP = Path(__file__).resolve().parents[1] / "integration" / "servers" / "http_app.py"
CLEAN_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
PATHS = ["/api/orders/1", "/web/home", "/api/cart", "/web/about", "/api/orders/2",
         "/health", "/api/users/7", "/web/faq"]
ALICE = {"/web/home", "/api/cart", "/health"}  # sent with X-User: alice


def _listening(proc: subprocess.Popen[bytes], what: str) -> int:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout=20):
            line = proc.stdout.readline().decode()
            if line.startswith("LISTENING "):
                return int(line.split()[1])
    proc.kill()
    raise AssertionError(f"{what} did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="module")
def bed() -> Iterator[tuple[str, int]]:
    """(namespace with a remote app on :80, port of the local app on host loopback)."""
    with netns("wltui") as ns:
        remote = ns_popen(ns, [sys.executable, str(HTTP_APP), "remote", "80"],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        local = subprocess.Popen([sys.executable, str(HTTP_APP), "local", "0", "--host",
                                  "127.0.0.1"], stdout=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL)
        try:
            _listening(remote, "the remote app")
            yield ns, _listening(local, "the local app")
        finally:
            _stop(remote)
            _stop(local)
            inode = os.stat(f"/run/netns/{ns}").st_ino
            for entry in filter(str.isdigit, os.listdir("/proc")):
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                        os.kill(int(entry), signal.SIGKILL)  # every process in there is ours


def served_by(ns: str, path: str) -> str:
    """GET path inside the namespace; who answered (X-Served-By)."""
    headers = ["-H", "X-User: alice"] if path in ALICE else []
    done = ns_run(ns, ["curl", "-sS", "--noproxy", "*", "--max-time", "20", "-D", "-",
                       "-o", "/dev/null", *headers, f"http://127.0.0.1:80{path}"],
                  env=CLEAN_ENV)
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "x-served-by":
            return value.strip()
    raise AssertionError(f"no X-Served-By in {done.stdout!r}")


async def send_all(app: WaylayApp, pilot: Any, ns: str) -> dict[str, str]:
    """Send every path once (from a thread: the session delivers stolen requests on this
    loop); wait until the table has them; who served each."""
    before = app.store.received
    served = {}
    for path in PATHS:
        served[path] = await asyncio.to_thread(served_by, ns, path)
    await wait_for(pilot, lambda: app.store.received >= before + len(PATHS),
                   "the request events", timeout=20)
    return served


def verdicts(app: WaylayApp, n: int) -> dict[str, str]:
    return {str(r.event.path): str(r.verdict) for r in list(app.store)[-n:]}


async def test_filters_applied_from_the_editor_change_what_a_real_agent_steals(
        bed: tuple[str, int]) -> None:
    ns, local_port = bed
    rules_before = nat_rules(ns)
    config = parse_config('{"feature": {"network": {"incoming": {"mode": "steal", '
                          '"http_filter": {"header_filter": "^x-user: alice$"}}}}}',
                          fmt="json")
    app = WaylayApp(target=f"netns/{ns}", config=config, cli_ports={80: local_port},
                    targets_source=list, ttl=5.0)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.bar.link == "attached" and app.bar.plans,
                       "the agent", timeout=30)
        await wait_for(pilot, lambda: any("steal port 80" in m for _, m in
                                          app.log_panel.entries), "the subscription")
        served = await send_all(app, pilot, ns)
        assert served == {p: "local" if p in ALICE else "remote" for p in PATHS}
        assert verdicts(app, len(PATHS)) == {p: "stolen" if p in ALICE else "passed"
                                             for p in PATHS}
        last = app.store[-1].finished  # the dashboard asks for capture
        assert last is not None and last.capture is not None
        assert any(n.lower() == "user-agent" for n, _ in last.capture.request_headers)

        # An invalid regex is shown and never reaches the agent.
        await pilot.press("f")
        value = app.editor.query_one("#filter-value", Input)
        value.value = ""
        await pilot.press(*"^x-user: (alice")
        await pilot.press("enter")
        await pilot.pause()
        assert "not applied" in str(app.editor.query_one("#filter-status").render())
        served = await send_all(app, pilot, ns)
        assert served == {p: "local" if p in ALICE else "remote" for p in PATHS}

        # A valid path filter: preview, apply, and the next requests follow it.
        app.editor.query_one("#filter-kind").value = "path_filter"
        await pilot.pause()
        value.value = ""
        await pilot.press(*"^/api/")
        await wait_for(pilot, lambda: app.last_preview is not None
                       and app.last_preview.considered == 2 * len(PATHS), "the preview")
        predicted = app.last_preview.taken
        assert predicted == 2 * sum(p.startswith("/api/") for p in PATHS)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.client.incoming.http_filter is not None and
                       app.client.incoming.http_filter.text == "path_filter: ^/api/",
                       "the filter to be applied", timeout=15)
        served = await send_all(app, pilot, ns)
        assert served == {p: "local" if p.startswith("/api/") else "remote" for p in PATHS}
        again = verdicts(app, len(PATHS))
        assert again == {p: "stolen" if p.startswith("/api/") else "passed" for p in PATHS}
        # The preview judged both earlier rounds (the same paths twice).
        assert predicted == 2 * sum(v == "stolen" for v in again.values())
        assert app.client.session_no == 1  # applied in place, never restarted

        await pilot.press("q")
        await wait_for(pilot, lambda: not app.client.busy, "the session to end", timeout=30)
    deadline = time.monotonic() + 15
    while nat_rules(ns) != rules_before and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert nat_rules(ns) == rules_before
    assert not agents_in(ns), "the agent outlived the dashboard"


def agents_in(ns: str) -> list[int]:
    inode = os.stat(f"/run/netns/{ns}").st_ino
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino != inode:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"agent" in f.read():
                    found.append(int(entry))
    return found
