"""The request detail: summary, why, headers and bodies, the mirror comparison, curl.

Bodies that parse as JSON are pretty-printed and highlighted. For a mirrored request
the remote app's answer (``remote_status``, ``remote_duration_ms``, the captured response)
and the local app's (``status``, ``duration_ms``, ``mirror_error``) are shown side by
side, differences flagged; the local body is compared too once the engine sends it
(``local_response_headers`` / ``local_response_body``). What the engine did not capture
is said, never left blank.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.json import JSON
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from waylay.tui.cells import VERDICT_LABEL, fmt_duration, fmt_size, fmt_time
from waylay.tui.export import request_url, to_curl
from waylay.tui.flows import FlowRow
from waylay.tui.preview import Plan, explain

# Larger bodies are shown cut: highlighting megabytes would stall the UI.
BODY_SHOW_LIMIT = 64 * 1024


def _headers_table(pairs: Sequence[Any] | None) -> RenderableType:
    if pairs is None:
        return Text("headers not captured by this engine version", style="italic dim")
    if not pairs:
        return Text("none", style="italic dim")
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in pairs:
        table.add_row(f"{name}:", str(value))
    return table


def _content_type(pairs: Sequence[Any] | None) -> str:
    for name, value in pairs or []:
        if str(name).lower() == "content-type":
            return str(value).lower()
    return ""


def body_renderable(body: str | None, headers: Sequence[Any] | None, *,
                    truncated: bool = False, dropped: bool = False,
                    size: object = None) -> RenderableType:
    """A body for display: JSON pretty-printed and highlighted, else plain text."""
    if body is None:
        if size == 0:
            return Text("no body", style="italic dim")
        why = ("dropped from memory (only the newest requests keep bodies)" if dropped
               else "body not captured by this engine version")
        return Text(why, style="italic dim")
    if body == "":
        return Text("no body" if not size else "empty", style="italic dim")
    shown = body[:BODY_SHOW_LIMIT]
    notes = []
    if truncated:
        notes.append("truncated by the capture")
    if len(body) > BODY_SHOW_LIMIT:
        notes.append(f"showing the first {BODY_SHOW_LIMIT // 1024} KiB")
    note = Text(" · ".join(notes), style="italic yellow") if notes else None
    ctype = _content_type(headers)
    stripped = shown.lstrip()
    if "json" in ctype or stripped[:1] in ("{", "["):
        try:
            pretty = JSON(shown, indent=2, ensure_ascii=False)
        except ValueError:
            pass
        else:
            return Group(pretty, note) if note else pretty
    text = Text(shown.replace("\r\n", "\n"))
    return Group(text, note) if note else text


def _comparable(body: str) -> list[str]:
    """Lines to diff: JSON pretty-printed (so one changed field is one changed line)."""
    with contextlib.suppress(ValueError):
        body = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    return body.splitlines()


def _diff_lines(remote: str, local: str) -> Text:
    out = Text()
    for line in difflib.unified_diff(_comparable(remote), _comparable(local), "remote",
                                     "local", lineterm="", n=1):
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
        out.append(line + "\n", style=style)
    return out


class DetailScreen(ModalScreen[None]):
    """One request, in full. ``[`` / ``]`` move to the previous / next request."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close", id="detail.close"),
        Binding("c", "copy_curl", "Copy as curl", id="detail.copy_curl"),
        Binding("left_square_bracket", "step(-1)", "Previous", id="detail.previous"),
        Binding("right_square_bracket", "step(1)", "Next", id="detail.next"),
    ]

    def __init__(self, row: FlowRow, plan: Plan,
                 step: Callable[[FlowRow, int], FlowRow | None] | None = None) -> None:
        super().__init__()
        self.row = row
        self.plan = plan
        self._step = step

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail-body"):
            yield Static(id="detail-summary")
            yield Static(id="detail-why", classes="detail-section")
            with Horizontal(id="detail-exchange"):
                yield Static(id="detail-request", classes="detail-section")
                yield Static(id="detail-response", classes="detail-section")
            yield Static(id="detail-mirror", classes="detail-section")
            yield Static(id="detail-curl", classes="detail-section")
        yield Footer()

    def on_mount(self) -> None:
        self._fill()

    def _fill(self) -> None:
        event = self.row.event
        body = self.query_one("#detail-body", VerticalScroll)
        verdict = str(event.get("verdict") or "")
        body.border_title = f"request #{event.get('id')}"
        self.query_one("#detail-summary", Static).update(self._summary(event))
        self.query_one("#detail-summary").set_classes(f"-{verdict or 'pending'}")
        why = self.query_one("#detail-why", Static)
        why.border_title = "why"
        why.update(Text("\n".join(explain(event, self.plan))))
        request = self.query_one("#detail-request", Static)
        request.border_title = "request"
        request.update(Group(
            Text(f"{event.get('method') or 'TCP'} {event.get('path') or ''}", style="bold"),
            _headers_table(event.get("request_headers")),
            Text(""),
            body_renderable(event.get("request_body"), event.get("request_headers"),
                            truncated=bool(event.get("body_truncated")),
                            dropped=bool(event.get("body_dropped")),
                            size=event.get("bytes_in"))))
        response = self.query_one("#detail-response", Static)
        response.border_title = "response" + (" (remote)" if verdict == "mirrored" else "")
        status = event.get("remote_status" if verdict == "mirrored" else "status")
        response.update(Group(
            Text(f"status {status if status is not None else '-'}", style="bold"),
            _headers_table(event.get("response_headers")),
            Text(""),
            body_renderable(event.get("response_body"), event.get("response_headers"),
                            truncated=bool(event.get("body_truncated")),
                            dropped=bool(event.get("body_dropped")),
                            size=event.get("bytes_out"))))
        mirror = self.query_one("#detail-mirror", Static)
        mirror.display = verdict == "mirrored"
        if verdict == "mirrored":
            mirror.border_title = "local response (your app) vs remote"
            mirror.update(self._mirror(event))
        curl = self.query_one("#detail-curl", Static)
        curl.border_title = "curl  (c copies)"
        curl.update(Text(to_curl(event)))
        body.scroll_home(animate=False)

    @staticmethod
    def _summary(event: dict[str, Any]) -> Text:
        verdict = str(event.get("verdict") or "")
        text = Text()
        text.append(f" {VERDICT_LABEL.get(verdict, 'IN PROGRESS')} ", style="reverse bold")
        text.append(f"  {event.get('method') or 'TCP'} ", style="bold")
        text.append(request_url(event))
        status = event.get("status")
        if verdict == "mirrored":
            remote = event.get("remote_status")
            text.append(f"  → {remote if remote is not None else '-'} (remote)", style="bold")
            local = event.get("mirror_error") or status
            text.append(f" · {local if local is not None else '-'} (local)",
                        style="bold red" if local != remote else "bold")
        elif status is not None:
            text.append(f"  → {status}", style="bold red" if status >= 500 else "bold")
        text.append("\n")
        pod = f"pod {event['pod']} · " if event.get("pod") else ""
        text.append(
            f"{fmt_time(event.get('ts'))} · {pod}port {event.get('port')} · "
            f"{event.get('protocol')} · {fmt_duration(event.get('duration_ms')) or '-'} · "
            f"in {fmt_size(event.get('bytes_in'))} · out {fmt_size(event.get('bytes_out'))}",
            style="dim")
        if event.get("matched"):
            text.append(f"\nmatched: {event['matched']}", style="bold")
        return text

    @staticmethod
    def _mirror(event: dict[str, Any]) -> RenderableType:
        """The remote app's answer (what the client got) beside your app's answer."""
        table = Table(expand=True, show_edge=False)
        table.add_column("", width=1)
        table.add_column("remote (answered the client)")
        table.add_column("local (your app, on the copy)")
        flag, same = Text("≠", style="bold red"), Text("=", style="green")
        remote_status, local_status = event.get("remote_status"), event.get("status")
        local_error = event.get("mirror_error")
        local_text = (Text(f"error: {local_error}", style="bold red") if local_error
                      else f"status {local_status if local_status is not None else '-'}")
        table.add_row(flag if local_error or remote_status != local_status else same,
                      f"status {remote_status if remote_status is not None else '-'}",
                      local_text)
        table.add_row("", f"{fmt_duration(event.get('remote_duration_ms')) or '-'}",
                      f"{fmt_duration(event.get('duration_ms')) or '-'}")
        remote_body = event.get("response_body")
        local_body = event.get("local_response_body")
        if local_body is None:
            table.add_row("", body_renderable(remote_body, event.get("response_headers"),
                                              size=event.get("bytes_out")),
                          Text("body not captured by this engine version",
                               style="italic dim"))
            return table
        differs = str(remote_body or "") != str(local_body)
        table.add_row(flag if differs else same,
                      body_renderable(remote_body, event.get("response_headers")),
                      body_renderable(local_body, event.get("local_response_headers")))
        if differs:
            return Group(table, Text("body differences (- remote, + local):", style="bold"),
                         _diff_lines(str(remote_body or ""), str(local_body)))
        return table

    def action_close(self) -> None:
        self.dismiss(None)

    def action_copy_curl(self) -> None:
        command = to_curl(self.row.event)
        self.app.copy_to_clipboard(command)
        self.notify(command, title="copied as curl", timeout=4)

    def action_step(self, delta: int) -> None:
        if self._step is None:
            return
        row = self._step(self.row, delta)
        if row is not None:
            self.row = row
            self._fill()
