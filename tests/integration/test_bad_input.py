"""Bad input: config mistakes exit 2 naming key and position, a missing target exits 3, and
hostile traffic (a malformed request, a header built to make a filter backtrack) neither
stops nor stalls the agent.
"""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import (
    CLEAN_ENV,
    Bed,
    StartWaylay,
    curl,
    requires_root_netns,
    waylay_argv,
    write_config,
)

pytestmark = [pytest.mark.integration, requires_root_netns]

CLI_TIMEOUT_S = 30


@dataclass(frozen=True)
class BadConfig:
    id: str
    name: str  # file name: its extension picks the format
    text: str
    key: str  # the key path the message must name
    line: int | None  # where the message must point (None: the format gives no position)
    column: int | None = None  # checked exactly when given, else any number
    mentions: tuple[str, ...] = ()  # further words the message must contain


def _incoming(body: str) -> str:
    """A JSON config whose ``incoming`` object holds ``body`` (starting on line 5)."""
    inner = textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 8)
    return (
        "{\n"
        '  "feature": {\n'
        '    "network": {\n'
        '      "incoming": {\n'
        f"{inner}\n"
        "      }\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


INCOMING = "feature.network.incoming"

BAD_CONFIGS = [
    BadConfig("unknown-mode", "mode.json", _incoming('"mode": "stael",'),
              f"{INCOMING}.mode", 5, mentions=("stael",)),
    BadConfig("bad-header-regex", "regex.json", _incoming('''
        "mode": "steal",
        "http_filter": {
          "header_filter": "X-(unclosed",
        },
        '''), f"{INCOMING}.http_filter.header_filter", 7, mentions=("X-(unclosed",)),
    BadConfig("bad-regex-in-any-of", "anyof.json", _incoming('''
        "mode": "steal",
        "http_filter": {
          "any_of": [
            {"header": "^x-ok: 1$"},
            {"path": "/api/[z-a]"},
          ],
        },
        '''), f"{INCOMING}.http_filter.any_of[1].path", 9, mentions=("/api/[z-a]",)),
    BadConfig("two-filters", "two.json", _incoming('''
        "mode": "steal",
        "http_filter": {
          "header_filter": "X-A: 1",
          "path_filter": "/api",
        },
        '''), f"{INCOMING}.http_filter", 8, mentions=("header_filter", "path_filter")),
    # The missing comma after "steal": the error is where the next key starts.
    BadConfig("json-syntax", "syntax.json", _incoming('''
        "mode": "steal"
        "http_filter": {"path_filter": "/api"}
        '''), INCOMING, 6, column=9),
    BadConfig("ports-and-ignore-ports", "ports.json", _incoming('''
        "mode": "steal",
        "ports": [80],
        "ignore_ports": [8080],
        '''), INCOMING, 7, mentions=("ports", "ignore_ports")),
    BadConfig("unknown-key", "typo.json", _incoming('''
        "mode": "steal",
        "http_filters": {"path_filter": "/api"},
        '''), f"{INCOMING}.http_filters", 6),
    BadConfig("port-out-of-range", "port.json", _incoming('''
        "mode": "steal",
        "http_filter": {"path_filter": "/api", "ports": [80, 70000]},
        '''), f"{INCOMING}.http_filter.ports[1]", 6, mentions=("70000",)),
    BadConfig("empty-any-of-toml", "empty.toml", textwrap.dedent('''
        [feature.network.incoming]
        mode = "steal"

        [feature.network.incoming.http_filter]
        any_of = []
        '''), f"{INCOMING}.http_filter.any_of", None),
    BadConfig("bad-method-yaml", "bad.yaml", textwrap.dedent('''
        feature:
          network:
            incoming:
              mode: steal
              http_filter:
                method_filter: "GE T"
        ''').lstrip("\n"), f"{INCOMING}.http_filter.method_filter", 6, mentions=("GE T",)),
]


def _run_cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          stdin=subprocess.DEVNULL, env=CLEAN_ENV)


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=[b.id for b in BAD_CONFIGS])
def test_config_mistake_exits_2_naming_the_key_and_position(
    bed: Bed, tmp_path: Path, bad: BadConfig
) -> None:
    """A config mistake exits 2 with one message naming file, key path and (line:col)."""
    path = write_config(tmp_path, bad.text, bad.name)
    done = _run_cli(waylay_argv(f"netns/{bed.ns}", path, [f"80:{bed.local_http}"]))
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "", done.stdout  # no event lines: nothing started
    if bad.line is None:
        where = re.escape(bad.name)
    else:
        column = r"\d+" if bad.column is None else str(bad.column)
        where = rf"{re.escape(bad.name)}:{bad.line}:{column}"
    # The key named is the one given, or one inside it (the second of two filters, say).
    key = rf"{re.escape(bad.key)}(?:[.\[][^:\s]*)?"
    assert re.search(rf"{where}: {key}: ", done.stderr), done.stderr
    for word in bad.mentions:
        assert word in done.stderr, done.stderr


def test_missing_namespace_exits_3(tmp_path: Path) -> None:
    """`-t netns/doesnotexist` exits 3 with a message naming the namespace."""
    name = "doesnotexist-waylay-test"
    done = _run_cli(waylay_argv(f"netns/{name}", None, ["80:8080"]))
    assert done.returncode == 3, done
    assert name in done.stderr and "Traceback" not in done.stderr, done.stderr


HEADER_CONFIG = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "X-My-Header: my-header-value", "ports": [80, 8080]},}}}}'
)
STEAL = ("-H", "X-My-Header: my-header-value")


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
], ids=["header-without-colon", "bad-content-length", "bad-chunk-size"])
def test_malformed_request_gets_400_and_the_agent_keeps_serving(
    bed: Bed, waylay: StartWaylay, garbage: bytes
) -> None:
    """A malformed request on the filtered port is answered 400; the next connection works."""
    run = waylay(HEADER_CONFIG)
    with socket.create_connection((bed.ns_ip, 80), timeout=10) as sock:
        sock.sendall(garbage)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            if len(reply) > 1 << 20:
                break
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert curl(bed.url("/after/steal"), *STEAL).served_by == "local"
    assert curl(bed.url("/after/pass")).served_by == "remote"
    assert run.proc.poll() is None, run.stderr


@dataclass(frozen=True)
class Backtracking:
    id: str
    pattern: str
    exhausts_budget: bool  # does the `regex` package really backtrack on it?


BACKTRACKING = [
    # Exponential in the `regex` package: must hit the time budget.
    Backtracking("a-or-a", r"^X-Evil: (a|a)+$", exhausts_budget=True),
    # The textbook case; the `regex` package happens to optimise it, so it never times out.
    Backtracking("nested-plus", r"^X-Evil: (a+)+$", exhausts_budget=False),
]
EVIL_VALUE = "a" * 30 + "!"
SOCKET_TIMEOUT_S = 20.0


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> str | None:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.getheader("X-Served-By")


@pytest.mark.parametrize("case", BACKTRACKING, ids=[c.id for c in BACKTRACKING])
def test_backtracking_filter_does_not_stall_other_requests(
    bed: Bed, waylay: StartWaylay, case: Backtracking
) -> None:
    """A hostile header against a backtracking filter counts as no match and stalls nobody."""
    config = ('{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
              f'{{"header_filter": "{case.pattern.replace(chr(92), chr(92) * 2)}"}}}}}}}}}}')
    run = waylay(config)
    # Every connection is open before any request and closed after all answers, so this
    # test does not depend on how the agent hands pooled connections from one to the next.
    hostile = [http.client.HTTPConnection(bed.ns_ip, 80, timeout=SOCKET_TIMEOUT_S)
               for _ in range(3)]
    normal = http.client.HTTPConnection(bed.ns_ip, 80, timeout=SOCKET_TIMEOUT_S)
    answers: dict[str, str | None] = {}
    try:
        for conn in [*hostile, normal]:
            conn.connect()

        def send_hostile(i: int) -> None:
            answers[f"hostile-{i}"] = _get(hostile[i], f"/evil/{i}", {"X-Evil": EVIL_VALUE})

        threads = [threading.Thread(target=send_hostile, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        answers["matching"] = _get(normal, "/evil/ok", {"X-Evil": "aaaa"})
        answers["other"] = _get(normal, "/evil/other", {})
        for thread in threads:
            thread.join(timeout=SOCKET_TIMEOUT_S * 2)
    finally:
        for conn in [*hostile, normal]:
            conn.close()
    assert answers == {"hostile-0": "remote", "hostile-1": "remote", "hostile-2": "remote",
                       "matching": "local", "other": "remote"}
    events = run.wait_requests(5)
    verdicts = {e["path"]: e["verdict"] for e in events}
    assert verdicts == {"/evil/0": "passed", "/evil/1": "passed", "/evil/2": "passed",
                        "/evil/ok": "stolen", "/evil/other": "passed"}
    if case.exhausts_budget:
        assert run.wait_for(lambda evs: sum(
            e.get("type") == "warning" and "time budget" in e.get("message", "")
            for e in evs) >= 3), run.events
        warnings = [e["message"] for e in run.of_type("warning")]
        assert all("/evil/" in w for w in warnings), warnings
