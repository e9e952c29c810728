"""What an intercepted connection turned out to be, and why its client is not read.

Shared by ``waylay.agent.interception`` (the ``InterceptedConnection``) and the parts it
inherits: ``waylay.agent.upstream_side`` (the original app's side) and
``waylay.agent.byte_relay`` (connections whose bytes cross whole).
"""

from __future__ import annotations

import enum

# Bytes written to a peer before the other side stops being read: the per-connection
# buffer bound in each direction.
WRITE_HIGH_WATER = 256 * 1024


class Mode(enum.Enum):
    """What a connection turned out to be; DETECT until its first bytes say.

    Transitions (any other is a bug)::

        DETECT --HTTP/1.x head-------------> HTTP
        DETECT --h2 preface----------------> H2      (the transport changes hands)
        DETECT --other bytes, the app spoke
                 first, or the client's EOF-> RELAY
        (accept) --unfiltered steal--------> WHOLE   (never detected: the session's)
        any --connection lost--------------> CLOSED  (final; also a direct connection)

    HTTP stays HTTP: an upgrade becomes a tunnel inside the engine, not a new mode.
    """

    DETECT = "detect"
    HTTP = "http"  # routed per request by waylay.core.engine.http1
    RELAY = "relay"  # not HTTP: bytes to the original app untouched
    WHOLE = "whole"  # an unfiltered steal: the whole connection is the session's
    H2 = "h2"  # handed to waylay.agent.h2_connection
    CLOSED = "closed"



# Why a connection's client is not being read (bits: several can hold at once).
BY_ROUTER = 1  # pipelined requests fill the engine's buffer
BY_UPSTREAM = 2  # the original app reads slower than the client sends
BY_LINK = 4  # the session's link is congested (a stolen body streams to it)
BY_PENDING = 8  # the upstream connection is still being opened
