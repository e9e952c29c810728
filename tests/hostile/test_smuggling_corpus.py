"""Request smuggling and oversize heads, sent raw to a filtered steal port: refused or agreed.

One session steals the requests carrying ``X-Steal: yes`` on RECORDER_PORT (the others
pass to the original app); both ends are ``marker_app`` recorders, so each case can be
judged against what the server at the other end framed. Every case is sent twice, once
routed to the local app (``stolen``) and once to the original app (``passed``), on a
fresh connection, and must end in exactly one of two ways:

- refused: a 4xx answer (nothing else after it) and the connection closed, and neither
  app saw a request of the case;
- forwarded: both ends agree: the app that answered framed exactly the requests the
  agent reported (same paths, same body lengths), the client got exactly one answer per
  request, in order, and never a second request where the client sent one (no
  ``/smuggled/...`` request reaches an app).

In every case the agent survives (the same worker, the session still up) and a normal
request afterwards, stolen and passed, gets its own answer. ``reference`` in each
failure message is what the original app alone does with the same bytes.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import selectors
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.hostile.conftest import (
    DEADLINE_S,
    MARKER_APP,
    PYTHON,
    RECORDER_PORT,
    HostileBed,
    Recorder,
    assert_same_agent,
    http_get,
    incoming,
    start_server,
    stop_process,
    wait_until,
)
from tests.integration.conftest import (
    WaylayRun,
    finish_waylay,
    launch_waylay,
    requires_root_netns,
    waylay_argv,
    write_config,
)

pytestmark = [pytest.mark.integration, requires_root_netns,
              pytest.mark.usefixtures("memory_checkpoint")]

STEAL_MARKED = incoming("steal", '{"header_filter": "^x-steal: yes$"}')
REFERENCE_PORT = 8091  # a recorder in the namespace that no session intercepts
# After a complete answer, how long to keep reading for an extra one before judging; the
# judgement never depends on it (the apps' logs are the record), it only ends the read.
QUIET_S = 1.0


@dataclass(frozen=True)
class Case:
    id: str
    requests: int  # how many requests the client means (1, or the pipelined count)
    build: Any  # (case id, route, steal header line) -> bytes


def _smuggled(case: str, steal: str) -> bytes:
    return f"GET /smuggled/{case} HTTP/1.1\r\nHost: x\r\n{steal}\r\n".encode()


def _post(case: str, route: str, steal: str, fields: str, body: bytes) -> bytes:
    head = f"POST /c/{case}/{route} HTTP/1.1\r\nHost: x\r\n{steal}{fields}\r\n"
    return head.encode() + body


def _get(case: str, route: str, steal: str, fields: bytes) -> bytes:
    head = f"GET /c/{case}/{route} HTTP/1.1\r\nHost: x\r\n{steal}".encode()
    return head + fields + b"\r\n"


def cl_te(case: str, route: str, steal: str) -> bytes:
    # A Content-Length reader takes it all as one body; a chunked reader sees a second request.
    body = b"0\r\n\r\n" + _smuggled(case, steal)
    return _post(case, route, steal,
                 f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n", body)


def te_cl(case: str, route: str, steal: str) -> bytes:
    # A chunked reader takes one chunk; a Content-Length reader stops after the size line.
    inner = _smuggled(case, steal)
    size_line = f"{len(inner):x}\r\n".encode()
    body = size_line + inner + b"\r\n0\r\n\r\n"
    return _post(case, route, steal,
                 f"Transfer-Encoding: chunked\r\nContent-Length: {len(size_line)}\r\n", body)


def duplicate_cl(case: str, route: str, steal: str) -> bytes:
    return _post(case, route, steal, "Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")


def conflicting_cl(case: str, route: str, steal: str) -> bytes:
    inner = _smuggled(case, steal)
    return _post(case, route, steal, f"Content-Length: 0\r\nContent-Length: {len(inner)}\r\n",
                 inner)


def conflicting_cl_list(case: str, route: str, steal: str) -> bytes:
    inner = _smuggled(case, steal)
    return _post(case, route, steal, f"Content-Length: 0, {len(inner)}\r\n", inner)


def negative_cl(case: str, route: str, steal: str) -> bytes:
    return _post(case, route, steal, "Content-Length: -1\r\n", _smuggled(case, steal))


def te_chunked_identity(case: str, route: str, steal: str) -> bytes:
    # chunked is not the final coding: the length cannot be determined (RFC 9112 §6.3).
    return _post(case, route, steal, "Transfer-Encoding: chunked, identity\r\n",
                 b"0\r\n\r\n" + _smuggled(case, steal))


def obs_fold(case: str, route: str, steal: str) -> bytes:
    # Folded into X-Fold for an unfolding parser; a field of its own for a naive one.
    body = b"0\r\n\r\n" + _smuggled(case, steal)
    return _post(case, route, steal,
                 f"Content-Length: {len(body)}\r\nX-Fold: a\r\n Transfer-Encoding: chunked\r\n",
                 body)


def bare_lf(case: str, route: str, steal: str) -> bytes:
    # A field ended by a bare LF: a CRLF-only parser sees no Content-Length at all.
    inner = _smuggled(case, steal)
    return _post(case, route, steal, f"X-A: b\nContent-Length: {len(inner)}\r\n", inner)


def chunk_size_overflow(case: str, route: str, steal: str) -> bytes:
    # 17 hex digits: 0x10000000000000005 wraps to 5 in a 64-bit parser.
    body = b"10000000000000005\r\nhello\r\n0\r\n\r\n" + _smuggled(case, steal)
    return _post(case, route, steal, "Transfer-Encoding: chunked\r\n", body)


def nul_in_value(case: str, route: str, steal: str) -> bytes:
    return _get(case, route, steal, b"X-A: a\x00b\r\n")


def cr_in_value(case: str, route: str, steal: str) -> bytes:
    # A bare CR read as a line end would reveal Transfer-Encoding: chunked.
    inner = _smuggled(case, steal)
    body = b"0\r\n\r\n" + inner
    return _post(case, route, steal,
                 f"X-A: a\rTransfer-Encoding: chunked\r\nContent-Length: {len(body)}\r\n", body)


def head_100k(case: str, route: str, steal: str) -> bytes:
    return _get(case, route, steal, b"X-Big: " + b"a" * 100_000 + b"\r\n")


def headers_1000(case: str, route: str, steal: str) -> bytes:
    return _get(case, route, steal, b"".join(b"X-H%d: v\r\n" % i for i in range(1000)))


PIPELINED = 100


def pipelined(case: str, route: str, steal: str) -> bytes:
    # One send holding 100 requests, every other one stolen on the "stolen" route.
    out = []
    for i in range(PIPELINED):
        mark = steal if i % 2 == 0 else ""
        out.append(f"GET /c/{case}/{route}/{i} HTTP/1.1\r\nHost: x\r\n{mark}\r\n".encode())
    return b"".join(out)


CASES = [
    Case("cl-te", 1, cl_te),
    Case("te-cl", 1, te_cl),
    Case("duplicate-cl", 1, duplicate_cl),
    Case("conflicting-cl", 1, conflicting_cl),
    Case("conflicting-cl-list", 1, conflicting_cl_list),
    Case("negative-cl", 1, negative_cl),
    Case("te-chunked-identity", 1, te_chunked_identity),
    Case("obs-fold", 1, obs_fold),
    Case("bare-lf", 1, bare_lf),
    Case("chunk-size-overflow", 1, chunk_size_overflow),
    Case("nul-in-value", 1, nul_in_value),
    Case("cr-in-value", 1, cr_in_value),
    Case("head-100k", 1, head_100k),
    Case("headers-1000", 1, headers_1000),
    Case("pipelined-100", PIPELINED, pipelined),
]


# --- talking raw HTTP/1.1 ----------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Reply:
    answers: list[Answer]
    closed: bool  # the server closed (or reset) the connection
    leftover: bytes  # bytes after the last complete answer


class _KeptOpen(io.BytesIO):
    """Bytes that stay readable after an answer that says ``Connection: close`` (which
    ``HTTPResponse`` handles by closing its file): the judgement wants what came after."""

    def close(self) -> None:
        pass


class _BufferSocket:
    """Enough of a socket for ``http.client.HTTPResponse`` to read answers from bytes."""

    def __init__(self, data: io.BytesIO) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return self._data


def parse_answers(data: bytes, closed: bool) -> tuple[list[Answer], bytes]:
    """The complete answers at the start of ``data``, and the bytes after them."""
    stream = _KeptOpen(data)
    answers: list[Answer] = []
    while stream.tell() < len(data):
        start = stream.tell()
        response = http.client.HTTPResponse(_BufferSocket(stream))  # type: ignore[arg-type]
        try:
            response.begin()
            if response.length is None and not response.chunked and not closed:
                stream.seek(start)  # delimited by the close, which has not come yet
                break
            body = response.read()
        except (http.client.HTTPException, ValueError):
            stream.seek(start)
            break
        answers.append(Answer(response.status,
                              {k.lower(): v for k, v in response.getheaders()}, body))
    return answers, data[stream.tell():]


def converse(host: str, port: int, payload: bytes, expected: int) -> Reply:
    """Send ``payload`` on a fresh connection and read until the server closes, or until
    ``expected`` answers are in and QUIET_S passes without more (bounded by DEADLINE_S)."""
    data = b""
    closed = False
    with socket.create_connection((host, port), timeout=DEADLINE_S) as sock:
        with contextlib.suppress(OSError):  # a server that refuses early may reset us
            sock.sendall(payload)
        deadline = time.monotonic() + DEADLINE_S
        last = time.monotonic()
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=0.2):
                    answers, _ = parse_answers(data, False)
                    if len(answers) >= expected and time.monotonic() - last >= QUIET_S:
                        break
                    continue
                try:
                    chunk = sock.recv(1 << 16)
                except OSError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                data += chunk
                last = time.monotonic()
    answers, leftover = parse_answers(data, closed)
    return Reply(answers, closed, leftover)


# --- the module's session ------------------------------------------------------------------


@dataclass
class Corpus:
    hb: HostileBed
    run: WaylayRun
    reference: Recorder


@pytest.fixture(scope="module")
def corpus(memory_checkpoint: HostileBed,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """A steal of marked requests on RECORDER_PORT, and an uninterrupted reference app."""
    hb = memory_checkpoint
    tmp = tmp_path_factory.mktemp("corpus")
    ref_log = tmp / "reference.jsonl"
    ref_proc, _ = start_server([str(PYTHON), str(MARKER_APP), "reference", str(REFERENCE_PORT),
                                "--log", str(ref_log)], "reference app", ns=hb.ns)
    config = write_config(tmp, STEAL_MARKED)
    run = launch_waylay(waylay_argv(f"netns/{hb.ns}", config,
                                    [f"{RECORDER_PORT}:{hb.local_recorder.port}"]), 1)
    try:
        yield Corpus(hb, run, Recorder("reference", REFERENCE_PORT, ref_log))
    finally:
        finish_waylay(run)
        stop_process(ref_proc)


def _of_case(records: list[dict[str, Any]], case: str, route: str) -> list[dict[str, Any]]:
    return [r for r in records
            if str(r.get("path") or "").startswith((f"/c/{case}/{route}", f"/smuggled/{case}"))]


def _reference(corpus: Corpus, case: Case) -> str:
    """What the original app alone makes of the same bytes (for failure messages)."""
    payload = case.build(case.id, "reference", "")
    done = subprocess.run(
        ["ip", "netns", "exec", corpus.hb.ns, str(PYTHON), "-c", _REFERENCE_CLIENT,
         str(REFERENCE_PORT)], input=payload, capture_output=True, timeout=DEADLINE_S + 10)
    statuses = done.stdout.decode(errors="replace").strip()
    seen = [(r["method"], r["path"], r["body_length"])
            for r in _of_case(corpus.reference.records(), case.id, "reference")]
    return f"reference app answered {statuses or 'nothing'}; framed {seen}"


# Run inside the namespace (the reference app is not on the veth): send stdin, print the
# status line of each answer until the app closes or goes quiet.
_REFERENCE_CLIENT = """
import socket, sys, time
payload = sys.stdin.buffer.read()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
try:
    s.sendall(payload)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError:
    pass
print(" ".join(l.split()[1].decode() for l in data.split(b"\\r\\n") if l.startswith(b"HTTP/1.")))
"""


def _normal_requests_work(hb: HostileBed, case: str) -> None:
    """After the case: a stolen and a passed request on fresh connections get their own answer."""
    for route, steal, want in (("stolen", {"X-Steal": "yes"}, "local"),
                               ("passed", {}, "remote")):
        path = f"/after/{case}/{route}"
        status, headers, _ = http_get(hb.ns_ip, RECORDER_PORT, path, steal)
        assert (status, headers.get("x-served-by"), headers.get("x-path")) == (200, want, path)


@pytest.mark.parametrize("route", ["stolen", "passed"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_or_both_ends_agree(corpus: Corpus, case: Case, route: str) -> None:
    """The raw bytes are refused (4xx, closed) or framed alike by agent and app; agent survives."""
    hb, run = corpus.hb, corpus.run
    steal = "X-Steal: yes\r\n" if route == "stolen" else ""
    reply = converse(hb.ns_ip, RECORDER_PORT, case.build(case.id, route, steal), case.requests)
    answered = [a for a in reply.answers if "x-served-by" in a.headers]
    refusals = [a for a in reply.answers if "x-served-by" not in a.headers]

    def seen() -> list[dict[str, Any]]:
        return (_of_case(hb.local_recorder.records(), case.id, route)
                + _of_case(hb.remote_recorder.records(), case.id, route))

    def events() -> list[dict[str, Any]]:
        return [e for e in run.requests
                if str(e.get("path") or "").startswith((f"/c/{case.id}/{route}",
                                                        f"/smuggled/{case.id}"))]

    # Events and logs are written when an exchange ends: wait for as many as were answered.
    wait_until(lambda: len(events()) >= len(answered) and len(seen()) >= len(answered))

    def context() -> str:  # evaluated only when an assertion fails
        reported = [(e["path"], e["verdict"], e["status"], e["bytes_in"]) for e in events()]
        return (f"answers {[(a.status, a.headers.get('x-path')) for a in reply.answers]}, "
                f"closed={reply.closed}, leftover {reply.leftover[:200]!r}; "
                f"apps framed {[(r['name'], r['path'], r['body_length']) for r in seen()]}; "
                f"events {reported}; "
                f"{_reference(corpus, case)}; stderr tail {run.stderr[-2000:]!r}")

    # Never a second request where the client sent one.
    assert not [r for r in seen() if r["path"].startswith("/smuggled/")], context()
    assert len(seen()) <= case.requests, context()
    # Refused: 4xx only, as the last thing said, then the connection is closed.
    for refusal in refusals:
        assert 400 <= refusal.status < 500, context()
    if refusals:
        assert reply.answers[-1] is refusals[-1] and len(refusals) == 1, context()
        assert reply.closed, context()
    if not reply.answers:
        # Nothing said at all: acceptable only as a refusal (closed, nothing forwarded).
        assert reply.closed and not seen(), context()
    # Forwarded: one answer per request the app framed, in order, each from where the
    # filter sends it, and the agent reported exactly what the app framed.
    paths = [a.headers["x-path"] for a in answered]
    assert sorted(paths) == sorted(r["path"] for r in seen()), context()
    if case.requests > 1 and not refusals:
        assert paths == [f"/c/{case.id}/{route}/{i}" for i in range(case.requests)], context()
    for answer in answered:
        marked = route == "stolen" and (case.requests == 1
                                        or int(answer.headers["x-path"].rsplit("/", 1)[1]) % 2 == 0)
        assert answer.headers["x-served-by"] == ("local" if marked else "remote"), context()
    framed = sorted((r["path"], r["body_length"]) for r in seen())
    reported = sorted((e["path"], e["bytes_in"]) for e in events() if e.get("status") is not None
                      and e["status"] < 400)
    assert framed == reported, context()
    # The agent survives and still serves.
    assert run.proc.poll() is None, context()
    assert_same_agent(hb)
    _normal_requests_work(hb, f"{case.id}-{route}")
    print(f"{case.id} [{route}]: "
          + (f"refused {refusals[0].status}" if refusals else
             "closed without an answer" if not reply.answers else
             f"forwarded {len(answered)} request(s), body lengths "
             f"{sorted({r['body_length'] for r in seen()})}"))
