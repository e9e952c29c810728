"""The targets pane: local namespaces and processes (Kubernetes later) in one tree.

The pane only shows what it is given (``show_targets``); the app loads the list in a
worker thread. ``/`` filters the tree; Enter on a target asks the app to start a session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Tree

from core.local_targets import LocalTarget


class TargetsPane(Vertical):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "search", "Filter targets", id="targets.search"),
        Binding("r", "refresh", "Reload", id="targets.reload"),
    ]

    class Chosen(Message):
        """Start a session on ``target``."""

        def __init__(self, target: str) -> None:
            super().__init__()
            self.target = target

    class RefreshRequested(Message):
        pass

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.targets: list[LocalTarget] = []
        self.error: str | None = None
        self.loading = True
        self.active: str | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter targets", id="targets-filter")
        tree: Tree[LocalTarget | None] = Tree("targets", id="targets-tree")
        tree.show_root = False
        tree.guide_depth = 2
        yield tree

    def on_mount(self) -> None:
        self.border_title = "targets"
        self.query_one("#targets-filter").display = False
        self._rebuild()

    def show_targets(self, targets: Sequence[LocalTarget], error: str | None = None) -> None:
        self.targets, self.error, self.loading = list(targets), error, False
        self._rebuild()

    def set_active(self, target: str | None) -> None:
        self.active = target
        self._rebuild()

    def action_search(self) -> None:
        box = self.query_one("#targets-filter", Input)
        box.display = True
        box.focus()

    def action_refresh(self) -> None:
        self.loading = True
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
    def _selected(self, event: Tree.NodeSelected[LocalTarget | None]) -> None:
        event.stop()
        if event.node.data is not None:
            self.post_message(self.Chosen(event.node.data.target))

    def _rebuild(self) -> None:
        if not self.is_mounted:
            return
        tree: Tree[LocalTarget | None] = self.query_one("#targets-tree", Tree)
        needle = self.query_one("#targets-filter", Input).value.strip().lower()
        tree.clear()
        local = tree.root.add("local", expand=True)
        if self.loading:
            local.add_leaf(Text("scanning…", style="italic dim"))
        elif self.error:
            local.add_leaf(Text(self.error, style="bold red"))
        groups = (("network namespaces", "netns"), ("processes", "pid"))
        for title, kind in groups:
            found = [t for t in self.targets if t.kind == kind and _matches(t, needle)]
            if not found and (self.loading or needle):
                continue
            group = local.add(f"{title} ({len(found)})", expand=True)
            for target in found:
                group.add_leaf(self._label(target), data=target)
            if not found:
                group.add_leaf(Text("none found", style="italic dim"))
        kube = tree.root.add("kubernetes", expand=True)
        kube.add_leaf(Text("not available yet", style="italic dim"))
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
    def _select_first(tree: Tree[LocalTarget | None]) -> None:
        """Put the cursor on the first target (Enter then starts a session on it)."""
        for line in range(tree.last_line + 1):
            node = tree.get_node_at_line(line)
            if node is not None and node.data is not None:
                tree.move_cursor(node)
                return


def _matches(target: LocalTarget, needle: str) -> bool:
    if not needle:
        return True
    haystack = f"{target.target} {target.description} {' '.join(map(str, target.ports))}"
    return needle in haystack.lower()
