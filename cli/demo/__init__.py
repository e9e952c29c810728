"""`waylay demo`: a live sample service to intercept, with no cluster and no sudo.

Theory of operation. ``runner`` puts together, each in a process of its own:

- the sample "remote" service (``shop``: a small shop-like JSON API) inside a private
  network namespace that ``sandbox`` makes: as root a named namespace joined to the host
  by a veth pair, otherwise a user + network namespace from ``unshare`` (docs/architecture.md §5);
- the "local dev" version of the same service (``local_app``) on 127.0.0.1, answering
  recognisably differently (``X-Served-By: local-dev``, ``"served_by": "local"``);
- a bounded traffic generator (``traffic``) that plays several users and a kubelet's
  probes against the sample, checks every answer and counts who served it;
- a waylay session on the sample's namespace (``waylay.core.client.attach``), headless or through
the
  dashboard.

``checks`` turns the session's counts, the generator's report and the config into the
verdict of a headless run. Everything started is stopped on every way out, and a demo that
crashed is cleaned up by the next one (``sandbox.clean_leftovers``).
"""
