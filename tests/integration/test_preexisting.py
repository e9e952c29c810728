"""Connections opened before a steal began come under it: the policy of resetting them once.

Both tests first switch on connection tracking in the namespace (one harmless filter rule
that uses it), as in a pod whose namespace already has netfilter rules. Without it the
kernel picks an established connection up mid-stream once NAT rules appear and redirects
its next packet, which cuts it in any mode (README: "Connections opened before").
"""

from __future__ import annotations

import http.client
import subprocess

import pytest

from tests.integration.conftest import CLEAN_ENV, Bed, StartWaylay, requires_root_netns

pytestmark = [pytest.mark.integration, requires_root_netns]

STEAL_ALL = '{"feature": {"network": {"incoming": "steal"}}}'
MIRROR_ALL = '{"feature": {"network": {"incoming": "mirror"}}}'
assert "proxy" not in str(CLEAN_ENV.keys()).lower()  # http.client never uses a proxy


@pytest.fixture(scope="module", autouse=True)
def conntrack_on(bed: Bed) -> None:
    """Connection tracking active in the namespace before any connection is made."""
    subprocess.run(["ip", "netns", "exec", bed.ns, "iptables", "-t", "filter", "-A", "INPUT",
                    "-m", "conntrack", "--ctstate", "INVALID", "-j", "ACCEPT"],
                   check=True, capture_output=True, timeout=30)


def _get(conn: http.client.HTTPConnection, path: str) -> str | None:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.getheader("X-Served-By")


def test_keep_alive_connection_from_before_the_steal_is_reset_then_stolen(
        bed: Bed, waylay: StartWaylay) -> None:
    """A connection open before the steal is reset once; the client's retry is stolen."""
    conn = http.client.HTTPConnection(bed.ns_ip, 80, timeout=15)
    try:
        assert _get(conn, "/before") == "remote"
        run = waylay(STEAL_ALL)
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            _get(conn, "/reset")  # the old connection is gone: never answered by remote
        conn.close()
        assert _get(conn, "/after") == "local"  # http.client reconnects: through waylay
        assert run.wait_for(lambda evs: any(
            "opened before the steal began" in e.get("message", "") for e in evs), 10.0)
    finally:
        conn.close()


def test_mirror_leaves_existing_connections_alone(bed: Bed, waylay: StartWaylay) -> None:
    """Mirror must not disturb: a connection from before keeps working (unmirrored)."""
    conn = http.client.HTTPConnection(bed.ns_ip, 80, timeout=15)
    try:
        assert _get(conn, "/before") == "remote"
        waylay(MIRROR_ALL)
        assert _get(conn, "/still") == "remote"
    finally:
        conn.close()
