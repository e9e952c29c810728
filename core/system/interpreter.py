"""How waylay starts its own Python processes: isolated from the caller's directory and env.

The agent (guard and worker), the Job form's relay and the demo's helpers run as root, or
as root of a user namespace. Started as a plain ``python -m MODULE`` they would put the
caller's working directory first on ``sys.path`` and obey ``PYTHONPATH`` and the other
``PYTHON*`` variables and the user's site-packages: a file named like a dependency
(``h2.py``) wherever someone runs ``sudo waylay`` would run with root's privileges. So
each such process is started as ``<absolute interpreter> -I -u -m MODULE``:

- ``-I`` (isolated mode): neither the working directory nor a script's directory is put
  on ``sys.path``, user site-packages are skipped, every ``PYTHON*`` variable is ignored.
  The installation's own site-packages (and its ``.pth`` files, which is how an editable
  install finds the code) still count: they are exactly as trusted as waylay's code.
- ``-u``: unbuffered stdout (``PYTHONUNBUFFERED`` is ignored under ``-I``), so a ready
  line never waits in a pipe buffer.
- an environment without ``PYTHON*`` variables, so nothing the process starts in turn
  inherits them either.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Final

ISOLATED_FLAGS: Final = ("-I", "-u")


def python_command(module: str, interpreter: str | None = None) -> list[str]:
    """``[interpreter, -I, -u, -m, module]``; the interpreter defaults to this one (an
    absolute path, never looked up in the caller's PATH)."""
    return [interpreter or sys.executable, *ISOLATED_FLAGS, "-m", module]


def clean_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the variables that steer a Python interpreter (``PYTHON*``)."""
    return {name: value for name, value in env.items() if not name.startswith("PYTHON")}
