"""The Kubernetes API as waylay uses it: the official client, raw JSON, clear errors.

Theory of operation. ``KubeApi`` wraps one kubeconfig context of the official
``kubernetes`` client. Every call returns the API's own JSON (plain dicts, parsed by
``waylay.core.kube.model``), never the client's generated models: waylay reads a handful of
fields, and the models would validate every object on every watch event. Calls block (the
client is synchronous); asyncio code runs them with ``asyncio.to_thread``.

Errors leave as waylay's own, naming what was refused so the user knows what to ask for:
403 -> ``PrivilegeError`` ("cannot patch pods/ephemeralcontainers in namespace shop"),
401 -> ``PrivilegeError`` (not logged in), 404 -> ``TargetError``, no answer ->
``TargetError`` naming the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from waylay.core.engine.errors import PrivilegeError, TargetError, WaylayError

Json = dict[str, Any]

ROLLOUT_GROUP: Final = "argoproj.io"
ROLLOUT_VERSION: Final = "v1alpha1"
# Each watch request is re-opened after this long (the API server ends them anyway).
WATCH_TIMEOUT_S: Final = 240
# How long one plain API call may take before the server is called unreachable.
REQUEST_TIMEOUT_S: Final = 20.0
# A watch stream silent for longer than the server's own timeout is dead (a half-open
# connection would otherwise block its reader for ever).
WATCH_READ_TIMEOUT_S: Final = WATCH_TIMEOUT_S + 30.0


@dataclass(frozen=True)
class Resource:
    """A kind of object waylay lists or watches: where it lives in the API and its name in
    RBAC terms (``plural`` and ``group``), for error messages."""

    plural: str
    group: str  # "" for the core API
    namespaced: bool = True

    @property
    def rbac(self) -> str:
        return self.plural if not self.group else f"{self.plural}.{self.group}"


NAMESPACES: Final = Resource("namespaces", "", namespaced=False)
PODS: Final = Resource("pods", "")
DEPLOYMENTS: Final = Resource("deployments", "apps")
STATEFULSETS: Final = Resource("statefulsets", "apps")
JOBS: Final = Resource("jobs", "batch")
ROLLOUTS: Final = Resource("rollouts", ROLLOUT_GROUP)


@dataclass(frozen=True)
class KubeContext:
    name: str
    cluster: str
    namespace: str  # the context's default namespace ("default" when it names none)
    current: bool


def config_path(config_file: str | None = None) -> str:
    """The kubeconfig to read: ``config_file``, else $KUBECONFIG (a ``:``-separated list
    the client merges), else ~/.kube/config. Read at each call: the client reads
    $KUBECONFIG once, when it is imported, so a later change (a test's) would be missed."""
    return config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"


def list_contexts(config_file: str | None = None) -> list[KubeContext]:
    """The kubeconfig's contexts; [] when there is no kubeconfig at all."""
    try:
        contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=config_path(config_file))
    except (ConfigException, OSError):
        return []
    current_name = (current or {}).get("name")
    return [KubeContext(name=str(c.get("name")),
                        cluster=str((c.get("context") or {}).get("cluster", "")),
                        namespace=str((c.get("context") or {}).get("namespace") or "default"),
                        current=c.get("name") == current_name)
            for c in contexts or []]


class KubeApi:
    """One context of the kubeconfig (``context=None``: the current one)."""

    def __init__(self, *, context: str | None = None, config_file: str | None = None) -> None:
        contexts = list_contexts(config_file)
        if not contexts:
            raise TargetError("no Kubernetes config found: set KUBECONFIG or create "
                              "~/.kube/config (kubectl config view shows what is used)")
        chosen = next((c for c in contexts if (c.name == context if context else c.current)),
                      None)
        if chosen is None:
            known = ", ".join(c.name for c in contexts)
            raise TargetError(f"no Kubernetes context {context!r} in the kubeconfig "
                              f"(it has: {known})" if context else
                              f"the kubeconfig has no current context; pick one of {known} "
                              "with --context")
        try:
            self.client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=config_path(config_file), context=chosen.name)
        except (ConfigException, OSError) as exc:
            raise TargetError(f"cannot use Kubernetes context {chosen.name!r}: {exc}") from exc
        self.context = chosen
        self._config_file = config_file
        self.server = str(self.client.configuration.host)
        self.core = client.CoreV1Api(self.client)
        self.apps = client.AppsV1Api(self.client)
        self.batch = client.BatchV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)

    # -- reading ---------------------------------------------------------------------

    def list(self, what: Resource, namespace: str | None = None, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[Json], str]:
        """Objects and the list's resourceVersion (to watch from)."""
        fn, args = self._lister(what, namespace)
        doc = self._json(lambda: fn(*args, label_selector=label_selector,
                                    field_selector=field_selector,
                                    _preload_content=False,
                                    _request_timeout=REQUEST_TIMEOUT_S),
                         "list", what, namespace)
        items = [dict(item) for item in doc.get("items") or []]
        return items, str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def get(self, what: Resource, namespace: str, name: str) -> Json | None:
        """One object, or None if it does not exist."""
        fn, args = self._getter(what, namespace, name)
        try:
            return self._json(lambda: fn(*args, _preload_content=False,
                                         _request_timeout=REQUEST_TIMEOUT_S),
                              "get", what, namespace)
        except TargetError as exc:
            if _not_found(exc):
                return None
            raise

    def watch(self, what: Resource, namespace: str | None, *, resource_version: str,
              stop: threading.Event, label_selector: str | None = None,
              field_selector: str | None = None,
              on_open: Callable[[Callable[[], None]], None] | None = None,
              ) -> Iterator[tuple[str, Json]]:
        """(event type, object) from ``resource_version`` on, until ``stop`` is set or the
        server ends the watch (the caller lists and watches again). A 410 Gone arrives as
        an ("ERROR", status) pair. ``on_open`` receives a function that aborts the open
        stream from another thread (after setting ``stop``): the iterator then ends at
        once instead of at the next event or the server's timeout. A stream that breaks
        raises ``TargetError``."""
        fn, args = self._lister(what, namespace)
        response = self._call(lambda: fn(*args, label_selector=label_selector,
                                         field_selector=field_selector, watch=True,
                                         resource_version=resource_version,
                                         allow_watch_bookmarks=True,
                                         timeout_seconds=WATCH_TIMEOUT_S,
                                         _preload_content=False,
                                         _request_timeout=(REQUEST_TIMEOUT_S,
                                                           WATCH_READ_TIMEOUT_S)),
                              "watch", what, namespace)
        finished = False
        if on_open is not None:
            on_open(lambda: _abort(response))
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if stop.is_set():
                    return
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("object"), dict):
                    yield str(event.get("type")), event["object"]
            finished = True
        except Exception as exc:  # urllib3: reset, read timeout, our own abort
            if stop.is_set():
                return
            raise self._unreachable(exc) from exc
        finally:
            # A stream cut short leaves unread bytes on its connection: close it rather
            # than hand it back to the pool.
            if finished:
                response.release_conn()
            else:
                response.close()

    def rollouts_available(self) -> bool:
        """Whether the Argo Rollouts CRD is installed (its API group is served)."""
        path = f"/apis/{ROLLOUT_GROUP}/{ROLLOUT_VERSION}"
        try:
            response = self.client.call_api(*self.client.param_serialize(
                method="GET", resource_path=path, auth_settings=["BearerToken"]),
                _request_timeout=REQUEST_TIMEOUT_S)
            response.read()
        except Exception as exc:  # urllib3 errors: the server is not answering
            raise self._unreachable(exc) from exc
        return 200 <= int(response.status) < 300

    def pod_log(self, namespace: str, pod: str, container: str, *, tail: int = 200) -> str:
        """The last lines a container printed ("" if they cannot be read)."""
        try:
            text = self.core.read_namespaced_pod_log(
                pod, namespace, container=container, tail_lines=tail,
                _request_timeout=REQUEST_TIMEOUT_S)
        except Exception:  # a log is a courtesy in an error message, never its own failure
            return ""
        return str(text)

    def fresh_core(self) -> client.CoreV1Api:
        """A CoreV1Api on a client of its own. ``kubernetes.stream.portforward`` swaps the
        client's ``call_api`` while it connects, so a port-forward must never share its
        client with calls made meanwhile from other threads (another pod's port-forward,
        a watch)."""
        own = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=config_path(self._config_file), context=self.context.name)
        return client.CoreV1Api(own)

    # -- writing ---------------------------------------------------------------------

    def add_ephemeral_container(self, namespace: str, pod: str, container: Json) -> Json:
        """Add ``container`` to the pod's ephemeral containers (a strategic merge patch of
        the ``ephemeralcontainers`` subresource, merged by name, as kubectl debug does)."""
        body = {"spec": {"ephemeralContainers": [container]}}
        return self._json(
            lambda: self.core.patch_namespaced_pod_ephemeralcontainers(
                pod, namespace, body,
                _content_type="application/strategic-merge-patch+json",
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S),
            "patch", Resource("pods/ephemeralcontainers", ""), namespace)

    def create_job(self, namespace: str, job: Json) -> Json:
        return self._json(
            lambda: self.batch.create_namespaced_job(
                namespace, cast(Any, job), _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S),
            "create", JOBS, namespace)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and its pods; a Job already gone is fine."""
        try:
            self._call(lambda: self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background",
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S),
                "delete", JOBS, namespace)
        except TargetError as exc:
            if not _not_found(exc):
                raise

    # -- plumbing --------------------------------------------------------------------

    def _lister(self, what: Resource, namespace: str | None) -> tuple[Callable[..., Any],
                                                                    tuple[Any, ...]]:
        if what is ROLLOUTS:
            if namespace is None:
                return self.custom.list_cluster_custom_object, (
                    ROLLOUT_GROUP, ROLLOUT_VERSION, "rollouts")
            return self.custom.list_namespaced_custom_object, (
                ROLLOUT_GROUP, ROLLOUT_VERSION, namespace, "rollouts")
        api = {"": self.core, "apps": self.apps, "batch": self.batch}[what.group]
        if not what.namespaced:
            return getattr(api, f"list_{_singular(what)}"), ()
        if namespace is None:
            return getattr(api, f"list_{_singular(what)}_for_all_namespaces"), ()
        return getattr(api, f"list_namespaced_{_singular(what)}"), (namespace,)

    def _getter(self, what: Resource, namespace: str, name: str) -> tuple[Callable[..., Any],
                                                                         tuple[Any, ...]]:
        if what is ROLLOUTS:
            return self.custom.get_namespaced_custom_object, (
                ROLLOUT_GROUP, ROLLOUT_VERSION, namespace, "rollouts", name)
        api = {"": self.core, "apps": self.apps, "batch": self.batch}[what.group]
        if not what.namespaced:
            return getattr(api, f"read_{_singular(what)}"), (name,)
        return getattr(api, f"read_namespaced_{_singular(what)}"), (name, namespace)

    def _json(self, call: Callable[[], Any], verb: str, what: Resource,
              namespace: str | None) -> Json:
        response = self._call(call, verb, what, namespace)
        try:
            doc = json.loads(response.data)
        except ValueError as exc:
            raise TargetError(f"the Kubernetes API at {self.server} sent something that is "
                              f"not JSON for {verb} {what.rbac}") from exc
        return doc if isinstance(doc, dict) else {}

    def _call(self, call: Callable[[], Any], verb: str, what: Resource,
              namespace: str | None) -> Any:
        try:
            return call()
        except ApiException as exc:
            raise self._api_error(exc, verb, what, namespace) from exc
        except WaylayError:
            raise
        except Exception as exc:  # urllib3's connection errors, timeouts, TLS failures
            raise self._unreachable(exc) from exc

    def _api_error(self, exc: ApiException, verb: str, what: Resource,
                   namespace: str | None) -> WaylayError:
        message = _status_message(exc)
        where = f" in namespace {namespace}" if namespace and what.namespaced else ""
        if exc.status == 403:
            return PrivilegeError(
                f"the Kubernetes API refused to {verb} {what.rbac}{where} "
                f"(context {self.context.name}): {message}. Ask for a Role that allows "
                f"'{verb}' on '{what.rbac}' (the README lists waylay's minimal Role)")
        if exc.status == 401:
            return PrivilegeError(f"the Kubernetes API at {self.server} did not accept your "
                                  f"credentials (context {self.context.name}): {message}; "
                                  "log in again (kubectl get pods shows the same)")
        if exc.status == 0:
            return self._unreachable(exc)
        return TargetError(f"{verb} {what.rbac}{where} failed: {message}")

    def _unreachable(self, exc: BaseException) -> TargetError:
        reason = getattr(exc, "reason", None) or exc
        return TargetError(f"cannot reach the Kubernetes API at {self.server} "
                           f"(context {self.context.name}): {reason}")


def _abort(response: Any) -> None:
    """Cut an open response's socket so that a read blocked on it in another thread
    returns (urllib3 2.3+'s ``shutdown``; ``close`` alone does not wake the reader)."""
    with contextlib.suppress(Exception):
        response.shutdown()


def _not_found(exc: TargetError) -> bool:
    """Whether the API answered 404 (kept as the cause of the mapped error)."""
    return isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404


def _singular(what: Resource) -> str:
    """The generated client's method stem: "pods" -> "pod", "statefulsets" -> ...."""
    return {"namespaces": "namespace", "pods": "pod", "deployments": "deployment",
            "statefulsets": "stateful_set", "jobs": "job"}[what.plural]


def _status_message(exc: ApiException) -> str:
    """The API's own sentence from a Status body, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"HTTP {exc.status} {exc.reason or ''}".strip()
