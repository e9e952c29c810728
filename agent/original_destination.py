"""Where a redirected connection was going before iptables REDIRECT sent it to the agent."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from waylay.core.system.pool import Destination

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


DestinationLookup = Callable[[socket.socket], Destination | None]
"""Where an accepted connection was going (None: it was not redirected); the agent's is
``original_destination``, a test without iptables gives its own (``tests/agent/harness.py``)."""


def original_destination(sock: socket.socket) -> Destination | None:
    """Where the client meant to connect before iptables REDIRECT (None if not redirected)."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port
