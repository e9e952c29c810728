"""The code type-checks (mypy --strict, configured in pyproject.toml) and lints clean (ruff)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(module: str, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (./dev setup installs the test extras)")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    """mypy --strict finds nothing in waylay.core, .agent, .cli and .tui."""
    # The folders are installed as waylay.core, waylay.agent, ... (pyproject's package-dir),
    # which mypy cannot follow through the editable install's import hook; a tree of links
    # named as installed gives it the same module names.
    tree = tmp_path / "waylay"
    tree.mkdir()
    for room in ("core", "agent", "cli", "tui"):
        (tree / room).symlink_to(ROOT / room)
    done = _run("mypy", "-p", "waylay", env={**os.environ, "MYPYPATH": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_is_clean() -> None:
    """ruff finds nothing anywhere in the repository."""
    done = _run("ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr
