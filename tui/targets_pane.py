"""The targets pane: local namespaces and processes, and Kubernetes, in one tree.

The pane only shows what it is given: the app loads the local list in a worker thread
(``show_targets``); a ``waylay.tui.kube_browser.KubeBrowser`` answers for Kubernetes with
messages. The Kubernetes branch loads lazily: expanding a context lists its namespaces,
expanding a namespace watches it (collapsing it, or opening another, stops that), and the
tree follows the watch live. ``/`` filters the tree; Enter on a target asks the app to
start a session (``Chosen`` carries the Kubernetes context and namespace of the target).

Started with a place in Kubernetes (``--context``, ``-n``, a Kubernetes ``-t``: a
``waylay.tui.kube_tree.KubePlace``), the pane opens it by itself, one step per answer: once the
kubeconfig is read it expands that context (else the current one); once its namespaces
are listed it opens that namespace (else the context's default), which starts its watch;
once the watch first reports it puts the cursor on the target's node. A context or
namespace that does not exist is a red line in the tree, where it would have been.

The tree is rebuilt from the pane's state after every change; expansions and the cursor
are restored by each node's ``TreeItem.key``, so a live update never moves the cursor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, Literal

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Tree
from textual.widgets.tree import TreeNode

from waylay.core.system.local_targets import LocalTarget
from waylay.tui.kube_browser import (
    KubeBrowser,
    KubeContextsLoaded,
    KubeInventoryChanged,
    KubeNamespacesLoaded,
    KubeWatchFailed,
)
from waylay.tui.kube_tree import (
    KubePlace,
    KubeTreeState,
    TreeItem,
    add_kube_branch,
    kube_place,
    node_key,
    resolve,
    target_key,
)

# What the start-up place waits for next (see the module docstring).
StartStep = Literal["contexts", "namespaces", "inventory"]


class TargetsPane(Vertical):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "search", "Filter targets", id="targets.search"),
        Binding("r", "refresh", "Reload", id="targets.reload"),
    ]

    class Chosen(Message):
        """Start a session on ``target`` (in ``context`` / ``namespace`` for Kubernetes)."""

        def __init__(self, target: str, *, context: str | None = None,
                     kube_namespace: str | None = None) -> None:
            super().__init__()
            self.target = target
            self.context = context
            # Not ``namespace``: that is Textual's, naming the handler of a message.
            self.kube_namespace = kube_namespace

    class RefreshRequested(Message):
        pass

    def __init__(self, *, kube: KubeBrowser | None = None, start: KubePlace | None = None,
                 id: str | None = None) -> None:
        """``start``: the place in Kubernetes to open by itself (see the module doc)."""
        super().__init__(id=id)
        self.targets: list[LocalTarget] = []
        self.error: str | None = None
        self.local_loading = True
        self.active: str | None = None
        self.active_kube: KubePlace | None = None  # the session's, when in Kubernetes
        self.kube = kube
        self.kube_state = KubeTreeState()
        self._last_told: str | None = None
        # None once opened or given up; its context and namespace are filled in (resolved)
        # when the kubeconfig has been read.
        self._start = start if kube is not None else None
        self._start_step: StartStep = "contexts"
        self._update_loading()

    def _update_loading(self) -> None:
        """``loading``: the local list or the kubeconfig is still being read."""
        self.loading = self.local_loading or (self.kube is not None and self.kube_state.loading)

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter targets", id="targets-filter")
        tree: Tree[TreeItem] = Tree("targets", id="targets-tree")
        tree.show_root = False
        tree.guide_depth = 2
        # Enter on a workload starts a session; it must not also fold it (see _selected).
        tree.auto_expand = False
        yield tree

    def on_mount(self) -> None:
        self.border_title = "targets"
        self.query_one("#targets-filter").display = False
        if self.kube is not None:
            self.kube.bind(self.post_message)
            self.kube.load_contexts()
        self._rebuild()

    def show_targets(self, targets: Sequence[LocalTarget], error: str | None = None) -> None:
        self.targets, self.error, self.local_loading = list(targets), error, False
        self._update_loading()
        self._rebuild()

    def set_active(self, target: str | None, *, context: str | None = None,
                   namespace: str | None = None) -> None:
        """Mark the session's target; a Kubernetes one in ``context`` / ``namespace``
        (None: the kubeconfig's current context, its default namespace)."""
        self.active = target
        place = kube_place(target, context=context, namespace=namespace)
        self.active_kube = place if place is not None and place.target is not None else None
        self._rebuild()

    def action_search(self) -> None:
        box = self.query_one("#targets-filter", Input)
        box.display = True
        box.focus()

    def action_refresh(self) -> None:
        self.local_loading = True
        if self.kube is not None:
            state = self.kube_state
            state.contexts, state.contexts_error = None, None
            self._last_told = None
            state.namespaces.clear()
            state.namespace_errors.clear()
            state.start_problem = None
            self.kube.load_contexts()
            for context in state.expanded_contexts:
                self.kube.load_namespaces(context)
        self._update_loading()
        self._rebuild()
        self.post_message(self.RefreshRequested())

    @on(Input.Changed, "#targets-filter")
    def _filter_changed(self) -> None:
        self._rebuild()

    @on(Input.Submitted, "#targets-filter")
    def _filter_done(self) -> None:
        self.query_one("#targets-tree", Tree).focus()

    def key_escape(self) -> None:
        box = self.query_one("#targets-filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.query_one("#targets-tree", Tree).focus()

    @on(Tree.NodeSelected, "#targets-tree")
    def _selected(self, event: Tree.NodeSelected[TreeItem]) -> None:
        event.stop()
        item = event.node.data
        if item is not None and item.target is not None:
            self.post_message(self.Chosen(item.target, context=item.context,
                                          kube_namespace=item.namespace))
        elif event.node.allow_expand:
            event.node.toggle()

    # -- the Kubernetes branch -----------------------------------------------------------

    @on(Tree.NodeExpanded, "#targets-tree")
    def _expanded(self, event: Tree.NodeExpanded[TreeItem]) -> None:
        event.stop()
        item, state = event.node.data, self.kube_state
        if item is None or self.kube is None:
            return
        if item.kind == "context" and item.context not in state.expanded_contexts:
            assert item.context is not None
            self._expand_context(item.context)
            self._rebuild()
        elif item.kind == "namespace" and state.open != (item.context, item.namespace):
            assert item.context is not None and item.namespace is not None
            self._open_namespace(item.context, item.namespace)
            self._rebuild()
        else:
            state.collapsed.discard(item.key)

    def _expand_context(self, context: str) -> None:
        """List the namespaces of ``context`` (the caller rebuilds)."""
        state = self.kube_state
        state.expanded_contexts.add(context)
        state.namespaces.pop(context, None)
        state.namespace_errors.pop(context, None)
        if self.kube is not None:
            self.kube.load_namespaces(context)

    def _open_namespace(self, context: str, namespace: str) -> None:
        """Watch ``namespace`` of ``context`` instead of the open one (the caller
        rebuilds)."""
        state = self.kube_state
        state.open = (context, namespace)
        state.inventory, state.watch_error = None, None
        if self.kube is not None:
            self.kube.watch(context, namespace)

    @on(Tree.NodeCollapsed, "#targets-tree")
    def _collapsed(self, event: Tree.NodeCollapsed[TreeItem]) -> None:
        event.stop()
        item, state = event.node.data, self.kube_state
        if item is None or self.kube is None:
            return
        if item.kind == "context" and item.context in state.expanded_contexts:
            state.expanded_contexts.discard(item.context)
            if state.open is not None and state.open[0] == item.context:
                self._close_namespace()
            self._rebuild()
        elif item.kind == "namespace" and state.open == (item.context, item.namespace):
            self._close_namespace()
            self._rebuild()
        elif item.kind in ("kube", "workload", "other-pods"):
            state.collapsed.add(item.key)

    def _close_namespace(self) -> None:
        state = self.kube_state
        state.open, state.inventory, state.watch_error = None, None, None
        if self._start_step == "inventory":
            self._start = None  # closed before its first answer: no cursor move later
        if self.kube is not None:
            self.kube.unwatch()

    def _tell(self, error: str, where: str) -> None:
        """The whole message once as a notification: the tree's line is cut at the pane's
        width, and a watch retrying the same failure must not repeat it."""
        if error != self._last_told:
            self._last_told = error
            self.notify(error, title=f"kubernetes: {where}", severity="error", timeout=8)

    def on_kube_contexts_loaded(self, message: KubeContextsLoaded) -> None:
        state = self.kube_state
        state.contexts, state.contexts_error = message.contexts, message.error
        if message.error:
            self._tell(message.error, "kubeconfig")
        self._update_loading()
        known = {c.name for c in message.contexts}
        state.expanded_contexts &= known
        if state.open is not None and state.open[0] not in known:
            self._close_namespace()
        if self._start is not None and self._start_step == "contexts":
            self._start_context()
        self._rebuild()

    def on_kube_namespaces_loaded(self, message: KubeNamespacesLoaded) -> None:
        state = self.kube_state
        if message.error:
            state.namespace_errors[message.context] = message.error
            self._tell(message.error, f"context {message.context}")
        else:
            state.namespace_errors.pop(message.context, None)
            state.namespaces[message.context] = message.names
        start = self._start
        if start is not None and self._start_step == "namespaces" \
                and start.context == message.context:
            self._start_namespace(message)
        self._rebuild()

    def on_kube_inventory_changed(self, message: KubeInventoryChanged) -> None:
        state = self.kube_state
        if state.open == (message.context, message.kube_namespace):
            state.inventory = message.inventory
            state.watch_error = "; ".join(message.problems) or None
            if state.watch_error:
                self._tell(state.watch_error, f"{message.context}/{message.kube_namespace}")
            self._rebuild(focus=self._start_cursor())

    def on_kube_watch_failed(self, message: KubeWatchFailed) -> None:
        state = self.kube_state
        if state.open == (message.context, message.kube_namespace):
            state.watch_error = message.message
            self._tell(message.message, f"{message.context}/{message.kube_namespace}")
            self._rebuild()

    # -- the start-up place, step by step ------------------------------------------------

    def _start_context(self) -> None:
        """The kubeconfig is read: expand the start's context."""
        start, state = self._start, self.kube_state
        assert start is not None and state.contexts is not None
        if state.contexts_error or not state.contexts:
            self._start = None  # the branch already says why ("no kubeconfig", an error)
            return
        where = resolve(start, state.contexts)
        if isinstance(where, str):
            self._start_failed("kube", where, "kubeconfig")
            return
        context, namespace = where
        self._start = dataclasses.replace(start, context=context, namespace=namespace)
        self._start_step = "namespaces"
        self._expand_context(context)

    def _start_namespace(self, message: KubeNamespacesLoaded) -> None:
        """The start's context listed its namespaces: open the start's namespace."""
        start, state = self._start, self.kube_state
        assert start is not None and start.context is not None and start.namespace is not None
        if start.context not in state.expanded_contexts or state.open is not None:
            self._start = None  # the user folded the context, or opened a namespace
            return
        if not message.error and start.namespace not in message.names:
            self._start_failed(f"ctx:{start.context}",
                               f"namespace {start.namespace!r} is not in context "
                               f"{start.context}", f"context {start.context}")
            return
        # Opened even when listing namespaces was refused: this one may be readable.
        self._open_namespace(start.context, start.namespace)
        self._start_step = "inventory"
        if start.target is None:
            self._start = None

    def _start_cursor(self) -> str | None:
        """The open namespace's first inventory is in: the key of the start's target,
        the cursor's place (once)."""
        start, state = self._start, self.kube_state
        if start is None or self._start_step != "inventory" \
                or state.open != (start.context, start.namespace):
            return None
        self._start = None
        assert start.context is not None and start.namespace is not None
        assert start.target is not None
        return target_key(start.context, start.namespace, start.target)

    def _start_failed(self, key: str, error: str, where: str) -> None:
        self._start = None
        self.kube_state.start_problem = (key, error)
        self._tell(error, where)

    # -- drawing -------------------------------------------------------------------------

    def _rebuild(self, *, focus: str | None = None) -> None:
        """Draw the tree again from the pane's state; the cursor goes to the node keyed
        ``focus`` when there is one, else back where it was."""
        if not self.is_mounted:
            return
        tree: Tree[TreeItem] = self.query_one("#targets-tree", Tree)
        needle = self.query_one("#targets-filter", Input).value.strip().lower()
        remembered = _cursor_path(tree)
        tree.clear()
        local = tree.root.add("local", TreeItem(key="local", kind="group"), expand=True)
        if self.local_loading:
            local.add_leaf(Text("scanning…", style="italic dim"),
                           TreeItem(key="note:local", kind="note"))
        elif self.error:
            local.add_leaf(Text(self.error, style="bold red"),
                           TreeItem(key="note:local", kind="note"))
        groups = (("network namespaces", "netns"), ("processes", "pid"))
        for title, kind in groups:
            found = [t for t in self.targets if t.kind == kind and _matches(t, needle)]
            if not found and (self.local_loading or needle):
                continue
            group = local.add(f"{title} ({len(found)})",
                              TreeItem(key=f"group:{kind}", kind="group"), expand=True)
            for target in found:
                group.add_leaf(self._label(target),
                               TreeItem(key=f"local:{target.target}", kind="local",
                                        target=target.target, local=target))
            if not found:
                group.add_leaf(Text("none found", style="italic dim"),
                               TreeItem(key=f"note:{kind}", kind="note"))
        if self.kube is None:
            kube = tree.root.add("kubernetes", TreeItem(key="kube", kind="kube"), expand=True)
            kube.add_leaf(Text("not available", style="italic dim"),
                          TreeItem(key="note:kube", kind="note"))
        else:
            add_kube_branch(tree.root, self.kube_state, needle=needle,
                            active=self.active_kube)
        if not _restore_cursor(tree, [focus] if focus else []) \
                and not _restore_cursor(tree, remembered):
            self._select_first(tree)

    def _label(self, target: LocalTarget) -> Text:
        ports = ",".join(str(p) for p in target.ports) or "-"
        label = Text()
        if target.target == self.active:
            label.append("● ", style="bold green")
        label.append(target.target, style="bold")
        label.append(f"  :{ports}", style="cyan")
        if target.kind == "pid":
            label.append(f"  {target.description[:40]}", style="dim")
        elif "stale" in target.description:
            label.append("  stale", style="dim red")
        return label

    @staticmethod
    def _select_first(tree: Tree[TreeItem]) -> None:
        """Put the cursor on the first target (Enter then starts a session on it)."""
        for line in range(tree.last_line + 1):
            node = tree.get_node_at_line(line)
            if node is not None and node.data is not None and node.data.target is not None:
                tree.move_cursor(node)
                return


# Nodes the cursor is put back on after a rebuild (or on their nearest such ancestor
# when they went away: a deleted pod's workload). Elsewhere (notes, the local groups) the
# cursor goes to the first target, as when the pane opens.
_KEPT_KINDS = frozenset({"local", "kube", "context", "namespace", "workload",
                         "other-pods", "pod"})


def _cursor_path(tree: Tree[TreeItem]) -> list[str]:
    """The keys of the cursor's node and its kept ancestors, nearest first."""
    node: TreeNode[TreeItem] | None = tree.cursor_node
    if node is None or node.data is None or node.data.kind not in _KEPT_KINDS:
        return []
    path = []
    while node is not None and node is not tree.root:
        if node.data is not None and node.data.kind in _KEPT_KINDS:
            path.append(node_key(node))
        node = node.parent
    return path


def _restore_cursor(tree: Tree[TreeItem], path: list[str]) -> bool:
    """Put the cursor back on the remembered node, else on its nearest ancestor left."""
    if not path:
        return False
    by_key: dict[str, TreeNode[TreeItem]] = {}
    for line in range(tree.last_line + 1):
        node = tree.get_node_at_line(line)
        if node is not None and node.data is not None:
            by_key.setdefault(node.data.key, node)
    for key in path:
        if key in by_key:
            tree.move_cursor(by_key[key])
            return True
    return False


def _matches(target: LocalTarget, needle: str) -> bool:
    if not needle:
        return True
    haystack = f"{target.target} {target.description} {' '.join(map(str, target.ports))}"
    return needle in haystack.lower()
