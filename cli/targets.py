"""`waylay targets`: what can be intercepted, on this machine and in a Kubernetes namespace.

Local targets always come first. Kubernetes targets follow when a kubeconfig exists: the
workloads and pods of one namespace (``-n``, else the context's) of one context
(``--context``, else the current one). Every target line starts with the exact text to
give to ``-t``.

A cluster that cannot be asked never hides the local targets: without ``--context`` /
``-n`` its error is a note and the exit code stays 0; when the user named the context or
namespace, the error is theirs to see, and the exit code is the error's (3 unreachable or
not found, 4 refused).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from waylay.core.engine.errors import WaylayError
from waylay.core.kube.inventory import Inventory, pod_target, workload_target
from waylay.core.kube.model import ContainerInfo
from waylay.core.system.local_targets import LocalTarget, list_local_targets

# A pod's containers column shows this many characters; the rest is in --json.
_CONTAINERS_MAX = 60


@dataclasses.dataclass(frozen=True)
class KubeResult:
    inventory: Inventory | None  # None: no kubeconfig, or the cluster failed
    error: WaylayError | None


def targets_command(args: argparse.Namespace) -> int:
    local = list_local_targets()
    explicit = bool(args.context or args.namespace)
    kube = _kubernetes(args.context, args.namespace, explicit=explicit)
    if args.json:
        doc: dict[str, Any] = {
            "local": [dataclasses.asdict(t) for t in local],
            "kubernetes": kube.inventory.to_json() if kube.inventory else None,
        }
        if kube.error is not None:
            doc["kubernetes_error"] = str(kube.error)
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_local(local)
        if kube.inventory is not None:
            _print_kubernetes(kube.inventory)
    if kube.error is not None:
        print(f"waylay: kubernetes: {kube.error}", file=sys.stderr)
        if explicit:
            return kube.error.exit_code
    return 0


def _kubernetes(context: str | None, namespace: str | None, *,
                explicit: bool) -> KubeResult:
    # The client loads slowly; only `targets` and Kubernetes sessions need it.
    from waylay.core.kube.api import KubeApi, list_contexts
    from waylay.core.kube.discovery import snapshot

    if not explicit and not list_contexts():
        print("waylay: no Kubernetes config (KUBECONFIG or ~/.kube/config): local targets "
              "only", file=sys.stderr)
        return KubeResult(None, None)
    try:
        api = KubeApi(context=context)
        return KubeResult(snapshot(api, namespace or api.context.namespace), None)
    except WaylayError as exc:
        return KubeResult(None, exc)


def _print_local(found: list[LocalTarget]) -> None:
    if not found:
        print("no local targets found (named network namespaces or processes listening "
              "on TCP)", file=sys.stderr)
        return
    _table(["TARGET", "PORTS", "DESCRIPTION"],
           [[t.target, ",".join(str(p) for p in t.ports) or "-", t.description]
            for t in found])


def _print_kubernetes(inventory: Inventory) -> None:
    where = f"kubernetes: context {inventory.context}, namespace {inventory.namespace}"
    if not inventory.rollouts_available:
        where += " (no Argo Rollouts in this cluster)"
    print(f"\n{where}")
    workloads = inventory.workloads
    pods = inventory.pods
    if not workloads and not pods:
        print("no workloads or pods in this namespace")
        return
    if workloads:
        _table(["WORKLOAD", "READY", "PODS"],
               [[workload_target(w), f"{w.ready_replicas}/{w.replicas}",
                 " ".join(p.name for p in inventory.pods_of(w)) or "-"] for w in workloads])
    if pods:
        if workloads:
            print()
        _table(["POD", "STATUS", "IP", "NODE", "OWNER", "CONTAINERS"],
               [[pod_target(p), p.status_text, p.ip or "-", p.node or "-", p.owner or "-",
                 _containers(p.containers)] for p in pods])


def _containers(containers: Sequence[ContainerInfo]) -> str:
    text = " ".join(c.name + (":" + ",".join(map(str, c.ports)) if c.ports else "")
                    for c in containers) or "-"
    return text if len(text) <= _CONTAINERS_MAX else text[:_CONTAINERS_MAX - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> None:
    """Columns as wide as their widest cell; the last column is not padded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
