"""This machine's side, shared by the agent and the client: processes, interpreters, sockets,
network namespaces and the running local agents (docs/architecture.md §1)."""
