"""The Kubernetes client: discovery, the agent's pod specs, launching and attaching to agents
in pods (docs/architecture.md §1)."""
