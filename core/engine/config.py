"""The mirrord-compatible config file: ``target`` and ``feature.network.incoming``.

A mirrord config file works unchanged (docs/architecture.md §2). waylay reads the two parts it acts
on,
``target``, ``kube_context``, ``agent`` (how the agent runs in a Kubernetes pod) and
``feature.network.incoming``, checks them completely when the file is read, and compiles
the HTTP filter once. Everything else in the file (``feature.fs``, ``feature.env``,
``operator``, ...) configures other mirrord features and is ignored silently, as are the
``agent`` keys waylay does not act on. Inside ``incoming``,
mirrord options waylay does not act on are accepted with a warning; keys mirrord does not
have either are errors naming the key path.

Formats by extension: JSON (tolerant: comments and trailing commas, with line and column in
errors), TOML (``tomllib``) and YAML (PyYAML, read with YAML 1.2 booleans as mirrord's
serde_yaml does, so ``mode: off`` is the string "off"; node marks give line and column).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

import yaml

from waylay.core.engine import jsonc
from waylay.core.engine.body_filter import (
    DEFAULT_BODY_BUFFER_SIZE,
    DEFAULT_BODY_BUFFER_TIMEOUT_MS,
    MAX_BODY_BUFFER_SIZE,
    MAX_BODY_BUFFER_TIMEOUT_MS,
)
from waylay.core.engine.errors import ConfigError
from waylay.core.engine.filters import HttpFilter, compile_http_filter
from waylay.core.engine.jsonc import KeyPath, Locator, Position, Positions, describe_type
from waylay.core.engine.wire_messages import DEFAULT_RESPONSE_TIMEOUT_S


class Mode(StrEnum):
    STEAL = "steal"
    MIRROR = "mirror"
    OFF = "off"


class ConcurrentSteal(StrEnum):
    """mirrord's ``on_concurrent_steal``: what a steal without a filter does when another
    session already steals the port without one (docs/architecture.md §2)."""

    ABORT = "abort"  # refused: the session is told which port and why
    CONTINUE = "continue"  # queued behind the earlier steal; takes over when it ends
    OVERRIDE = "override"  # takes the port; the earlier session is told and loses it


@dataclass(frozen=True, kw_only=True)
class IncomingConfig:
    """``feature.network.incoming``, checked and compiled."""

    mode: Mode = Mode.MIRROR
    http_filter: HttpFilter | None = None
    filter_ports: frozenset[int] | None = None  # None: the filter applies on every port
    port_mapping: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    ports: frozenset[int] | None = None  # allow-list of remote ports; None: all
    ignore_ports: frozenset[int] = frozenset()
    on_concurrent_steal: ConcurrentSteal = ConcurrentSteal.ABORT

    def intercepts(self, port: int) -> bool:
        """Is traffic to this remote port stolen or mirrored at all?"""
        if self.mode is Mode.OFF or port in self.ignore_ports:
            return False
        return self.ports is None or port in self.ports

    def filter_for(self, port: int) -> HttpFilter | None:
        """The filter on this port; None where it does not apply (the port is taken whole).

        Says nothing about whether the port is intercepted: ask :meth:`intercepts` first.
        """
        if self.filter_ports is not None and port not in self.filter_ports:
            return None
        return self.http_filter

    def local_port(self, remote: int) -> int:
        """The local port that receives traffic for ``remote`` (``port_mapping``)."""
        return self.port_mapping.get(remote, remote)


# The image `waylay run` deploys into pods unless ``agent.image`` says otherwise: what
# `docker build -t waylay-agent:0.1 -f agent/Dockerfile .` makes. Push it where the cluster
# can pull it and name that in ``agent.image``.
DEFAULT_AGENT_IMAGE = "waylay-agent:0.1"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """mirrord's ``agent`` section, the part that applies to waylay's agent (Kubernetes
    only, except ``local_response_timeout`` and the body buffer's bounds, which every
    agent applies)."""

    image: str = DEFAULT_AGENT_IMAGE
    namespace: str | None = None  # where a Job agent runs (default: the target's namespace)
    ttl: int = 30  # seconds the agent waits for a session (and lingers without one)
    startup_timeout: int = 60  # seconds from deploying the agent to its first answer
    ephemeral: bool = True  # an ephemeral container in the pod; False: a Job on its node
    # Seconds a local app has to start answering a stolen request (its response head);
    # past that the remote caller gets a 504 naming the local app, and an error event.
    local_response_timeout: int = DEFAULT_RESPONSE_TIMEOUT_S
    # How much of a request's body (bytes) and how long (milliseconds) the agent waits
    # for it when a body filter needs it to decide; past either the request is passed to
    # the original app as it came, and its event says why.
    max_body_buffer_size: int = DEFAULT_BODY_BUFFER_SIZE
    max_body_buffer_timeout: int = DEFAULT_BODY_BUFFER_TIMEOUT_MS
    # Answers on filtered HTTP/1.1 ports carry "Waylay-Agent: passed-through" or
    # "Waylay-Agent: stolen" (mirrord's agent.inject_headers, with waylay's header name).
    inject_headers: bool = False

    @property
    def body_buffer(self) -> tuple[int, int]:
        """(max_body_buffer_size, max_body_buffer_timeout): what a session sends its agent."""
        return self.max_body_buffer_size, self.max_body_buffer_timeout


@dataclass(frozen=True, kw_only=True)
class Config:
    """What waylay takes from a config file."""

    source: str | None = None
    target: str | None = None  # "pod/NAME", "netns/NAME", ...; also {"path": ...} in files
    namespace: str | None = None
    kube_context: str | None = None
    agent: AgentConfig = field(default_factory=AgentConfig)
    incoming: IncomingConfig = field(default_factory=IncomingConfig)
    warnings: tuple[str, ...] = ()

    def with_agent_ttl(self, seconds: float | None) -> Config:
        """``--ttl`` wins over the file's ``agent.ttl`` (whole seconds, at least 1)."""
        if seconds is None:
            return self
        agent = dataclasses.replace(self.agent, ttl=max(1, round(seconds)))
        return dataclasses.replace(self, agent=agent)

    def with_kube_flags(self, *, context: str | None, namespace: str | None) -> Config:
        """``--context`` and ``-n`` win over the file's ``kube_context`` and namespace."""
        return dataclasses.replace(self, kube_context=context or self.kube_context,
                                   namespace=namespace or self.namespace)


# mirrord incoming options that waylay accepts (so the file loads) but does not act on.
_IGNORED_INCOMING = {
    "ignore_localhost": "waylay intercepts localhost traffic as any other",
    "listen_ports": "use port_mapping to choose the local port",
    "https_delivery": "a mirrord operator option",
    "tls_delivery": "a mirrord operator option",
}
_MODES = frozenset(mode.value for mode in Mode)
_INCOMING_KEYS = ("mode", "http_filter", "port_mapping", "ports", "ignore_ports",
                  "on_concurrent_steal")
_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_FORMATS = {"json": "json", "jsonc": "json", "toml": "toml", "yaml": "yaml", "yml": "yaml"}


def default_config() -> Config:
    """No config file: mirror every port, no filter."""
    return Config()


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a config file; the format comes from its extension (.json, .toml, .yaml, .yml)."""
    source = os.fspath(path)
    fmt = _FORMATS.get(Path(source).suffix.lower().lstrip("."))
    if fmt is None:
        raise ConfigError(
            "unknown config format (use a .json, .toml, .yaml or .yml file)", source=source
        )
    try:
        text = Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", source=source) from None
    return parse_config(text, fmt=fmt, source=source)


def parse_config(text: str, *, fmt: str, source: str | None = None) -> Config:
    """Parse config text in ``fmt`` ("json", "toml" or "yaml")."""
    kind = _FORMATS.get(fmt.lower())
    if kind == "json":
        doc = jsonc.parse(text, source=source)
        value, positions = doc.value, doc.positions
    elif kind == "toml":
        value, positions = _read_toml(text, source), Positions()
    elif kind == "yaml":
        value, positions = _read_yaml(text, source)
    else:
        raise ConfigError(f"unknown config format {fmt!r} (use json, toml or yaml)", source=source)
    return _Builder(Locator(source=source, positions=positions)).config(value)


def _read_toml(text: str, source: str | None) -> object:
    try:
        return tomllib.loads(text)
    except RecursionError:  # tomllib reads nested arrays and inline tables recursively
        raise ConfigError("TOML: nested too deeply", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_WHERE.search(message)
        if where is None:
            raise ConfigError(f"TOML syntax: {message}", source=source) from None
        raise ConfigError(
            f"TOML syntax: {message[: where.start()]}",
            source=source,
            line=int(where.group(1)),
            column=int(where.group(2)),
        ) from None


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``off`` stays a string."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _read_yaml(text: str, source: str | None) -> tuple[object, Positions]:
    loader = _YamlLoader(text)
    values: dict[KeyPath, Position] = {}
    keys: dict[KeyPath, Position] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, Positions()
        _yaml_positions(node, (), values, keys, source)
        return loader.construct_document(node), Positions(values=values, keys=keys)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(
            f"YAML syntax: {exc.problem or exc.context}",
            source=source,
            line=None if mark is None else mark.line + 1,
            column=None if mark is None else mark.column + 1,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML: {exc}", source=source) from None
    except RecursionError:  # PyYAML composes and constructs recursively
        raise ConfigError("YAML: nested too deeply", source=source) from None
    finally:
        loader.dispose()


def _yaml_positions(
    node: yaml.Node,
    path: KeyPath,
    values: dict[KeyPath, Position],
    keys: dict[KeyPath, Position],
    source: str | None,
    seen: set[int] | None = None,
) -> None:
    # An alias is walked once: a chain of aliases ("billion laughs") would otherwise make
    # this walk exponential, and a recursive one endless. Aliased paths fall back to the
    # position of their nearest walked ancestor.
    seen = set() if seen is None else seen
    if id(node) in seen or len(path) > jsonc.MAX_DEPTH:
        return
    seen.add(id(node))
    values[path] = Position(node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _yaml_positions(item, (*path, index), values, keys, source, seen)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag.endswith(":str")):
                continue  # not a string key: never one waylay reads
            child = (*path, str(key_node.value))
            at = Position(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if child in keys:  # PyYAML keeps the last silently; that hides typos
                raise Locator(source=source, positions=Positions(values={child: at})).error(
                    f"duplicate key {key_node.value!r}", child
                )
            keys[child] = at
            _yaml_positions(value_node, child, values, keys, source, seen)


class _Builder:
    """Walks the parsed document, checking as it goes; collects warnings."""

    def __init__(self, where: Locator) -> None:
        self.where = where
        self.warnings: list[str] = []

    def warn(self, message: str, path: KeyPath) -> None:
        self.warnings.append(self.where.describe(message, path, at_key=True))

    def config(self, doc: object) -> Config:
        if doc is None:  # an empty YAML file
            doc = {}
        if not isinstance(doc, Mapping):
            raise self.where.error(f"expected an object at the top, got {describe_type(doc)}")
        target, namespace = self.target(doc.get("target"))
        incoming = self.incoming(self.incoming_value(doc))
        return Config(
            source=self.where.source,
            target=target,
            namespace=namespace,
            kube_context=self.optional_text(doc.get("kube_context"), ("kube_context",)),
            agent=self.agent(doc.get("agent")),
            incoming=incoming,
            warnings=tuple(self.warnings),
        )

    def target(self, value: object) -> tuple[str | None, str | None]:
        if value is None or isinstance(value, str):
            return self.optional_text(value, ("target",)), None
        if not isinstance(value, Mapping):
            raise self.where.error(
                f"expected a string or an object, got {describe_type(value)}", ("target",)
            )
        for key in value:
            if key not in ("path", "namespace"):
                raise self.unknown(("target",), key, ("path", "namespace"))
        return (
            self.optional_text(value.get("path"), ("target", "path")),
            self.optional_text(value.get("namespace"), ("target", "namespace")),
        )

    def agent(self, value: object) -> AgentConfig:
        path: KeyPath = ("agent",)
        if value is None:
            return AgentConfig()
        if not isinstance(value, Mapping):
            raise self.where.error(f"expected an object, got {describe_type(value)}", path)
        # Other mirrord agent options (log_level, tolerations, ...) are for mirrord's own
        # agent; like the features waylay does not have, they load silently.
        defaults = AgentConfig()
        ephemeral = value.get("ephemeral", defaults.ephemeral)
        inject_headers = value.get("inject_headers", defaults.inject_headers)
        for key, flag in (("ephemeral", ephemeral), ("inject_headers", inject_headers)):
            if not isinstance(flag, bool):
                raise self.where.error(f"expected true or false, got {describe_type(flag)}",
                                       (*path, key))
        return AgentConfig(
            image=self.image(value.get("image"), (*path, "image")) or defaults.image,
            namespace=self.optional_text(value.get("namespace"), (*path, "namespace")),
            ttl=self.seconds(value.get("ttl"), (*path, "ttl"), defaults.ttl),
            startup_timeout=self.seconds(value.get("startup_timeout"),
                                         (*path, "startup_timeout"), defaults.startup_timeout),
            ephemeral=ephemeral,
            local_response_timeout=self.seconds(
                value.get("local_response_timeout"), (*path, "local_response_timeout"),
                defaults.local_response_timeout),
            max_body_buffer_size=self.whole(
                value.get("max_body_buffer_size"), (*path, "max_body_buffer_size"),
                defaults.max_body_buffer_size, 1, MAX_BODY_BUFFER_SIZE, "bytes"),
            max_body_buffer_timeout=self.whole(
                value.get("max_body_buffer_timeout"), (*path, "max_body_buffer_timeout"),
                defaults.max_body_buffer_timeout, 1, MAX_BODY_BUFFER_TIMEOUT_MS, "milliseconds"),
            inject_headers=inject_headers,
        )

    def image(self, value: object, path: KeyPath) -> str | None:
        """A string, or mirrord's ``{"registry": ..., "tag": ...}`` form."""
        if isinstance(value, Mapping):
            registry = self.optional_text(value.get("registry"), (*path, "registry"))
            tag = self.optional_text(value.get("tag"), (*path, "tag"))
            if registry is None:
                raise self.where.error("missing registry", path)
            return f"{registry}:{tag}" if tag else registry
        return self.optional_text(value, path)

    def seconds(self, value: object, path: KeyPath, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 86_400:
            return value
        shown = str(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else describe_type(value)
        raise self.where.error(f"expected whole seconds 1..86400, got {shown}", path)

    def whole(self, value: object, path: KeyPath, default: int, low: int, high: int,
              unit: str) -> int:
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        shown = str(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else describe_type(value)
        raise self.where.error(f"expected whole {unit} {low}..{high}, got {shown}", path)

    def optional_text(self, value: object, path: KeyPath) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.where.error(f"expected a string, got {describe_type(value)}", path)
        if not value:
            raise self.where.error("empty string", path)
        return value

    def incoming_value(self, doc: Mapping[str, object]) -> object:
        """``feature.network.incoming``; ``network: false`` turns it off, as in mirrord."""
        feature = doc.get("feature")
        if feature is None:
            return None
        if not isinstance(feature, Mapping):
            raise self.where.error(
                f"expected an object, got {describe_type(feature)}", ("feature",)
            )
        network = feature.get("network")
        if network is None or network is True:
            return None
        if network is False:
            return False
        if not isinstance(network, Mapping):
            raise self.where.error(
                f"expected a boolean or an object, got {describe_type(network)}",
                ("feature", "network"),
            )
        return network.get("incoming")

    def incoming(self, value: object) -> IncomingConfig:
        path: KeyPath = ("feature", "network", "incoming")
        if value is None or value is True:
            return IncomingConfig()
        if value is False:
            return IncomingConfig(mode=Mode.OFF)
        if isinstance(value, str):
            return IncomingConfig(mode=self.mode(value, path))
        if not isinstance(value, Mapping):
            raise self.where.error(
                f"expected steal, mirror, off, a boolean or an object, got {describe_type(value)}",
                path,
            )
        for key in value:
            if key == "http_header_filter":
                raise self.where.error(
                    "removed from mirrord; write http_filter.header_filter instead",
                    (*path, key),
                    at_key=True,
                )
            if key in _IGNORED_INCOMING:
                self.warn(
                    f"accepted but ignored by waylay ({_IGNORED_INCOMING[key]})", (*path, key)
                )
            elif key not in _INCOMING_KEYS:
                raise self.unknown(path, key, (*_INCOMING_KEYS, *_IGNORED_INCOMING))
        mode = (
            Mode.MIRROR if value.get("mode") is None else self.mode(value["mode"], (*path, "mode"))
        )
        ports = self.port_list(value.get("ports"), (*path, "ports"))
        ignore_ports = self.port_list(value.get("ignore_ports"), (*path, "ignore_ports"))
        if ports is not None and ignore_ports is not None:
            raise self.where.error(
                "ports and ignore_ports are mutually exclusive",
                (*path, "ignore_ports"),
                at_key=True,
            )
        http_filter, filter_ports = self.http_filter(
            value.get("http_filter"), (*path, "http_filter")
        )
        config = IncomingConfig(
            mode=mode,
            http_filter=http_filter,
            filter_ports=filter_ports,
            port_mapping=MappingProxyType(self.port_mapping(value.get("port_mapping"), path)),
            ports=ports,
            ignore_ports=ignore_ports or frozenset(),
            on_concurrent_steal=self.concurrent_steal(value.get("on_concurrent_steal"),
                                                      (*path, "on_concurrent_steal")),
        )
        self.check_consistency(config, path)
        return config

    def concurrent_steal(self, value: object, path: KeyPath) -> ConcurrentSteal:
        if value is None:
            return ConcurrentSteal.ABORT
        if isinstance(value, str) and value in ConcurrentSteal.__members__.values():
            return ConcurrentSteal(value)
        shown = repr(value) if isinstance(value, str) else describe_type(value)
        raise self.where.error(f"expected abort, continue or override, got {shown}", path)

    def mode(self, value: object, path: KeyPath) -> Mode:
        if isinstance(value, str) and value in _MODES:
            return Mode(value)
        shown = repr(value) if isinstance(value, str) else describe_type(value)
        raise self.where.error(f"expected steal, mirror or off, got {shown}", path)

    def http_filter(
        self, value: object, path: KeyPath
    ) -> tuple[HttpFilter | None, frozenset[int] | None]:
        if value is None or isinstance(value, bool):  # mirrord's toggle: no filter either way
            return None, None
        if not isinstance(value, Mapping):
            raise self.where.error(f"expected an object, got {describe_type(value)}", path)
        ports = self.port_list(value.get("ports"), (*path, "ports"), single_ok=True)
        if all(key == "ports" for key in value):
            if ports is not None:
                self.warn("has no effect without a filter", (*path, "ports"))
            return None, None
        sub = self.where.under(path)
        compiled = compile_http_filter(
            value, key_path=sub.prefix, source=sub.source, positions=sub.positions
        )
        return compiled, ports

    def port_list(
        self, value: object, path: KeyPath, *, single_ok: bool = False
    ) -> frozenset[int] | None:
        if value is None:
            return None
        if single_ok and not isinstance(value, list):
            return frozenset([self.port(value, path)])
        if not isinstance(value, list):
            raise self.where.error(f"expected a list of ports, got {describe_type(value)}", path)
        if not value:
            raise self.where.error("empty list (leave the key out instead)", path)
        return frozenset(self.port(item, (*path, i)) for i, item in enumerate(value))

    def port(self, value: object, path: KeyPath) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
            return value
        number = isinstance(value, int | float) and not isinstance(value, bool)
        shown = str(value) if number else describe_type(value)
        raise self.where.error(f"expected a port number 1..65535, got {shown}", path)

    def port_mapping(self, value: object, incoming: KeyPath) -> dict[int, int]:
        path = (*incoming, "port_mapping")
        if value is None:
            return {}
        if not isinstance(value, list):
            raise self.where.error(
                f"expected a list of [local, remote] pairs, got {describe_type(value)}", path
            )
        mapping: dict[int, int] = {}
        for i, pair in enumerate(value):
            if not isinstance(pair, list) or len(pair) != 2:
                raise self.where.error("expected a [local, remote] pair", (*path, i))
            local, remote = self.port(pair[0], (*path, i, 0)), self.port(pair[1], (*path, i, 1))
            if remote in mapping:
                raise self.where.error(
                    f"remote port {remote} is mapped twice ({mapping[remote]} and {local})",
                    (*path, i, 1),
                )
            mapping[remote] = local
        return mapping

    def check_consistency(self, config: IncomingConfig, path: KeyPath) -> None:
        if config.http_filter is None:
            return
        if config.mode is Mode.OFF:
            self.warn("has no effect while mode is off", (*path, "http_filter"))
        remote_of = {local: remote for remote, local in config.port_mapping.items()
                     if local != remote}
        for port in sorted(config.filter_ports or ()):
            if port in remote_of and port not in config.port_mapping:
                # mirrord's filter ports are the target's (remote) ports, which port_mapping
                # users often get the wrong way round (mirrord issue 2397).
                self.warn(
                    f"port {port} is a local port of port_mapping; the filter's ports are "
                    f"the target's ports (remote port {remote_of[port]} maps to {port})",
                    (*path, "http_filter", "ports"),
                )
            elif not config.intercepts(port) and config.mode is not Mode.OFF:
                self.warn(
                    f"port {port} is not intercepted (see ports / ignore_ports), "
                    "so the filter never applies there",
                    (*path, "http_filter", "ports"),
                )

    def unknown(self, path: KeyPath, key: object, allowed: tuple[str, ...]) -> ConfigError:
        return self.where.unknown_key(path, key, allowed)
