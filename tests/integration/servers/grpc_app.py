"""A gRPC test server (grpcio) whose every answer says who answered.

    python grpc_app.py NAME PORT --proto-dir DIR [--host HOST]

``DIR`` holds ``echo_pb2`` / ``echo_pb2_grpc``, generated from ``echo.proto`` by the test
run (``tests/integration/test_grpc.py``). Service ``waylaytest.Echo``:

- ``Unary``: echoes the message with ``served_by`` = NAME; text ``fail`` aborts with
  INVALID_ARGUMENT and the message ``NAME refuses: fail``. Trailing metadata
  ``x-served-by: NAME``.
- ``ServerStream``: ``int(text)`` messages, texts ``0``, ``1``, ...
- ``ClientStream``: one message whose text joins the texts received, blob their blobs.
- ``Bidi``: echoes each message as it arrives.

Prints ``LISTENING <port>`` on stdout once it serves (PORT 0: any free port).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("port", type=int)
    parser.add_argument("--proto-dir", required=True)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args()
    sys.path.insert(0, args.proto_dir)
    import echo_pb2
    import echo_pb2_grpc
    import grpc

    name = args.name

    class Echo(echo_pb2_grpc.EchoServicer):  # type: ignore[misc, name-defined]
        def Unary(self, request: Any, context: Any) -> Any:
            context.set_trailing_metadata((("x-served-by", name),))
            if request.text == "fail":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} refuses: fail")
            return echo_pb2.Msg(text=request.text, blob=request.blob, served_by=name)

        def ServerStream(self, request: Any, context: Any) -> Iterator[Any]:
            for i in range(int(request.text)):
                yield echo_pb2.Msg(text=str(i), blob=request.blob, served_by=name)

        def ClientStream(self, requests: Iterator[Any], context: Any) -> Any:
            texts, blobs = [], []
            for message in requests:
                texts.append(message.text)
                blobs.append(message.blob)
            return echo_pb2.Msg(text=",".join(texts), blob=b"".join(blobs), served_by=name)

        def Bidi(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            for message in requests:
                yield echo_pb2.Msg(text=message.text, blob=message.blob, served_by=name)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(f"LISTENING {port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
