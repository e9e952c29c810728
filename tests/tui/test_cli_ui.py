"""`waylay ui` on the command line: bad input fails before the dashboard, with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from waylay.cli.main import build_parser, main


def test_ui_is_a_subcommand_with_run_like_options() -> None:
    args = build_parser().parse_args(["ui", "-t", "netns/shop", "-f", "x.json", "-p", "80:3000"])
    assert (args.command, args.target, args.config, args.port) == (
        "ui", "netns/shop", "x.json", [(80, 3000)])


def test_a_bad_target_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "-t", "pod"]) == 2
    assert "bad target 'pod'" in capsys.readouterr().err


def test_a_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.json"
    config.write_text('{"feature": {"network": {"incoming": {"mode": "steel"}}}}')
    assert main(["ui", "-f", str(config)]) == 2
    err = capsys.readouterr().err
    assert "feature.network.incoming.mode" in err and "steel" in err
