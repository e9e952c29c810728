"""Text of the traffic table's cells, and the column layout for a width (pure)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size

from waylay.core.engine.events import FlowEvent, RequestEvent
from waylay.core.engine.flow import Verdict

VERDICT_LABEL = {Verdict.STOLEN: "STOLEN", Verdict.PASSED: "PASSED",
                 Verdict.MIRRORED: "MIRRORED"}
PROTOCOL_LABEL = {"http/1.1": "h1", "h2": "h2", "tcp": "tcp"}


@dataclass(frozen=True)
class Column:
    name: str
    title: str
    width: int
    right: bool = False


# Fixed columns, then host / path / matched share what is left (weights below).
_FIXED = (
    Column("mark", "", 1),
    Column("time", "TIME", 12),
    Column("verdict", "VERDICT", 8),
    Column("protocol", "PROTO", 5),
    Column("method", "METHOD", 7),
)
_TAIL = (
    Column("status", "STATUS", 7, right=True),
    Column("duration", "DURATION", 9, right=True),
    Column("size", "SIZE", 8, right=True),
)
_FLEX = {"host": ("HOST", 3), "path": ("PATH", 6), "matched": ("MATCHED", 3)}
_GAP = 1


@functools.lru_cache(maxsize=16)
def layout(width: int) -> tuple[Column, ...]:
    """The columns for ``width`` cells; narrow widths drop MATCHED, then HOST."""
    fixed = sum(c.width + _GAP for c in (*_FIXED, *_TAIL))
    flex: tuple[str, ...] = ("path",)
    for choice in (("host", "path", "matched"), ("host", "path")):
        if width - fixed - _GAP * len(choice) >= 12 * len(choice):
            flex = choice
            break
    room = max(width - fixed - _GAP * len(flex) + _GAP, 4)
    weights = sum(_FLEX[name][1] for name in flex)
    sizes = {name: room * _FLEX[name][1] // weights for name in flex}
    sizes["path"] += room - sum(sizes.values())
    cols = list(_FIXED)
    cols.extend(Column(name, _FLEX[name][0], sizes[name]) for name in flex if name != "matched")
    cols.extend(_TAIL)
    if "matched" in flex:
        cols.append(Column("matched", "MATCHED", sizes["matched"]))
    return tuple(cols)


def fit(text: str, width: int, right: bool = False) -> str:
    """``text`` cut (with …) or padded to exactly ``width`` cells."""
    if width <= 0:
        return ""
    if text.isascii() and text.isprintable():
        if len(text) > width:
            return text[: width - 1] + "…"
        return text.rjust(width) if right else text.ljust(width)
    text = "".join(ch if ch.isprintable() else "·" for ch in text)
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…"
    pad = " " * (width - cell_len(text))
    return pad + text if right else text + pad


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return ""
    local = time.localtime(ts)
    return f"{time.strftime('%H:%M:%S', local)}.{int(ts * 1000) % 1000:03d}"


def fmt_duration(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"


def fmt_size(n: float | None) -> str:
    if n is None:
        return ""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if n < 100 else f"{n:.0f} {unit}"
    return ""


def cell_text(name: str, event: FlowEvent) -> str:
    """The text of column ``name`` for a request (finished or in flight)."""
    done = event if isinstance(event, RequestEvent) else None
    if name == "time":
        return fmt_time(event.ts)
    if name == "verdict":
        return VERDICT_LABEL[event.verdict]
    if name == "protocol":
        return PROTOCOL_LABEL.get(event.protocol, event.protocol)
    if name == "method":
        return event.method or ("TCP" if event.protocol == "tcp" else "")
    if name == "host":
        host = event.authority or f":{event.port}"
        # Every replica of a workload is intercepted: say which pod answered or passed.
        return f"{event.pod} · {host}" if event.pod else host
    if name == "path":
        return event.path or ""
    if name == "status":
        if done is None:
            return "…"  # in flight: the local app has not answered yet
        if done.verdict is Verdict.MIRRORED:
            # Mirrored: the remote's answer, then your app's when it differs.
            remote = done.mirror.remote_status if done.mirror else None
            local = "err" if done.mirror and done.mirror.error else done.status
            if remote is not None and local != remote:
                return f"{remote}→{local if local is not None else '-'}"
            return "" if remote is None else str(remote)
        return "" if done.status is None else str(done.status)
    if name == "duration":
        return fmt_duration(done.duration_ms if done else None)
    if name == "size":
        return fmt_size(done.bytes_out if done else None)
    if name == "matched":
        return (done.matched if done else None) or ""
    return ""


def cell_style(name: str, event: FlowEvent) -> str | None:
    """The name of the table style for column ``name`` of a request (None: plain)."""
    if name == "verdict":
        return str(event.verdict)
    if name == "status":
        if not isinstance(event, RequestEvent):
            return None
        mirror = event.mirror
        if event.verdict is Verdict.MIRRORED and mirror is not None and (
                mirror.error or mirror.remote_status != event.status):
            return "status-error"  # your app answered the copy differently
        if event.status is not None:
            if event.status >= 500:
                return "status-error"
            if event.status >= 400:
                return "status-warning"
        return None
    if name in ("time", "protocol", "duration", "size"):
        return "dim"
    if name == "matched":
        return "mark"
    return None
