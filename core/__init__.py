"""waylay core: the shared engine (sans-I/O protocol logic) and its asyncio drivers."""
