"""The demo's "local dev" version of the shop, as a developer would run it on 127.0.0.1.

Same API as ``waylay.cli.demo.shop``, recognisably different: every answer carries
``X-Served-By: local-dev`` and every JSON body ``"served_by": "local"``, and the bug the
developer is fixing (user 13's corrupt record, a 500 in the remote shop) is fixed here.
So a stolen request is plainly answered by this process, and a mirrored copy reaching it
does no harm: its answers never go back to the remote client.

Run as ``python -m waylay.cli.demo.local_app`` (any free port on 127.0.0.1 unless ``--port``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

from waylay.cli.demo.shop import Flavour, parse_args, run

LOCAL: Final = Flavour(served_by="local", header="local-dev", fixed_user_13=True)


def main(argv: Sequence[str] | None = None) -> int:
    return run(LOCAL, parse_args(argv, host="127.0.0.1", port=0))


if __name__ == "__main__":
    sys.exit(main())
