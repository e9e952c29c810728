"""Saving the dashboard's settings as a mirrord-format config file (blocking file I/O).

Called from worker threads only. Loading is ``waylay.core.engine.config.load_config``. Saving writes
``target`` and ``feature.network.incoming`` into the file, keeping every other key of an
existing JSON or YAML file (the rest of a mirrord config); comments in a JSON file are
not kept. The text is checked with the engine's own parser before it replaces the file
(atomically), so a saved file always loads back to the same settings.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from waylay.core.engine import jsonc
from waylay.core.engine.config import Config, IncomingConfig, Mode, parse_config
from waylay.core.engine.errors import ConfigError

_FORMATS = {".json": "json", ".jsonc": "json", ".yaml": "yaml", ".yml": "yaml",
            ".toml": "toml"}


def incoming_to_mirrord(incoming: IncomingConfig) -> dict[str, Any]:
    """``feature.network.incoming`` as mirrord writes it (defaults left out)."""
    out: dict[str, Any] = {"mode": str(incoming.mode)}
    if incoming.http_filter is not None:
        http_filter: dict[str, Any] = dict(incoming.http_filter.to_mirrord())
        if incoming.filter_ports is not None:
            http_filter["ports"] = sorted(incoming.filter_ports)
        out["http_filter"] = http_filter
    if incoming.port_mapping:
        out["port_mapping"] = [[local, remote]
                               for remote, local in sorted(incoming.port_mapping.items())]
    if incoming.ports is not None:
        out["ports"] = sorted(incoming.ports)
    if incoming.ignore_ports:
        out["ignore_ports"] = sorted(incoming.ignore_ports)
    return out


def _existing(path: Path, fmt: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    value: object = (jsonc.parse(text, source=str(path)).value if fmt == "json"
                     else yaml.safe_load(text))
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("the existing file is not an object at the top", source=str(path))
    return value


def save_config(path: str | os.PathLike[str], incoming: IncomingConfig,
                target: str | None) -> Config:
    """Write ``incoming`` (and ``target``) into ``path``; returns the config as read back."""
    where = Path(path)
    fmt = _FORMATS.get(where.suffix.lower())
    if fmt is None or fmt == "toml":
        raise ConfigError("save as .json or .yaml (waylay does not write TOML)",
                          source=str(where))
    doc = _existing(where, fmt)
    if target:
        doc["target"] = target
    feature = doc.setdefault("feature", {})
    network = feature.setdefault("network", {}) if isinstance(feature, dict) else None
    if not isinstance(network, dict):
        raise ConfigError("feature.network is not an object; cannot add incoming",
                          source=str(where))
    network["incoming"] = incoming_to_mirrord(incoming)
    text = (json.dumps(doc, indent=2) + "\n" if fmt == "json"
            else yaml.safe_dump(doc, sort_keys=False))
    written = parse_config(text, fmt=fmt, source=str(where))
    if written.incoming.mode is not Mode(incoming.mode) or (
            written.incoming.http_filter != incoming.http_filter):
        raise ConfigError("the saved settings do not read back the same", source=str(where))
    fd, tmp = tempfile.mkstemp(prefix=f".{where.name}.", dir=where.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        # mkstemp makes the file 0600; keep the old file's mode, or a config's usual 0644.
        os.chmod(tmp, where.stat().st_mode & 0o7777 if where.exists() else 0o644)
        os.replace(tmp, where)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written
