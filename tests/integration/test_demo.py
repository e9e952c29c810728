"""`waylay demo --headless`: traffic flows, is routed as the config says, and nothing remains.

As root the demo uses a named namespace and a veth pair; the unprivileged test drops to
``nobody`` and the demo then uses a user + network namespace (docs/architecture.md §5). After every
way a
demo ends (normal end, SIGINT, SIGTERM, SIGKILL followed by the next demo) the test checks
that no namespace, veth address, run record, iptables rule or process of it remains.

The demo sends traffic only to loopback and into the namespace it created.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import (
    CLEAN_ENV,
    REPO,
    VENV,
    WAYLAY,
    WaylayRun,
    finish_waylay,
    poll,
    requires_root_netns,
    summary_counts,
)

pytestmark = pytest.mark.integration

ALICE_STEAL = ('{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
               '{"header_filter": "^x-user: alice$"},}}}}')
NOBODY = 65534
# Bounds only: a broken demo must not hang the suite.
START_TIMEOUT_S = 40.0
END_TIMEOUT_S = 60.0
GONE_TIMEOUT_S = 10.0
DEMO_DIR = Path("/run/waylay/demo")


@dataclass
class Demo:
    """A running ``waylay demo --headless`` and what it made, read from its stderr."""

    run: WaylayRun
    netns_inode: int | None = None
    shop_pid: int | None = None
    host_ip: str | None = None
    extra_pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.run.proc.pid

    @property
    def netns(self) -> str:
        return f"waylay-demo-{self.pid}"

    def wait_flowing(self) -> None:
        """Wait until the generator runs and the session reported requests; note the namespace."""
        ok = self.run.wait_for(lambda _: "traffic is flowing" in self.run.stderr,
                               START_TIMEOUT_S)
        assert ok, f"the demo did not start traffic; stderr:\n{self.run.stderr}"
        self.run.wait_requests(3, timeout=START_TIMEOUT_S)
        stderr = self.run.stderr
        if (m := re.search(r"host side (\d+\.\d+\.\d+\.\d+)", stderr)) is not None:
            self.host_ip = m.group(1)
        if (m := re.search(r"target pid/(\d+)", stderr)) is not None:
            self.shop_pid = int(m.group(1))
            path = f"/proc/{self.shop_pid}/ns/net"
        else:
            path = f"/run/netns/{self.netns}"
        with contextlib.suppress(OSError):
            self.netns_inode = os.stat(path).st_ino

    def finish(self, timeout: float = END_TIMEOUT_S) -> int:
        code = self.run.wait(timeout)
        return code


def start_demo(*args: str, prefix: tuple[str, ...] = (), waylay: Path = WAYLAY,
               env: dict[str, str] | None = None, cwd: str | None = None) -> Demo:
    proc = subprocess.Popen([*prefix, str(waylay), "demo", "--headless", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=CLEAN_ENV if env is None else env,
                            cwd=cwd)
    return Demo(WaylayRun(proc))


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    """Demos started by a test; any still running at teardown gets SIGINT (SIGKILL if stuck)."""
    started: list[Demo] = []
    try:
        yield started
    finally:
        for demo in started:
            finish_waylay(demo.run)


def _processes_of(pid: int) -> list[int]:
    """Processes started by demo ``pid`` (they carry ``--owner-pid PID``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"--owner-pid" in argv and argv[argv.index(b"--owner-pid") + 1:][:1] == [
                str(pid).encode()]:
            found.append(int(entry))
    return found


def _in_netns(inode: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    found.append(int(entry))
    return found


def _host_nat_waylay() -> list[str]:
    iptables_save = shutil.which("iptables-save", path="/usr/sbin:/sbin:/usr/bin")
    if iptables_save is None or os.geteuid() != 0:
        return []
    out = subprocess.run([iptables_save, "-t", "nat"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    return sorted(line for line in out.splitlines() if "WAYLAY" in line)


def leftovers(demo: Demo, record_dir: Path = DEMO_DIR) -> list[str]:
    """What of ``demo`` is still there (empty when it cleaned up completely)."""
    found = []
    if os.path.exists(f"/run/netns/{demo.netns}"):
        found.append(f"namespace {demo.netns}")
    if (record_dir / f"run-{demo.pid}.json").exists():
        found.append(f"run record {record_dir}/run-{demo.pid}.json")
    if pids := _processes_of(demo.pid):
        found.append(f"processes {pids}")
    if demo.netns_inode is not None and (pids := _in_netns(demo.netns_inode)):
        found.append(f"processes in its network namespace {pids}")
    if demo.host_ip is not None:
        addrs = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                               text=True, timeout=30, check=False).stdout
        if re.search(rf"\binet {re.escape(demo.host_ip)}/", addrs):
            found.append(f"host address {demo.host_ip}")
    return found


def assert_gone(demo: Demo, record_dir: Path = DEMO_DIR) -> None:
    left = poll(lambda: not leftovers(demo, record_dir), GONE_TIMEOUT_S)
    assert left, f"left behind: {leftovers(demo, record_dir)}\nstderr:\n{demo.run.stderr}"


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "alice.json"
    path.write_text(text)
    path.chmod(0o644)
    return path


@requires_root_netns
def test_alice_steal_as_root_uses_the_veth_path(tmp_path: Path, demos: list[Demo]) -> None:
    """Steal with the alice filter: exit 0, stolen and passed counts, alice's answers local."""
    before = _host_nat_waylay()
    demo = start_demo("--seconds", "20", "-f", str(_config(tmp_path, ALICE_STEAL)))
    demos.append(demo)
    demo.wait_flowing()
    assert demo.host_ip is not None, demo.run.stderr  # the veth path, not a user namespace
    code = demo.finish()
    stderr = demo.run.stderr
    assert code == 0, stderr
    counts = summary_counts(stderr)
    assert counts["stolen"] > 0 and counts["passed"] > 0, stderr
    verdicts = {(e["verdict"], e["matched"]) for e in demo.run.requests}
    assert verdicts == {("stolen", "header_filter: ^x-user: alice$"), ("passed", None)}
    view = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)))
            for m in re.finditer(r"^waylay demo:   (\S+)\s+(\d+)\s+(\d+)\s+(\d+)", stderr, re.M)}
    assert view["alice"][0] > 0 and view["alice"][1:] == (0, 0), stderr
    for user in ("bob", "carol", "dave", "kube-probe"):
        assert view[user][0] == 0 and view[user][1] > 0 and view[user][2] == 0, stderr
    assert "ok: every answer came from where the filter sends it" in stderr
    assert_gone(demo)
    assert _host_nat_waylay() == before


@requires_root_netns
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_demo_and_removes_everything(demos: list[Demo],
                                                       sig: signal.Signals) -> None:
    """Ctrl-C or SIGTERM mid-run: the verdict on the traffic so far, then nothing remains."""
    demo = start_demo()  # mirror, until stopped
    demos.append(demo)
    demo.wait_flowing()
    demo.run.proc.send_signal(sig)
    code = demo.finish()
    assert code == 0, demo.run.stderr
    assert summary_counts(demo.run.stderr)["mirrored"] > 0, demo.run.stderr
    assert "ok: the remote shop answered all" in demo.run.stderr
    assert_gone(demo)


@requires_root_netns
def test_two_demos_at_once(tmp_path: Path, demos: list[Demo]) -> None:
    """Two demos side by side get their own namespace and subnet, and both succeed."""
    first = start_demo("--seconds", "8", "-f", str(_config(tmp_path, ALICE_STEAL)))
    second = start_demo("--seconds", "8")
    demos += [first, second]
    first.wait_flowing()
    second.wait_flowing()
    assert first.host_ip != second.host_ip
    assert first.netns_inode != second.netns_inode
    assert first.finish() == 0, first.run.stderr
    assert second.finish() == 0, second.run.stderr
    assert summary_counts(first.run.stderr)["stolen"] > 0
    assert summary_counts(second.run.stderr)["mirrored"] > 0
    assert_gone(first)
    assert_gone(second)


@requires_root_netns
def test_a_killed_demo_is_cleaned_up_by_the_next(demos: list[Demo]) -> None:
    """SIGKILL leaves the namespace; its processes exit by themselves; the next demo removes it."""
    crashed = start_demo()
    demos.append(crashed)
    crashed.wait_flowing()
    crashed.run.proc.kill()
    crashed.finish()
    # Its children notice their owner is gone; the agent loses its session and leaves.
    assert poll(lambda: not _processes_of(crashed.pid), GONE_TIMEOUT_S), \
        _processes_of(crashed.pid)
    assert os.path.exists(f"/run/netns/{crashed.netns}")  # what only the next demo removes
    following = start_demo("--seconds", "3")
    demos.append(following)
    assert following.finish() == 0, following.run.stderr
    assert f"removed the leftovers of a demo that ended abruptly (pid {crashed.pid})" \
        in following.run.stderr
    assert_gone(crashed)


@requires_root_netns
def test_a_bad_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    """A config error is exit 2, named, before any namespace is made."""
    bad = _config(tmp_path, '{"feature": {"network": {"incoming": {"mode": "sneak"}}}}')
    done = subprocess.run([str(WAYLAY), "demo", "--headless", "-f", str(bad)],
                          capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
    assert done.returncode == 2, done.stderr
    assert "feature.network.incoming.mode" in done.stderr
    assert "starting the sample shop" not in done.stderr


# --- without root ------------------------------------------------------------------------


def _reachable_by_others(path: Path, *, execute: bool) -> bool:
    real = path.resolve()
    if any(not os.stat(p).st_mode & 0o001 for p in real.parents):
        return False
    return bool(os.stat(real).st_mode & (0o001 if execute else 0o004))


@contextlib.contextmanager
def _unprivileged_waylay() -> Iterator[tuple[list[str], Path, Path]]:
    """(prefix, waylay, work dir) to run waylay as a plain user; skips when impossible.

    Run by a plain user: that user and the repository's venv. Run as root: ``nobody``
    (``setpriv``). When the venv's interpreter is out of nobody's reach (a python under
    /root), a throwaway venv on the system's python of the same minor version, whose .pth
    adds the repository venv's site-packages, runs the very same code and packages.
    """
    for tool in ("unshare", "nsenter", "iptables", "ip"):
        if shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
            pytest.skip(f"{tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="wl-demo-user-", dir="/tmp"))
    try:
        work.chmod(0o755)
        if os.geteuid() != 0:
            yield [], WAYLAY, work
            return
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is not installed")
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        waylay = WAYLAY
        if not _reachable_by_others(VENV / "bin" / "python", execute=True):
            waylay = _shim_venv(work)
        for path in (REPO / "cli" / "demo" / "shop.py", waylay):
            if not _reachable_by_others(path, execute=path == waylay):
                pytest.skip(f"{path} is out of nobody's reach")
        os.chown(work, NOBODY, NOBODY)
        probe = subprocess.run([*prefix, "unshare", "--user", "--map-root-user", "--net",
                                "true"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            pytest.skip("the kernel forbids unprivileged user namespaces here: "
                        f"{probe.stderr.strip() or probe.returncode}")
        yield prefix, waylay, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _shim_venv(work: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system_python = Path(f"/usr/bin/python{version}")
    site = VENV / "lib" / f"python{version}" / "site-packages"
    if not system_python.exists():
        pytest.skip(f"{VENV / 'bin' / 'python'} is out of nobody's reach and there is no "
                    f"{system_python} to run the same packages with")
    if not _reachable_by_others(site, execute=True):
        pytest.skip(f"{site} is out of nobody's reach")
    shim = work / "venv"
    subprocess.run([str(system_python), "-m", "venv", "--without-pip", str(shim)],
                   check=True, capture_output=True, timeout=120)
    (shim / "lib" / f"python{version}" / "site-packages" / "waylay-repo.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n")
    waylay = shim / "bin" / "waylay"
    waylay.write_text(f"#!{shim / 'bin' / 'python'}\nimport sys\nfrom waylay.cli.main import main\n"
                      "sys.exit(main())\n")
    subprocess.run(["chmod", "-R", "a+rX", str(shim)], check=True, timeout=30)
    waylay.chmod(0o755)
    return waylay


def test_alice_steal_without_root_uses_a_user_namespace(demos: list[Demo]) -> None:
    """As a plain user: a user + network namespace, pid/N target, and the same verdict."""
    with _unprivileged_waylay() as (prefix, waylay, work):
        env = {k: v for k, v in CLEAN_ENV.items() if k not in ("TMPDIR", "XDG_RUNTIME_DIR")}
        env["HOME"] = str(work)
        demo = start_demo("--seconds", "10", "-f", str(_config(work, ALICE_STEAL)),
                          prefix=tuple(prefix), waylay=waylay, env=env, cwd=str(work))
        demos.append(demo)
        demo.wait_flowing()
        assert demo.shop_pid is not None, demo.run.stderr  # pid/N: the user-namespace path
        assert "user + network namespace" in demo.run.stderr
        code = demo.finish()
        assert code == 0, demo.run.stderr
        counts = summary_counts(demo.run.stderr)
        assert counts["stolen"] > 0 and counts["passed"] > 0, demo.run.stderr
        uid = NOBODY if prefix else os.getuid()
        base = (Path(os.environ["XDG_RUNTIME_DIR"]) / "waylay" if not prefix and
                os.environ.get("XDG_RUNTIME_DIR") else Path(f"/tmp/waylay-{uid}"))
        assert_gone(demo, base / "demo")
        assert poll(lambda: not os.path.exists(f"/proc/{demo.shop_pid}"), GONE_TIMEOUT_S)
