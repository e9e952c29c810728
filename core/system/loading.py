"""Loading the kubernetes client from one thread at a time.

The dashboard imports the client lazily (it takes about 0.4 s) from more than one thread:
the target tree's workers and the session's attach. Two threads importing the package at
once can meet in its circular imports, and Python then hands one of them a module that is
still half initialized ("cannot import name 'ApiClient' from 'kubernetes.client'"). Every
lazy import of a module that pulls in the client goes through ``load`` instead.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

_lock = threading.Lock()


def load(module: str) -> ModuleType:
    """``importlib.import_module(module)``, one thread at a time."""
    with _lock:
        return importlib.import_module(module)
