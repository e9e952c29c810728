"""`waylay ui`: the dashboard (docs/architecture.md §3)."""

from __future__ import annotations

import argparse

from waylay.core.engine.config import default_config, load_config
from waylay.core.engine.target import parse_target


def ui_command(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else default_config()
    config = config.with_kube_flags(context=args.context, namespace=args.namespace)
    config = config.with_agent_ttl(args.ttl)
    target = args.target or config.target
    if target:
        parse_target(target, namespace=config.namespace)  # a bad target fails before the UI
    # Textual is imported only here: `waylay run` and the agent never load it.
    from waylay.tui.app import WaylayApp

    app = WaylayApp(target=target, config=config, config_path=args.config,
                    cli_ports=dict(args.port), ttl=float(config.agent.ttl),
                    clean_on_start=args.clean_on_start, freeze_gc=True)
    code = app.run()
    return code or 0
