"""Render the dashboard on a Kubernetes deployment (needs root: it builds the test cluster).

    sudo .venv/bin/python screenshots/render_kube.py   # writes screenshots/kube.svg and .png

There is no cluster here: this uses the Kubernetes test bed (``tests/kube/kube_bed.py``):
two network namespaces standing in for the pods of deployment ``web``, each with a real
HTTP app, behind the fake API server that the official client talks to. The dashboard
is the real one, started as ``waylay ui -t deployment/web --context fake -n shop`` with
the alice steal filter: it deploys one real agent per pod through the fake API server and
reaches them through port-forward. Requests from a few users go to both pods while the
picture is taken.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from render import SIZE, save, wait  # noqa: E402

from tests.kube.kube_bed import ALICE, NAMESPACE, KubeBed, kube_bed  # noqa: E402
from waylay.core.engine.config import parse_config  # noqa: E402
from waylay.tui.app import WaylayApp  # noqa: E402

USERS = ("alice", "bob", "carol", "alice", "dave")
PATHS = ("/api/orders", "/api/cart", "/web/home", "/api/orders/7", "/health")


def send(kube: KubeBed, rounds: int) -> None:
    """Requests to every pod (bounded: ``rounds`` x users x pods)."""
    for n in range(rounds):
        for pod in kube.pods:
            for i, user in enumerate(USERS):
                subprocess.run(["curl", "-s", "-o", "/dev/null", "--noproxy", "*",
                                "--max-time", "5", "-H", f"x-user: {user}",
                                f"http://{pod.ip}{PATHS[(i + n) % len(PATHS)]}"],
                               check=False)


async def picture(kube: KubeBed) -> None:
    config = parse_config(ALICE, fmt="json").with_kube_flags(context="fake",
                                                            namespace=NAMESPACE)
    app = WaylayApp(target="deployment/web", config=config,
                    cli_ports={80: kube.local_http}, targets_source=list)
    async with app.run_test(size=SIZE) as pilot:
        await wait(pilot, lambda: app.bar.link == "attached" and app.bar.plans,
                   "the agents", 60)
        await asyncio.to_thread(send, kube, 4)
        await wait(pilot, lambda: app.store.received >= 40, "the rows", 20)
        await pilot.press("t")  # the targets tree: contexts, namespaces, workloads, pods
        await pilot.pause(1.0)
        save(app, "kube", "waylay ui -t deployment/web --context fake -n shop")
        await pilot.press("q")
        await wait(pilot, lambda: not app.client.busy, "the session to end", 30)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("render_kube.py builds network namespaces: run it as root")
    with tempfile.TemporaryDirectory(prefix="waylay-kube-shot-") as tmp, \
            kube_bed(Path(tmp)) as kube:
        os.environ["KUBECONFIG"] = str(kube.kubeconfig)
        asyncio.run(picture(kube))


if __name__ == "__main__":
    main()
