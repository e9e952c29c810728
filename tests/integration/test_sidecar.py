"""Clients inside the target namespace itself (a sidecar, a health checker) are intercepted too.

Their connections to 127.0.0.1:80 or to the namespace's own address never cross
PREROUTING; the agent's OUTPUT ``-o lo`` jump must catch them.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import Bed, StartWaylay, curl, requires_root_netns

pytestmark = [pytest.mark.integration, requires_root_netns]

HEADER_CONFIG = (
    '{"feature": {"network": {"incoming": {"mode": "steal", "http_filter": '
    '{"header_filter": "X-My-Header: my-header-value", "ports": [80, 8080]},}}}}'
)
STEAL = ("-H", "X-My-Header: my-header-value")


@pytest.mark.parametrize("host", ["127.0.0.1", "ns_ip"])
def test_requests_from_inside_the_namespace_are_intercepted(
    bed: Bed, waylay: StartWaylay, host: str
) -> None:
    """A sidecar's matching request to the service is answered by local, others by remote."""
    address = bed.ns_ip if host == "ns_ip" else host
    run = waylay(HEADER_CONFIG)
    stolen = curl(f"http://{address}:80/sidecar/steal", *STEAL, ns=bed.ns)
    passed = curl(f"http://{address}:80/sidecar/pass", ns=bed.ns)
    assert (stolen.status, stolen.served_by) == (200, "local")
    assert stolen.body == b"local /sidecar/steal\n"
    assert (passed.status, passed.served_by) == (200, "remote")
    assert passed.body == b"remote /sidecar/pass\n"
    events = run.wait_requests(2)
    assert [(e["path"], e["verdict"]) for e in events] == [
        ("/sidecar/steal", "stolen"), ("/sidecar/pass", "passed")]
