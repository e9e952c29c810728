"""The fake API server's HTTP face: routing as the real RequestInfo does, auth, responses.

One ``Handler`` per connection (HTTP/1.1 keep-alive; ``Content-Length`` on every answer
that is not streamed; watches and followed logs are chunked). Each request is recorded,
authenticated (bearer token, else 401), resolved to (verb, resource, subresource,
namespace, name), authorized against the cluster's deny rules (403 with the real
message), then served. Errors are ``Status`` objects. Methods and paths outside what the
fake models answer 404 or 405 with a message saying so.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.kube.fake_portforward import HandshakeError, PortForwardSession, handshake_headers
from tests.kube.fake_store import (
    JSON,
    SUBRESOURCES,
    ApiError,
    Resource,
    Selector,
    bad_request,
    watch_view,
)

if TYPE_CHECKING:
    from tests.kube.fake_apiserver import FakeCluster

WATCH_DEFAULT_S = 30  # a watch without timeoutSeconds ends after this; clients re-watch
WATCH_MAX_S = 600
FOLLOW_MAX_S = 600
MAX_BODY = 16 << 20  # request bodies above this are refused (the real limit is 3 MiB)


def discovery(cluster: FakeCluster, path: str) -> JSON | None:
    """The discovery document at ``path`` (/version, /api, /apis, group versions) or None."""
    groups = {res.group for res in cluster.resources() if res.group}
    if path == "/version":
        return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-waylay-fake",
                "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5",
                "compiler": "gc", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{cluster.port}"}]}
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [_group(cluster, g) for g in sorted(groups)]}
    parts = path.strip("/").split("/")
    if parts[0] == "apis" and len(parts) == 2 and parts[1] in groups:
        return {"kind": "APIGroup", "apiVersion": "v1", **_group(cluster, parts[1])}
    group_version = "v1" if parts == ["api", "v1"] else "/".join(parts[1:])
    if parts == ["api", "v1"] or (parts[0] == "apis" and len(parts) == 3):
        rows = [r for r in cluster.resources() if r.api_version == group_version]
        if not rows:
            return None
        resources: list[JSON] = []
        for res in rows:
            resources.append({"name": res.plural, "singularName": res.singular,
                              "namespaced": res.namespaced, "kind": res.kind,
                              "verbs": list(res.verbs), "shortNames": list(res.short_names)})
            for sub, verbs in SUBRESOURCES.items():
                if sub.split("/")[0] == res.plural:
                    resources.append({"name": sub, "singularName": "", "namespaced": True,
                                      "kind": res.kind, "verbs": list(verbs)})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": group_version, "resources": resources}
    return None


def _group(cluster: FakeCluster, group: str) -> JSON:
    version = next(r.version for r in cluster.resources() if r.group == group)
    gv = {"groupVersion": f"{group}/{version}", "version": version}
    return {"name": group, "versions": [gv], "preferredVersion": gv}


@dataclass(frozen=True)
class RequestInfo:
    """What a resource request asks for, in RBAC terms."""

    verb: str
    resource: Resource
    subresource: str | None
    namespace: str | None
    name: str | None

    @property
    def rbac_resource(self) -> str:
        res = self.resource.plural
        return f"{res}/{self.subresource}" if self.subresource else res


NOT_FOUND = ApiError(404, "NotFound", "the server could not find the requested resource", {})


def request_info(cluster: FakeCluster, method: str, path: str,
                 query: dict[str, str]) -> RequestInfo:
    """Resolve a resource path (``/api/v1/namespaces/NS/pods/NAME/log``...); 404/405."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        api_version, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise NOT_FOUND
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise NOT_FOUND
    res = next((r for r in cluster.resources()
                if r.api_version == api_version and r.plural == rest[0]), None)
    if res is None or (namespace is not None and not res.namespaced):
        raise NOT_FOUND
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if res.plural == "namespaces" and name:
        namespace = name  # RBAC sees a namespace's own name as its namespace
    if sub is not None and f"{res.plural}/{sub}" not in SUBRESOURCES:
        raise NOT_FOUND
    if sub == "portforward":
        verb = "create"  # kubectl needs "create" on pods/portforward; see fake_apiserver
    elif method == "GET":
        verb = "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete",
                "PUT": "update"}.get(method, "unknown")
        if (verb == "create") != (name is None):
            verb = "unknown"
    allowed = SUBRESOURCES[f"{res.plural}/{sub}"] if sub else res.verbs
    if verb not in allowed:
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on "
                       "the requested resource (not modeled by the fake API server)", {})
    return RequestInfo(verb, res, sub, namespace, name)


class FakeHTTPServer(ThreadingHTTPServer):
    """The server; remembers each connection's socket and thread so ``close`` ends them."""

    daemon_threads = True

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True,
                                  name=f"fake-apiserver-conn-{client_address[1]}")
        with self._lock:
            self._connections[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection (ending idle keep-alives and streams), join threads."""
        with self._lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in connections:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read cluster.requests instead of a log on stderr

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_GET

    # --- responses -----------------------------------------------------------------------

    def _reply(self, code: int, body: JSON | str, content_type: str = "application/json"
               ) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except OSError:
            return True

    # --- the request ---------------------------------------------------------------------

    def _handle(self) -> None:
        cluster = self.server.cluster
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        cluster.record(self.command, url.path, query)
        try:
            body = self._read_body()
            if not cluster.authenticated(self.headers.get("Authorization", "")):
                raise ApiError(401, "Unauthorized", "Unauthorized")
            doc = discovery(cluster, url.path.rstrip("/") or "/")
            if doc is not None and self.command == "GET":
                self._reply(200, doc)
                return
            info = request_info(cluster, self.command, url.path, query)
            cluster.authorize(info.verb, info.rbac_resource, info.resource, info.namespace,
                              info.name)
            if "dryRun" in query:
                raise bad_request("dryRun is not modeled by the fake API server")
            self._serve(info, query, body, parse_qs(url.query).get("ports", []))
        except ApiError as exc:
            self._reply(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer 500, let socketserver print it
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._reply(500, ApiError(500, "InternalError",
                                          f"fake API server error: {exc!r}").status())
            raise

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = bytearray()
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size + 2)[:-2]
                if len(data) > MAX_BODY:
                    raise ApiError(413, "RequestEntityTooLarge", "request body too large")
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(data)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, "RequestEntityTooLarge", "request body too large")
        return self.rfile.read(length) if length else b""

    def _json_body(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError as exc:
            raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from None

    def _serve(self, info: RequestInfo, query: dict[str, str], body: bytes,
               ports: list[str]) -> None:
        cluster, res = self.server.cluster, info.resource
        if info.subresource == "portforward":
            self._portforward(info, ports)
        elif info.subresource == "log":
            self._log(info, query)
        elif info.subresource == "ephemeralcontainers":
            assert info.namespace is not None and info.name is not None
            if info.verb == "get":
                self._reply(200, cluster.store.get(res, info.namespace, info.name))
            else:
                content_type = self.headers.get("Content-Type", "")
                pod = cluster.kubelet.patch_ephemeral(info.namespace, info.name, content_type,
                                                      self._json_body(body))
                self._reply(200, pod)
        elif info.verb == "get":
            assert info.name is not None
            self._reply(200, cluster.store.get(res, info.namespace, info.name))
        elif info.verb == "list":
            selector = Selector.parse(res, query.get("labelSelector", ""),
                                      query.get("fieldSelector", ""))
            rv, items = cluster.store.list_objects(res, info.namespace, selector)
            if res.builtin:  # the real API leaves these off built-in list items
                for item in items:
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
            self._reply(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                              "metadata": {"resourceVersion": str(rv)}, "items": items})
        elif info.verb == "watch":
            self._watch(info, query)
        elif info.verb == "create":
            assert info.namespace is not None
            self._reply(201, cluster.kubelet.create_job(info.namespace, self._json_body(body)))
        elif info.verb == "delete":
            assert info.namespace is not None and info.name is not None
            options = self._json_body(body) or {}
            if not isinstance(options, dict):
                raise bad_request("the request body must be DeleteOptions")
            if res.plural == "jobs":
                policy = query.get("propagationPolicy", options.get("propagationPolicy"))
                self._reply(200, cluster.kubelet.delete_job(info.namespace, info.name, policy))
            else:
                grace = query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
                self._reply(200, cluster.kubelet.delete_pod(
                    info.namespace, info.name, None if grace is None else float(grace)))
        else:
            raise AssertionError(f"unrouted {info}")

    def _watch(self, info: RequestInfo, query: dict[str, str]) -> None:
        cluster, res = self.server.cluster, info.resource
        selector = Selector.parse(res, query.get("labelSelector", ""),
                                  query.get("fieldSelector", ""))
        try:
            timeout = min(int(query.get("timeoutSeconds") or WATCH_DEFAULT_S), WATCH_MAX_S)
        except ValueError:
            raise bad_request("timeoutSeconds must be an integer") from None
        resource_version = query.get("resourceVersion", "")
        if resource_version and not resource_version.isdigit():
            raise bad_request(f'invalid resource version "{resource_version}"')
        self._start_stream("application/json")
        deadline = time.monotonic() + timeout
        try:
            try:
                position, events = cluster.store.watch_start(
                    res, info.namespace, selector, resource_version)
                while True:
                    for kind, obj in watch_view(events, res, info.namespace, selector):
                        self._event(kind, obj)
                    left = deadline - time.monotonic()
                    if left <= 0 or cluster.store.closed or self._client_gone():
                        break
                    position, events = cluster.store.wait_events(position, min(left, 1.0))
            except ApiError as exc:  # 410: the real API reports it inside the stream
                self._event("ERROR", exc.status())
            self._chunk(b"")
        except OSError:
            self.close_connection = True

    def _event(self, kind: str, obj: JSON) -> None:
        self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

    def _log(self, info: RequestInfo, query: dict[str, str]) -> None:
        cluster = self.server.cluster
        assert info.namespace is not None and info.name is not None
        pod = cluster.store.get(info.resource, info.namespace, info.name)
        name = info.name
        regular = [c["name"] for c in pod["spec"].get("containers", [])]
        ephemeral = [c["name"] for c in pod["spec"].get("ephemeralContainers") or []]
        container = query.get("container") or (regular[0] if len(regular) == 1 else "")
        if not container:
            raise bad_request(f"a container name must be specified for pod {name}, choose "
                              f"one of: {regular} or one of the ephemeral containers: "
                              f"{ephemeral}".replace("'", "").replace(",", ""))
        if container not in regular + ephemeral:
            raise bad_request(f"container {container} is not valid for pod {name}")
        if query.get("previous") in ("true", "1"):
            raise bad_request(f'previous terminated container "{container}" in pod "{name}" '
                              f"not found")
        status = pod.get("status", {})
        for entry in status.get("containerStatuses", []) + status.get(
                "ephemeralContainerStatuses", []):
            if entry["name"] == container and "waiting" in entry["state"]:
                raise bad_request(f'container "{container}" in pod "{name}" is waiting to '
                                  f'start: {entry["state"]["waiting"].get("reason", "")}')
        buffer = cluster.kubelet.log(info.namespace, name, container)
        data, offset = buffer.read() if buffer else (b"", 0)
        tail = query.get("tailLines")
        if tail and tail.isdigit():
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[len(lines) - int(tail):]) if int(tail) else b""
        if query.get("follow") not in ("true", "1") or buffer is None:
            self._reply(200, data.decode(errors="replace"), "text/plain")
            return
        self._start_stream("text/plain")
        deadline = time.monotonic() + FOLLOW_MAX_S
        with contextlib.suppress(OSError):
            while True:
                if data:
                    self._chunk(data)
                if (buffer.finished and not data) or time.monotonic() > deadline \
                        or cluster.store.closed or self._client_gone():
                    break
                data, offset = buffer.read(offset, wait=1.0)
            self._chunk(b"")

    def _portforward(self, info: RequestInfo, port_values: list[str]) -> None:
        cluster = self.server.cluster
        assert info.namespace is not None and info.name is not None
        pod = cluster.store.get(info.resource, info.namespace, info.name)
        netns = cluster.kubelet.netns_of(info.namespace, info.name)
        if netns is None:
            raise bad_request(f"unable to upgrade connection: pod {info.name} is not backed "
                              f"by a network namespace in the fake API server")
        ports = []
        for value in ",".join(port_values).split(","):
            if not value.strip().isdigit() or not 0 < int(value) < 65536:
                raise bad_request(f"invalid port: {value!r}" if value else
                                  "query parameter \"ports\" is required")
            ports.append(int(value))
        try:
            headers = handshake_headers(self.command, self.headers,
                                        self.headers.get_all("Sec-WebSocket-Protocol") or [])
        except HandshakeError as exc:
            raise ApiError(exc.code, "BadRequest", str(exc)) from None
        self.send_response(101)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        # The client sends frames only after reading the 101 (RFC 6455 §4.1), so nothing
        # is left in rfile's buffer: from here on the raw socket is the WebSocket.
        PortForwardSession(self.connection, netns=netns, pod=info.name,
                           uid=pod["metadata"]["uid"], ports=ports,
                           closing=cluster.closing).run()
