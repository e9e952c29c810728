"""`./dev setup` as root installs packages without killing anybody's nginx.

The real ``dev`` script runs inside fresh PID and mount namespaces (``unshare --pid --fork
--mount-proc``): a ``pkill`` there reaches only the test's own processes, ``/usr/sbin`` is
a private tmpfs (where ``policy-rc.d`` lives), and everything in the namespace dies with
it. ``apt-get`` and ``invoke-rc.d`` are fakes on PATH that behave as Debian's do towards a
service: installing nginx-light starts "nginx" through ``invoke-rc.d nginx start``, which
asks ``/usr/sbin/policy-rc.d`` first and starts nothing when it exits 101. A user's own
"nginx" (``sleep`` under that name) runs before the setup and must still run after it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

SETUP_TIMEOUT_S = 60  # a bound only: the fakes answer at once

FAKE_INVOKE_RC_D = """\
#!/bin/sh
# invoke-rc.d as Debian's: ask policy-rc.d, then act on the service (only nginx here).
service=$1 action=$2
echo "invoke-rc.d $service $action" >> "$STATE/calls"
if [ -x /usr/sbin/policy-rc.d ]; then
    /usr/sbin/policy-rc.d "$service" "$action"
    if [ $? -eq 101 ]; then
        echo "policy-rc.d denied $action of $service" >> "$STATE/calls"
        exit 0
    fi
fi
case "$action" in
    start) setsid "$NGINX" 1000 </dev/null >/dev/null 2>&1 &
           echo $! > "$STATE/service.pid" ;;
    stop) # as a real service stop: return once the server is gone (bounded: 10 s)
          if [ -f "$STATE/service.pid" ]; then
              pid=$(cat "$STATE/service.pid"); kill "$pid"; i=0
              while [ $i -lt 200 ] && [ -e "/proc/$pid" ] &&
                    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
                  sleep 0.05; i=$((i + 1))
              done
          fi ;;
esac
exit 0
"""

FAKE_APT_GET = """\
#!/bin/sh
# apt-get as far as a service is concerned: nginx's postinst starts it via invoke-rc.d.
echo "apt-get $*" >> "$STATE/calls"
case " $* " in
    *" install "*nginx-light*) invoke-rc.d nginx start
                               [ -z "$APT_FAIL" ] || exit 100 ;;
esac
exit 0
"""

DRIVER = """\
set -u
mount -t tmpfs -o mode=755 waylay-test /usr/sbin
if [ -n "$EXISTING_POLICY" ]; then
    printf '%s' "$EXISTING_POLICY" > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
fi
"$NGINX" 1000 </dev/null >/dev/null 2>&1 &
echo $! > "$STATE/user.pid"
PATH="$FAKES:/usr/bin:/bin" "$WORK/dev" setup > "$STATE/dev.log" 2>&1
echo "dev-exit $?"
for pid in $(pgrep -x nginx); do
    echo "nginx $pid $(awk '{print $3}' /proc/$pid/stat)"
done
if [ -e /usr/sbin/policy-rc.d ]; then
    echo "policy $(sha256sum < /usr/sbin/policy-rc.d | cut -d' ' -f1)"
else
    echo "policy none"
fi
"""

# Docker's own: deny every start during image builds.
DOCKER_POLICY = "#!/bin/sh\n# a policy of the machine's own\nexit 101\n"
# A machine whose admin allows starts explicitly.
ALLOW_POLICY = "#!/bin/sh\n# a policy of the machine's own\nexit 0\n"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: `./dev setup` installs packages only as root"
    for tool in ("unshare", "pgrep", "setsid", "sleep", "mount", "sha256sum"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _workdir(tmp: Path) -> Path:
    """A copy of the real dev script beside a venv that counts as set up (no pip runs)."""
    work = tmp / "work"
    (work / ".venv" / "bin").mkdir(parents=True)
    shutil.copy2(REPO / "dev", work / "dev")
    python = work / ".venv" / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    (work / "pyproject.toml").write_text("")
    os.utime(work / "pyproject.toml", (time.time() - 3600,) * 2)
    (work / ".venv" / ".installed").touch()
    return work


def _fakes(tmp: Path) -> Path:
    fakes = tmp / "fakes"
    fakes.mkdir()
    for name, text in (("apt-get", FAKE_APT_GET), ("invoke-rc.d", FAKE_INVOKE_RC_D)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    return fakes


def _setup(tmp: Path, existing_policy: str,
           apt_fails: bool = False) -> tuple[dict[str, str], str, str]:
    """Run ``./dev setup`` in the namespaces: (report lines by kind, calls, dev's output)."""
    why = _skip_reason()
    if why is not None:
        pytest.skip(why)
    state = tmp / "state"
    state.mkdir()
    nginx_dir = tmp / "nginx-bin"
    nginx_dir.mkdir()
    sleep = shutil.which("sleep")
    assert sleep is not None
    (nginx_dir / "nginx").symlink_to(sleep)  # its process name is "nginx"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp), "STATE": str(state),
           "NGINX": str(nginx_dir / "nginx"), "FAKES": str(_fakes(tmp)),
           "WORK": str(_workdir(tmp)), "EXISTING_POLICY": existing_policy,
           "APT_FAIL": "1" if apt_fails else ""}
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c", DRIVER],
                          env=env, capture_output=True, text=True, timeout=SETUP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    calls = (state / "calls").read_text() if (state / "calls").exists() else ""
    log = (state / "dev.log").read_text()
    user_pid = (state / "user.pid").read_text().strip()
    report: dict[str, str] = {}
    for line in done.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "nginx":
            pid, _, state_letter = rest.partition(" ")
            if state_letter not in ("Z", ""):  # "": gone between pgrep and reading it
                report["user-nginx" if pid == user_pid else "package-nginx"] = pid
        else:
            report[kind] = rest
    assert (report.get("dev-exit") != "0") == apt_fails, f"{done.stdout}\n{log}"
    assert "apt-get install" in calls and "nginx-light" in calls, calls
    return report, calls, log


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_setup_starts_no_server_and_kills_no_nginx(tmp_path: Path) -> None:
    """No policy-rc.d yet: the package starts no server, the user's nginx lives, none is left."""
    report, calls, log = _setup(tmp_path, existing_policy="")
    assert "user-nginx" in report, f"the user's nginx was killed:\n{calls}\n{log}"
    assert "package-nginx" not in report, f"the package started a server:\n{calls}"
    assert "policy-rc.d denied start of nginx" in calls, calls
    assert report["policy"] == "none"  # the temporary one is gone


@pytest.mark.parametrize("policy", [DOCKER_POLICY, ALLOW_POLICY], ids=["deny", "allow"])
def test_setup_keeps_an_existing_policy_and_stops_only_the_packages_server(
    tmp_path: Path, policy: str
) -> None:
    """A policy-rc.d of the machine's own stays as it was; the user's nginx lives; a server
    the package started anyway is stopped as a service, not by process name."""
    report, calls, log = _setup(tmp_path, existing_policy=policy)
    assert "user-nginx" in report, f"the user's nginx was killed:\n{calls}\n{log}"
    assert "package-nginx" not in report, f"the package's server still runs:\n{calls}"
    assert report["policy"] == _sha256(policy)


def test_a_failed_install_still_removes_the_temporary_policy(tmp_path: Path) -> None:
    """apt-get fails: `./dev setup` fails too, and leaves no policy-rc.d behind."""
    report, calls, log = _setup(tmp_path, existing_policy="", apt_fails=True)
    assert "policy-rc.d denied start of nginx" in calls, calls
    assert report["policy"] == "none", log
    assert "user-nginx" in report
