"""Text of the traffic table's cells, and the column layout for a width (pure)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len, set_cell_size

VERDICT_LABEL = {"stolen": "STOLEN", "passed": "PASSED", "mirrored": "MIRRORED"}
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


def fmt_time(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return ""
    local = time.localtime(ts)
    return f"{time.strftime('%H:%M:%S', local)}.{int(ts * 1000) % 1000:03d}"


def fmt_duration(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return ""
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.2f} s"


def fmt_size(n: Any) -> str:
    if not isinstance(n, int | float):
        return ""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if n < 100 else f"{n:.0f} {unit}"
    return ""


def cell_text(name: str, event: dict[str, Any]) -> str:
    """The text of column ``name`` for a request event."""
    if name == "time":
        return fmt_time(event.get("ts"))
    if name == "verdict":
        verdict = event.get("verdict")
        return VERDICT_LABEL.get(verdict, "…") if verdict else "…"
    if name == "protocol":
        proto = str(event.get("protocol") or "")
        return PROTOCOL_LABEL.get(proto, proto)
    if name == "method":
        return str(event.get("method") or ("TCP" if event.get("protocol") == "tcp" else ""))
    if name == "host":
        host = str(event.get("authority") or f":{event.get('port')}")
        # Every replica of a workload is intercepted: say which pod answered or passed.
        return f"{event['pod']} · {host}" if event.get("pod") else host
    if name == "path":
        return str(event.get("path") or "")
    if name == "status":
        status = event.get("status")
        if event.get("verdict") == "mirrored":
            # Mirrored: the remote's answer, then your app's when it differs.
            remote = event.get("remote_status")
            local = "err" if event.get("mirror_error") else status
            if remote is not None and local != remote:
                return f"{remote}→{local if local is not None else '-'}"
            return "" if remote is None else str(remote)
        if status is None and event.get("type") != "request":
            return "…"  # in flight: the local app has not answered yet
        return "" if status is None else str(status)
    if name == "duration":
        return fmt_duration(event.get("duration_ms"))
    if name == "size":
        return fmt_size(event.get("bytes_out"))
    if name == "matched":
        return str(event.get("matched") or "")
    return ""
