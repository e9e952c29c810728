"""The traffic buffer: bounded, updated in place, searchable."""

from __future__ import annotations

import pytest

from tests.tui.events import captured, mirrored, started
from tests.tui.events import request as ev
from waylay.core.engine.events import WarningEvent
from waylay.core.engine.flow import Verdict
from waylay.tui.flows import FlowStore, FlowView, RowQuery


def test_rows_are_added_in_order_with_increasing_keys() -> None:
    """Each request event becomes one row; keys increase in arrival order."""
    store = FlowStore()
    done = store.ingest([ev(1), ev(2), WarningEvent(message="x"), ev(3)])
    assert [r.event.id for r in store] == [1, 2, 3]
    assert [r.key for r in done.added] == [0, 1, 2]
    assert store.received == 3


def test_a_later_event_with_the_same_id_updates_the_row_in_place() -> None:
    """A "started" row is completed by the request event, and its version bumps."""
    store = FlowStore()
    store.ingest([started(7, authority="in.flight")])
    row = store[0]
    assert row.verdict is Verdict.STOLEN and not row.complete and row.finished is None
    done = store.ingest([ev(7, verdict=Verdict.STOLEN, status=201, authority=None)])
    assert len(store) == 1 and done.updated == [row] and not done.added
    assert row.finished is not None and row.finished.status == 201 and row.version == 1
    assert row.event.authority == "in.flight"  # known values are never blanked
    store.ingest([started(7)])  # late, out of order
    assert row.finished is not None and row.finished.status == 201


def test_a_request_is_counted_once_when_it_finishes() -> None:
    """``received`` counts finished requests: a "started" row counts when its request
    event arrives, not before and not twice."""
    store = FlowStore()
    store.ingest([started(1)])
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
    assert [r.event.id for r in store] == list(range(4990, 5000))
    assert store.index_of(store[3].key) == 3
    assert store.find(0) is None
    store.ingest([ev(4995, status=500)])  # still addressable by id
    assert store[5].finished is not None and store[5].finished.status == 500


def test_only_the_newest_rows_keep_bodies() -> None:
    """Bodies beyond ``body_rows`` are dropped (headers stay) and the row says so."""
    store = FlowStore(body_rows=2)
    store.ingest([ev(i, capture=captured(response_headers=(("a", "b"),),
                                         response_body="x" * 10),
                     mirror=mirrored(200, local_headers=(), local_body="y"))
                  for i in range(4)])
    finished = [r.finished for r in store]
    assert [f.capture.response_body for f in finished if f and f.capture] == [
        None, None, "x" * 10, "x" * 10]
    assert [f.mirror.local_body for f in finished if f and f.mirror] == [None, None, "y", "y"]
    assert [r.bodies_dropped for r in store] == [True, True, False, False]
    first = store[0].finished
    assert first is not None and first.capture is not None
    assert first.capture.response_headers == (("a", "b"),)


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
                  ev(2, verdict=Verdict.STOLEN, method="POST", matched="header: alice"),
                  ev(3, status=503, authority="api.shop.local")])
    view = FlowView(store)
    view.set_query(RowQuery(query))
    assert [view[i].event.id for i in range(len(view))] == ids


def test_a_filtered_view_follows_the_store() -> None:
    """New matching rows are appended, evicted ones leave the view."""
    store = FlowStore(capacity=5)
    view = FlowView(store)
    view.set_query(RowQuery("v:stolen"))
    lost_total = 0
    for i in range(12):
        verdict = Verdict.STOLEN if i % 2 else Verdict.PASSED
        gained, lost = view.sync(store.ingest([ev(i, verdict=verdict)]))
        assert gained == i % 2
        lost_total += lost
    assert [view[i].event.id for i in range(len(view))] == [7, 9, 11]
    assert lost_total == 3  # 1, 3 and 5 were evicted from the store
    assert view.index_of(view[1].key) == 1
    view.set_query(None)
    assert len(view) == 5


def test_ids_of_different_pods_are_different_requests() -> None:
    """Each pod of a workload has its own agent, numbering its requests from 1."""
    store = FlowStore()
    store.ingest([ev(1, pod="web-a", verdict=Verdict.STOLEN),
                  ev(1, pod="web-b", verdict=Verdict.PASSED)])
    assert [(r.event.pod, r.verdict) for r in store] == [("web-a", "stolen"),
                                                         ("web-b", "passed")]


def test_pods_are_searched_too() -> None:
    """Free text finds a pod's requests by the pod's name."""
    store = FlowStore()
    store.ingest([ev(1, pod="web-a"), ev(2, pod="web-b")])
    view = FlowView(store)
    view.set_query(RowQuery("web-b"))
    assert [view[i].event.pod for i in range(len(view))] == ["web-b"]
