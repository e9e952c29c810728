"""The code type-checks (mypy --strict, configured in pyproject.toml) and lints clean (ruff)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (./dev setup installs the test extras)")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_mypy_strict_is_clean() -> None:
    """mypy --strict finds nothing in core, agent, cli and tui."""
    done = _run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_is_clean() -> None:
    """ruff finds nothing anywhere in the repository."""
    done = _run("ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr
