"""waylay agent: runs inside the target network namespace, owns sockets and iptables."""
