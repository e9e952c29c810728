"""`waylay agent` (also `python -m waylay.agent`): the agent's command line.

Without ``--worker`` this process is the guard (``waylay.agent.guard``): it installs the iptables
chain, starts itself again as the worker with ``--worker --chain NAME``, and removes the
chain whenever the worker ends. The session token comes from the environment, never argv
(argv is visible to every user in ``ps``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence

from waylay.agent.guard import run_guard
from waylay.agent.worker import emit, run_worker
from waylay.core.engine.errors import EXIT_USAGE, WaylayError
from waylay.core.system.interpreter import clean_environment, python_command

DEFAULT_TTL_S = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="waylay agent",
        description="Run the waylay agent inside the target's network namespace. Normally "
        "started for you by `waylay run` / `waylay ui`.",
    )
    parser.add_argument("--listen", required=True, metavar="unix:PATH|tcp:127.0.0.1:PORT",
                        help="where sessions attach: a Unix socket path, or a TCP port on "
                        "loopback (in a pod, reached through the API server's port-forward)")
    parser.add_argument("--ttl", type=float, default=DEFAULT_TTL_S, metavar="SECONDS",
                        help="exit if no session attached within this long (default "
                        "%(default)s)")
    parser.add_argument("--linger", type=float, default=0.0, metavar="SECONDS",
                        help="stay this long after the last session left (default: exit "
                        "at once, removing every rule)")
    parser.add_argument("--proxy-port", type=int, default=0, metavar="PORT",
                        help="port of the redirect listener (default: any free port)")
    parser.add_argument("--token-env", default="WAYLAY_TOKEN", metavar="NAME",
                        help="environment variable holding the session token")
    parser.add_argument("--clean-on-start", action="store_true",
                        help="remove waylay iptables rules left by agents that are gone")
    parser.add_argument("--enter-container", metavar="CONTAINER_ID",
                        help="run the agent in the network namespace of this container "
                        "(runtime://ID from the pod status; needs hostPID) and relay --listen "
                        "to it (the Job form of the Kubernetes agent)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chain", help=argparse.SUPPRESS)
    return parser


def listen_problem(listen: str) -> str | None:
    """Why ``--listen`` is unusable, or None. TCP is loopback only: the control port must
    never be reachable from the pod's network, only through port-forward."""
    if listen.startswith("unix:") and len(listen) > len("unix:"):
        return None
    if listen.startswith("tcp:"):
        host, _, port = listen[len("tcp:"):].rpartition(":")
        try:
            loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return f"--listen {listen}: the control port listens on loopback only " \
                   "(127.0.0.1 or [::1])"
        if not port.isdigit() or not 0 < int(port) < 65536:
            return f"--listen {listen}: bad port"
        return None
    return "--listen must be unix:PATH or tcp:127.0.0.1:PORT"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = listen_problem(args.listen)
    if problem is not None:
        emit({"event": "error", "message": problem, "exit": EXIT_USAGE})
        return EXIT_USAGE
    token = os.environ.get(args.token_env, "")
    if not token:
        emit({"event": "error", "exit": EXIT_USAGE,
              "message": f"no session token: set the environment variable {args.token_env}"})
        return EXIT_USAGE
    if args.enter_container:
        from waylay.agent.container_relay import run_container_relay

        return run_container_relay(container_id=args.enter_container, listen=args.listen,
                                   token_env=args.token_env, ttl=args.ttl)
    if args.worker:
        return run_worker(token=token, chain=args.chain, listen=args.listen,
                          proxy_port=args.proxy_port, ttl=args.ttl, linger=args.linger)
    # Isolated like the guard itself (waylay.core.system.interpreter): the worker runs as root too.
    worker_argv = [*python_command("waylay.agent"), "--worker", "--listen", args.listen,
                   "--ttl", str(args.ttl), "--linger", str(args.linger),
                   "--proxy-port", str(args.proxy_port),
                   "--token-env", args.token_env]
    try:
        return run_guard(worker_argv, clean_on_start=args.clean_on_start, report=emit,
                         env=clean_environment(os.environ))
    except WaylayError as exc:
        emit({"event": "error", "message": str(exc), "exit": exc.exit_code})
        return exc.exit_code
