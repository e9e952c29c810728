"""The README's module map names every module of core/'s rooms, agent/, tui/ and cli/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("core/engine", "core/system", "core/client", "core/kube", "agent", "tui", "cli",
           "cli/demo")


def test_module_map_names_every_module() -> None:
    """Each module file appears as `name` in "How it works", under its folder's item."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How it works", 1)[1].split("\n## ", 1)[0]
    missing = []
    for folder in FOLDERS:
        # The folder's own item: from "`folder/`" to the next item at its depth or above.
        label = "demo" if folder == "cli/demo" else folder  # named inside cli's item
        start = section.index(f"`{label}/`")
        item = re.split(r"\n\s*- `[a-z/]+/`", section[start:], maxsplit=1)[0]
        if folder == "cli":  # cli's item names demo/ inline: stop there
            item = item.split("`demo/`", 1)[0]
        named = set(re.findall(r"`([a-z0-9_./*]+)`", item))
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.stem not in ("__init__", "__main__") and path.stem not in named:
                missing.append(f"{folder}/{path.name}")
    assert not missing, f"README's module map does not name: {missing}"
