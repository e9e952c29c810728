"""The guard: a parent process whose one job is that waylay's iptables rules never outlive it.

Theory of operation (docs/architecture.md §4). ``run_guard`` reports (or, with ``clean_on_start``,
removes)
chains left behind by dead agents, installs a fresh chain owned by its own pid, then runs
the real agent (the *worker*) as a child with ``--chain NAME``. Whatever ends the worker
(a normal exit, a crash, SIGKILL from the OOM killer) the guard removes the chain in a
``finally``. SIGTERM, SIGINT and SIGHUP sent to the guard are forwarded to the worker, which
gets ``KILL_GRACE_S`` to exit before it is SIGKILLed.

Signals are handled synchronously: the guard blocks them (and SIGCHLD) and waits with
``sigwaitinfo``, so a signal can never interrupt it half-way through an iptables command,
and one arriving while the rules are being removed cannot cut the removal short.

The worker runs in its own process group, so a terminal's Ctrl-C reaches it once (forwarded
by the guard), not twice. If the guard itself is SIGKILLed nothing can run in it: the
kernel then SIGKILLs the worker (``PR_SET_PDEATHSIG``), and the rules stay behind. The
next agent started in that namespace reports them as a leftover (their owner pid is gone),
and removes them with ``--clean-on-start``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from waylay.agent.iptables import (
    CommandRunner,
    Leftover,
    Redirector,
    find_chains,
    new_chain_name,
    remove_chain,
    subprocess_runner,
)

KILL_GRACE_S = 5.0
"""How long the worker has to exit after a forwarded signal before it is SIGKILLed."""

# An agent that is starting creates its chain and adds its first (owner-bearing) rule a few
# milliseconds apart; a chain without an owner is only called a leftover if it still has
# none after this long.
OWNERLESS_RECHECK_S = 0.5

FORWARDED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
_WAITED_SIGNALS = FORWARDED_SIGNALS | {signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

Report = Callable[[dict[str, object]], None]


def run_guard(
    worker_argv: Sequence[str],
    *,
    clean_on_start: bool,
    report: Report,
    run: CommandRunner = subprocess_runner,
    env: Mapping[str, str] | None = None,
) -> int:
    """Install a chain, run ``[*worker_argv, "--chain", NAME]``, remove the chain when it ends.

    Returns the worker's exit status, or 128 + the signal number if a signal ended it.
    Must be called from the main thread (it manages the process's signal mask).
    """
    if not worker_argv:
        raise ValueError("worker_argv is empty")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_guard must run in the main thread (it waits for signals)")
    _handle_leftovers(clean_on_start=clean_on_start, report=report, run=run)

    redirector = Redirector(chain=new_chain_name(), owner_pid=os.getpid(), run=run)
    # Blocked before the rules exist, so no signal can end the guard between installing
    # them and the `finally` that removes them; they stay pending until we wait for them.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED_SIGNALS)
    worker: subprocess.Popen[bytes] | None = None
    try:
        redirector.install()
        worker = subprocess.Popen(
            [*worker_argv, "--chain", redirector.chain],
            env=env,
            process_group=0,
            preexec_fn=_worker_setup(old_mask),
        )
        return _supervise(worker)
    finally:
        try:
            if worker is not None and worker.poll() is None:  # only on an unexpected error
                worker.kill()
                worker.wait()
            redirector.remove()
        finally:
            # Signals that came after the worker ended were answered by this very exit.
            while signal.sigtimedwait(FORWARDED_SIGNALS, 0) is not None:
                pass
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _handle_leftovers(*, clean_on_start: bool, report: Report, run: CommandRunner) -> None:
    leftovers = find_chains(run)
    if any(found.owner_pid is None for found in leftovers):
        time.sleep(OWNERLESS_RECHECK_S)
        now = {found.chain: found for found in find_chains(run)}
        leftovers = [now[found.chain] for found in leftovers if found.chain in now]
    for found in leftovers:
        if found.alive:
            report({"event": "info", "message": _describe(found)})
        elif clean_on_start:
            remove_chain(found.chain, run)
            report({"event": "cleaned", "chain": found.chain})
        else:
            report({"event": "warning", "message": _describe(found)})


def _describe(found: Leftover) -> str:
    if found.alive:
        return (
            f"waylay chain {found.chain} belongs to a running agent "
            f"(pid {found.owner_pid}); leaving it alone"
        )
    owner = (
        "no owner recorded" if found.owner_pid is None else f"owner pid {found.owner_pid} is gone"
    )
    return (
        f"leftover waylay rules in chain {found.chain} ({owner}); remove them with --clean-on-start"
    )


def _supervise(worker: subprocess.Popen[bytes]) -> int:
    """Wait for the worker, forwarding signals; its exit status in shell convention."""
    deadline: float | None = None
    while (status := worker.poll()) is None:
        info: signal.struct_siginfo | None
        if deadline is None:
            info = signal.sigwaitinfo(_WAITED_SIGNALS)
        else:
            info = signal.sigtimedwait(_WAITED_SIGNALS, max(0.0, deadline - time.monotonic()))
        if info is None:  # the grace period ran out
            worker.kill()
            deadline = None  # SIGCHLD will follow
        elif info.si_signo in FORWARDED_SIGNALS:
            worker.send_signal(info.si_signo)
            if deadline is None:
                deadline = time.monotonic() + KILL_GRACE_S
        # else SIGCHLD (maybe an earlier iptables child's): the loop polls the worker
    return 128 - status if status < 0 else status


def _worker_setup(guard_mask: Iterable[int]) -> Callable[[], None]:
    """The worker's preexec_fn: restore the signal mask, die with the guard."""
    guard_pid = os.getpid()
    # Loaded here, before the fork: the child should call into libc, not load it.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, guard_mask)  # exec keeps the mask
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != guard_pid:  # the guard died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return setup
