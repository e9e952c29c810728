"""`waylay`: the command line (docs/architecture.md §3).

Exit codes: 0 ok, 2 bad usage or config, 3 target not found or not reachable, 4 missing
privilege or system tool. Every failure is one line on stderr naming the problem.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from waylay.core.engine.errors import EXIT_USAGE, UsageError, WaylayError


def _port_spec(text: str) -> tuple[int, int | None]:
    """``REMOTE[:LOCAL]`` -> (remote, local or None)."""
    remote, _, local = text.partition(":")
    try:
        ports = (int(remote), int(local) if local else None)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not REMOTE[:LOCAL] (port numbers)") from None
    for port in ports:
        if port is not None and not 0 < port < 65536:
            raise argparse.ArgumentTypeError(f"port {port} is out of range 1-65535")
    return ports


def _kube_flags(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    from_config = ("the config's `kube_context`, else " if config else "")
    parser.add_argument("--context", metavar="CONTEXT",
                        help=f"Kubernetes context (default: {from_config}the kubeconfig's "
                        "current context)")
    from_config = ("the config's `target.namespace`, else " if config else "")
    parser.add_argument("-n", "--namespace", metavar="NS",
                        help=f"Kubernetes namespace (default: {from_config}the context's "
                        "namespace)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="waylay",
        description="Steal or mirror a live service's incoming traffic into your local "
        "process, with mirrord-compatible HTTP filters.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="intercept a target headless until Ctrl-C",
        description="Attach to TARGET and deliver its intercepted traffic to your local "
        "app until Ctrl-C. Stolen requests go to 127.0.0.1:LOCAL; the rest reach the "
        "original app.",
    )
    run.add_argument("-t", "--target", help="pod/NAME[/container/C], deployment/NAME, "
                     "statefulset/NAME, rollout/NAME, netns/NAME or pid/N (default: the "
                     "config's `target`)")
    _kube_flags(run)
    run.add_argument("-f", "--config", metavar="CONFIG",
                     help="mirrord-compatible config file (.json, .toml, .yaml)")
    run.add_argument("-p", "--port", action="append", type=_port_spec, default=[],
                     metavar="REMOTE[:LOCAL]",
                     help="intercept REMOTE and deliver to local port LOCAL (repeatable; "
                     "default: the config's ports, else every port listening in the target)")
    run.add_argument("--mode", choices=["steal", "mirror", "off"],
                     help="override feature.network.incoming.mode")
    run.add_argument("--events", metavar="FILE|-",
                     help="write one JSON object per event to FILE (- for stdout)")
    run.add_argument("--local-host", default="127.0.0.1", metavar="ADDR",
                     help="where the local app listens (default %(default)s)")
    run.add_argument("--ttl", type=float, metavar="SECONDS",
                     help="how long the agent waits for a session before it leaves "
                     "(default: the config's agent.ttl, 30)")
    run.add_argument("--clean-on-start", action="store_true",
                     help="remove waylay iptables rules left in the target by dead agents")
    run.add_argument("--capture", action="store_true",
                     help="add request/response headers and the first 16 KiB of bodies to "
                     "request events")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="no per-request lines on stderr")

    ui = commands.add_parser(
        "ui", help="the dashboard",
        description="Open the dashboard: pick a target, switch steal / mirror / off, edit "
        "filters with a live preview and watch the traffic.",
    )
    ui.add_argument("-t", "--target", help="start a session on this target at once "
                    "(default: the config's `target`, else pick one in the dashboard)")
    _kube_flags(ui)
    ui.add_argument("-f", "--config", metavar="CONFIG",
                    help="mirrord-compatible config file (.json, .toml, .yaml)")
    ui.add_argument("-p", "--port", action="append", type=_port_spec, default=[],
                    metavar="REMOTE[:LOCAL]", help="as for `run` (repeatable)")
    ui.add_argument("--ttl", type=float, metavar="SECONDS",
                    help="how long the agent waits for a session before it leaves "
                    "(default: the config's agent.ttl, 30)")
    ui.add_argument("--clean-on-start", action="store_true",
                    help="remove waylay iptables rules left in the target by dead agents")

    demo = commands.add_parser(
        "demo", help="a live sample service to intercept (no cluster, no sudo)",
        description="Start a sample shop with live traffic in a private network namespace "
        "and a local dev version of it, then open the dashboard on it in mirror mode.",
    )
    demo.add_argument("--headless", action="store_true",
                      help="no dashboard: print the event lines, then a summary and a verdict")
    demo.add_argument("--seconds", type=float, metavar="N",
                      help="stop after N seconds (default: headless until Ctrl-C; the "
                      "dashboard until you quit)")
    demo.add_argument("-f", "--config", metavar="CONFIG",
                      help="mirrord-compatible config file (default: mirror everything)")

    targets = commands.add_parser(
        "targets", help="list local and Kubernetes targets",
        description="List the targets waylay can intercept: network namespaces and "
        "processes on this machine, and the pods and workloads of a Kubernetes namespace.")
    targets.add_argument("--json", action="store_true", help="one JSON document")
    _kube_flags(targets, config=False)

    from waylay.cli.agent_image import add_parser as add_agent_image_parser

    add_agent_image_parser(commands)
    commands.add_parser("agent", help="run the agent (used inside the target)",
                        add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["agent"]:
        # The agent parses its own flags; it is what launchers start in the namespace.
        from waylay.agent.main import main as agent_main

        return agent_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        if args.command == "run":
            from waylay.cli.run import run_command

            return run_command(args)
        if args.command == "ui":
            from waylay.cli.ui import ui_command

            return ui_command(args)
        if args.command == "demo":
            from waylay.cli.demo.runner import demo_command

            return demo_command(args)
        if args.command == "targets":
            from waylay.cli.targets import targets_command

            return targets_command(args)
        if args.command == "agent-image":
            from waylay.cli.agent_image import agent_image_command

            return agent_image_command(args)
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    except WaylayError as exc:
        print(f"waylay: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


__all__ = ["UsageError", "main"]
