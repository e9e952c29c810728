"""The fake API server's object store: resource table, objects, resourceVersions, watches.

Theory of operation. Every object is a plain JSON dict shaped as the API returns it
(camelCase, with ``kind`` and ``apiVersion``), keyed by (resource, namespace, name). One
counter, as in etcd, gives every write the next ``metadata.resourceVersion``; each write
also appends a watch event to a bounded history. A watch starting at resourceVersion R
replays the history after R, or gets a 410 "Expired" Status when events after R were
already forgotten (a real API server's watch cache forgets too). ``ApiError`` carries the
``Status`` the server answers with; its helpers reproduce the real messages.
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

# Events kept for watches that resume from a resourceVersion. Bounded so a long test does
# not grow without limit; older starting points get 410 Gone, as from a real API server.
HISTORY_EVENTS = 4096


def now() -> str:
    """The current time as the API writes it (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True)
class Resource:
    """One REST resource the fake serves (a row of the discovery documents)."""

    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    builtin: bool = True  # custom resources carry kind/apiVersion in list items
    field_labels: tuple[str, ...] = ("metadata.name", "metadata.namespace")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``pods``, ``deployments.apps``: how the API names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


_WATCHABLE = ("get", "list", "watch")
RESOURCES: tuple[Resource, ...] = (
    Resource(group="", version="v1", plural="namespaces", singular="namespace",
             kind="Namespace", namespaced=False, verbs=_WATCHABLE, short_names=("ns",),
             field_labels=("metadata.name", "status.phase")),
    Resource(group="", version="v1", plural="pods", singular="pod", kind="Pod",
             namespaced=True, verbs=(*_WATCHABLE, "delete"), short_names=("po",),
             field_labels=("metadata.name", "metadata.namespace", "spec.nodeName",
                           "status.phase")),
    Resource(group="apps", version="v1", plural="deployments", singular="deployment",
             kind="Deployment", namespaced=True, verbs=_WATCHABLE, short_names=("deploy",)),
    Resource(group="apps", version="v1", plural="statefulsets", singular="statefulset",
             kind="StatefulSet", namespaced=True, verbs=_WATCHABLE, short_names=("sts",)),
    Resource(group="apps", version="v1", plural="replicasets", singular="replicaset",
             kind="ReplicaSet", namespaced=True, verbs=_WATCHABLE, short_names=("rs",)),
    Resource(group="batch", version="v1", plural="jobs", singular="job", kind="Job",
             namespaced=True, verbs=(*_WATCHABLE, "create", "delete")),
    Resource(group="argoproj.io", version="v1alpha1", plural="rollouts", singular="rollout",
             kind="Rollout", namespaced=True, verbs=_WATCHABLE, short_names=("ro",),
             builtin=False),
)
# Subresources the fake serves, with the verbs RBAC checks for them.
SUBRESOURCES: dict[str, tuple[str, ...]] = {
    "pods/log": ("get",),
    "pods/ephemeralcontainers": ("get", "patch"),
    "pods/portforward": ("create",),
}
VERBS = ("get", "list", "watch", "create", "patch", "delete")


def resource_for(*, kind: str | None = None, api_version: str | None = None,
                 plural: str | None = None) -> Resource:
    """The table row with this kind or plural (and apiVersion if given); KeyError if none."""
    for res in RESOURCES:
        if ((kind is None or res.kind == kind) and (plural is None or res.plural == plural)
                and (api_version is None or res.api_version == api_version)):
            return res
    raise KeyError(f"resource not modeled: kind={kind} plural={plural} "
                   f"apiVersion={api_version}")


# --- errors as the API reports them ------------------------------------------------------


class ApiError(Exception):
    """A failed request: the HTTP code and the ``Status`` object the server answers with."""

    def __init__(self, code: int, reason: str, message: str,
                 details: JSON | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details

    def status(self) -> JSON:
        body: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "message": self.message, "reason": self.reason}
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(res: Resource, name: str) -> JSON:
    details: JSON = {"name": name}
    if res.group:
        details["group"] = res.group
    details["kind"] = res.plural
    return details


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def already_exists(res: Resource, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists',
                    _details(res, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(kind: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid; ``causes`` are (field, message) pairs as the validators word them."""
    text = ", ".join(f"{field}: {msg}" for field, msg in causes)
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}', {
        "name": name, "kind": kind,
        "causes": [{"reason": _cause_reason(msg), "message": msg, "field": field}
                   for field, msg in causes]})


def _cause_reason(message: str) -> str:
    for prefix, reason in (("Forbidden", "FieldValueForbidden"),
                           ("Required", "FieldValueRequired"),
                           ("Duplicate", "FieldValueDuplicate")):
        if message.startswith(prefix):
            return reason
    return "FieldValueInvalid"


# --- selectors ---------------------------------------------------------------------------

_LABEL_TERM = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<nkey>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$")


@dataclass(frozen=True)
class Selector:
    """A parsed ``labelSelector`` plus ``fieldSelector``; ``matches(obj)`` applies both."""

    labels: tuple[tuple[str, str, frozenset[str]], ...] = ()
    fields: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, res: Resource, label_selector: str, field_selector: str) -> Selector:
        labels: list[tuple[str, str, frozenset[str]]] = []
        for term in _split_terms(label_selector):
            m = _LABEL_TERM.match(term)
            if m is None:
                raise bad_request(f"unable to parse requirement: {term!r}")
            if m["nkey"]:
                labels.append((m["nkey"], "!exists", frozenset()))
            elif m["setop"]:
                values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
                labels.append((m["key"], m["setop"], values))
            elif m["op"]:
                op = "!=" if m["op"] == "!=" else "="
                labels.append((m["key"], op, frozenset({m["value"]})))
            else:
                labels.append((m["key"], "exists", frozenset()))
        fields: list[tuple[str, str, str]] = []
        for term in _split_terms(field_selector):
            m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
            if m is None:
                raise bad_request(f"invalid selector: '{field_selector}'; can't understand "
                                  f"'{term}'")
            if m[1] not in res.field_labels:
                raise bad_request(f'field label not supported: {m[1]}')
            fields.append((m[1], "!=" if m[2] == "!=" else "=", m[3]))
        return cls(tuple(labels), tuple(fields))

    def matches(self, obj: JSON) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        for key, op, values in self.labels:
            present = key in labels
            ok = {"exists": present, "!exists": not present,
                  "=": present and labels[key] in values,
                  "!=": not present or labels[key] not in values,
                  "in": present and labels[key] in values,
                  "notin": not present or labels[key] not in values}[op]
            if not ok:
                return False
        for path, op, value in self.fields:
            current: Any = obj
            for part in path.split("."):
                current = current.get(part, {}) if isinstance(current, dict) else {}
            actual = current if isinstance(current, str) else ""
            if (actual == value) != (op == "="):
                return False
        return True


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b`` is two terms)."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t for t in terms if t.strip()]


# --- the store ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One write: its resourceVersion, type, the object after it (before, for DELETED)."""

    rv: int
    resource: Resource
    type: str  # ADDED, MODIFIED, DELETED
    obj: JSON
    old: JSON | None


Key = tuple[str, str, str]  # (apiVersion/plural, namespace or "", name)


class Store:
    """Objects in memory with etcd-like resourceVersions and a bounded event history."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = 0
        self._objects: dict[Key, JSON] = {}
        self._history: deque[Event] = deque(maxlen=HISTORY_EVENTS)
        self._forgotten_rv = 0  # newest resourceVersion no longer in the history
        self.closed = False

    @staticmethod
    def _key(res: Resource, namespace: str | None, name: str) -> Key:
        return (f"{res.api_version}/{res.plural}", namespace or "", name)

    def _write(self, res: Resource, kind: str, obj: JSON, old: JSON | None) -> JSON:
        """Assign the next resourceVersion, store (or drop) ``obj``, record the event."""
        self._rv += 1
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = self._key(res, meta.get("namespace"), meta["name"])
        meta["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            del self._objects[key]
        else:
            self._objects[key] = obj
        if len(self._history) == self._history.maxlen:
            self._forgotten_rv = self._history[0].rv
        self._history.append(Event(self._rv, res, kind, obj, old))
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def create(self, res: Resource, obj: JSON) -> JSON:
        """Store a new object (uid, creationTimestamp filled when missing); 409 if it exists."""
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise bad_request("name or generateName is required")
        if res.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        with self._cond:
            if self._key(res, meta.get("namespace"), meta["name"]) in self._objects:
                raise already_exists(res, meta["name"])
            return self._write(res, "ADDED", obj, None)

    def mutate(self, res: Resource, namespace: str | None, name: str,
               change: Callable[[JSON], None]) -> JSON:
        """Apply ``change`` to a copy of the object and store it (MODIFIED); 404 if absent.

        ``change`` runs under the store lock, so read-modify-write cycles never interleave;
        an exception from it leaves the object unchanged. A change that changes nothing
        writes nothing.
        """
        with self._cond:
            old = self._objects.get(self._key(res, namespace, name))
            if old is None:
                raise not_found(res, name)
            new = copy.deepcopy(old)
            change(new)
            new["metadata"].update({k: old["metadata"][k] for k in
                                    ("name", "uid", "creationTimestamp", "resourceVersion")})
            if res.namespaced:
                new["metadata"]["namespace"] = old["metadata"]["namespace"]
            if new == old:  # as in etcd, a no-op write keeps the resourceVersion
                return copy.deepcopy(old)
            return self._write(res, "MODIFIED", new, old)

    def delete(self, res: Resource, namespace: str | None, name: str) -> JSON:
        with self._cond:
            old = self._objects.get(self._key(res, namespace, name))
            if old is None:
                raise not_found(res, name)
            return self._write(res, "DELETED", old, old)

    def get(self, res: Resource, namespace: str | None, name: str) -> JSON:
        with self._cond:
            obj = self._objects.get(self._key(res, namespace, name))
            if obj is None:
                raise not_found(res, name)
            return copy.deepcopy(obj)

    def exists(self, res: Resource, namespace: str | None, name: str) -> bool:
        with self._cond:
            return self._key(res, namespace, name) in self._objects

    def list_objects(self, res: Resource, namespace: str | None,
             selector: Selector = Selector()) -> tuple[int, list[JSON]]:
        """(current resourceVersion, matching objects sorted by namespace and name)."""
        prefix = f"{res.api_version}/{res.plural}"
        with self._cond:
            found = [copy.deepcopy(obj) for key, obj in sorted(self._objects.items())
                     if key[0] == prefix and (namespace is None or key[1] == namespace)
                     and selector.matches(obj)]
            return self._rv, found

    def watch_start(self, res: Resource, namespace: str | None, selector: Selector,
                    resource_version: str) -> tuple[int, list[Event]]:
        """Where a watch starts: (position, events to send first).

        Without a resourceVersion (or "0") the first events are ADDED for every current
        match, as the real API does; with one, the history after it is replayed, or
        ApiError 410 when that part of the history is forgotten.
        """
        with self._cond:
            if resource_version in ("", "0"):
                _, objects = self.list_objects(res, namespace, selector)
                return self._rv, [Event(self._rv, res, "ADDED", o, None) for o in objects]
            if not resource_version.isdigit():
                raise bad_request(f'invalid resource version "{resource_version}"')
            start = int(resource_version)
            if start < self._forgotten_rv:
                raise ApiError(410, "Expired", f"too old resource version: {start} "
                               f"({self._forgotten_rv + 1})")
            return start, []

    def wait_events(self, after: int, timeout: float) -> tuple[int, list[Event]]:
        """Events newer than ``after`` (waiting up to ``timeout`` for one); new position.

        ApiError 410 when some of them were already forgotten (a watcher too slow for
        the history), so a watch never silently skips events.
        """
        with self._cond:
            if self._rv <= after and not self.closed:
                self._cond.wait(timeout)
            if after < self._forgotten_rv:
                raise ApiError(410, "Expired", f"too old resource version: {after} "
                               f"({self._forgotten_rv + 1})")
            events = [e for e in self._history if e.rv > after]
            return max(after, self._rv), events

    def close(self) -> None:
        """Wake every waiting watch so it ends."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def watch_view(events: Iterable[Event], res: Resource, namespace: str | None,
               selector: Selector) -> list[tuple[str, JSON]]:
    """What one watch sees of ``events``: (type, object) for its resource and selector.

    As in the real API, an object that starts matching a selector arrives as ADDED and
    one that stops matching as DELETED.
    """
    seen = []
    for event in events:
        if event.resource != res:
            continue
        ns = event.obj.get("metadata", {}).get("namespace")
        if namespace is not None and ns != namespace:
            continue
        now_in = event.type != "DELETED" and selector.matches(event.obj)
        was_in = event.old is not None and selector.matches(event.old)
        if event.type == "MODIFIED" and now_in != was_in:
            seen.append(("ADDED" if now_in else "DELETED", event.obj))
        elif (event.type == "DELETED" and was_in) or (event.type != "DELETED" and now_in):
            seen.append((event.type, event.obj))
    return seen
