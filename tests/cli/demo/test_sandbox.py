"""The demo's subnet choice and run records (no namespace is made here)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from waylay.cli.demo import processes
from waylay.cli.demo.processes import RunRecord, same_process, start_time
from waylay.cli.demo.sandbox import SUBNET_POOL, free_subnet


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_free_subnet_is_a_slash_30_of_the_pool() -> None:
    """Host and namespace addresses are the two hosts of one /30 inside the pool."""
    host, ns = free_subnet([], seed=12345)
    pair = ipaddress.IPv4Network(f"{host}/30", strict=False)
    assert pair.subnet_of(SUBNET_POOL)
    assert [str(h) for h in pair.hosts()] == [host, ns]


def test_free_subnet_avoids_used_networks_but_not_broad_routes() -> None:
    """A used /30 (or a /24 around it) is skipped; a 10/8 VPN route does not block."""
    first = free_subnet([], seed=7)
    taken = ipaddress.IPv4Network(f"{first[0]}/24", strict=False)
    second = free_subnet([taken], seed=7)
    assert not ipaddress.IPv4Network(f"{second[0]}/30", strict=False).overlaps(taken)
    assert free_subnet([net("10.0.0.0/8")], seed=7) == first


def test_free_subnet_fails_clearly_when_the_pool_is_used() -> None:
    """The whole pool routed elsewhere: a clear error, not a clash."""
    with pytest.raises(Exception, match="no free /30"):
        free_subnet([SUBNET_POOL], seed=1)


def test_run_record_round_trip_and_liveness(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A record saved and loaded again; alive while its owner's pid and start time match."""
    monkeypatch.setattr(processes, "demo_directory", lambda: tmp_path)
    record = RunRecord(owner=os.getpid(), owner_start=start_time(os.getpid()),
                       netns="waylay-demo-1", children=[[1, None]])
    record.save()
    loaded = RunRecord.load(record.path)
    assert loaded == record and loaded.owner_alive()
    stale = RunRecord(owner=os.getpid(), owner_start=(record.owner_start or 0) + 1)
    assert not stale.owner_alive()  # same pid, another process: a crashed demo's record
    record.remove()
    assert not record.path.exists()
    assert RunRecord.load(record.path) is None


def test_same_process_needs_the_start_time_to_match() -> None:
    """pid reuse guard: a different start time is another process."""
    mine = start_time(os.getpid())
    assert same_process(os.getpid(), mine) and same_process(os.getpid(), None)
    assert not same_process(os.getpid(), (mine or 0) + 1)
    assert start_time(2**22 + 12345) is None
