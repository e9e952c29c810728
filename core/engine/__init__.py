"""The engine: waylay's protocol logic, sans-I/O (bytes and events in, bytes and commands out).

Nothing here opens a socket, starts a task, reads a clock or imports another room; the agent
and the client drive it (docs/architecture.md §1).
"""
