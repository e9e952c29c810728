"""`waylay agent --listen` and the Job form's container lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from waylay.agent.container_relay import container_pid
from waylay.agent.main import listen_problem


@pytest.mark.parametrize("listen", ["unix:/run/x.sock", "tcp:127.0.0.1:47010",
                                    "tcp:127.0.0.9:1", "tcp:[::1]:47010"])
def test_accepted(listen: str) -> None:
    assert listen_problem(listen) is None


@pytest.mark.parametrize(("listen", "why"), [
    ("tcp:0.0.0.0:47010", "loopback only"),
    ("tcp:10.1.2.3:47010", "loopback only"),
    ("tcp:localhost:47010", "loopback only"),  # a name could resolve anywhere
    ("tcp:127.0.0.1:0", "bad port"),
    ("tcp:127.0.0.1:http", "bad port"),
    ("unix:", "must be"),
    ("47010", "must be"),
])
def test_refused(listen: str, why: str) -> None:
    problem = listen_problem(listen)
    assert problem is not None and why in problem


def test_container_pid_scans_cgroups(tmp_path: Path) -> None:
    cid = "ab12" * 16
    for pid, cgroup in ((7, "0::/system.slice/sshd.service\n"),
                        (42, f"0::/kubepods/burstable/pod1/{cid}\n"),
                        (40, f"0::/system.slice/cri-containerd-{cid}.scope\n")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(cgroup)
    (tmp_path / "self").mkdir()
    assert container_pid(f"containerd://{cid}", tmp_path) == 40
    assert container_pid(f"cri-o://{'cd' * 32}", tmp_path) is None
    assert container_pid("not an id; rm -rf /", tmp_path) is None
