"""The "kubernetes" branch of the targets tree: what is known, and how it is drawn.

:class:`KubeTreeState` holds what the browser reported (contexts, namespaces per context,
the open namespace's inventory, errors) and what the user expanded, so the tree can be
rebuilt from scratch after every change and come back the same, cursor included (nodes
are found again by :attr:`TreeItem.key`). :func:`add_kube_branch` draws it under a node.
A :class:`KubePlace` is a context, namespace and target as the command line names them
(``--context``, ``-n``, ``-t``); :func:`resolve` finds them in the kubeconfig's contexts.
Nothing here does I/O.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets.tree import TreeNode

from waylay.core.engine.errors import UsageError
from waylay.core.engine.target import parse_target
from waylay.core.kube.inventory import Inventory, pod_target, workload_target
from waylay.core.kube.model import PodInfo, WorkloadInfo
from waylay.core.system.local_targets import LocalTarget

if TYPE_CHECKING:
    from waylay.core.kube.api import KubeContext  # the kubernetes client loads slowly


@dataclass(frozen=True, kw_only=True)
class TreeItem:
    """What a node of the targets tree stands for."""

    key: str  # stable across rebuilds: the cursor and expansions are restored by it
    kind: str  # local | group | kube | context | namespace | workload | other-pods | pod
    #            | note
    target: str | None = None  # the -t text, for nodes that start a session
    context: str | None = None  # Kubernetes context and namespace of a target
    namespace: str | None = None
    local: LocalTarget | None = None


@dataclass(frozen=True, kw_only=True)
class KubePlace:
    """A place in the Kubernetes branch as the command line names it: ``context`` (None:
    the kubeconfig's current one), ``namespace`` (None: the context's default) and a
    ``target`` there as the tree's nodes name it ("deployment/web", "pod/NAME"; None:
    the namespace itself)."""

    context: str | None = None
    namespace: str | None = None
    target: str | None = None


def kube_place(target: str | None, *, context: str | None,
               namespace: str | None) -> KubePlace | None:
    """The place ``--context`` / ``-n`` / ``-t`` name; None when they name nothing in
    Kubernetes (no context, no namespace, and a local, bad or no target)."""
    parsed = None
    if target:
        with contextlib.suppress(UsageError):  # the app says so when it starts a session
            parsed = parse_target(target)
    # The tree names a workload or pod without its /container/C suffix, "deploy" in full.
    tree_target = (f"{parsed.kind}/{parsed.name}"
                   if parsed is not None and not parsed.is_local else None)
    if tree_target is None and context is None and namespace is None:
        return None
    return KubePlace(context=context, namespace=namespace, target=tree_target)


def resolve(place: KubePlace, contexts: list[KubeContext]) -> tuple[str, str] | str:
    """The context and namespace ``place`` names among the kubeconfig's ``contexts``, or
    why it names none."""
    if place.context is not None:
        found = next((c for c in contexts if c.name == place.context), None)
        if found is None:
            return f"context {place.context!r} is not in the kubeconfig"
    else:
        found = next((c for c in contexts if c.current), None)
        if found is None:
            return "the kubeconfig names no current context (--context names one)"
    return found.name, place.namespace or found.namespace


def target_key(context: str, namespace: str, target: str) -> str:
    """The key of the node that starts a session on ``target`` ("deployment/web",
    "pod/NAME") in ``namespace`` of ``context``."""
    kind, _, name = target.partition("/")
    if kind == "pod":
        return f"pod:{context}/{namespace}/{name}"
    return f"wl:{context}/{namespace}/{target}"


@dataclass
class KubeTreeState:
    contexts: list[KubeContext] | None = None  # None: not read yet
    contexts_error: str | None = None
    namespaces: dict[str, list[str]] = field(default_factory=dict)
    namespace_errors: dict[str, str] = field(default_factory=dict)
    expanded_contexts: set[str] = field(default_factory=set)
    open: tuple[str, str] | None = None  # the namespace watched
    inventory: Inventory | None = None  # of ``open``; None until the first arrives
    watch_error: str | None = None
    collapsed: set[str] = field(default_factory=set)  # keys of nodes the user folded
    # Why the start-up place could not be opened: (key of the node it is shown under,
    # message). The node is "kube" for a context, the context's for a namespace.
    start_problem: tuple[str, str] | None = None

    @property
    def loading(self) -> bool:
        return self.contexts is None


def add_kube_branch(root: TreeNode[TreeItem], state: KubeTreeState, *, needle: str,
                    active: KubePlace | None) -> None:
    """The "kubernetes" node and, as far as expanded, everything under it; the node of
    the ``active`` session's target is marked."""
    kube = root.add("kubernetes", TreeItem(key="kube", kind="kube"),
                    expand="kube" not in state.collapsed)
    if state.contexts is None:
        _note(kube, "kube", "reading the kubeconfig…", "italic dim")
        return
    _start_problem(kube, state)
    if state.contexts_error:
        _note(kube, "kube", state.contexts_error, "bold red")
        return
    if not state.contexts:
        _note(kube, "kube", "no kubeconfig", "italic dim")
        return
    active_key = _active_key(active, state.contexts)
    for context in state.contexts:
        _add_context(kube, state, context, needle=needle, active_key=active_key)


def _active_key(active: KubePlace | None, contexts: list[KubeContext]) -> str | None:
    if active is None or active.target is None:
        return None
    where = resolve(active, contexts)
    return target_key(*where, active.target) if isinstance(where, tuple) else None


def _start_problem(node: TreeNode[TreeItem], state: KubeTreeState) -> None:
    if state.start_problem is not None and state.start_problem[0] == node_key(node):
        _note(node, f"{node_key(node)}/start", state.start_problem[1], "bold red")


def _add_context(parent: TreeNode[TreeItem], state: KubeTreeState, context: KubeContext,
                 *, needle: str, active_key: str | None) -> None:
    name = context.name
    label = Text(name, style="bold" if context.current else "")
    if context.current:
        label.append("  current", style="dim")
    node = parent.add(label, TreeItem(key=f"ctx:{name}", kind="context", context=name),
                      expand=name in state.expanded_contexts)
    _start_problem(node, state)
    found: list[str] = []
    if name in state.namespace_errors:
        _note(node, node_key(node), state.namespace_errors[name], "bold red")
    elif name not in state.namespaces:
        _note(node, node_key(node), "listing namespaces…", "italic dim")
        return
    else:
        found = state.namespaces[name]
        if not found:
            _note(node, node_key(node), "no namespaces", "italic dim")
    if state.open is not None and state.open[0] == name and state.open[1] not in found:
        # Opened at start-up although listing namespaces was refused: RBAC often lets a
        # user read one namespace but not list them all.
        found = [*found, state.open[1]]
    for namespace in found:
        is_open = state.open == (name, namespace)
        ns_node = node.add(namespace, TreeItem(key=f"ns:{name}/{namespace}", kind="namespace",
                                               context=name, namespace=namespace),
                           expand=is_open)
        if is_open:
            _add_namespace(ns_node, state, name, namespace, needle=needle, active_key=active_key)
        else:
            _note(ns_node, node_key(ns_node), "expand to list its workloads", "italic dim")


def _add_namespace(node: TreeNode[TreeItem], state: KubeTreeState, context: str,
                   namespace: str, *, needle: str, active_key: str | None) -> None:
    base = node_key(node)
    if state.watch_error:
        _note(node, base, state.watch_error, "bold red")
    inventory = state.inventory
    if inventory is None:
        if not state.watch_error:
            _note(node, base, "listing…", "italic dim")
        return
    shown = 0
    for workload in inventory.workloads:
        pods = inventory.pods_of(workload)
        target = workload_target(workload)
        hit = _matches(needle, target)
        pods = [p for p in pods if hit or _matches(needle, p.name)]
        if not hit and not pods:
            continue
        key = target_key(context, namespace, target)
        wl = node.add(_workload_label(workload, key == active_key),
                      TreeItem(key=key, kind="workload", target=target, context=context,
                               namespace=namespace),
                      expand=key not in state.collapsed)
        shown += 1
        for pod in pods:
            _add_pod(wl, pod, context, namespace, active_key)
        if not pods:
            _note(wl, key, "no pods", "italic dim")
    others = [p for p in inventory.other_pods if _matches(needle, p.name)]
    if others:
        key = f"other:{context}/{namespace}"
        group = node.add(Text(f"other pods ({len(others)})"),
                         TreeItem(key=key, kind="other-pods"),
                         expand=key not in state.collapsed)
        shown += 1
        for pod in others:
            _add_pod(group, pod, context, namespace, active_key)
    if not shown:
        _note(node, base, "no matches" if needle else "no workloads or pods", "italic dim")


def _add_pod(parent: TreeNode[TreeItem], pod: PodInfo, context: str, namespace: str,
             active_key: str | None) -> None:
    target = pod_target(pod)
    key = target_key(context, namespace, target)
    parent.add_leaf(_pod_label(pod, key == active_key),
                    TreeItem(key=key, kind="pod", target=target, context=context,
                             namespace=namespace))


def _workload_label(workload: WorkloadInfo, active: bool) -> Text:
    target = workload_target(workload)
    label = Text()
    if active:
        label.append("● ", style="bold green")
    label.append(target, style="bold")
    ready, desired = workload.ready_replicas, workload.replicas
    style = "green" if desired and ready >= desired else "yellow" if ready else "red"
    label.append(f"  {ready}/{desired}", style=style if desired else "dim")
    return label


def _pod_label(pod: PodInfo, active: bool) -> Text:
    label = Text()
    if active:
        label.append("● ", style="bold green")
    label.append(pod.name)
    status = pod.status_text
    style = {"Ready": "green", "NotReady": "yellow", "Failed": "red",
             "Terminating": "dim red"}.get(status, "dim")
    label.append(f"  {status}", style=style)
    if pod.ip:
        label.append(f"  {pod.ip}", style="cyan")
    return label


def node_key(node: TreeNode[TreeItem]) -> str:
    return node.data.key if node.data is not None else f"id:{node.id}"


def _note(parent: TreeNode[TreeItem], key: str, text: str, style: str) -> None:
    parent.add_leaf(Text(text, style=style), TreeItem(key=f"note:{key}", kind="note"))


def _matches(needle: str, text: str) -> bool:
    return not needle or needle in text.lower()
