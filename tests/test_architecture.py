"""The dependency rules of docs/architecture.md §1: sans-I/O core, and the UI never imports the
agent."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# core's protocol logic: bytes and events in, bytes and commands out.
SANS_IO = ["config", "detect", "errors", "filters", "flow", "h2_codec", "h2_frames", "h2_peer",
           "h2_relay", "h2_router", "h2_streams", "http1", "http1_framing", "jsonc",
           "kube_inventory", "kube_model", "kube_specs", "registry", "routing", "target", "wire",
           "wire_messages"]
FORBIDDEN_IN_SANS_IO = {"socket", "asyncio", "subprocess", "textual", "time", "selectors",
                        "threading", "agent", "tui", "cli"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_sans_io_modules_do_no_io() -> None:
    """The engine's protocol modules import no socket, asyncio, subprocess, clock or UI."""
    for name in SANS_IO:
        bad = imports(ROOT / "core" / f"{name}.py") & FORBIDDEN_IN_SANS_IO
        assert not bad, f"core/{name}.py imports {sorted(bad)}"


def test_core_never_imports_agent_tui_or_cli() -> None:
    """Dependencies point into core, never out of it."""
    for path in (ROOT / "core").glob("*.py"):
        bad = imports(path) & {"agent", "tui", "cli"}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_tui_never_imports_agent() -> None:
    """The dashboard reaches agents only through core's session."""
    for path in (ROOT / "tui").rglob("*.py"):
        assert "agent" not in imports(path), f"{path} imports agent"
