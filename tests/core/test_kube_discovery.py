"""The namespace watcher's loop against an in-memory API: list, watch, re-list, back off, stop.

The real API (the official client over HTTP) is exercised in tests/kube/test_discovery.py;
here a scripted stand-in checks the reflector logic and its timing rules.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from waylay.core.engine.errors import PrivilegeError, TargetError
from waylay.core.kube.api import KubeContext, Resource
from waylay.core.kube.discovery import NamespaceWatcher, snapshot
from waylay.core.kube.inventory import Inventory

CLOSE = object()


def obj(name: str, uid: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "namespace": "shop", "labels": labels},
            "spec": {"selector": {"matchLabels": labels}, "replicas": 1},
            "status": {"phase": "Running"}}


class ScriptedApi:
    """list() answers from ``objects``; each watch() stream reads from its own queue
    (``push`` feeds every open stream of a resource)."""

    def __init__(self, *, rollouts: bool = False) -> None:
        self.context = KubeContext(name="fake", cluster="c", namespace="shop", current=True)
        self.objects: dict[str, list[dict[str, Any]]] = {
            "pods": [], "deployments": [], "statefulsets": [], "rollouts": []}
        self.rollouts = rollouts
        self.list_errors: dict[str, list[Exception]] = {}
        self.lists: dict[str, int] = {}
        self.streams: dict[str, list[queue.Queue[object]]] = {}
        self.lock = threading.Lock()

    def rollouts_available(self) -> bool:
        return self.rollouts

    def list(self, what: Resource, namespace: str | None = None,
             **_: Any) -> tuple[list[dict[str, Any]], str]:
        with self.lock:
            self.lists[what.plural] = self.lists.get(what.plural, 0) + 1
            errors = self.list_errors.get(what.plural)
            if errors:
                raise errors.pop(0)
            return list(self.objects[what.plural]), "1"

    def watch(self, what: Resource, namespace: str | None, *, resource_version: str,
              stop: threading.Event,
              on_open: Callable[[Callable[[], None]], None] | None = None,
              **_: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        stream: queue.Queue[object] = queue.Queue()
        with self.lock:
            self.streams.setdefault(what.plural, []).append(stream)
        if on_open is not None:
            on_open(lambda: stream.put(CLOSE))
        while True:
            item = stream.get(timeout=10)
            if item is CLOSE or stop.is_set():
                return
            assert isinstance(item, tuple)
            yield item

    def push(self, plural: str, event: object) -> None:
        with self.lock:
            streams = list(self.streams.get(plural, []))
        for stream in streams:
            stream.put(event)

    def watching(self, plural: str) -> int:
        with self.lock:
            return len(self.streams.get(plural, []))


class Recorder:
    def __init__(self) -> None:
        self.inventories: list[Inventory] = []
        self.errors: list[str] = []

    def until(self, predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    @property
    def last(self) -> Inventory:
        return self.inventories[-1]


def watcher(api: ScriptedApi, rec: Recorder, **kw: Any) -> NamespaceWatcher:
    kw.setdefault("interval", 0.01)
    kw.setdefault("backoff", (0.01, 0.05))
    w = NamespaceWatcher(api, "shop", on_change=rec.inventories.append,  # type: ignore[arg-type]
                         on_error=rec.errors.append, **kw)
    w.start()
    return w


def test_snapshot_lists_each_kind_once() -> None:
    """waylay targets: one list per kind; rollouts only when the cluster serves them."""
    api = ScriptedApi()
    api.objects["pods"] = [obj("web-1", "p1", app="web")]
    api.objects["deployments"] = [obj("web", "d1", app="web")]
    inv = snapshot(api, "shop")  # type: ignore[arg-type]
    assert [p.name for p in inv.pods] == ["web-1"] and inv.context == "fake"
    assert not inv.rollouts_available and "rollouts" not in api.lists
    api.rollouts = True
    assert snapshot(api, "shop").rollouts_available  # type: ignore[arg-type]
    assert api.lists["rollouts"] == 1


def test_first_inventory_is_complete_then_events_fold_in() -> None:
    """on_change first sees every kind listed, then each watch event."""
    api = ScriptedApi(rollouts=True)
    api.objects["pods"] = [obj("web-1", "p1", app="web")]
    api.objects["deployments"] = [obj("web", "d1", app="web")]
    api.objects["rollouts"] = [obj("canary", "r1", app="canary")]
    rec = Recorder()
    w = watcher(api, rec)
    try:
        rec.until(lambda: rec.inventories, "the first inventory")
        first = rec.inventories[0]
        assert [p.name for p in first.pods] == ["web-1"]
        assert [wl.name for wl in first.workloads] == ["web", "canary"]
        assert first.rollouts_available
        rec.until(lambda: api.watching("pods") == 1, "the pod watch")
        api.push("pods", ("ADDED", obj("web-2", "p2", app="web")))
        rec.until(lambda: rec.last.pod("web-2") is not None, "the added pod")
        api.push("pods", ("DELETED", obj("web-1", "p1")))
        rec.until(lambda: rec.last.pod("web-1") is None, "the deleted pod")
        assert rec.errors == []
    finally:
        w.stop()


def test_gone_relists_silently() -> None:
    """A 410 Gone ERROR event makes the watcher list again, without an error."""
    api = ScriptedApi()
    rec = Recorder()
    w = watcher(api, rec)
    try:
        rec.until(lambda: api.watching("pods") == 1, "the pod watch")
        api.objects["pods"] = [obj("late", "p9")]
        api.push("pods", ("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"}))
        rec.until(lambda: rec.inventories and rec.last.pod("late") is not None, "the re-list")
        assert api.lists["pods"] == 2 and rec.errors == []
    finally:
        w.stop()


def test_failures_are_reported_and_retried() -> None:
    """A refused list reaches on_error; the watcher backs off and recovers."""
    api = ScriptedApi()
    api.list_errors["pods"] = [
        PrivilegeError("the Kubernetes API refused to list pods in namespace shop"),
        TargetError("cannot reach the Kubernetes API")]
    api.objects["pods"] = [obj("web-1", "p1")]
    rec = Recorder()
    w = watcher(api, rec)
    try:
        rec.until(lambda: rec.inventories and rec.last.pod("web-1") is not None,
                  "recovery after two failures")
        assert len(rec.errors) == 2
        assert "the Kubernetes API refused to list pods" in rec.errors[0]
        assert w.problems == []  # recovered
    finally:
        w.stop()


def test_a_kind_that_keeps_failing_stays_a_problem() -> None:
    """Other kinds still arrive; ``problems`` names the failing one until it recovers."""
    api = ScriptedApi()
    api.list_errors["pods"] = [PrivilegeError("refused to list pods")] * 1000
    api.objects["deployments"] = [obj("web", "d1", app="web")]
    rec = Recorder()
    w = watcher(api, rec, backoff=(0.05, 0.05))
    try:
        rec.until(lambda: rec.inventories, "an inventory without pods")
        assert [wl.name for wl in rec.last.workloads] == ["web"]
        assert w.problems == ["refused to list pods"]
        api.push("deployments", ("MODIFIED", obj("web", "d1", app="web")))
        time.sleep(0.1)
        assert w.problems == ["refused to list pods"]
        api.list_errors["pods"].clear()
        rec.until(lambda: w.problems == [], "the recovery")
    finally:
        w.stop()


def test_a_watch_that_ends_at_once_backs_off() -> None:
    """A server closing every watch at once is not listed in a tight loop."""
    api = ScriptedApi()
    rec = Recorder()
    w = watcher(api, rec, backoff=(0.2, 0.2))
    try:
        rec.until(lambda: api.watching("pods") == 1, "the pod watch")
        for _ in range(20):
            api.push("pods", CLOSE)
        time.sleep(0.5)
        assert api.lists["pods"] <= 5
    finally:
        w.stop()


def test_stop_is_prompt_and_silences_callbacks() -> None:
    """stop() aborts the open streams and returns (bounded only against a hang)."""
    api = ScriptedApi(rollouts=True)
    rec = Recorder()
    w = watcher(api, rec)
    rec.until(lambda: all(api.watching(p) for p in api.objects), "every watch")
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 30.0  # a hang, not a speed limit
    assert w.stopped
    seen = len(rec.inventories)
    api.push("pods", ("ADDED", obj("after", "p7")))
    time.sleep(0.05)
    assert len(rec.inventories) == seen


def test_updates_are_coalesced() -> None:
    """A burst of events reaches on_change a few times, ending with all of them."""
    api = ScriptedApi()
    rec = Recorder()
    w = watcher(api, rec, interval=0.2)
    try:
        rec.until(lambda: api.watching("pods") == 1 and rec.inventories, "the pod watch")
        before = len(rec.inventories)
        for i in range(200):
            api.push("pods", ("ADDED", obj(f"p-{i}", f"u{i}")))
        rec.until(lambda: len(rec.last.pods) == 200, "every pod")
        assert len(rec.inventories) - before <= 4
    finally:
        w.stop()
