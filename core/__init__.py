"""waylay core, in rooms by job: ``engine`` (sans-I/O protocol logic), ``system`` (this
machine: processes, sockets, namespaces), ``client`` (a session's asyncio drivers) and
``kube`` (the Kubernetes client). docs/architecture.md §1 gives the rules between them."""
