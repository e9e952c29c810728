"""The dashboard's Kubernetes side: contexts, namespaces, and one namespace kept live.

Theory of operation. :class:`KubeBrowser` does every blocking Kubernetes call of the
dashboard in its own short-lived threads (reading the kubeconfig, listing namespaces) or
in a ``waylay.core.kube.discovery.NamespaceWatcher`` (one namespace, watched). Results go back as
the messages below through ``post`` (a widget's ``post_message``: thread-safe and
non-blocking, so a watcher thread never waits for the UI). It never touches a widget.

At most one namespace is watched: the one open in the tree. ``watch`` of another stops the
previous watcher first; a request overtaken by a newer one (the user expanding quickly)
starts nothing. The kubernetes client is imported in those threads, on first use, so the
dashboard opens as fast without a cluster as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

from waylay.core.engine.errors import WaylayError
from waylay.core.kube.inventory import Inventory
from waylay.core.system.loading import load

if TYPE_CHECKING:
    from waylay.core.kube.api import KubeApi, KubeContext
    from waylay.core.kube.discovery import NamespaceWatcher

# How long close() waits for the watcher's threads (their streams are aborted at once).
CLOSE_WAIT_S = 1.0


@dataclass
class KubeContextsLoaded(Message):
    """The kubeconfig's contexts ([] without a kubeconfig), or why they are unknown."""

    contexts: list[KubeContext]
    error: str | None = None


@dataclass
class KubeNamespacesLoaded(Message):
    """The namespaces of ``context``, or why they could not be listed."""

    context: str
    names: list[str]
    error: str | None = None


@dataclass
class KubeInventoryChanged(Message):
    """The watched namespace as it is now, and what keeps failing in it (a kind the API
    refuses, say). (Not ``namespace``: ``Message.namespace`` is Textual's own.)"""

    context: str
    kube_namespace: str
    inventory: Inventory
    problems: list[str]


@dataclass
class KubeWatchFailed(Message):
    """Watching a namespace failed (it is retried); ``message`` says why."""

    context: str
    kube_namespace: str
    message: str


ContextsSource = Callable[[], "list[KubeContext]"]
ApiFactory = Callable[[str], "KubeApi"]


class KubeBrowser:
    """Kubernetes look-ups for the targets tree; see the module docstring."""

    def __init__(self, *, contexts_source: ContextsSource | None = None,
                 api_factory: ApiFactory | None = None) -> None:
        self._contexts_source = contexts_source
        self._api_factory = api_factory
        self._post: Callable[[Message], object] = lambda _message: None
        self._lock = threading.Lock()  # guards everything below
        self._apis: dict[str, KubeApi] = {}
        self._watcher: NamespaceWatcher | None = None
        self._generation = 0  # bumped by every watch/unwatch: older requests give up
        self._closed = False
        self.watching: tuple[str, str] | None = None

    def bind(self, post: Callable[[Message], object]) -> None:
        """Where results go (the targets pane's ``post_message``)."""
        self._post = post

    # -- requests (called on the UI thread; each returns at once) -----------------------

    def load_contexts(self) -> None:
        self._spawn(self._load_contexts, "waylay-kube-contexts")

    def load_namespaces(self, context: str) -> None:
        self._spawn(lambda: self._load_namespaces(context), f"waylay-kube-ns-{context}")

    def watch(self, context: str, namespace: str) -> None:
        """Watch ``namespace`` of ``context`` (and stop watching any other)."""
        with self._lock:
            if self.watching == (context, namespace) or self._closed:
                return
            self._generation += 1
            generation, old = self._generation, self._watcher
            self._watcher, self.watching = None, (context, namespace)
        self._spawn(lambda: self._start_watch(generation, old, context, namespace),
                    f"waylay-kube-watch-{context}-{namespace}")

    def unwatch(self) -> None:
        with self._lock:
            self._generation += 1
            old, self._watcher, self.watching = self._watcher, None, None
        if old is not None:
            self._spawn(old.stop, "waylay-kube-unwatch")

    def close(self) -> None:
        """Stop watching and start nothing more (blocks up to about a second)."""
        with self._lock:
            self._closed = True
            self._generation += 1
            old, self._watcher, self.watching = self._watcher, None, None
        if old is not None:
            old.stop(CLOSE_WAIT_S)

    # -- the threads ---------------------------------------------------------------------

    def _spawn(self, work: Callable[[], None], name: str) -> None:
        if not self._closed:
            threading.Thread(target=work, name=name, daemon=True).start()

    def _load_contexts(self) -> None:
        with self._lock:
            self._apis.clear()  # a reload re-reads the kubeconfig (new tokens, contexts)
        try:
            if self._contexts_source is not None:
                found = self._contexts_source()
            else:
                found = load("waylay.core.kube.discovery").contexts()
        except Exception as exc:  # a kubeconfig surprise must not break the dashboard
            self._send(KubeContextsLoaded([], f"cannot read the kubeconfig: {exc}"))
            return
        self._send(KubeContextsLoaded(list(found)))

    def _load_namespaces(self, context: str) -> None:
        try:
            found = load("waylay.core.kube.discovery").namespaces(self._api(context))
        except WaylayError as exc:
            self._send(KubeNamespacesLoaded(context, [], str(exc)))
            return
        except Exception as exc:
            self._send(KubeNamespacesLoaded(context, [], f"cannot list namespaces: {exc!r}"))
            return
        self._send(KubeNamespacesLoaded(context, found))

    def _start_watch(self, generation: int, old: NamespaceWatcher | None, context: str,
                     namespace: str) -> None:
        if old is not None:
            old.stop()
        try:
            watcher_class = load("waylay.core.kube.discovery").NamespaceWatcher
            api = self._api(context)
        except WaylayError as exc:
            self._send(KubeWatchFailed(context, namespace, str(exc)))
            return
        watcher: NamespaceWatcher | None = None
        watcher = watcher_class(
            api, namespace,
            on_change=lambda inventory: self._send(KubeInventoryChanged(
                context, namespace, inventory, watcher.problems if watcher else [])),
            on_error=lambda message: self._send(
                KubeWatchFailed(context, namespace, message)))
        with self._lock:
            if generation != self._generation:
                return  # overtaken by a newer watch/unwatch while the API was set up
            self._watcher = watcher
            watcher.start()

    def _api(self, context: str) -> KubeApi:
        """One client per context, made on first use (it reads the kubeconfig)."""
        with self._lock:
            api = self._apis.get(context)
        if api is None:
            if self._api_factory is not None:
                api = self._api_factory(context)
            else:
                api = load("waylay.core.kube.api").KubeApi(context=context)
            with self._lock:
                api = self._apis.setdefault(context, api)
        return api

    def _send(self, message: Message) -> None:
        if not self._closed:
            self._post(message)
