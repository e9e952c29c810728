"""The traffic buffer: bounded, updated in place, searchable."""

from __future__ import annotations

from typing import Any

import pytest

from waylay.tui.flows import FlowStore, FlowView, RowQuery


def ev(i: int, **kw: Any) -> dict[str, Any]:
    base = {"type": "request", "id": i, "ts": 100.0 + i, "port": 80, "protocol": "http/1.1",
            "method": "GET", "authority": "shop.local", "path": f"/p/{i}",
            "verdict": "passed", "status": 200, "duration_ms": 1.0, "bytes_in": 0,
            "bytes_out": 5, "matched": None}
    base.update(kw)
    return base


def test_rows_are_added_in_order_with_increasing_keys() -> None:
    """Each request event becomes one row; keys increase in arrival order."""
    store = FlowStore()
    done = store.ingest([ev(1), ev(2), {"type": "warning", "message": "x"}, ev(3)])
    assert [r.get("id") for r in store] == [1, 2, 3]
    assert [r.key for r in done.added] == [0, 1, 2]
    assert store.received == 3


def test_a_later_event_with_the_same_id_updates_the_row_in_place() -> None:
    """A "started" row is completed by the request event, and its version bumps."""
    store = FlowStore()
    store.ingest([ev(7, type="request_started", verdict=None, status=None, duration_ms=None)])
    row = store[0]
    assert row.verdict is None and not row.complete
    done = store.ingest([ev(7, verdict="stolen", status=201)])
    assert len(store) == 1 and done.updated == [row] and not done.added
    assert row.verdict == "stolen" and row.get("status") == 201 and row.version == 1
    store.ingest([ev(7, type="started", verdict=None, status=None)])  # late, out of order
    assert row.get("type") == "request" and row.get("status") == 201


def test_a_request_is_counted_once_when_it_finishes() -> None:
    """``received`` counts finished requests: a "started" row counts when its request
    event arrives, not before and not twice."""
    store = FlowStore()
    store.ingest([ev(1, type="started", status=None, duration_ms=None)])
    assert len(store) == 1 and store.received == 0
    store.ingest([ev(1, status=504), ev(2)])
    assert len(store) == 2 and store.received == 2
    store.ingest([ev(1, status=504)])  # a repeat of a finished one
    assert store.received == 2


def test_the_same_id_in_another_session_is_another_row() -> None:
    """Ids restart with each session."""
    store = FlowStore()
    store.ingest([ev(1)], session=1)
    store.ingest([ev(1)], session=2)
    assert len(store) == 2


def test_the_buffer_is_bounded_and_counts_what_it_dropped() -> None:
    """Past capacity the oldest rows go, and are counted; lookups still work."""
    store = FlowStore(capacity=10)
    for start in range(0, 5000, 100):
        done = store.ingest([ev(i) for i in range(start, start + 100)])
        assert done.evicted == 100 if start else 90
    assert len(store) == 10 and store.dropped == 4990
    assert [r.get("id") for r in store] == list(range(4990, 5000))
    assert store.index_of(store[3].key) == 3
    assert store.find(0) is None
    store.ingest([ev(4995, status=500)])  # still addressable by id
    assert store[5].get("status") == 500


def test_only_the_newest_rows_keep_bodies() -> None:
    """Bodies beyond ``body_rows`` are dropped and the row says so."""
    store = FlowStore(body_rows=2)
    store.ingest([ev(i, response_body="x" * 10) for i in range(4)])
    assert [r.get("response_body") for r in store] == [None, None, "x" * 10, "x" * 10]
    assert store[0].get("body_dropped") is True


def test_clear_forgets_rows_but_counts_them() -> None:
    store = FlowStore()
    store.ingest([ev(i) for i in range(5)])
    assert store.clear() == 5 and len(store) == 0 and store.cleared == 5
    store.ingest([ev(1)])
    assert len(store) == 1


@pytest.mark.parametrize(("query", "ids"), [
    ("stolen", [2]),
    ("v:st", [2]),
    ("-v:passed", [2]),
    ("s:5xx", [3]),
    ("status:404", [1]),
    ("m:post", [2]),
    ("path:/p/3", [3]),
    ("h:api", [3]),
    ("p:8080", [1]),
    ("match:alice", [2]),
    ("/p/ GET", [1, 3]),
    ("nothing-like-this", []),
])
def test_queries_select_rows(query: str, ids: list[int]) -> None:
    """The search language: words, field:value, negation."""
    store = FlowStore()
    store.ingest([ev(1, status=404, port=8080),
                  ev(2, verdict="stolen", method="POST", matched="header: alice"),
                  ev(3, status=503, authority="api.shop.local")])
    view = FlowView(store)
    view.set_query(RowQuery(query))
    assert [view[i].get("id") for i in range(len(view))] == ids


def test_a_filtered_view_follows_the_store() -> None:
    """New matching rows are appended, evicted ones leave the view."""
    store = FlowStore(capacity=5)
    view = FlowView(store)
    view.set_query(RowQuery("v:stolen"))
    lost_total = 0
    for i in range(12):
        gained, lost = view.sync(store.ingest([ev(i, verdict="stolen" if i % 2 else "passed")]))
        assert gained == i % 2
        lost_total += lost
    assert [view[i].get("id") for i in range(len(view))] == [7, 9, 11]
    assert lost_total == 3  # 1, 3 and 5 were evicted from the store
    assert view.index_of(view[1].key) == 1
    view.set_query(None)
    assert len(view) == 5


def test_ids_of_different_pods_are_different_requests() -> None:
    """Each pod of a workload has its own agent, numbering its requests from 1."""
    store = FlowStore()
    store.ingest([{"type": "request", "id": 1, "pod": "web-a", "verdict": "stolen"},
                  {"type": "request", "id": 1, "pod": "web-b", "verdict": "passed"}])
    assert [(r.get("pod"), r.verdict) for r in store] == [("web-a", "stolen"),
                                                          ("web-b", "passed")]
