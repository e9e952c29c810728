"""HTTP/1.1 streams through a filtered steal: keep-alive, pipelining, 100-continue, big bodies.

One config throughout: mirrord's header-filter example. Requests carrying
``X-My-Header: my-header-value`` are stolen (answered by the local app), the others pass
through to the original app in the namespace.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import (
    Bed,
    StartWaylay,
    curl,
    requires_root_netns,
    sha256,
)
from tests.integration.servers.http_app import pattern

pytestmark = [pytest.mark.integration, requires_root_netns]

HEADER_CONFIG = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "X-My-Header: my-header-value", "ports": [80, 8080]},}}}}'
)
STEAL_HEADER = ("X-My-Header", "my-header-value")
SOCKET_TIMEOUT_S = 20.0


def _served_by(stolen: bool) -> str:
    return "local" if stolen else "remote"


# --- a minimal HTTP/1.1 response reader for raw sockets ----------------------------------


class ResponseReader:
    """Reads consecutive HTTP/1.1 responses from one socket (Content-Length or chunked)."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def _line(self) -> bytes:
        line = self._file.readline(65537)
        if not line:
            raise ConnectionError("connection closed before a complete response")
        return line

    def head(self) -> tuple[int, dict[str, str]]:
        status = int(self._line().split()[1])
        headers: dict[str, str] = {}
        while (line := self._line()) not in (b"\r\n", b"\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next final response (1xx responses are skipped)."""
        while True:
            status, headers = self.head()
            if status >= 200:
                break
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._file.read(size))
                self._line()
            while self._line() not in (b"\r\n", b"\n"):
                pass
            return status, headers, b"".join(parts)
        return status, headers, self._file.read(int(headers.get("content-length", "0")))


def _request(method: str, path: str, host: str, *, steal: bool, body: bytes = b"",
             extra: str = "", content_length: int | None = None) -> bytes:
    """A request in bytes; ``content_length`` announces a body sent separately."""
    length = len(body) if content_length is None else content_length
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
    if steal:
        head += f"{STEAL_HEADER[0]}: {STEAL_HEADER[1]}\r\n"
    return (head + extra + "\r\n").encode() + body


# --- tests ----------------------------------------------------------------------------------


def test_keep_alive_connection_mixes_stolen_and_passed_requests(
    bed: Bed, waylay: StartWaylay
) -> None:
    """One keep-alive connection alternating matching and other requests: each answered right."""
    run = waylay(HEADER_CONFIG)
    conn = http.client.HTTPConnection(bed.ns_ip, 80, timeout=SOCKET_TIMEOUT_S)
    try:
        conn.connect()
        sock = conn.sock
        client_address = sock.getsockname()
        plan = []
        for i in range(10):
            steal = i % 2 == 0
            method = "POST" if i % 3 == 0 else "GET"
            body = f"body {i}".encode() if method == "POST" else None
            headers = dict([STEAL_HEADER]) if steal else {}
            conn.request(method, f"/keepalive/{i}", body=body, headers=headers)
            response = conn.getresponse()
            content = response.read()
            assert response.status == 200
            assert response.getheader("X-Served-By") == _served_by(steal), (i, steal)
            assert response.getheader("X-Path") == f"/keepalive/{i}"
            if body is not None:
                assert response.getheader("X-Body-Sha256") == sha256(body)
            else:
                assert content == f"{_served_by(steal)} /keepalive/{i}\n".encode()
            assert not response.will_close, response.getheaders()
            # http.client reconnects silently when a connection closed: check it did not.
            assert conn.sock is sock and sock.getsockname() == client_address, i
            plan.append((method, f"/keepalive/{i}", "stolen" if steal else "passed"))
    finally:
        conn.close()
    events = run.wait_requests(len(plan))
    assert [(e["method"], e["path"], e["verdict"]) for e in events] == plan


def test_pipelined_requests_are_answered_in_order(bed: Bed, waylay: StartWaylay) -> None:
    """Requests pipelined in one write, stolen and passed alternately, come back in order."""
    run = waylay(HEADER_CONFIG)
    paths = [f"/pipelined/{i}" for i in range(6)]
    payload = b"".join(
        _request("GET", path, bed.ns_ip, steal=i % 2 == 1) for i, path in enumerate(paths))
    with socket.create_connection((bed.ns_ip, 80), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(payload)
        reader = ResponseReader(sock)
        for i, path in enumerate(paths):
            status, headers, body = reader.response()
            assert status == 200
            assert headers["x-path"] == path
            assert headers["x-served-by"] == _served_by(i % 2 == 1), (i, headers)
            assert body == f"{_served_by(i % 2 == 1)} {path}\n".encode()
    events = run.wait_requests(len(paths))
    assert [e["path"] for e in events] == paths


@pytest.mark.parametrize("steal", [True, False], ids=["stolen", "passed"])
def test_expect_100_continue_is_answered_before_the_body(
    bed: Bed, waylay: StartWaylay, steal: bool
) -> None:
    """A client that waits for 100 Continue before its body gets it, then the right answer."""
    waylay(HEADER_CONFIG)
    body = pattern(200_000)
    head = _request("POST", "/expect", bed.ns_ip, steal=steal, content_length=len(body),
                    extra="Expect: 100-continue\r\n")
    with socket.create_connection((bed.ns_ip, 80), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(head)  # the head only: the body waits for 100 Continue
        reader = ResponseReader(sock)
        status, _ = reader.head()
        assert status == 100
        sock.sendall(body)
        status, headers, _ = reader.response()
    assert status == 200
    assert headers["x-served-by"] == _served_by(steal)
    assert headers["x-body-sha256"] == sha256(body)


@pytest.fixture(scope="module")
def megabyte_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bodies") / "one-megabyte.bin"
    path.write_bytes(pattern(1024 * 1024)[::-1])
    return path


def _steal_args(steal: bool) -> list[str]:
    return ["-H", f"{STEAL_HEADER[0]}: {STEAL_HEADER[1]}"] if steal else []


def test_one_megabyte_post_with_expect_continue_arrives_intact(
    bed: Bed, waylay: StartWaylay, megabyte_file: Path
) -> None:
    """A 1 MB POST sent with Expect: 100-continue reaches either side intact (sha256)."""
    run = waylay(HEADER_CONFIG)
    data = megabyte_file.read_bytes()
    for steal in (True, False):
        answer = curl(bed.url("/upload/plain"), *_steal_args(steal),
                      "-H", "Expect: 100-continue",
                      "-H", "Content-Type: application/octet-stream",
                      "--data-binary", f"@{megabyte_file}")
        assert answer.status == 200
        assert answer.served_by == _served_by(steal)
        assert answer.headers["x-body-length"] == str(len(data))
        assert answer.headers["x-body-sha256"] == sha256(data)
    events = run.wait_requests(2)
    assert [(e["verdict"], e["bytes_in"]) for e in events] == [
        ("stolen", len(data)), ("passed", len(data))]


def test_chunked_upload_arrives_intact(
    bed: Bed, waylay: StartWaylay, megabyte_file: Path
) -> None:
    """A chunked upload (Transfer-Encoding: chunked) reaches either side intact (sha256)."""
    run = waylay(HEADER_CONFIG)
    data = megabyte_file.read_bytes()
    for steal in (True, False):
        answer = curl(bed.url("/upload/chunked"), *_steal_args(steal),
                      "-H", "Transfer-Encoding: chunked",
                      "-H", "Content-Type: application/octet-stream",
                      "--data-binary", f"@{megabyte_file}")
        assert answer.status == 200
        assert answer.served_by == _served_by(steal)
        assert answer.headers["x-body-length"] == str(len(data))
        assert answer.headers["x-body-sha256"] == sha256(data)
    events = run.wait_requests(2)
    assert [(e["verdict"], e["bytes_in"]) for e in events] == [
        ("stolen", len(data)), ("passed", len(data))]


def test_ten_megabyte_response_arrives_intact(bed: Bed, waylay: StartWaylay) -> None:
    """A 10 MB response from either side reaches the client intact (sha256)."""
    run = waylay(HEADER_CONFIG)
    size = 10 * 1024 * 1024
    expected = sha256(pattern(size))
    for steal in (True, False):
        answer = curl(bed.url(f"/bytes/{size}"), *_steal_args(steal))
        assert answer.status == 200
        assert answer.served_by == _served_by(steal)
        assert len(answer.body) == size
        assert sha256(answer.body) == expected
    events = run.wait_requests(2)
    assert [(e["verdict"], e["bytes_out"]) for e in events] == [
        ("stolen", size), ("passed", size)]
    assert run.stop(signal.SIGINT) == 0, run.stderr


def test_concurrent_short_connections_are_all_answered(bed: Bed, waylay: StartWaylay) -> None:
    """Many clients, a new connection per request, stolen and passed mixed: none left hanging."""
    run = waylay(HEADER_CONFIG)
    clients, per_client = 8, 10
    timeout = 10.0  # a correct agent answers in milliseconds; this only bounds a hang
    wrong: list[tuple[int, int, str]] = []

    def client(c: int) -> None:
        for i in range(per_client):
            steal = (c + i) % 3 == 0
            conn = http.client.HTTPConnection(bed.ns_ip, 80, timeout=timeout)
            try:
                conn.request("GET", f"/concurrent/{c}/{i}",
                             headers=dict([STEAL_HEADER]) if steal else {})
                response = conn.getresponse()
                body = response.read()
                if body != f"{_served_by(steal)} /concurrent/{c}/{i}\n".encode():
                    wrong.append((c, i, f"{response.status} {body[:80]!r}"))
            except OSError as exc:  # a timeout here means the request was left hanging
                wrong.append((c, i, repr(exc)))
                return
            finally:
                conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout * per_client)
    assert not wrong, wrong
    run.wait_requests(clients * per_client)
