"""The developer's side: a session's asyncio drivers, from the agent's wire to the local app
(docs/architecture.md §1)."""
