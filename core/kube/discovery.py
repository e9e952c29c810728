"""Kubernetes targets, found and kept current (I/O): contexts, namespaces, inventories.

Theory of operation. ``snapshot`` lists one namespace once (``waylay targets``).
:class:`NamespaceWatcher` keeps one namespace current for the dashboard, the way
client-go's reflector does: for each kind (pods, deployments, statefulsets, and Argo
rollouts when the cluster serves them) a thread lists, then watches from the list's
resourceVersion, folding each event into an immutable ``waylay.core.kube.inventory.Inventory``.
When a watch ends (the server's timeout, a 410 Gone, an ERROR event, a broken stream) the
thread lists again; failures are reported through ``on_error`` and retried after an
exponential, bounded backoff. A separate notifier thread hands the newest inventory to
``on_change`` at most every ``interval`` seconds, so a rollout of a hundred pods costs
the dashboard a few redraws, not hundreds; it waits for every kind's first list, so the
first inventory shown is complete.

Callbacks run on the watcher's threads: they must be quick and must not wait for the
thread that calls ``stop()`` (the dashboard posts a message, thread-safe and
non-blocking). ``stop()`` aborts the open watch streams, so it returns within about a
second; a callback already running may still finish after it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Final

from waylay.core.engine.errors import WaylayError
from waylay.core.kube.api import (
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    ROLLOUTS,
    STATEFULSETS,
    KubeApi,
    KubeContext,
    Resource,
    list_contexts,
)
from waylay.core.kube.inventory import DELETED, Inventory, empty

RESOURCES: Final[dict[str, Resource]] = {
    "pod": PODS, "deployment": DEPLOYMENTS, "statefulset": STATEFULSETS, "rollout": ROLLOUTS}

# At most this many inventories a second reach on_change (see the module docstring).
NOTIFY_INTERVAL_S: Final = 0.2
# Backoff after a failed list or watch: doubles from the first value up to the second,
# so a cluster that is down is asked every 30 s, not in a loop.
BACKOFF_S: Final = (0.5, 30.0)
# A watch that ends this soon after it opened, having carried nothing, counts as a
# failure (a server that closes watches at once would otherwise be listed in a loop).
MIN_WATCH_S: Final = 1.0
# How long stop() waits for the threads (their streams are aborted, so they end at once;
# a list in flight can take up to its request timeout and is left to finish alone).
STOP_WAIT_S: Final = 1.0

ChangeSink = Callable[[Inventory], None]
ErrorSink = Callable[[str], None]


def contexts(config_file: str | None = None) -> list[KubeContext]:
    """The kubeconfig's contexts ([] without a kubeconfig)."""
    return list_contexts(config_file)


def namespaces(api: KubeApi) -> list[str]:
    """The names of the cluster's namespaces, sorted."""
    items, _ = api.list(NAMESPACES)
    return sorted(str((item.get("metadata") or {}).get("name", "")) for item in items)


def snapshot(api: KubeApi, namespace: str) -> Inventory:
    """One namespace listed once: pods, deployments, statefulsets and (when the cluster
    serves them) rollouts. Raises the API's ``TargetError`` / ``PrivilegeError``."""
    rollouts = api.rollouts_available()
    inventory = empty(namespace, context=api.context.name, rollouts_available=rollouts)
    for kind, resource in RESOURCES.items():
        if resource is ROLLOUTS and not rollouts:
            continue
        items, _ = api.list(resource, namespace)
        inventory = inventory.replace(kind, items)
    return inventory


class NamespaceWatcher:
    """Keeps one namespace's inventory current until ``stop()`` (see the module doc)."""

    def __init__(self, api: KubeApi, namespace: str, *, on_change: ChangeSink,
                 on_error: ErrorSink, interval: float = NOTIFY_INTERVAL_S,
                 backoff: tuple[float, float] = BACKOFF_S) -> None:
        self.api = api
        self.namespace = namespace
        self._on_change = on_change
        self._on_error = on_error
        self._interval = interval
        self._backoff = backoff
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._lock = threading.Lock()  # guards _inventory, _unsynced, _aborts, _problems
        self._inventory = empty(namespace, context=api.context.name)
        self._unsynced = set(RESOURCES)  # kinds whose first list has not been tried yet
        self._problems: dict[str, str] = {}  # kind -> its last failure, until it recovers
        self._aborts: dict[str, Callable[[], None]] = {}
        self._threads: list[threading.Thread] = []

    @property
    def inventory(self) -> Inventory:
        with self._lock:
            return self._inventory

    @property
    def problems(self) -> list[str]:
        """What is failing now (a kind's last error, until it lists again); [] if all is
        well. Read it in on_change: a kind that keeps failing while the others change
        would otherwise look recovered."""
        with self._lock:
            return [self._problems[kind] for kind in RESOURCES if kind in self._problems]

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("a NamespaceWatcher starts once")
        where = f"{self.api.context.name}/{self.namespace}"
        self._threads = [
            threading.Thread(target=self._follow, args=(kind,), daemon=True,
                             name=f"waylay-watch-{kind}-{where}")
            for kind in RESOURCES]
        self._threads.append(threading.Thread(target=self._notify_loop, daemon=True,
                                              name=f"waylay-watch-notify-{where}"))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """End every thread: open streams are aborted; returns within ``timeout``."""
        self._stop.set()
        self._changed.set()  # wakes the notifier
        with self._lock:
            aborts = list(self._aborts.values())
        for abort in aborts:
            abort()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- one kind --------------------------------------------------------------------

    def _follow(self, kind: str) -> None:
        """List and watch ``kind`` until stopped (the reflector loop)."""
        resource = RESOURCES[kind]
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                if resource is ROLLOUTS and not self._rollouts_served():
                    return
                healthy = self._list_and_watch(kind, resource)
            except WaylayError as exc:
                # The API's errors name the verb and resource already ("refused to list
                # pods in namespace shop"); an unreachable server is not about a kind.
                self._error(kind, str(exc))
                self._synced(kind)
                healthy = False
            if healthy:
                delay = self._backoff[0]
                continue
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self._backoff[1])

    def _rollouts_served(self) -> bool:
        served = self.api.rollouts_available()
        with self._lock:
            self._inventory = _with_rollouts(self._inventory, served)
        if not served:
            self._synced("rollout")
        return served

    def _list_and_watch(self, kind: str, resource: Resource) -> bool:
        """One list and the watch that follows it; False when the watch gave nothing
        and ended at once (then the caller backs off before listing again)."""
        items, version = self.api.list(resource, self.namespace)
        with self._lock:
            self._inventory = self._inventory.replace(kind, items)
            self._problems.pop(kind, None)
        self._synced(kind)
        opened = time.monotonic()
        events = 0
        try:
            for event_type, obj in self.api.watch(resource, self.namespace,
                                                  resource_version=version, stop=self._stop,
                                                  on_open=lambda abort: self._opened(kind,
                                                                                     abort)):
                events += 1
                if event_type == "ERROR":
                    # 410 Gone: our resourceVersion is too old; list again, silently.
                    if obj.get("code") != 410:
                        self._error(kind, f"watching {resource.rbac}: "
                                    f"{obj.get('message') or obj.get('reason') or obj}")
                        return False
                    return True
                if event_type in ("ADDED", "MODIFIED", DELETED):
                    with self._lock:
                        self._inventory = self._inventory.apply(event_type, kind, obj)
                    self._changed.set()
        except WaylayError as exc:
            if _gone(exc):
                return True
            raise
        finally:
            with self._lock:
                self._aborts.pop(kind, None)
        return events > 0 or time.monotonic() - opened >= MIN_WATCH_S

    def _opened(self, kind: str, abort: Callable[[], None]) -> None:
        with self._lock:
            self._aborts[kind] = abort
        if self._stop.is_set():  # stop() ran between the request and now
            abort()

    def _synced(self, kind: str) -> None:
        with self._lock:
            self._unsynced.discard(kind)
        self._changed.set()

    def _error(self, kind: str, message: str) -> None:
        with self._lock:
            self._problems[kind] = message
        if not self._stop.is_set():
            self._on_error(message)

    # -- the notifier ------------------------------------------------------------------

    def _notify_loop(self) -> None:
        """Hand the newest inventory to on_change, at most once per interval."""
        while not self._stop.is_set():
            self._changed.wait()
            if self._stop.is_set():
                return
            with self._lock:
                if self._unsynced:
                    self._changed.clear()  # the next kind to sync sets it again
                    continue
                self._changed.clear()
                inventory = self._inventory
            self._on_change(inventory)
            if self._stop.wait(self._interval):
                return


def _with_rollouts(inventory: Inventory, served: bool) -> Inventory:
    if inventory.rollouts_available == served:
        return inventory
    if not served:  # the CRD went away: so did its objects
        inventory = inventory.replace("rollout", [])
    return dataclasses.replace(inventory, rollouts_available=served)


def _gone(exc: WaylayError) -> bool:
    """A watch refused with 410 Gone (resourceVersion too old): list again."""
    return getattr(exc.__cause__, "status", None) == 410
