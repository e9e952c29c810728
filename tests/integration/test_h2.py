"""HTTP/2 (h2c prior knowledge) through a filtered steal: per-stream routing, big bodies.

A hypercorn app answering as ``remote`` listens on port 8080 in the namespace; on host
loopback the same app answers as ``local`` (it speaks h2c, so delivery stays HTTP/2), and
the bed's HTTP/1.1-only app shows the downgrade. Requests carrying ``x-user: alice`` are
stolen; the others pass through to the remote app on the same connection.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.conftest import (
    PYTHON,
    SERVERS,
    Bed,
    StartWaylay,
    curl,
    requires_root_netns,
    sha256,
    start_server,
    stop_process,
)
from tests.integration.servers.http_app import pattern

pytestmark = [pytest.mark.integration, requires_root_netns]

H2_APP = SERVERS / "h2_app.py"
REMOTE_H2_PORT = 8080
CONFIG = ('{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
          '{"header_filter": "^x-user: alice$"}}}}}')
ALICE = "x-user: alice"
BIG = 30 * 1024 * 1024
H2 = ("--http2-prior-knowledge",)


@dataclass
class H2Bed:
    bed: Bed
    local_h2: int  # the h2c-capable local app's port on 127.0.0.1

    def url(self, path: str) -> str:
        return f"http://{self.bed.ns_ip}:{REMOTE_H2_PORT}{path}"

    def ports(self, local: int | None = None) -> list[str]:
        return [f"{REMOTE_H2_PORT}:{local or self.local_h2}"]


@pytest.fixture(scope="module")
def h2bed(bed: Bed) -> Iterator[H2Bed]:
    """The bed plus h2c apps: remote on 8080 in the namespace, local on loopback."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start_server([str(PYTHON), str(H2_APP), "remote", str(REMOTE_H2_PORT)],
                                  "remote h2 app", ns=bed.ns)[0])
        local, port = start_server([str(PYTHON), str(H2_APP), "local", "0",
                                    "--host", "127.0.0.1"], "local h2 app")
        procs.append(local)
        yield H2Bed(bed, port)
    finally:
        for proc in procs:
            stop_process(proc)


def test_curl_prior_knowledge_stolen_and_passed(h2bed: H2Bed, waylay: StartWaylay) -> None:
    """curl --http2-prior-knowledge: the matching request is answered locally over h2."""
    run = waylay(CONFIG, ports=h2bed.ports())
    mine = curl(h2bed.url("/mine?q=1"), *H2, "-H", ALICE)
    theirs = curl(h2bed.url("/theirs"), *H2, "-H", "x-user: bob")
    assert (mine.status, mine.served_by, mine.body) == (200, "local", b"local /mine?q=1\n")
    assert mine.headers["x-http-version"] == "2"  # the local app speaks h2c: kept
    assert mine.headers["x-host"] == f"{h2bed.bed.ns_ip}:{REMOTE_H2_PORT}"
    assert (theirs.status, theirs.served_by) == (200, "remote")
    events = {e["path"]: e for e in run.wait_requests(2)}
    assert events["/mine?q=1"]["verdict"] == "stolen"
    assert events["/mine?q=1"]["protocol"] == "h2"
    assert events["/mine?q=1"]["matched"] is not None
    assert events["/theirs"]["verdict"] == "passed"
    assert events["/theirs"]["authority"] == f"{h2bed.bed.ns_ip}:{REMOTE_H2_PORT}"
    assert events["/theirs"]["status"] == 200


def test_authority_is_offered_to_header_filters_as_host(h2bed: H2Bed,
                                                        waylay: StartWaylay) -> None:
    """A header filter on ``host: ...`` matches the :authority of an h2 request."""
    config = ('{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
              '{"header_filter": "^host: steal\\\\.example"}}}}}')
    waylay(config, ports=h2bed.ports())
    mine = curl(h2bed.url("/a"), *H2, "-H", "Host: steal.example")
    theirs = curl(h2bed.url("/b"), *H2, "-H", "Host: other.example")
    assert (mine.served_by, theirs.served_by) == ("local", "remote")


async def _many_streams(url: str, n: int) -> tuple[list[httpx.Response], int]:
    async with httpx.AsyncClient(http1=False, http2=True, trust_env=False,
                                 timeout=30.0) as client:
        async def one(i: int) -> httpx.Response:
            headers = {"x-user": "alice" if i % 2 else "bob"}
            return await client.get(url.replace("PATH", f"slow/{20 + i % 5}?i={i}"),
                                    headers=headers)
        responses = await asyncio.gather(*(one(i) for i in range(n)))
        pool = client._transport._pool  # type: ignore[attr-defined]
        return list(responses), len(pool.connections)


def test_httpx_many_concurrent_streams_on_one_connection(h2bed: H2Bed,
                                                         waylay: StartWaylay) -> None:
    """httpx (http2=True): 60 concurrent streams on one connection, each answered right."""
    run = waylay(CONFIG, ports=h2bed.ports())
    responses, connections = asyncio.run(_many_streams(h2bed.url("/PATH"), 60))
    assert connections == 1
    for i, response in enumerate(responses):
        who = "local" if i % 2 else "remote"
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200
        assert response.headers["x-served-by"] == who, i
        assert response.text == f"{who} /slow/{20 + i % 5}?i={i}\n"
    events = run.wait_requests(60)
    assert sum(e["verdict"] == "stolen" for e in events) == 30
    assert all(e["protocol"] == "h2" for e in events)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), 65536):
        yield data[offset:offset + 65536]


async def _post_streamed(url: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(http1=False, http2=True, trust_env=False,
                                 timeout=30.0) as client:
        return await client.post(url, content=_chunks(body), headers={"x-user": "alice"})


def test_downgrade_to_http1_when_the_local_app_has_no_h2(h2bed: H2Bed,
                                                         waylay: StartWaylay) -> None:
    """An HTTP/1.1-only local app gets the stolen h2 request as HTTP/1.1 with a Host."""
    run = waylay(CONFIG, ports=h2bed.ports(h2bed.bed.local_http))
    for _ in range(2):  # the second one uses what the first learned
        mine = curl(h2bed.url("/down"), *H2, "-H", ALICE)
        assert (mine.status, mine.served_by, mine.body) == (200, "local", b"local /down\n")
    body = pattern(300_000)
    # No Content-Length: the downgraded request goes chunked.
    response = asyncio.run(_post_streamed(h2bed.url("/up"), body))
    assert response.headers["x-served-by"] == "local"
    assert response.headers["x-body-sha256"] == sha256(body)
    theirs = curl(h2bed.url("/theirs"), *H2)
    assert theirs.served_by == "remote"
    assert not run.of_type("error")


@pytest.mark.parametrize("stolen", [True, False], ids=["stolen", "passed"])
def test_30_mb_both_ways(h2bed: H2Bed, waylay: StartWaylay, stolen: bool) -> None:
    """A 30 MB download and a 30 MB upload arrive intact, stolen and passed."""
    waylay(CONFIG, ports=h2bed.ports())
    who = ("-H", ALICE) if stolen else ("-H", "x-user: bob")
    served = "local" if stolen else "remote"
    down = curl(h2bed.url(f"/bytes/{BIG}"), *H2, *who, timeout=120)
    assert (down.status, down.served_by, len(down.body)) == (200, served, BIG)
    assert sha256(down.body) == sha256(pattern(BIG)) == down.headers["x-body-sha256"]
    upload = h2bed.bed.tmp / "upload.bin"
    upload.write_bytes(pattern(BIG))
    up = curl(h2bed.url("/upload"), *H2, *who, "--data-binary", f"@{upload}",
              "-H", "content-type: application/octet-stream", timeout=120)
    assert (up.status, up.served_by) == (200, served)
    assert up.headers["x-body-sha256"] == sha256(pattern(BIG))
    assert up.headers["x-body-length"] == str(BIG)



def test_mirror_copies_matching_h2_streams(h2bed: H2Bed, waylay: StartWaylay) -> None:
    """Mirror mode over h2: the remote app answers, the local app's answer is measured."""
    config = ('{"feature": {"network": {"incoming": {"mode": "mirror", "http_filter": '
              '{"header_filter": "^x-user: alice$"}}}}}')
    run = waylay(config, ports=h2bed.ports())
    alice = curl(h2bed.url("/alice"), *H2, "-H", ALICE, "--data-binary", "payload")
    bob = curl(h2bed.url("/bob"), *H2, "-H", "x-user: bob")
    assert (alice.served_by, bob.served_by) == ("remote", "remote")
    events = {e["path"]: e for e in run.wait_requests(2)}
    assert events["/alice"]["verdict"] == "mirrored"
    assert events["/alice"]["status"] == 200 and events["/alice"]["remote_status"] == 200
    assert events["/bob"]["verdict"] == "passed"


def test_unreachable_local_app_gives_502_on_the_stream(h2bed: H2Bed,
                                                       waylay: StartWaylay) -> None:
    """Nothing listening locally: the stolen stream gets a 502 naming it, others pass."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    run = waylay(CONFIG, ports=h2bed.ports(free))
    mine = curl(h2bed.url("/gone"), *H2, "-H", ALICE)
    theirs = curl(h2bed.url("/here"), *H2)
    assert mine.status == 502 and f"127.0.0.1:{free}" in mine.body.decode()
    assert theirs.served_by == "remote"
    assert run.wait_for(lambda evs: any(e.get("type") == "error" for e in evs))
