"""The dashboard process's collector policy (``waylay ui`` runs the app with freeze_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from waylay.tui import app as app_module


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_startup_freeze_makes_full_collections_rarer(restored_gc: None) -> None:
    """Startup objects are frozen and full collections wait for 100 middle ones."""
    young, middle, _ = gc.get_threshold()
    app_module._freeze_startup_objects()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (young, middle, app_module.FULL_GC_THRESHOLD)
    assert app_module.FULL_GC_THRESHOLD > 10  # CPython's default
