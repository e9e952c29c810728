"""The targets tree's Kubernetes branch against the fake API server: contexts → namespaces →
workloads → pods, live updates, errors inline, and choosing a workload starts a session
in its context and namespace; started with --context / -n / a Kubernetes -t, the tree
opens that place by itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from tests.kube.fake_apiserver import FakeCluster
from tests.kube.shop_manifests import NS, fill, pod
from tests.tui.conftest import SIZE, attached, make_app, wait_for
from waylay.core.engine.config import default_config
from waylay.core.engine.errors import TargetError
from waylay.core.engine.target import Target
from waylay.tui.app import WaylayApp
from waylay.tui.fake_agent import FakeAgent
from waylay.tui.kube_tree import TreeItem
from waylay.tui.targets_pane import TargetsPane


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeCluster]:
    with FakeCluster(user="dev") as c:
        fill(c)
        config = c.write_kubeconfig(tmp_path / "kubeconfig",
                                    contexts={"fake": "default", "other": NS},
                                    current="fake")
        monkeypatch.setenv("KUBECONFIG", str(config))
        yield c


def tree_of(app: WaylayApp) -> Tree[TreeItem]:
    return app.targets_pane.query_one("#targets-tree", Tree)


def find(app: WaylayApp, key: str) -> TreeNode[TreeItem] | None:
    """The node with ``key`` among the visible lines."""
    tree = tree_of(app)
    for line in range(tree.last_line + 1):
        node = tree.get_node_at_line(line)
        if node is not None and node.data is not None and node.data.key == key:
            return node
    return None


def label(app: WaylayApp, key: str) -> str:
    node = find(app, key)
    return str(node.label) if node is not None else ""


def notes(app: WaylayApp) -> list[str]:
    tree = tree_of(app)
    return [str(node.label) for line in range(tree.last_line + 1)
            if (node := tree.get_node_at_line(line)) is not None
            and node.data is not None and node.data.kind == "note"]


async def press_on(pilot: Pilot[Any], key: str, *keys: str) -> None:
    """Put the tree's cursor on the node with ``key`` and press ``keys``."""
    app = pilot.app
    assert isinstance(app, WaylayApp)
    await wait_for(pilot, lambda: find(app, key) is not None, f"node {key}")
    tree = tree_of(app)
    tree.focus()
    node = find(app, key)
    assert node is not None
    tree.move_cursor(node)
    await pilot.pause()
    await pilot.press(*keys)


async def open_shop(pilot: Pilot[Any]) -> WaylayApp:
    """Expand context "fake", then namespace "shop" (Enter on each)."""
    app = pilot.app
    assert isinstance(app, WaylayApp)
    await wait_for(pilot, lambda: not app.targets_pane.loading, "the targets")
    await press_on(pilot, "ctx:fake", "enter")
    await press_on(pilot, f"ns:fake/{NS}", "enter")
    return app


async def test_tree_shows_contexts_namespaces_workloads_and_pods(
        cluster: FakeCluster, fake: FakeAgent) -> None:
    """context → namespace → deployment → its pods, from the fake cluster; live updates."""
    app = make_app(fake, target=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: not app.targets_pane.loading, "the targets")
        assert "current" in label(app, "ctx:fake")
        assert find(app, "ctx:other") is not None
        assert find(app, f"ns:fake/{NS}") is None  # lazily: nothing listed yet
        app_ = await open_shop(pilot)
        web = f"wl:fake/{NS}/deployment/web"
        await wait_for(pilot, lambda: find(app_, web) is not None, "deployment/web")
        assert "1/2" in label(app, web)
        node = find(app, web)
        assert node is not None
        assert [child.data.key for child in node.children if child.data] == [
            f"pod:fake/{NS}/web-6d4f8-aaaaa", f"pod:fake/{NS}/web-6d4f8-bbbbb"]
        assert "NotReady" in label(app, f"pod:fake/{NS}/web-6d4f8-bbbbb")
        assert find(app, f"wl:fake/{NS}/statefulset/db") is not None
        assert find(app, f"pod:fake/{NS}/debug") is not None  # under "other pods"
        assert app.kube.watching == ("fake", NS)

        # Live: a new replica appears under its deployment, the cursor stays put.
        tree = tree_of(app)
        cursor_before = tree.cursor_node.data.key if tree.cursor_node and \
            tree.cursor_node.data else None
        cluster.add_object(pod("web-6d4f8-ccccc", labels={"app": "web"},
                               owner=("ReplicaSet", "web-6d4f8"), ip="10.1.0.12"))
        added = f"pod:fake/{NS}/web-6d4f8-ccccc"
        await wait_for(pilot, lambda: find(app, added) is not None, "the new pod")
        assert find(app, added).parent.data.key == web  # type: ignore[union-attr]
        assert tree.cursor_node is not None and tree.cursor_node.data is not None
        assert tree.cursor_node.data.key == cursor_before
        cluster.delete_object("v1", "pods", NS, "debug")
        await wait_for(pilot, lambda: find(app, f"pod:fake/{NS}/debug") is None,
                       "the deleted pod to go")

        # Collapsing the namespace stops its watch.
        await press_on(pilot, f"ns:fake/{NS}", "enter")
        await wait_for(pilot, lambda: app.kube.watching is None, "the watch to stop")


async def test_choosing_a_deployment_attaches_in_its_context_and_namespace(
        cluster: FakeCluster) -> None:
    """Enter on deployment/web posts Chosen with context and namespace; the client
    attaches to Target(deployment/web, namespace=shop) with kube_context="fake"."""
    calls: list[tuple[Target, dict[str, Any]]] = []

    async def attach(target: Target, **kw: Any) -> Any:
        calls.append((target, kw))
        raise TargetError("the test stops here")

    app = WaylayApp(target=None, attach_fn=attach, targets_source=list,
                    batch_interval=0.05)
    chosen: list[TargetsPane.Chosen] = []
    async with app.run_test(size=SIZE) as pilot:
        pane = app.targets_pane
        original = pane.post_message

        def spy(message: Any) -> bool:
            if isinstance(message, TargetsPane.Chosen):
                chosen.append(message)
            return original(message)

        pane.post_message = spy  # type: ignore[method-assign]
        await open_shop(pilot)
        await press_on(pilot, f"wl:fake/{NS}/deployment/web", "enter")
        await wait_for(pilot, lambda: calls, "the attach call")
        await wait_for(pilot, lambda: app.bar.link == "failed", "the session to end")
    assert [(c.target, c.context, c.kube_namespace) for c in chosen] == [
        ("deployment/web", "fake", NS)]
    target, kw = calls[0]
    assert target == Target(kind="deployment", name="web", namespace=NS)
    assert kw["kube_context"] == "fake"
    assert kw["agent"] == app.config.agent


async def test_errors_show_inline(cluster: FakeCluster, fake: FakeAgent) -> None:
    """A refused list is a red line in the namespace; the dashboard carries on."""
    cluster.deny("list", "pods", namespace=NS)
    app = make_app(fake, target=None)
    async with app.run_test(size=SIZE) as pilot:
        await open_shop(pilot)
        await wait_for(pilot, lambda: any("list pods" in n for n in notes(app)),
                       "the error line")
        # The whole message, cut in the tree, is told once as a notification.
        assert sum("list pods" in n.message for n in app._notifications) == 1
        # Workloads still show: only pods are refused.
        await wait_for(pilot, lambda: find(app, f"wl:fake/{NS}/deployment/web") is not None,
                       "deployment/web")
        assert app.is_running


async def test_an_unreachable_context_shows_inline(tmp_path: Path, fake: FakeAgent,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A context whose API server is gone: its namespaces line says so."""
    with FakeCluster(user="dev") as gone:
        config = gone.write_kubeconfig(tmp_path / "kc")
    monkeypatch.setenv("KUBECONFIG", str(config))
    app = make_app(fake, target=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: not app.targets_pane.loading, "the targets")
        await press_on(pilot, "ctx:fake", "enter")
        await wait_for(pilot, lambda: any("cannot reach" in n for n in notes(app)),
                       "the error line")


# -- opened by itself at start-up (--context, -n, a Kubernetes -t) -----------------------


def kube_app(fake: FakeAgent, *, target: str | None = None, context: str | None = None,
             namespace: str | None = None) -> WaylayApp:
    """The app `waylay ui [-t TARGET] [--context CONTEXT] [-n NAMESPACE]` runs (with the
    fake agent: no agent is started, in a pod or anywhere)."""
    config = default_config().with_kube_flags(context=context, namespace=namespace)
    return WaylayApp(target=target, config=config, attach_fn=fake.attach,
                     targets_source=list, batch_interval=0.05)


async def settled(pilot: Pilot[Any]) -> WaylayApp:
    """Attached, and the mirror mode asked for after attaching applied: no message of the
    session's start is left to arrive while the test closes the app."""
    app = await attached(pilot)
    await wait_for(pilot, lambda: any("applied" in text for _, text in app.log_panel.entries),
                   "the mode applied after attaching")
    return app


def cursor_key(app: WaylayApp) -> str | None:
    node = tree_of(app).cursor_node
    return node.data.key if node is not None and node.data is not None else None


async def test_context_and_namespace_flags_open_the_namespace(
        cluster: FakeCluster, fake: FakeAgent) -> None:
    """--context other -n shop: shop's workloads show without a key press, watched."""
    app = kube_app(fake, context="other", namespace=NS)
    async with app.run_test(size=SIZE) as pilot:
        web = f"wl:other/{NS}/deployment/web"
        await wait_for(pilot, lambda: find(app, web) is not None, "deployment/web")
        assert find(app, f"pod:other/{NS}/web-6d4f8-aaaaa") is not None
        assert app.kube.watching == ("other", NS)
        assert find(app, f"ns:fake/{NS}") is None  # the current context stays folded
        assert "●" not in label(app, web)  # no session: nothing marked


async def test_a_namespace_flag_opens_it_in_the_current_context(
        cluster: FakeCluster, fake: FakeAgent) -> None:
    """-n shop alone: the kubeconfig's current context ("fake") is the one opened."""
    app = kube_app(fake, namespace=NS)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: find(app, f"wl:fake/{NS}/statefulset/db") is not None,
                       "statefulset/db")
        assert app.kube.watching == ("fake", NS)


async def test_a_deployment_target_gets_the_cursor_and_the_active_mark(
        cluster: FakeCluster, fake: FakeAgent) -> None:
    """-t deploy/web --context other (whose default namespace is shop): the session
    starts, and the tree opens other/shop with the cursor and the mark on deployment/web."""
    app = kube_app(fake, target="deploy/web", context="other")
    web = f"wl:other/{NS}/deployment/web"
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await wait_for(pilot, lambda: cursor_key(app) == web, "the cursor on deployment/web")
        assert label(app, web).startswith("● ")
        assert not label(app, f"wl:other/{NS}/statefulset/db").startswith("●")
        assert fake.attaches == 1


async def test_a_pod_target_gets_the_cursor(cluster: FakeCluster, fake: FakeAgent) -> None:
    """-t pod/debug -n shop: the cursor is on the pod, under "other pods"."""
    app = kube_app(fake, target="pod/debug", namespace=NS)
    debug = f"pod:fake/{NS}/debug"
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: cursor_key(app) == debug, "the cursor on pod/debug")
        await settled(pilot)
        assert label(app, debug).startswith("● ")


async def test_a_config_file_target_opens_its_place(cluster: FakeCluster,
                                                    fake: FakeAgent) -> None:
    """kube_context and target {path, namespace} in the config file do what the flags do."""
    app = make_app(fake, target=None, config_text="""{"kube_context": "other",
        "target": {"path": "statefulset/db", "namespace": "shop"}}""")
    db = f"wl:other/{NS}/statefulset/db"
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: cursor_key(app) == db, "the cursor on statefulset/db")
        await settled(pilot)
        assert label(app, db).startswith("● ")


async def test_an_unknown_context_shows_inline(cluster: FakeCluster, fake: FakeAgent) -> None:
    """--context nowhere: a red line under "kubernetes"; the known contexts still list."""
    app = kube_app(fake, context="nowhere", namespace=NS)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any("'nowhere' is not in the kubeconfig" in n
                                          for n in notes(app)), "the error line")
        assert find(app, "ctx:fake") is not None
        assert app.kube.watching is None
        assert app.is_running


async def test_an_unknown_namespace_shows_inline(cluster: FakeCluster,
                                                 fake: FakeAgent) -> None:
    """-n nowhere: a red line under the current context, next to its namespaces."""
    app = kube_app(fake, namespace="nowhere")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any("'nowhere' is not in context fake" in n
                                          for n in notes(app)), "the error line")
        assert find(app, f"ns:fake/{NS}") is not None
        assert app.kube.watching is None


async def test_a_refused_namespace_list_still_opens_the_namespace(
        cluster: FakeCluster, fake: FakeAgent) -> None:
    """Listing namespaces is refused (RBAC): -n shop is opened and watched all the same."""
    cluster.deny("list", "namespaces")
    app = kube_app(fake, namespace=NS)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: find(app, f"wl:fake/{NS}/deployment/web") is not None,
                       "deployment/web")
        assert any("namespaces" in n for n in notes(app))


async def test_without_a_kube_place_nothing_opens(cluster: FakeCluster,
                                                  fake: FakeAgent) -> None:
    """A local -t and no --context / -n: the contexts stay folded, nothing is watched."""
    app = make_app(fake, config_text=None)  # -t netns/shop
    async with app.run_test(size=SIZE) as pilot:
        await settled(pilot)
        await wait_for(pilot, lambda: not app.targets_pane.loading, "the targets")
        await pilot.pause(0.3)
        assert find(app, "ctx:fake") is not None
        assert find(app, f"ns:fake/{NS}") is None
        assert app.kube.watching is None
