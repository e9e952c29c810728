"""The preview and the "why" judge requests by the engine's own rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.tui.events import captured, request
from waylay.core.engine.config import IncomingConfig, Mode, parse_config
from waylay.core.engine.events import FlowEvent, RequestEvent
from waylay.core.engine.filters import HttpFilter
from waylay.core.engine.flow import Verdict
from waylay.tui.fake_agent import FakeAgent, synthetic
from waylay.tui.preview import Plan, decide, explain, preview


@dataclass
class Row:
    key: int
    event: FlowEvent


def incoming(body: str) -> IncomingConfig:
    return parse_config(f'{{"feature": {{"network": {{"incoming": {body}}}}}}}',
                        fmt="json").incoming


def req(**kw: Any) -> RequestEvent:
    return request(1, **{"path": "/api/x?y=1", **kw})


def test_routing_rules() -> None:
    """Unfiltered ports are taken whole, non-HTTP passes a filtered port, off takes none."""
    cfg = incoming('{"mode": "steal", "http_filter": {"path_filter": "^/api", "ports": [80]}}')
    plan = Plan.of(cfg, {80: None, 8080: None}, [80, 8080, 9000])
    assert decide(req(), plan).taken
    assert decide(req(), plan).clause == "path_filter: ^/api"
    assert not decide(req(path="/other"), plan).taken
    assert decide(req(port=8080, path="/other"), plan).reason == "unfiltered-port"
    assert decide(req(protocol="tcp", method=None, path=None), plan).reason == "not-http"
    assert decide(req(port=1234), plan).reason == "not-intercepted"
    off = Plan.of(incoming('"off"'), {}, [80])
    assert decide(req(), off).reason == "off"


@pytest.mark.parametrize("body", [
    '{"mode": "steal", "http_filter": {"header_filter": "^x-user: (alice|bob)$"}}',
    '{"mode": "steal", "http_filter": {"path_filter": "orders", "ports": [80]}}',
    '{"mode": "steal", "http_filter": {"any_of": [{"method": "POST"}, {"path": "^/health"}]}}',
    '{"mode": "steal", "http_filter": {"all_of": [{"header": "user-agent: curl"}, '
    '{"path": "^/api"}]}}',
    '{"mode": "steal", "ports": [8080]}',
])
def test_preview_agrees_with_the_routing(body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preview takes exactly what the agent's routing rule (waylay.core.engine.registry, which
    the fake agent routes by) steals with the same filter."""
    # The regex budget is wall time (20 ms); on a loaded machine a GC pause can spend it
    # for one side only. This test is about the matching rules, so give both sides room.
    evaluate = HttpFilter.evaluate
    monkeypatch.setattr(HttpFilter, "evaluate", lambda self, request, **kw: evaluate(
        self, request, **{**kw, "budget_s": 5.0}))
    cfg = incoming(body)
    fake = FakeAgent()
    plan = Plan.of(cfg, {80: None, 8080: None}, [80, 8080])
    for p in plan.by_port.values():
        fake.add_subscription(p.remote, "steal", p.http_filter, capture=True)
    records = [fake.route(synthetic(i)) for i in range(400)]
    rows = [Row(i, r) for i, r in enumerate(records)]
    result = preview(rows, plan)
    stolen = {i for i, r in enumerate(records) if r.verdict is Verdict.STOLEN}
    assert result.taken_keys == stolen
    assert result.considered == 400 and not result.timed_out
    assert 0 < result.taken < 400 or body.endswith('[8080]}')


def test_header_filters_without_captured_headers_see_only_the_host() -> None:
    """Events without headers are judged on Host alone, and counted."""
    cfg = incoming('{"mode": "steal", "http_filter": {"header_filter": "^host: shop"}}')
    plan = Plan.of(cfg, {}, [80])
    rows = [Row(1, req()), Row(2, req(authority="other")),
            Row(3, req(capture=captured(request_headers=(("Host", "shop.local"), ("x", "y")))))]
    result = preview(rows, plan)
    assert result.taken_keys == {1, 3}
    assert result.headerless == 2
    assert "header filters are evaluated only on requests captured with headers" in \
        " ".join(result.notes())


def test_a_catastrophic_regex_is_cut_by_the_budgets() -> None:
    """Each evaluation stops at the engine's budget; the preview stops at its own."""
    cfg = incoming('{"mode": "steal", "http_filter": {"path_filter": "(a|aa)+$"}}')
    plan = Plan.of(cfg, {}, [80])
    rows = [Row(i, req(path="/" + "a" * 40 + "!")) for i in range(200)]
    result = preview(rows, plan, budget_s=0.2)
    assert result.taken == 0
    assert result.stopped_early and result.considered < 200 and result.timed_out
    assert "too slow" in " ".join(result.notes())


def test_summary_says_what_the_mode_does() -> None:
    cfg = incoming('{"mode": "mirror", "http_filter": {"method_filter": "GET"}}')
    result = preview([Row(1, req()), Row(2, req(method="POST"))], Plan.of(cfg, {}, [80]))
    assert result.summary() == "would mirror 1 of 2"
    off = preview([Row(1, req())], Plan.of(incoming('"off"'), {}, [80]))
    assert off.summary() == "mode off: would take none of 1"


def test_explain_names_each_clause() -> None:
    """The "why" lists every clause with its outcome on this request."""
    cfg = incoming('{"mode": "steal", "http_filter": {"all_of": [{"method": "GET"}, '
                   '{"path": "^/nope"}]}}')
    lines = explain(req(), Plan.of(cfg, {}, [80]))
    assert lines[0] == "passed through to the original app by the agent"
    assert "would not steal it" in lines[1]
    assert lines[2:4] == ["  ✓ method: GET", "  ✗ path: ^/nope"]
    stolen = explain(req(verdict=Verdict.STOLEN, matched="method: GET"),
                     Plan.of(incoming('{"mode": "steal"}'), {}, [80]))
    assert stolen[0] == "stolen by the agent: clause «method: GET» matched"
    assert "taken whole" in stolen[1]


def test_cli_ports_decide_the_plan() -> None:
    """Ports given like -p take precedence, as in the session."""
    plan = Plan.of(IncomingConfig(mode=Mode.STEAL), {9000: 9001}, [80])
    assert list(plan.by_port) == [9000] and plan.by_port[9000].local == 9001
