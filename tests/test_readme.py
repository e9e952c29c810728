"""The README's module map names every module of core/, agent/, tui/ and cli/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_module_map_names_every_module() -> None:
    """Each module file (kube_* as a family) appears as `name` in "How it works"."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How it works", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z0-9_./*]+)`", section))
    missing = []
    for folder in ("core", "agent", "tui", "cli", "cli/demo"):
        for path in sorted((ROOT / folder).glob("*.py")):
            name = path.stem
            if name in ("__init__", "__main__") or (name.startswith("kube_") and "kube_*" in named):
                continue
            if name not in named:
                missing.append(f"{folder}/{path.name}")
    assert not missing, f"README's module map does not name: {missing}"
