"""Shared pieces of the dashboard's tests: a fake agent, an app factory, a fixed clock.

The app under test is the real one with its I/O seams replaced: ``attach_fn`` by
``waylay.tui.fake_agent.FakeAgent.attach`` (a real core Session over a socket pair), the target
list by a fixed one, and the clock by a constant, so snapshots never change with the time.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot

from waylay.core.engine.config import Config, parse_config
from waylay.core.system.local_targets import LocalTarget
from waylay.tui.app import WaylayApp
from waylay.tui.fake_agent import FakeAgent, SyntheticRequest, synthetic

FIXED_NOW = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC
SIZE = (160, 45)

TARGETS = [
    LocalTarget(target="netns/shop", kind="netns", description="named network namespace",
                ports=(80, 8080), netns_inode=4026532001),
    LocalTarget(target="netns/payments", kind="netns", description="named network namespace",
                ports=(443,), netns_inode=4026532002),
    LocalTarget(target="pid/4242", kind="pid", description="python3 -m http.server 9000",
                ports=(9000,), netns_inode=4026531840),
]

STEAL_ALICE = """{"feature": {"network": {"incoming": {
    "mode": "steal", "http_filter": {"header_filter": "^x-user: alice$"}}}}}"""


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in a fresh event loop (no plugin needed for Pilot tests)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Times in the table are local times: pin the zone so snapshots are stable."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture(autouse=True)
def no_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The developer's own ~/.kube/config is never read: by default the dashboard under
    test finds no kubeconfig (tests of the Kubernetes branch point KUBECONFIG at a fake)."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))


@pytest.fixture
def fake() -> Iterator[FakeAgent]:
    agent = FakeAgent(listening_ports=(80, 8080))
    yield agent
    agent.close()


def config(text: str | None) -> Config | None:
    return parse_config(text, fmt="json", source="test.json") if text is not None else None


def make_app(fake: FakeAgent, *, config_text: str | None = STEAL_ALICE,
             target: str | None = "netns/shop", **kw: Any) -> WaylayApp:
    kw.setdefault("batch_interval", 0.05)
    kw.setdefault("clock", lambda: FIXED_NOW)
    return WaylayApp(target=target, config=config(config_text), attach_fn=fake.attach,
                     targets_source=lambda: list(TARGETS), **kw)


def requests(n: int, start: int = 0, **kw: Any) -> list[SyntheticRequest]:
    """``n`` deterministic requests with fixed timestamps just before FIXED_NOW."""
    return [synthetic(i, ts0=FIXED_NOW - 2.0, step_s=0.01, **kw) for i in range(start, start + n)]


def plain(widget: Any, width: int = 150) -> str:
    """The text a Static shows (its content rendered without styles)."""
    content = widget.content
    if isinstance(content, str):
        return content
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(content)
    return console.export_text()


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], object], what: str,
                   timeout: float = 10.0) -> None:
    """Let the app run until ``predicate()`` holds; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def attached(pilot: Pilot[Any]) -> WaylayApp:
    app = pilot.app
    assert isinstance(app, WaylayApp)
    await wait_for(pilot, lambda: app.bar.link == "attached", "the session to attach")
    return app


async def send(pilot: Pilot[Any], fake: FakeAgent, reqs: list[SyntheticRequest]) -> None:
    """Send requests through the fake agent and wait until the table has them all."""
    app = pilot.app
    assert isinstance(app, WaylayApp)
    want = app.store.received + len(reqs)
    fake.send(reqs)
    await wait_for(pilot, lambda: app.store.received >= want, f"{len(reqs)} requests")
    await pilot.pause()
