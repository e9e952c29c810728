"""What the filter editor holds, and its translation into a compiled engine filter.

The editor edits a :class:`FilterDraft`: a kind (no filter, one of mirrord's three single
filters, or an ``any_of`` / ``all_of`` list of clauses) plus ``http_filter.ports``. A
draft compiles with the engine's own :func:`waylay.core.engine.filters.compile_http_filter`, so what
the editor accepts is exactly what a config file would; an error names the field it is about
so the editor can mark that input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from waylay.core.engine.config import IncomingConfig
from waylay.core.engine.errors import ConfigError
from waylay.core.engine.filters import HttpFilter, compile_http_filter

NONE = "none"
SINGLE_KINDS = ("header_filter", "path_filter", "method_filter")
GROUP_KINDS = ("any_of", "all_of")
KINDS = (NONE, *SINGLE_KINDS, *GROUP_KINDS)
CLAUSE_KINDS = ("header", "path", "method")

KIND_LABELS = {
    NONE: "no filter (take whole ports)",
    "header_filter": "header_filter",
    "path_filter": "path_filter",
    "method_filter": "method_filter",
    "any_of": "any_of (OR)",
    "all_of": "all_of (AND)",
}
PLACEHOLDERS = {
    "header_filter": "regex on 'name: value', e.g. ^x-user: alice$",
    "path_filter": "regex on the path, e.g. ^/api/",
    "method_filter": "method, e.g. POST",
    "header": "regex on 'name: value'",
    "path": "regex on the path",
    "method": "method",
}

_CLAUSE_AT = re.compile(r"\[(\d+)\]")


class DraftError(Exception):
    """The draft does not compile; ``field`` says which input is wrong."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # "value", "ports", "clauses", or "clause:N"


@dataclass(frozen=True, kw_only=True)
class CompiledDraft:
    http_filter: HttpFilter | None
    filter_ports: frozenset[int] | None


@dataclass(kw_only=True)
class FilterDraft:
    kind: str = NONE
    value: str = ""  # the single filter's pattern / method
    clauses: list[tuple[str, str]] = field(default_factory=list)  # (header|path|method, text)
    ports: str = ""  # http_filter.ports as typed: "80 8080" or "80, 8080"

    @classmethod
    def from_incoming(cls, incoming: IncomingConfig) -> FilterDraft:
        ports = " ".join(str(p) for p in sorted(incoming.filter_ports or ()))
        if incoming.http_filter is None:
            return cls(ports=ports)
        obj = incoming.http_filter.to_mirrord()
        ((key, value),) = obj.items()
        if key in GROUP_KINDS:
            assert isinstance(value, list)
            clauses = [next(iter(item.items())) for item in value]
            return cls(kind=key, clauses=[(k, str(v)) for k, v in clauses], ports=ports)
        return cls(kind=key, value=str(value), ports=ports)

    def to_mirrord(self) -> dict[str, object] | None:
        """mirrord's ``http_filter`` object (with ``ports``), or None for no filter."""
        ports = self.parse_ports()
        if self.kind == NONE:
            return None
        obj: dict[str, object]
        if self.kind in GROUP_KINDS:
            obj = {self.kind: [{k: v} for k, v in self.clauses]}
        else:
            obj = {self.kind: self.value}
        if ports is not None:
            obj["ports"] = sorted(ports)
        return obj

    def parse_ports(self) -> frozenset[int] | None:
        text = self.ports.replace(",", " ").split()
        if not text:
            return None
        ports = set()
        for word in text:
            if not word.isdigit() or not 0 < int(word) < 65536:
                raise DraftError(f"ports: {word!r} is not a port number (1-65535)", "ports")
            ports.add(int(word))
        return frozenset(ports)

    def compile(self) -> CompiledDraft:
        """The engine filter this draft means; raises DraftError naming the bad field."""
        if self.kind not in KINDS:
            raise DraftError(f"unknown filter kind {self.kind!r}", "value")
        obj = self.to_mirrord()
        if obj is None:
            return CompiledDraft(http_filter=None, filter_ports=None)
        try:
            compiled = compile_http_filter(obj, key_path="http_filter")
        except ConfigError as exc:
            raise DraftError(f"{exc.key_path}: {exc.message}", _field_of(exc.key_path)) from None
        return CompiledDraft(http_filter=compiled, filter_ports=self.parse_ports())


def _field_of(key_path: str) -> str:
    at = _CLAUSE_AT.search(key_path)
    if at is not None:
        return f"clause:{at.group(1)}"
    if key_path.endswith(GROUP_KINDS):
        return "clauses"
    return "value"
