"""The redirect rules: waylay's own iptables ``nat`` chain, and finding ones left behind.

Theory of operation (docs/architecture.md §4). Each agent session owns one chain, ``WAYLAY-<8
hex>``,
in the ``nat`` table::

    PREROUTING  -p tcp          -j WAYLAY-1a2b3c4d   (traffic arriving from outside)
    OUTPUT      -p tcp -o lo    -j WAYLAY-1a2b3c4d   (clients in the namespace itself)
    WAYLAY-1a2b3c4d:
        -m mark --mark 0x2000/0x2000       -j RETURN   (the agent's own passthrough)
        -p tcp --dport 80                  -j REDIRECT --to-ports 40123
        ...one REDIRECT per subscribed port

The agent sets ``SO_MARK`` = ``PASSTHROUGH_MARK`` on the sockets it opens to the original
app, so those connections RETURN before any REDIRECT and passthrough never loops back into
the agent. Connections to the namespace's own non-loopback addresses are routed over ``lo``
too, so the OUTPUT jump covers them.

Every rule we add carries the comment ``waylay owner=<pid>``: that is how a later agent
tells a live agent's chain (never touched) from one left behind by a dead one (reported,
and removed with ``--clean-on-start``). A chain itself cannot carry a comment, so the
owner is read from its rules. The pid is only meaningful in the pid namespace the agents
share; a chain whose owner was never recorded (the agent died between creating the chain
and adding its first rule) has ``owner_pid=None``.

IPv4 only for now: an IPv6 client of the service is not redirected (that needs the same
chain through ``ip6tables``).

All commands go through a ``CommandRunner`` so tests can swap in ``FakeIptables``; the real
runner is ``subprocess_runner``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from waylay.core.engine.errors import PrivilegeError, WaylayError

PASSTHROUGH_MARK = 0x2000
"""SO_MARK the agent sets on its own upstream sockets; the chain RETURNs on it."""

CHAIN_PREFIX = "WAYLAY-"
OWNER_COMMENT_PREFIX = "waylay owner="

# iptables refuses chain names longer than 28 characters ("must be under 29 chars").
_MAX_CHAIN_LEN = 28
# A wedged iptables (a held xtables lock with the legacy backend) must not hang the agent.
_COMMAND_TIMEOUT_S = 30.0
_TOOL_DIRS = ("/usr/sbin", "/sbin")
_INSTALL_HINT = "install iptables (apt-get install iptables)"
_NOT_PERMITTED = ("Permission denied", "you must be root", "Operation not permitted")
_MISSING = (
    "No chain/target/match by that name",
    "does a matching rule exist",
    "does not exist",
    "doesn't exist",
)
_BUILTIN_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")


class IptablesError(WaylayError):
    """An iptables command failed; carries its argv, exit status and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{shlex.join(self.argv)} failed (exit {returncode}): {self.stderr}")

    @property
    def is_missing(self) -> bool:
        """True when the failure only says the chain or rule is not there (already gone)."""
        return any(text in self.stderr for text in _MISSING)


class CommandRunner(Protocol):
    """Runs one command; returns its stdout, raises ``IptablesError`` (with stderr) on failure."""

    def __call__(self, argv: Sequence[str]) -> str: ...


def _find_tool(name: str) -> str | None:
    if "/" in name:
        return name
    found = shutil.which(name)
    if found:
        return found
    for directory in _TOOL_DIRS:  # sbin is often missing from a non-root PATH
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def subprocess_runner(argv: Sequence[str]) -> str:
    """Run ``argv`` (its tool looked up on PATH, then /usr/sbin and /sbin); return stdout.

    A missing tool or missing privilege is a ``PrivilegeError`` saying what to do; any other
    failure is an ``IptablesError``.
    """
    if not argv:
        raise ValueError("empty command")
    tool = _find_tool(argv[0])
    if tool is None:
        raise PrivilegeError(f"{argv[0]} not found: {_INSTALL_HINT}")
    try:
        done = subprocess.run(
            [tool, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise PrivilegeError(f"{argv[0]} not found: {_INSTALL_HINT}") from exc
    except subprocess.TimeoutExpired as exc:
        raise IptablesError(argv, -1, f"no answer after {_COMMAND_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        if any(text in done.stderr for text in _NOT_PERMITTED):
            raise PrivilegeError(
                f"{argv[0]} needs CAP_NET_ADMIN in the target's network namespace: run the "
                f"agent as root (or in a user namespace that owns it): {done.stderr.strip()}"
            )
        raise IptablesError(argv, done.returncode, done.stderr)
    return done.stdout


def new_chain_name() -> str:
    """A fresh chain name: ``WAYLAY-`` and 8 random hex digits (within iptables' limit)."""
    name = CHAIN_PREFIX + secrets.token_hex(4)
    assert len(name) <= _MAX_CHAIN_LEN
    return name


def _nat(*args: str) -> list[str]:
    # -w: wait for the xtables lock instead of failing when another agent holds it
    # (the legacy backend has one; with nft it is accepted and ignored).
    return ["iptables", "-w", "-t", "nat", *args]


def _owner_comment(pid: int) -> list[str]:
    return ["-m", "comment", "--comment", f"{OWNER_COMMENT_PREFIX}{pid}"]


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")


class PortRedirector(Protocol):
    """What the agent's worker needs of the namespace's redirect (``Redirector``; a test
    without iptables gives a fake)."""

    def redirect(self, port: int, to_port: int) -> None: ...
    def unredirect(self, port: int) -> None: ...
    def reset_connections(self, port: int) -> int:
        """Reset the established connections to ``port``; how many. Raises OSError or
        subprocess.SubprocessError when that cannot be done."""
        ...


class Redirector:
    """One agent session's chain: install it, redirect ports to the agent, remove it."""

    def __init__(
        self, *, chain: str, owner_pid: int, run: CommandRunner = subprocess_runner
    ) -> None:
        if not chain.startswith(CHAIN_PREFIX) or len(chain) > _MAX_CHAIN_LEN:
            raise ValueError(f"chain must start with {CHAIN_PREFIX} and fit 28 chars: {chain}")
        self.chain = chain
        self.owner_pid = owner_pid
        self._run = run
        self._targets: dict[int, int] = {}  # redirected port -> agent listener port

    @property
    def ports(self) -> frozenset[int]:
        """The ports currently redirected."""
        return frozenset(self._targets)

    def install(self) -> None:
        """Create the chain (mark RETURN first) and jump to it from PREROUTING and OUTPUT -o lo.

        On a failure part-way, whatever was created is removed before the error propagates.
        """
        comment = _owner_comment(self.owner_pid)
        mark = f"{PASSTHROUGH_MARK:#x}/{PASSTHROUGH_MARK:#x}"
        self._run(_nat("-N", self.chain))
        try:
            # The RETURN rule exists before any jump, so passthrough can never be redirected.
            self._run(
                _nat("-A", self.chain, "-m", "mark", "--mark", mark, *comment, "-j", "RETURN")
            )
            # Inserted first so rules already there (a sidecar's, say) do not see our ports first.
            self._run(_nat("-I", "PREROUTING", "1", "-p", "tcp", *comment, "-j", self.chain))
            self._run(
                _nat("-I", "OUTPUT", "1", "-p", "tcp", "-o", "lo", *comment, "-j", self.chain)
            )
        except BaseException:
            with contextlib.suppress(WaylayError):  # the original failure is the one to report
                remove_chain(self.chain, self._run)
            raise

    def _redirect_rule(self, port: int, to_port: int) -> list[str]:
        return [
            "-p", "tcp", "--dport", str(port), *_owner_comment(self.owner_pid),
            "-j", "REDIRECT", "--to-ports", str(to_port),
        ]  # fmt: skip

    def redirect(self, port: int, to_port: int) -> None:
        """Send new TCP connections for ``port`` to ``to_port``; a repeat call is a no-op."""
        _check_port(port)
        _check_port(to_port)
        previous = self._targets.get(port)
        if previous == to_port:
            return
        self._run(_nat("-A", self.chain, *self._redirect_rule(port, to_port)))
        self._targets[port] = to_port
        if previous is not None:
            # The new rule is already in place behind the old one: no connection falls through.
            self._delete_rule(self._redirect_rule(port, previous))

    def unredirect(self, port: int) -> None:
        """Stop redirecting ``port``; a no-op if it is not redirected.

        Connections already redirected keep their NAT mapping and stay with the agent.
        """
        to_port = self._targets.pop(port, None)
        if to_port is not None:
            self._delete_rule(self._redirect_rule(port, to_port))

    def _delete_rule(self, rule: list[str]) -> None:
        try:
            self._run(_nat("-D", self.chain, *rule))
        except IptablesError as exc:
            if not exc.is_missing:
                raise

    def remove(self) -> None:
        """Delete the jumps, flush and delete the chain; parts already gone are fine."""
        self._targets.clear()
        remove_chain(self.chain, self._run)

    def reset_connections(self, port: int) -> int:
        """Reset the connections to ``port`` established before its redirect (NAT decides at
        a connection's first packet, so they would bypass it); how many were reset."""
        argv = ["ss", "-K", "-H", "state", "established", f"( sport = :{port} )"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return len([line for line in done.stdout.splitlines() if line.strip()])


@dataclass(frozen=True)
class Leftover:
    """A waylay chain found in the nat table, with its owner's pid and whether it runs."""

    chain: str
    owner_pid: int | None
    alive: bool


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, but belongs to someone else
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def _parse_rules(listing: str) -> list[list[str]]:
    return [shlex.split(line) for line in listing.splitlines() if line.strip()]


def _jump_target(tokens: Sequence[str]) -> str | None:
    for i, token in enumerate(tokens[:-1]):
        if token in ("-j", "--jump", "-g", "--goto"):
            return tokens[i + 1]
    return None


def _owner_of(tokens: Sequence[str]) -> int | None:
    for i, token in enumerate(tokens[:-1]):
        if token == "--comment" and tokens[i + 1].startswith(OWNER_COMMENT_PREFIX):
            digits = tokens[i + 1].removeprefix(OWNER_COMMENT_PREFIX)
            return int(digits) if digits.isdigit() else None
    return None


def find_chains(run: CommandRunner = subprocess_runner) -> list[Leftover]:
    """Every ``WAYLAY-`` chain in the nat table, with its owner and whether the owner runs.

    The owner comes from the chain's own rules (else from the jumps to it); a chain with no
    recorded owner is reported with ``owner_pid=None`` and ``alive=False``.
    """
    rules = _parse_rules(run(_nat("-S")))
    chains = [t[1] for t in rules if len(t) >= 2 and t[0] == "-N" and t[1].startswith(CHAIN_PREFIX)]
    owners: dict[str, int] = {}
    for tokens in rules:  # rules inside the chain first: they are what the agent adds first
        if len(tokens) >= 2 and tokens[0] == "-A" and tokens[1] in chains:
            owner = _owner_of(tokens)
            if owner is not None:
                owners.setdefault(tokens[1], owner)
    for tokens in rules:
        target = _jump_target(tokens)
        if tokens[0] == "-A" and target in chains and target is not None:
            owner = _owner_of(tokens)
            if owner is not None:
                owners.setdefault(target, owner)
    found = []
    for chain in chains:
        owner = owners.get(chain)
        found.append(Leftover(chain, owner, owner is not None and _pid_alive(owner)))
    return found


def remove_chain(chain: str, run: CommandRunner = subprocess_runner) -> None:
    """Delete every rule that jumps to ``chain``, then flush and delete it; gone parts are fine."""
    rules = _parse_rules(run(_nat("-S")))
    for tokens in rules:
        if tokens[0] == "-A" and tokens[1] != chain and _jump_target(tokens) == chain:
            _tolerate_missing(run, _nat("-D", *tokens[1:]))
    if ["-N", chain] in rules:
        _tolerate_missing(run, _nat("-F", chain))
        _tolerate_missing(run, _nat("-X", chain))


def _tolerate_missing(run: CommandRunner, argv: list[str]) -> None:
    try:
        run(argv)
    except IptablesError as exc:
        if not exc.is_missing:
            raise


class FakeIptables:
    """An in-memory nat table answering the iptables argv waylay sends; for unit tests.

    Rules are kept exactly as given (real iptables normalises them, e.g. adds ``-m tcp``);
    errors carry real iptables' messages. Set ``fail_when`` to make chosen commands fail.
    """

    def __init__(self) -> None:
        self.chains: dict[str, list[list[str]]] = {name: [] for name in _BUILTIN_CHAINS}
        self.calls: list[list[str]] = []
        self.fail_when: Callable[[Sequence[str]], bool] | None = None

    def rules(self) -> list[str]:
        """The table in ``iptables -S`` form."""
        lines = [f"-P {name} ACCEPT" for name in _BUILTIN_CHAINS]
        lines += [f"-N {name}" for name in self.chains if name not in _BUILTIN_CHAINS]
        for name, rules in self.chains.items():
            lines += [shlex.join(["-A", name, *rule]).replace("'", '"') for rule in rules]
        return lines

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
        if self.fail_when is not None and self.fail_when(argv):
            raise IptablesError(argv, 1, "iptables: injected failure.")
        args = list(argv)
        if args[:1] != ["iptables"]:
            raise IptablesError(argv, 2, f"fake iptables cannot run {args[:1]}")
        args = [a for a in args[1:] if a != "-w"]
        if args[:2] != ["-t", "nat"] or len(args) < 3:
            raise IptablesError(argv, 2, "fake iptables knows only the nat table")
        op, rest = args[2], args[3:]
        if op == "-S":
            return "".join(line + "\n" for line in self.rules())
        chain, spec = rest[0], rest[1:]
        if op == "-N":
            if chain in self.chains:
                raise IptablesError(argv, 1, "iptables: Chain already exists.")
            self.chains[chain] = []
            return ""
        if chain not in self.chains:
            raise IptablesError(argv, 1, "iptables: No chain/target/match by that name.")
        rules = self.chains[chain]
        if op == "-A":
            rules.append(spec)
        elif op == "-I":
            rules.insert(int(spec[0]) - 1, spec[1:])
        elif op == "-D":
            if spec not in rules:
                msg = "iptables: Bad rule (does a matching rule exist in that chain?)."
                raise IptablesError(argv, 1, msg)
            rules.remove(spec)
        elif op == "-F":
            rules.clear()
        elif op == "-X":
            referenced = any(_jump_target(r) == chain for rs in self.chains.values() for r in rs)
            if rules or referenced or chain in _BUILTIN_CHAINS:
                raise IptablesError(argv, 1, f"CHAIN_DEL failed (Device or resource busy): {chain}")
            del self.chains[chain]
        else:
            raise IptablesError(argv, 2, f"fake iptables does not support {op}")
        return ""
