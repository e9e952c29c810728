"""`waylay targets`: what can be intercepted on this machine."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from core.local_targets import list_local_targets


def targets_command(args: argparse.Namespace) -> int:
    found = list_local_targets()
    if args.json:
        json.dump({"local": [dataclasses.asdict(t) for t in found]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not found:
        print("no local targets found (named network namespaces or processes listening "
              "on TCP); Kubernetes targets are not listed yet", file=sys.stderr)
        return 0
    width = max(len(t.target) for t in found)
    print(f"{'TARGET':{width}}  PORTS            DESCRIPTION")
    for t in found:
        ports = ",".join(str(p) for p in t.ports) or "-"
        print(f"{t.target:{width}}  {ports:16} {t.description}")
    return 0
