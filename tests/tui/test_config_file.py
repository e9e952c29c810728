"""Saving settings as a mirrord config that loads back the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from waylay.core.engine.config import load_config, parse_config
from waylay.core.engine.errors import ConfigError
from waylay.tui.config_file import save_config

INCOMING = ('{"mode": "steal", "http_filter": {"any_of": [{"header": "^x-user: alice$"}, '
            '{"method": "POST"}], "ports": [80]}, "port_mapping": [[8080, 80]], '
            '"ignore_ports": [22]}')


def incoming():  # type: ignore[no-untyped-def]
    return parse_config(f'{{"feature": {{"network": {{"incoming": {INCOMING}}}}}}}',
                        fmt="json").incoming


@pytest.mark.parametrize("name", ["waylay.json", "waylay.yaml"])
def test_saved_settings_load_back_the_same(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    save_config(path, incoming(), "netns/shop")
    loaded = load_config(path)
    assert loaded.incoming == incoming()
    assert loaded.target == "netns/shop"


def test_other_keys_of_an_existing_file_are_kept(tmp_path: Path) -> None:
    """The rest of a mirrord config (comments aside) survives a save."""
    path = tmp_path / "mirrord.json"
    path.write_text('{\n  // mirrord config\n  "feature": {"fs": "local", "network": '
                    '{"incoming": "mirror", "outgoing": true},},\n  "agent": {"ttl": 5},\n}\n')
    save_config(path, incoming(), None)
    doc = json.loads(path.read_text())
    assert doc["feature"]["fs"] == "local" and doc["agent"] == {"ttl": 5}
    assert doc["feature"]["network"]["outgoing"] is True
    assert load_config(path).incoming == incoming()


def test_toml_is_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"save as \.json or \.yaml"):
        save_config(tmp_path / "x.toml", incoming(), None)
    assert not (tmp_path / "x.toml").exists()
