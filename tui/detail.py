"""The request detail: summary, why, headers and bodies, the mirror comparison, curl.

Bodies that parse as JSON are pretty-printed and highlighted. For a mirrored request
the remote app's answer (its ``MirrorOutcome``'s ``remote_status`` and
``remote_duration_ms``, the captured response) and the local app's (the event's ``status``
and ``duration_ms``, the outcome's ``error``) are shown side by side, differences flagged;
the local body is compared too once the engine sends it (``local_headers`` /
``local_body``). What the engine did not capture is said, never left blank.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Callable, Sequence
from typing import ClassVar

from rich.console import Group, RenderableType
from rich.json import JSON
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from waylay.core.engine.events import FlowEvent, Headers, RequestEvent
from waylay.core.engine.flow import Verdict
from waylay.tui.cells import VERDICT_LABEL, fmt_duration, fmt_size, fmt_time
from waylay.tui.export import request_url, to_curl
from waylay.tui.flows import FlowRow
from waylay.tui.preview import Plan, explain

# Larger bodies are shown cut: highlighting megabytes would stall the UI.
BODY_SHOW_LIMIT = 64 * 1024


def _headers_table(pairs: Headers | None) -> RenderableType:
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


def _content_type(pairs: Sequence[tuple[str, str]] | None) -> str:
    for name, value in pairs or ():
        if name.lower() == "content-type":
            return value.lower()
    return ""


def body_renderable(body: str | None, headers: Headers | None, *,
                    truncated: bool = False, dropped: bool = False,
                    size: int | None = None) -> RenderableType:
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
        event, done = self.row.event, self.row.finished
        capture = done.capture if done else None
        dropped = self.row.bodies_dropped
        mirrored = done is not None and done.verdict is Verdict.MIRRORED
        body = self.query_one("#detail-body", VerticalScroll)
        body.border_title = f"request #{event.id}"
        self.query_one("#detail-summary", Static).update(self._summary(event))
        self.query_one("#detail-summary").set_classes(f"-{event.verdict}")
        why = self.query_one("#detail-why", Static)
        why.border_title = "why"
        reasons = explain(event, self.plan)
        if done is not None and done.body_skipped:
            reasons.append(f"the agent could not read the body for its body filter: "
                           f"{done.body_skipped}")
        why.update(Text("\n".join(reasons)))
        request = self.query_one("#detail-request", Static)
        request.border_title = "request"
        request.update(Group(
            Text(f"{event.method or 'TCP'} {event.path or ''}", style="bold"),
            _headers_table(capture.request_headers if capture else None),
            Text(""),
            body_renderable(capture.request_body if capture else None,
                            capture.request_headers if capture else None,
                            truncated=bool(capture and capture.body_truncated),
                            dropped=dropped, size=done.bytes_in if done else None)))
        response = self.query_one("#detail-response", Static)
        response.border_title = "response" + (" (remote)" if mirrored else "")
        if done is not None and mirrored:
            status = done.mirror.remote_status if done.mirror else None
        else:
            status = done.status if done else None
        response.update(Group(
            Text(f"status {status if status is not None else '-'}", style="bold"),
            _headers_table(capture.response_headers if capture else None),
            Text(""),
            body_renderable(capture.response_body if capture else None,
                            capture.response_headers if capture else None,
                            truncated=bool(capture and capture.body_truncated),
                            dropped=dropped, size=done.bytes_out if done else None)))
        mirror = self.query_one("#detail-mirror", Static)
        mirror.display = mirrored
        if done is not None and mirrored:
            mirror.border_title = "local response (your app) vs remote"
            mirror.update(self._mirror(done))
        curl = self.query_one("#detail-curl", Static)
        curl.border_title = "curl  (c copies)"
        curl.update(Text(to_curl(event)))
        body.scroll_home(animate=False)

    @staticmethod
    def _summary(event: FlowEvent) -> Text:
        done = event if isinstance(event, RequestEvent) else None
        text = Text()
        text.append(f" {VERDICT_LABEL[event.verdict]} ", style="reverse bold")
        text.append(f"  {event.method or 'TCP'} ", style="bold")
        text.append(request_url(event))
        status = done.status if done else None
        if done is not None and done.verdict is Verdict.MIRRORED:
            remote = done.mirror.remote_status if done.mirror else None
            text.append(f"  → {remote if remote is not None else '-'} (remote)", style="bold")
            local = (done.mirror.error if done.mirror else None) or status
            text.append(f" · {local if local is not None else '-'} (local)",
                        style="bold red" if local != remote else "bold")
        elif status is not None:
            text.append(f"  → {status}", style="bold red" if status >= 500 else "bold")
        text.append("\n")
        pod = f"pod {event.pod} · " if event.pod else ""
        text.append(
            f"{fmt_time(event.ts)} · {pod}port {event.port} · {event.protocol} · "
            f"{fmt_duration(done.duration_ms if done else None) or '-'} · "
            f"in {fmt_size(done.bytes_in if done else None)} · "
            f"out {fmt_size(done.bytes_out if done else None)}",
            style="dim")
        if done is not None and done.matched:
            text.append(f"\nmatched: {done.matched}", style="bold")
        return text

    @staticmethod
    def _mirror(event: RequestEvent) -> RenderableType:
        """The remote app's answer (what the client got) beside your app's answer."""
        table = Table(expand=True, show_edge=False)
        table.add_column("", width=1)
        table.add_column("remote (answered the client)")
        table.add_column("local (your app, on the copy)")
        flag, same = Text("≠", style="bold red"), Text("=", style="green")
        outcome, capture = event.mirror, event.capture
        remote_status = outcome.remote_status if outcome else None
        local_status = event.status
        local_error = outcome.error if outcome else None
        local_text = (Text(f"error: {local_error}", style="bold red") if local_error
                      else f"status {local_status if local_status is not None else '-'}")
        table.add_row(flag if local_error or remote_status != local_status else same,
                      f"status {remote_status if remote_status is not None else '-'}",
                      local_text)
        remote_took = fmt_duration(outcome.remote_duration_ms if outcome else None)
        table.add_row("", remote_took or "-", fmt_duration(event.duration_ms) or "-")
        remote_body = capture.response_body if capture else None
        remote_headers = capture.response_headers if capture else None
        local_body = outcome.local_body if outcome else None
        if local_body is None:
            table.add_row("", body_renderable(remote_body, remote_headers,
                                              size=event.bytes_out),
                          Text("body not captured by this engine version",
                               style="italic dim"))
            return table
        differs = (remote_body or "") != local_body
        table.add_row(flag if differs else same,
                      body_renderable(remote_body, remote_headers),
                      body_renderable(local_body, outcome.local_headers if outcome else None))
        if differs:
            return Group(table, Text("body differences (- remote, + local):", style="bold"),
                         _diff_lines(remote_body or "", local_body))
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
