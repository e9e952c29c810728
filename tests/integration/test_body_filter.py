"""mirrord's JSON body filter on real requests: bodies with Content-Length and chunked
bodies are stolen by a JSON value, others reach the original app byte for byte, and a body
over agent.max_body_buffer_size is passed with the reason in its event."""

from __future__ import annotations

import json
import signal

import pytest

from tests.integration.conftest import Bed, StartWaylay, curl, requires_root_netns, sha256

pytestmark = [pytest.mark.integration, requires_root_netns]

# mirrord's documented form (body_filter with "body": "json"), and its agent keys.
CONFIG = """{
  "agent": {"max_body_buffer_size": 1024, "max_body_buffer_timeout": 5000,},
  "feature": {"network": {"incoming": {
    "mode": "steal",
    "http_filter": {"body_filter": {"body": "json", "query": "$.user.name",
                                    "matches": "^alice$",}},
  }}},
}"""
JSON = "Content-Type: application/json"


def post(bed: Bed, path: str, body: bytes, *headers: str) -> tuple[str | None, str | None]:
    answer = curl(bed.url(path), "-X", "POST", "-H", JSON, *[a for h in headers
                                                           for a in ("-H", h)],
                  "--data-binary", f"@{_write(bed, path, body)}")
    assert answer.status == 200, answer
    return answer.served_by, answer.headers.get("x-body-sha256")


def _write(bed: Bed, path: str, body: bytes) -> str:
    file = bed.tmp / f"body{path.replace('/', '-')}.json"
    file.write_bytes(body)
    return str(file)


def test_json_body_filter_steals_by_value_and_passes_the_rest_exactly(
        bed: Bed, waylay: StartWaylay) -> None:
    """Content-Length and chunked bodies naming alice are stolen; bob's body and a body
    over the bound reach the original app unchanged, the latter with its reason."""
    run = waylay(CONFIG)
    alice = json.dumps({"user": {"name": "alice"}}).encode()
    bob = json.dumps({"user": {"name": "bob"}}).encode()
    big = json.dumps({"user": {"name": "alice"}, "pad": "x" * 4000}).encode()

    assert post(bed, "/length", alice) == ("local", sha256(alice))
    assert post(bed, "/chunked", alice, "Transfer-Encoding: chunked") == (
        "local", sha256(alice))
    assert post(bed, "/bob", bob) == ("remote", sha256(bob))
    assert post(bed, "/bob-chunked", bob, "Transfer-Encoding: chunked") == (
        "remote", sha256(bob))
    assert post(bed, "/big", big) == ("remote", sha256(big))
    assert post(bed, "/big-chunked", big, "Transfer-Encoding: chunked") == (
        "remote", sha256(big))
    plain = curl(bed.url("/plain"))  # no JSON at all: decided from the head alone
    assert plain.served_by == "remote"

    events = run.wait_requests(7)
    code = run.stop(signal.SIGINT)
    assert code == 0, run.stderr
    by_path = {e["path"]: e for e in events}
    assert [by_path[p]["verdict"] for p in ("/length", "/chunked")] == ["stolen", "stolen"]
    assert by_path["/length"]["matched"] == "body_filter: $.user.name ~ ^alice$"
    for path in ("/bob", "/bob-chunked", "/big", "/big-chunked", "/plain"):
        assert by_path[path]["verdict"] == "passed", by_path[path]
    assert by_path["/bob"].get("body_skipped") is None  # read, and not alice: no reason
    for path in ("/big", "/big-chunked"):
        assert by_path[path]["body_skipped"] == "body over agent.max_body_buffer_size", \
            by_path[path]
    assert by_path["/plain"]["body_skipped"] == "content-type is not application/json"
    assert by_path["/length"]["bytes_in"] == len(alice)
    assert by_path["/big-chunked"]["bytes_in"] == len(big)
