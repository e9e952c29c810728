"""The steal test without root: a service in a user + network namespace, intercepted by a
plain user with ``waylay run -t pid/N`` (docs/architecture.md §5, "unprivileged local targets").

As root the test drops to ``nobody`` with ``setpriv``; run by a plain user it stays that
user. The service is started the way the demo starts one (``unshare --user --map-root-user
--net``), its clients run inside that namespace (``nsenter --user --net``), and the local
app listens on host loopback.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import (
    CLEAN_ENV,
    HTTP_APP,
    PYTHON,
    REPO,
    VENV,
    WAYLAY,
    curl,
    finish_waylay,
    launch_waylay,
    start_server,
    stop_process,
    summary_counts,
    wait_listening,
    waylay_argv,
)

pytestmark = pytest.mark.integration

NOBODY = 65534
CONFIG = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "X-My-Header: my-header-value", "ports": [80, 8080]},}}}}'
)
PROBE_TIMEOUT_S = 30


def _drop_privileges() -> list[str]:
    """The prefix that runs a command as nobody (as root), or nothing (as a plain user)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _unreachable_for_others(path: Path, *, execute: bool) -> str | None:
    """Why a user other than the owner cannot read (or execute) ``path``; None if they can."""
    real = path.resolve()
    for parent in reversed(real.parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return f"{parent} is not world-executable, so nobody cannot reach {real}"
    mode = os.stat(real).st_mode
    need = stat.S_IXOTH if execute else stat.S_IROTH
    if not mode & need:
        return f"{real} is not world-{'executable' if execute else 'readable'}"
    return None


SYSTEM_PYTHON = Path("/usr/bin/python3.11")


def _runtime_for_others(shim_dir: Path) -> tuple[Path, Path] | str:
    """A Python and a ``waylay`` the unprivileged user can run, or why there is none.

    The repository's venv, when others can reach it. Otherwise (a venv whose interpreter
    lives under a 0700 home, as pyenv's does under /root) a shim venv on the system's
    Python 3.11 that sees the venv's packages (waylay's editable install among them)
    through a .pth file:
    the same code and packages, an interpreter nobody may execute.
    """
    if all(_unreachable_for_others(p, execute=True) is None for p in (PYTHON, WAYLAY)):
        return PYTHON, WAYLAY
    site = next((VENV / "lib").glob("python3.*/site-packages"), None)
    if site is None or not SYSTEM_PYTHON.exists():
        return (f"{_unreachable_for_others(PYTHON, execute=True)}, and there is no "
                f"{SYSTEM_PYTHON} to build a shim venv on")
    for path in (site, REPO / "core" / "__init__.py"):
        if (why := _unreachable_for_others(path, execute=False)) is not None:
            return why
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(shim_dir)],
                   check=True, capture_output=True, timeout=PROBE_TIMEOUT_S)
    shim_site = next((shim_dir / "lib").glob("python3.*/site-packages"))
    # addsitedir, not a plain path line: the venv's own .pth files must run too, since the
    # editable install finds waylay.* through one of them.
    (shim_site / "waylay-under-test.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n")
    waylay = shim_dir / "bin" / "waylay"
    waylay.write_text(f"#!{shim_dir / 'bin' / 'python'}\n"
                      "import sys\nfrom waylay.cli.main import main\nsys.exit(main())\n")
    waylay.chmod(0o755)
    return shim_dir / "bin" / "python", waylay


def _skip_reason() -> str | None:
    for tool in ("unshare", "nsenter", "iptables", "curl", "ip"):
        if shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
            return f"{tool} is not installed"
    prefix = _drop_privileges()
    if prefix and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    if prefix:
        for path in (REPO / "core" / "__init__.py", HTTP_APP):
            if (why := _unreachable_for_others(path, execute=False)) is not None:
                return why
    probe = subprocess.run([*prefix, "unshare", "--user", "--map-root-user", "--net", "true"],
                           capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    if probe.returncode != 0:
        return ("the kernel forbids unprivileged user namespaces here: "
                f"{probe.stderr.strip() or probe.returncode}")
    return None


@dataclass
class UserTarget:
    python: Path  # an interpreter the unprivileged user can run, with waylay importable
    waylay: Path  # and the waylay command on it
    pid: int  # the service, in its own user + network namespace
    local_port: int  # the local app on host loopback
    workdir: Path  # readable by the unprivileged user
    prefix: list[str]  # runs a command as that user

    def enter(self) -> list[str]:
        """Prefix running a command inside the service's namespaces, as that user."""
        return [*self.prefix, "nsenter", "--preserve-credentials", "--user", "--net",
                "--target", str(self.pid)]


@pytest.fixture
def user_target() -> Iterator[UserTarget]:
    """A remote service started by an unprivileged user in a user + network namespace."""
    if (reason := _skip_reason()) is not None:
        pytest.skip(reason)
    prefix = _drop_privileges()
    workdir = Path(tempfile.mkdtemp(prefix="wl-userns-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        workdir.chmod(0o755)
        runtime = _runtime_for_others(workdir / "venv") if prefix else (PYTHON, WAYLAY)
        if isinstance(runtime, str):
            pytest.skip(runtime)
        python, waylay = runtime
        if prefix:
            os.chown(workdir, NOBODY, NOBODY)
        ip = shutil.which("ip", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
        remote = subprocess.Popen(
            [*prefix, "unshare", "--user", "--map-root-user", "--net", "sh", "-c",
             f'"{ip}" link set lo up && exec "{python}" "{HTTP_APP}" remote 80'],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=workdir, env=CLEAN_ENV)
        procs.append(remote)
        wait_listening(remote, "remote http in a user namespace")
        local, local_port = start_server(
            [str(PYTHON), str(HTTP_APP), "local", "0", "--host", "127.0.0.1"], "local http")
        procs.append(local)
        yield UserTarget(python=python, waylay=waylay, pid=remote.pid, local_port=local_port,
                         workdir=workdir, prefix=prefix)
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def test_unprivileged_user_steals_from_a_user_namespace(user_target: UserTarget) -> None:
    """Without root, `waylay run -t pid/N` steals matching requests; others reach the service."""
    config = user_target.workdir / "steal.json"
    config.write_text(CONFIG)
    config.chmod(0o644)
    env = {k: v for k, v in CLEAN_ENV.items() if k != "TMPDIR"}
    env["HOME"] = str(user_target.workdir)
    argv = waylay_argv(f"pid/{user_target.pid}", config, [f"80:{user_target.local_port}"])
    argv = [*user_target.prefix, str(user_target.waylay), *argv[1:]]
    run = launch_waylay(argv, 1, env=env, cwd=str(user_target.workdir))
    try:
        inside = user_target.enter()
        for _ in range(2):
            stolen = curl("http://127.0.0.1:80/userns/steal", "-H",
                          "X-My-Header: my-header-value", user=inside)
            passed = curl("http://127.0.0.1:80/userns/pass", user=inside)
            assert (stolen.status, stolen.served_by, stolen.body) == (
                200, "local", b"local /userns/steal\n")
            assert (passed.status, passed.served_by, passed.body) == (
                200, "remote", b"remote /userns/pass\n")
        events = run.wait_requests(4)
        assert [(e["path"], e["verdict"]) for e in events] == [
            ("/userns/steal", "stolen"), ("/userns/pass", "passed")] * 2
        assert run.stop() == 0, run.stderr
        assert summary_counts(run.stderr)["stolen"] == 2, run.stderr
        rules = subprocess.run([*inside, "iptables-save", "-t", "nat"], capture_output=True,
                               text=True, timeout=PROBE_TIMEOUT_S, env=CLEAN_ENV)
        assert rules.returncode == 0, rules.stderr
        assert "WAYLAY" not in rules.stdout, rules.stdout
    finally:
        finish_waylay(run)
