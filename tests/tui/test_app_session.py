"""Sessions from the dashboard: start, progress, mode, ports, failures, quitting."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, SelectionList, Tree

from tests.tui.conftest import SIZE, attached, make_app, requests, send, wait_for
from waylay.core.engine.config import Mode
from waylay.core.engine.errors import PrivilegeError
from waylay.tui.fake_agent import FakeAgent
from waylay.tui.session_bar import Chip
from waylay.tui.stats_panel import LogPanel
from waylay.tui.targets_pane import TargetsPane


def chip(app, name: str) -> str:  # type: ignore[no-untyped-def]
    return str(app.query_one(f"#chip-{name}", Chip).render())


async def test_a_target_on_the_command_line_starts_a_session(fake: FakeAgent) -> None:
    """With -t, the session starts at once; progress, then the bar shows it attached."""
    fake.attach_delay_s = 0.3
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.bar.link == "starting", "progress")
        assert "starting the agent in netns/shop" in chip(app, "link")
        await attached(pilot)
        assert "netns/shop attached" in chip(app, "link")
        assert "STEAL" in chip(app, "mode") and "80 8080" in chip(app, "ports")
        assert "^x-user: alice$" in chip(app, "filter")
        assert fake.subscriptions() == {80: ("steal", "header_filter: ^x-user: alice$"),
                                        8080: ("steal", "header_filter: ^x-user: alice$")}


async def test_targets_pane_filters_and_enter_starts_a_session(fake: FakeAgent) -> None:
    """/ filters the tree; Enter on a target attaches to it."""
    app = make_app(fake, target=None)
    async with app.run_test(size=SIZE) as pilot:
        tree = app.query_one("#targets-tree", Tree)
        await wait_for(pilot, lambda: not app.query_one(TargetsPane).loading, "targets")
        labels = [str(tree.get_node_at_line(i).label) for i in range(tree.last_line + 1)]
        assert any("netns/payments" in label for label in labels)
        assert any("pid/4242" in label and "http.server" in label for label in labels)
        assert app.bar.link == "none"
        await pilot.press("slash", *"pay")
        await pilot.pause()
        labels = [str(tree.get_node_at_line(i).label) for i in range(tree.last_line + 1)]
        assert not any("netns/shop" in label for label in labels)
        await pilot.press("enter", "enter")  # leave the filter box, then pick the target
        await attached(pilot)
        assert app.bar.target == "netns/payments"
        assert fake.attaches == 1


async def test_a_failed_attach_is_shown_and_the_dashboard_stays(fake: FakeAgent) -> None:
    """A missing privilege is an error in the bar, a notification and the log."""
    fake.fail_attach = PrivilegeError("netns targets need root (CAP_NET_ADMIN): run with sudo")
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.bar.link == "failed", "the failure")
        assert "need root" in chip(app, "link")
        assert any("need root" in n.message for n in app._notifications)
        assert app.errors == 1
        assert any("need root" in text for _, text in app.query_one(LogPanel).entries)


async def test_switching_mode_to_off_and_back(fake: FakeAgent) -> None:
    """m opens the mode menu; o turns interception off, s steals again, in place."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("m", "o")
        await wait_for(pilot, lambda: app.client.incoming.mode is Mode.OFF, "mode off")
        await wait_for(pilot, lambda: fake.subscriptions() == {}, "unsubscribe")
        assert "OFF" in chip(app, "mode")
        await pilot.press("m", "s")
        await wait_for(pilot, lambda: fake.subscriptions().get(80, ("",))[0] == "steal",
                       "steal again")
        assert fake.attaches == 1  # never restarted


async def test_mirror_mode_mirrors(fake: FakeAgent) -> None:
    """m then m: the agent mirrors matching requests; rows say MIRRORED."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("m", "m")
        await wait_for(pilot, lambda: fake.subscriptions().get(80, ("",))[0] == "mirror",
                       "mirror")
        # The fake holds the subscription before the session's answer reaches the app.
        await wait_for(pilot, lambda: "MIRROR" in chip(app, "mode"), "the mode chip")
        assert app.bar.refused is None
        await send(pilot, fake, requests(60))
        assert {r.verdict for r in app.store} == {"mirrored", "passed"}


async def test_a_refused_mirror_is_clear(fake: FakeAgent) -> None:
    """An agent without mirror refuses it: the bar says so, steal stays, traffic flows."""
    fake.refuse_modes = frozenset({"mirror"})
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("m", "m")
        await wait_for(pilot, lambda: app.bar.refused == "mirror", "the refusal")
        assert "STEAL · mirror refused" in chip(app, "mode")
        assert app.client.incoming.mode is Mode.STEAL
        assert any("not supported by this agent" in n.message for n in app._notifications)
        await wait_for(pilot, lambda: fake.subscriptions().get(80, ("",))[0] == "steal",
                       "steal kept")
        await send(pilot, fake, requests(20))
        assert len(app.store) == 20


async def test_a_mirror_config_attaches_in_mirror(fake: FakeAgent) -> None:
    """mirrord's default mode is mirror; it is asked for once attached, without a toast."""
    app = make_app(fake, config_text=None)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await wait_for(pilot, lambda: fake.subscriptions().get(80) == ("mirror", None),
                       "mirror")
        await wait_for(pilot, lambda: app.client.incoming.mode is Mode.MIRROR, "mode")
        assert "MIRROR" in chip(app, "mode")
        assert not app._notifications and app.warnings == 0


async def test_a_refused_mirror_config_still_attaches(fake: FakeAgent) -> None:
    """If the agent refuses mirror at start, the session stays up and says why."""
    fake.refuse_modes = frozenset({"mirror"})
    app = make_app(fake, config_text=None)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await wait_for(pilot, lambda: app.bar.refused == "mirror", "the refusal")
        assert app.client.incoming.mode is Mode.OFF
        assert "OFF · mirror refused" in chip(app, "mode")
        assert app.warnings == 0  # the stand-in "mode is off" warning is not the user's
        await pilot.press("m", "s")
        await wait_for(pilot, lambda: fake.subscriptions().get(80) == ("steal", None),
                       "steal")
        # The fake holds the subscription before the session's answer reaches the app.
        await wait_for(pilot, lambda: app.bar.refused is None, "the refusal cleared")


async def test_ports_dialog_changes_ports_and_mapping(fake: FakeAgent) -> None:
    """p: toggle listening ports, map one to a local port; applied in place."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("p")
        await pilot.pause()
        ports = app.screen.query_one(SelectionList)
        assert sorted(ports.selected) == [80, 8080]
        ports.deselect(8080)
        app.screen.query_one("#ports-mapping", Input).value = "80:3000 9000"
        await pilot.press("enter")
        await wait_for(pilot, lambda: sorted(fake.subscriptions()) == [80, 9000],
                       "new ports")
        assert "80→3000 9000" in chip(app, "ports")
        assert app.client.cli_ports == {80: 3000, 9000: None}


async def test_a_bad_port_is_refused_in_the_dialog(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("p")
        await pilot.pause()
        app.screen.query_one("#ports-mapping", Input).value = "80:http"
        await pilot.press("enter")
        await pilot.pause()
        assert "is not REMOTE[:LOCAL]" in str(app.screen.query_one("#ports-error").render())
        await pilot.press("escape")
        assert sorted(fake.subscriptions()) == [80, 8080]


async def test_a_broken_link_ends_the_session_visibly(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        fake.drop_link()
        await wait_for(pilot, lambda: app.bar.link == "failed", "the failure")
        assert "the agent closed the link" in chip(app, "link")
        assert fake.stopped == 1  # the agent process is stopped even then


async def test_quitting_stops_the_agent(fake: FakeAgent) -> None:
    """q ends the session cleanly (the agent is stopped) before the app exits."""
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("q")
        await wait_for(pilot, lambda: fake.stopped == 1, "the agent to stop")
    assert app.return_value == 0
    assert not app.client.busy


async def test_detach_keeps_the_dashboard(fake: FakeAgent) -> None:
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("d")
        await wait_for(pilot, lambda: app.bar.link == "ended", "the end")
        assert fake.stopped == 1 and app.is_running


async def test_load_and_save_config(fake: FakeAgent, tmp_path: Path) -> None:
    """ctrl+o loads a mirrord config and applies it; ctrl+s writes the settings back."""
    source = tmp_path / "mirrord.json"
    source.write_text('{"feature": {"network": {"incoming": {"mode": "steal", '
                      '"http_filter": {"path_filter": "^/api",},},},},}')
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await attached(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one(Input).value = str(source)
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.subscriptions().get(80)
                       == ("steal", "path_filter: ^/api"), "the loaded filter")
        target = tmp_path / "saved.yaml"
        await pilot.press("ctrl+s")
        await pilot.pause()
        app.screen.query_one(Input).value = str(target)
        await pilot.press("enter")
        await wait_for(pilot, target.exists, "the saved file")
        assert "path_filter: ^/api" in target.read_text()
        assert "netns/shop" in target.read_text()
        bad = tmp_path / "bad.json"
        bad.write_text('{"feature": {"network": {"incoming": {"mode": "steel"}}}}')
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one(Input).value = str(bad)
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("steel" in n.message for n in app._notifications),
                       "the config error")
        assert fake.subscriptions().get(80) == ("steal", "path_filter: ^/api")


async def test_settings_changed_while_attaching_are_sent_once_attached(
        fake: FakeAgent) -> None:
    """Switching mode while the agent starts is not lost."""
    fake.attach_delay_s = 0.5
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.bar.link == "starting", "progress")
        await pilot.press("m", "o")
        await attached(pilot)
        await wait_for(pilot, lambda: app.client.incoming.mode is Mode.OFF, "mode off")
        await wait_for(pilot, lambda: fake.subscriptions() == {}, "no subscriptions")
        assert "OFF" in chip(app, "mode")
