"""Connections from the agent to the original app: marked so they bypass the redirect.

Every socket the agent opens towards the original app carries ``SO_MARK`` =
``PASSTHROUGH_MARK``; the agent's iptables chain RETURNs on that mark, so a passed request
reaches the app instead of coming back to the agent. They are pooled (``core.pool``).
"""

from __future__ import annotations

from agent.iptables import PASSTHROUGH_MARK
from core.pool import Connection, ConnectionPool, Destination, open_tcp


async def open_marked(destination: Destination) -> Connection:
    """Connect to the original app, bypassing the agent's own redirect."""
    return await open_tcp(destination, mark=PASSTHROUGH_MARK)


def upstream_pool() -> ConnectionPool:
    return ConnectionPool(open_marked)
