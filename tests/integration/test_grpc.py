"""gRPC through a filtered steal: all four call kinds, stolen and passed, error statuses.

A grpcio server answering as ``remote`` listens on port 9090 in the namespace and another
answering as ``local`` on host loopback; their code comes from a small ``echo.proto``
compiled with grpcio-tools into a temporary directory at the start of the module. Calls
carrying the metadata ``x-user: alice`` are stolen; the others pass through, on the same
HTTP/2 connection (one channel per test).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.integration.conftest import (
    PYTHON,
    SERVERS,
    Bed,
    StartWaylay,
    requires_root_netns,
    start_server,
    stop_process,
)

grpc = pytest.importorskip("grpc")

pytestmark = [pytest.mark.integration, requires_root_netns]

GRPC_APP = SERVERS / "grpc_app.py"
REMOTE_GRPC_PORT = 9090
CALL_TIMEOUT_S = 30.0
PROTO = """\
syntax = "proto3";
package waylaytest;
message Msg { string text = 1; bytes blob = 2; string served_by = 3; }
service Echo {
  rpc Unary (Msg) returns (Msg);
  rpc ServerStream (Msg) returns (stream Msg);
  rpc ClientStream (stream Msg) returns (Msg);
  rpc Bidi (stream Msg) returns (stream Msg);
}
"""
CONFIG = ('{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
          '{"header_filter": "^x-user: alice$"}}}}}')
ALICE = (("x-user", "alice"),)
BOB = (("x-user", "bob"),)
# No proxy from the environment, ever (traffic stays on the test bed), and big messages.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


@dataclass
class GrpcBed:
    bed: Bed
    local: int
    pb2: ModuleType
    stub_class: Any

    def stub(self) -> tuple[Any, Any]:
        channel = grpc.insecure_channel(f"{self.bed.ns_ip}:{REMOTE_GRPC_PORT}",
                                        options=CHANNEL_OPTIONS)
        return channel, self.stub_class(channel)


def compile_proto(directory: Path) -> tuple[ModuleType, ModuleType]:
    (directory / "echo.proto").write_text(PROTO)
    subprocess.run([str(PYTHON), "-m", "grpc_tools.protoc", f"-I{directory}",
                    f"--python_out={directory}", f"--grpc_python_out={directory}",
                    "echo.proto"], check=True, timeout=60, capture_output=True)
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")
    finally:
        sys.path.remove(str(directory))


@pytest.fixture(scope="module")
def gbed(bed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcBed]:
    """The bed plus grpcio Echo servers: remote on 9090 in the namespace, local on loopback."""
    proto_dir = tmp_path_factory.mktemp("proto")
    pb2, pb2_grpc = compile_proto(proto_dir)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start_server([str(PYTHON), str(GRPC_APP), "remote", str(REMOTE_GRPC_PORT),
                                   "--proto-dir", str(proto_dir)], "remote grpc", ns=bed.ns)[0])
        local, port = start_server([str(PYTHON), str(GRPC_APP), "local", "0", "--host",
                                    "127.0.0.1", "--proto-dir", str(proto_dir)], "local grpc")
        procs.append(local)
        yield GrpcBed(bed, port, pb2, pb2_grpc.EchoStub)
    finally:
        for proc in procs:
            stop_process(proc)


@pytest.fixture
def steal(gbed: GrpcBed, waylay: StartWaylay) -> Any:
    return waylay(CONFIG, ports=[f"{REMOTE_GRPC_PORT}:{gbed.local}"])


@pytest.mark.parametrize("stolen", [True, False], ids=["stolen", "passed"])
def test_all_four_call_kinds(gbed: GrpcBed, steal: Any, stolen: bool) -> None:
    """Unary, server-, client- and bidi-streaming calls are answered by the right side."""
    who, meta = ("local", ALICE) if stolen else ("remote", BOB)
    msg = gbed.pb2.Msg
    channel, stub = gbed.stub()
    with channel:
        reply, call = stub.Unary.with_call(msg(text="hi", blob=b"\x00\x01"), metadata=meta,
                                           timeout=CALL_TIMEOUT_S)
        assert (reply.text, reply.blob, reply.served_by) == ("hi", b"\x00\x01", who)
        assert dict(call.trailing_metadata())["x-served-by"] == who
        replies = list(stub.ServerStream(msg(text="50", blob=b"x" * 1000), metadata=meta,
                                         timeout=CALL_TIMEOUT_S))
        assert [r.text for r in replies] == [str(i) for i in range(50)]
        assert {r.served_by for r in replies} == {who}
        reply = stub.ClientStream(iter([msg(text=str(i), blob=bytes([i]) * 5000)
                                        for i in range(40)]),
                                  metadata=meta, timeout=CALL_TIMEOUT_S)
        assert reply.text == ",".join(str(i) for i in range(40))
        assert reply.blob == b"".join(bytes([i]) * 5000 for i in range(40))
        assert reply.served_by == who
        outgoing = [msg(text=f"m{i}", blob=bytes([i % 256]) * 20_000) for i in range(100)]
        echoed = list(stub.Bidi(iter(outgoing), metadata=meta, timeout=CALL_TIMEOUT_S))
        assert [(r.text, r.blob) for r in echoed] == [(m.text, m.blob) for m in outgoing]
        assert {r.served_by for r in echoed} == {who}
    events = steal.wait_requests(4)
    assert {e["path"] for e in events} == {f"/waylaytest.Echo/{m}" for m in
                                           ("Unary", "ServerStream", "ClientStream", "Bidi")}
    assert {e["verdict"] for e in events} == {"stolen" if stolen else "passed"}
    assert {e["protocol"] for e in events} == {"h2"}


@pytest.mark.parametrize("stolen", [True, False], ids=["stolen", "passed"])
def test_error_status_and_message_arrive_intact(gbed: GrpcBed, steal: Any,
                                                stolen: bool) -> None:
    """grpc-status and grpc-message (trailers) reach the client from either side."""
    who, meta = ("local", ALICE) if stolen else ("remote", BOB)
    channel, stub = gbed.stub()
    with channel, pytest.raises(grpc.RpcError) as failure:
        stub.Unary(gbed.pb2.Msg(text="fail"), metadata=meta, timeout=CALL_TIMEOUT_S)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == f"{who} refuses: fail"
    assert dict(failure.value.trailing_metadata())["x-served-by"] == who


def test_stolen_and_passed_calls_share_one_connection(gbed: GrpcBed, steal: Any) -> None:
    """Alternating stolen and passed calls on one channel each reach their own side."""
    channel, stub = gbed.stub()
    with channel:
        for i in range(20):
            meta, who = (ALICE, "local") if i % 2 else (BOB, "remote")
            reply = stub.Unary(gbed.pb2.Msg(text=str(i)), metadata=meta,
                               timeout=CALL_TIMEOUT_S)
            assert (reply.text, reply.served_by) == (str(i), who)
    events = steal.wait_requests(20)
    assert sum(e["verdict"] == "stolen" for e in events) == 10
